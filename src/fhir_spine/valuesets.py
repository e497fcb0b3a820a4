"""Pathway concepts as FHIR R4 ValueSets, generated from `mappings/concepts.yaml`.

`concepts.yaml` is the one source of truth; `profiles/valuesets/` holds what this module
generates from it (`python -m fhir_spine.valuesets profiles/valuesets`), and
`tests/test_valuesets.py` fails when the two disagree. The mapping back
(`concept_documents`) turns the ValueSets into a concept document again, so the ValueSets
carry everything the concept map uses:

* exact codes -> `compose.include.concept` (with `display` when concepts.yaml gives one; an
  ordinal `value` as the R4 `ordinalValue` extension);
* `prefix` (ATC classes, ICD-10 subcategories) -> a `regex` filter on `code`;
* `range` (ICD-10 three-character categories) -> a `regex` filter listing the categories;
* `is-a` (SNOMED CT descendants) -> an `is-a` filter on `concept`: intensional, expanded by a
  terminology server (`--terminology`); offline only the code itself and the codes listed
  next to it match;
* the pathway element, `confidence` and `requires` as extensions of this project.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

CANONICAL = "http://fhir-spine.org/fhir/ValueSet/"
EXT = "http://fhir-spine.org/fhir/StructureDefinition/"
EXT_ELEMENT = EXT + "pathway-element"
EXT_CONFIDENCE = EXT + "mapping-confidence"
EXT_REQUIRES = EXT + "mapping-requires"
EXT_RANK = EXT + "pathway-rank"  # file order in concepts.yaml: first matching concept wins
ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
DEFAULT_CONCEPTS = Path(__file__).parent / "mappings" / "concepts.yaml"
_RANGE = re.compile(r"^([A-Z])(\d\d)-([A-Z])(\d\d)$")
_REGEX_PREFIX = re.compile(r"^\^\(\?i\)(.*)$")


def value_set_url(concept: str) -> str:
    return CANONICAL + concept


def _id(concept: str) -> str:
    return "spine-" + re.sub(r"[^A-Za-z0-9\-.]", "-", concept)


def _name(concept: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", concept) if p)


def range_categories(low: str, high: str) -> list[str]:
    """ICD-10 three-character categories from `low` to `high` inclusive (C77..C79)."""
    out = []
    for letter in range(ord(low[0]), ord(high[0]) + 1):
        for n in range(100):
            cat = f"{chr(letter)}{n:02d}"
            if low <= cat <= high:
                out.append(cat)
    return out


def _extensions(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    ext: list[dict[str, Any]] = []
    if raw.get("value") is not None:
        ext.append({"url": ORDINAL, "valueDecimal": raw["value"]})
    if raw.get("confidence") is not None:
        ext.append({"url": EXT_CONFIDENCE, "valueCode": str(raw["confidence"])})
    if raw.get("requires") is not None:
        ext.append({"url": EXT_REQUIRES, "valueCanonical": value_set_url(str(raw["requires"]))})
    return ext


def value_set(name: str, spec: Mapping[str, Any], systems: Mapping[str, str],
              version: str = "", rank: int = 0) -> dict[str, Any]:
    """One concept of concepts.yaml as a ValueSet (file order of its codes kept)."""
    includes: list[dict[str, Any]] = []
    for raw in spec.get("codes") or []:
        system = systems.get(str(raw["system"]), str(raw["system"]))
        ext = _extensions(raw)
        if "code" in raw:
            concept: dict[str, Any] = {"code": str(raw["code"])}
            if raw.get("display"):
                concept["display"] = str(raw["display"])
            if ext:
                concept["extension"] = ext
            last = includes[-1] if includes else None
            if last is not None and last["system"] == system and "concept" in last:
                last["concept"].append(concept)
            else:
                includes.append({"system": system, "concept": [concept]})
            continue
        if "prefix" in raw:
            filt = {"property": "code", "op": "regex",
                    "value": "^(?i)" + re.escape(str(raw["prefix"])) + ".*$"}
        elif "range" in raw:
            m = _RANGE.match(str(raw["range"]).upper())
            if not m:
                raise ValueError(f"{name}: range {raw['range']!r} is not like C81-C96")
            cats = range_categories(m.group(1) + m.group(2), m.group(3) + m.group(4))
            filt = {"property": "code", "op": "regex",
                    "value": "^(" + "|".join(cats) + ")(\\..*)?$"}
        elif "is-a" in raw:
            filt = {"property": "concept", "op": "is-a", "value": str(raw["is-a"])}
        else:
            raise ValueError(f"{name}: code entry needs code, prefix, range or is-a: {raw!r}")
        include: dict[str, Any] = {"system": system, "filter": [filt]}
        if ext:
            include["extension"] = ext
        includes.append(include)
    vs: dict[str, Any] = {
        "resourceType": "ValueSet",
        "id": _id(name),
        "extension": [{"url": EXT_ELEMENT, "valueCode": str(spec["element"])},
                      {"url": EXT_RANK, "valueInteger": rank}],
        "url": value_set_url(name),
    }
    if version:
        vs["version"] = version
    vs.update({
        "name": _name(name),
        "title": name,
        "status": "active",
        "publisher": "fhir-spine",
        "description": str(spec.get("meaning") or name),
        "compose": {"include": includes},
    })
    return vs


def value_sets(doc: Mapping[str, Any], version: str = "") -> list[dict[str, Any]]:
    systems = {str(k): str(v) for k, v in (doc.get("systems") or {}).items()}
    return [value_set(str(n), s, systems, version, rank)
            for rank, (n, s) in enumerate((doc.get("concepts") or {}).items())]


def _raw_from_ext(ext: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in ext:
        if e["url"] == ORDINAL:
            out["value"] = e["valueDecimal"]
        elif e["url"] == EXT_CONFIDENCE:
            out["confidence"] = e["valueCode"]
        elif e["url"] == EXT_REQUIRES:
            out["requires"] = e["valueCanonical"].removeprefix(CANONICAL)
    return out


def concept_documents(sets: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """ValueSets (as `value_sets` writes them) back to a concept document with full system
    URLs: `build_concept_map([concept_documents(value_sets(doc))])` equals the map of `doc`."""
    concepts: dict[str, Any] = {}

    def rank(vs: Mapping[str, Any]) -> int:
        return int(next(e["valueInteger"] for e in vs["extension"] if e["url"] == EXT_RANK))

    for vs in sorted(sets, key=rank):
        element = next(e["valueCode"] for e in vs["extension"] if e["url"] == EXT_ELEMENT)
        codes: list[dict[str, Any]] = []
        for inc in vs["compose"]["include"]:
            system = inc["system"]
            for c in inc.get("concept", []):
                raw: dict[str, Any] = {"system": system, "code": c["code"]}
                if c.get("display"):
                    raw["display"] = c["display"]
                raw.update(_raw_from_ext(c.get("extension", [])))
                codes.append(raw)
            for f in inc.get("filter", []):
                raw = {"system": system}
                if f["op"] == "is-a":
                    raw["is-a"] = f["value"]
                elif (m := _REGEX_PREFIX.match(f["value"])) is not None:
                    raw["prefix"] = re.sub(r"\\(.)", r"\1", m.group(1)).removesuffix(".*$")
                else:
                    cats = f["value"][2:].split(")")[0].split("|")
                    raw["range"] = f"{cats[0]}-{cats[-1]}"
                raw.update(_raw_from_ext(inc.get("extension", [])))
                codes.append(raw)
        concepts[vs["title"]] = {"element": element, "meaning": vs["description"],
                                 "codes": codes}
    return {"concepts": concepts}


def write(folder: Path, concepts_yaml: Path = DEFAULT_CONCEPTS) -> list[Path]:
    """Write one `ValueSet-<id>.json` per concept into `folder` (stale ones removed)."""
    from fhir_spine import __version__

    doc = yaml.safe_load(concepts_yaml.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("ValueSet-*.json"):
        old.unlink()
    paths = []
    for vs in value_sets(doc, __version__):
        path = folder / f"ValueSet-{vs['id']}.json"
        path.write_text(json.dumps(vs, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def load(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(folder.glob("ValueSet-*.json"))]


if __name__ == "__main__":  # python -m fhir_spine.valuesets profiles/valuesets
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "profiles/valuesets")
    print(f"{len(write(target))} ValueSets written to {target}")
