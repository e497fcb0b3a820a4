"""The conformance resources of what the adapter expects: the project CodeSystem, grouping
ValueSets and StructureDefinitions (FHIR R4 4.0.1, differential only), generated from
`mappings/concepts.yaml`.

`concepts.yaml` stays the one source of truth (as for `valuesets.py`): the CodeSystem lists
its `local` codes with each concept's `meaning` as the definition; the profiles bind the
concept ValueSets by their canonical URLs; value ranges are read from the meanings ("SINS
total 0-18"). `profiles/` holds what `write` generates (`python -m fhir_spine.conformance
profiles`) and `tests/test_conformance.py` fails when they disagree. The concept ValueSets
themselves are `valuesets.py`'s (`profiles/valuesets/`).

Profiles are built on core R4 (not US Core, which mCODE STU4 builds on): the US Core 6.1.0
package is not available to the test server, and the pathway needs nothing US Core adds.
They are as permissive as the pathway is (any value form it reads is allowed), and strict
where the pathway would otherwise silently drop a record (a biopsy without a vertebral
level, a score out of its range, a component it cannot name).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fhir_spine import valuesets

SD_BASE = "http://fhir-spine.org/fhir/StructureDefinition/"
CORE = "http://hl7.org/fhir/StructureDefinition/"
LOCAL_ALIAS = "local"
LOCAL_SYSTEM = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
FHIR_VERSION = "4.0.1"
_RANGE = re.compile(r"\b(\d+)-(\d+)\b")


@dataclass(frozen=True)
class Group:
    """A ValueSet of this module: the union of concept ValueSets (`include.valueSet`)."""

    name: str  # canonical tail, never a concept name
    title: str
    concepts: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    """One StructureDefinition: `code` binds `code_set` (a concept or a Group name);
    `concepts` are the concepts whose resources are validated against it (selection by
    code, `conformance_check.profile_for`); `components` are the component slices."""

    id: str
    type: str
    title: str
    description: str
    code_set: str
    concepts: tuple[str, ...]
    components: tuple[str, ...] = ()
    body_site: bool = False  # bodySite 1..*, bound to the vertebral levels


SINS_COMPONENTS = ("sins_location", "sins_pain", "sins_bone_lesion", "sins_alignment",
                   "sins_collapse", "sins_posterolateral")
SOSGOQ_DOMAINS = ("sosgoq_physical", "sosgoq_pain", "sosgoq_mental", "sosgoq_social")

GROUPS = (
    Group("sins-codes", "SINS total and its six components", ("sins_total", *SINS_COMPONENTS)),
    Group("sosgoq-codes", "SOSGOQ2.0 total and its four domains",
          ("sosgoq_total", *SOSGOQ_DOMAINS)),
    # The name `requires: vertebral-body-site` uses in concepts.yaml: every body-site concept.
    Group("vertebral-body-site", "A vertebral level C1-S", ()),
)

# Why a SINS component may be its own Observation: the demo cohort (and EHR flowsheets)
# record each SINS item and each SOSGOQ2.0 domain as its own Observation, and the pathway
# reads both forms (normalise: one measurement per mapped component or Observation), so
# the profile accepts the total with component slices and a single item alike.
PROFILES = (
    Profile("spine-sins", "Observation", "SINS Observation",
            "Spinal Instability Neoplastic Score: the total (0-18) with its six components as "
            "component slices, or one component recorded as its own Observation. The "
            "pathway reads the total (baseline and at diagnosis) and each component.",
            "sins-codes", ("sins_total", *SINS_COMPONENTS), SINS_COMPONENTS),
    Profile("spine-sosgoq", "Observation", "SOSGOQ2.0 Observation",
            "Spine Oncology Study Group Outcomes Questionnaire 2.0: the total (0-100) with "
            "its four domains as component slices, or one domain as its own Observation.",
            "sosgoq-codes", ("sosgoq_total", *SOSGOQ_DOMAINS), SOSGOQ_DOMAINS),
    Profile("spine-pain-score", "Observation", "Pain score Observation",
            "Pain intensity on the study's 0-10 scale (VAS; an NRS or LOINC 0-10 answer is "
            "accepted): the `vas` measure.", "vas", ("vas",)),
    Profile("spine-vertebral-biopsy", "Procedure", "Vertebral biopsy Procedure",
            "Percutaneous core-needle biopsy of a vertebra: the index biopsy (first "
            "completed) or a repeat biopsy; bodySite names the vertebral levels of the "
            "lesion.", "vertebral-biopsy", ("vertebral-biopsy",), body_site=True),
    Profile("spine-stabilization", "Procedure", "Stabilization Procedure",
            "Percutaneous pedicle screw-rod fixation; bodySite lists every instrumented "
            "level (construct length = distinct levels).", "stabilization",
            ("stabilization",), body_site=True),
)


def profile_url(profile_id: str) -> str:
    return SD_BASE + profile_id


def _version() -> str:
    from fhir_spine import __version__

    return __version__


def _doc(concepts_yaml: Path = valuesets.DEFAULT_CONCEPTS) -> dict[str, Any]:
    doc = yaml.safe_load(concepts_yaml.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{concepts_yaml}: not a concepts document")
    return doc


def value_range(concept: str, meaning: str) -> tuple[int, int]:
    """The `low-high` range a score concept's meaning states (the last one in it)."""
    found = _RANGE.findall(meaning)
    if not found:
        raise ValueError(f"concept {concept}: its meaning states no range like 0-18: "
                         f"{meaning!r}")
    low, high = found[-1]
    return int(low), int(high)


def code_system(doc: Mapping[str, Any], version: str = "") -> dict[str, Any]:
    """The project CodeSystem: every `local` code of concepts.yaml, in file order, with
    the meaning of the (first) concept that lists it as its definition."""
    concepts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, spec in (doc.get("concepts") or {}).items():
        for raw in spec.get("codes") or []:
            if raw.get("system") != LOCAL_ALIAS or "code" not in raw or raw["code"] in seen:
                continue
            seen.add(str(raw["code"]))
            meaning = str(spec.get("meaning") or name)
            concept: dict[str, Any] = {"code": str(raw["code"])}
            # No display unless concepts.yaml gives one: a validator compares the
            # sender's display with the CodeSystem's and warns on every difference, and
            # the meaning ("SINS total 0-18") is a definition, not what senders display.
            if raw.get("display"):
                concept["display"] = str(raw["display"])
            concept["definition"] = f"{meaning} (pathway concept {name})"
            concepts.append(concept)
    cs: dict[str, Any] = {"resourceType": "CodeSystem", "id": "spine-pathway",
                          "url": LOCAL_SYSTEM}
    if version:
        cs["version"] = version
    cs.update({
        "name": "SpinePathway", "title": "fhir-spine pathway codes", "status": "active",
        "publisher": "fhir-spine",
        "description": "Codes of the spinal-oncology care pathway that no standard code "
        "system has (SINS, SOSGOQ2.0, local procedure and finding codes); generated from "
        "mappings/concepts.yaml.",
        "caseSensitive": True, "content": "complete", "count": len(concepts),
        "concept": concepts,
    })
    return cs


def _group_concepts(group: Group, doc: Mapping[str, Any]) -> tuple[str, ...]:
    if group.concepts:
        return group.concepts
    return tuple(n for n, s in (doc.get("concepts") or {}).items()
                 if s.get("element") == "body-site")


def group_value_set(group: Group, doc: Mapping[str, Any], version: str = "") -> dict[str, Any]:
    names = _group_concepts(group, doc)
    known = doc.get("concepts") or {}
    if group.name in known:
        raise ValueError(f"ValueSet {group.name} would hide the concept of that name")
    missing = [n for n in names if n not in known]
    if missing or not names:
        raise ValueError(f"ValueSet {group.name}: concepts.yaml has no {missing or 'members'}")
    vs: dict[str, Any] = {"resourceType": "ValueSet", "id": "spine-" + group.name,
                          "url": valuesets.value_set_url(group.name)}
    if version:
        vs["version"] = version
    vs.update({
        "name": valuesets._name(group.name), "title": group.name,  # noqa: SLF001
        "status": "active", "publisher": "fhir-spine",
        "description": f"{group.title}: the union of the concept ValueSets "
        + ", ".join(names),
        "compose": {"include": [{"valueSet": [valuesets.value_set_url(n)]} for n in names]},
    })
    return vs


def _single_code(doc: Mapping[str, Any], concept: str) -> dict[str, str]:
    """The one exact code of a concept, for a component slice's pattern."""
    systems = {str(k): str(v) for k, v in (doc.get("systems") or {}).items()}
    codes = [c for c in doc["concepts"][concept].get("codes") or [] if "code" in c]
    if len(codes) != 1:
        raise ValueError(f"concept {concept}: a component slice needs exactly one code, "
                         f"concepts.yaml has {len(codes)}")
    return {"system": systems.get(str(codes[0]["system"]), str(codes[0]["system"])),
            "code": str(codes[0]["code"])}


def _value_in(low: int, high: int) -> str:
    """FHIRPath: the number of value[x], when it is one, lies in [low, high]. Only the
    integer and Quantity forms are checked; the other forms the pathway reads (coded
    answers, numeric strings) are checked by the pathway itself."""
    return (f"(value.ofType(integer) | value.ofType(Quantity).value)"
            f".all($this >= {low} and $this <= {high})")


def _codes_of(doc: Mapping[str, Any], concept: str) -> str:
    systems = {str(k): str(v) for k, v in (doc.get("systems") or {}).items()}
    parts = [f"(system = '{systems.get(str(c['system']), str(c['system']))}' and "
             f"code = '{c['code']}')"
             for c in doc["concepts"][concept].get("codes") or [] if "code" in c]
    if not parts:
        raise ValueError(f"concept {concept}: no exact code to select its range by")
    return " or ".join(parts)


def _code_strength(doc: Mapping[str, Any], profile: Profile) -> str:
    """`required` when every code of the bound concepts is the project's own (the server
    holds that CodeSystem: `validate` stores it); `extensible` when some are LOINC, CPT,
    ICD-10-PCS or SNOMED CT codes. A server without those code systems (HAPI as shipped)
    cannot check a code against a required binding and calls every such resource an error
    ("CodeSystem is unknown"); the profile is chosen by the concept map's lookup of that
    very code, so the membership a required binding would check is already known."""
    names = [profile.code_set] if profile.code_set in (doc.get("concepts") or {}) \
        else list(next(g.concepts for g in GROUPS if g.name == profile.code_set))
    systems = {str(c.get("system")) for n in names
               for c in doc["concepts"][n].get("codes") or []}
    return "required" if systems == {LOCAL_ALIAS} else "extensible"


def structure_definition(profile: Profile, doc: Mapping[str, Any],
                         version: str = "") -> dict[str, Any]:
    """One profile as a differential StructureDefinition on the core R4 type."""
    concepts = doc.get("concepts") or {}
    t = profile.type
    url = profile_url(profile.id)
    root: dict[str, Any] = {"id": t, "path": t}
    elements: list[dict[str, Any]] = [root]
    if t == "Observation":
        constraints = []
        for n, concept in enumerate(profile.concepts, start=1):
            low, high = value_range(concept, str(concepts[concept].get("meaning") or ""))
            constraints.append({
                "key": f"{profile.id}-{n}", "severity": "error",
                "human": f"{concept}: the value is {low}-{high} "
                f"({concepts[concept].get('meaning')})",
                "expression": f"code.coding.where({_codes_of(doc, concept)}).exists() "
                f"implies {_value_in(low, high)}",
                "source": url})
        root["constraint"] = constraints
    elements.append({"id": f"{t}.code", "path": f"{t}.code",
                     "short": "a code the pathway maps to this profile's concepts",
                     "binding": {"strength": _code_strength(doc, profile),
                                 "valueSet": valuesets.value_set_url(profile.code_set)}})
    elements.append({"id": f"{t}.subject", "path": f"{t}.subject", "min": 1,
                     "short": "the patient (the pathway sets aside a record without one)",
                     "type": [{"code": "Reference", "targetProfile": [CORE + "Patient"]}]})
    if profile.components:
        elements.append({"id": f"{t}.component", "path": f"{t}.component",
                         "slicing": {"discriminator": [{"type": "pattern", "path": "code"}],
                                     "ordered": False, "rules": "closed"},
                         "short": "components the pathway names; no others"})
        for concept in profile.components:
            low, high = value_range(concept, str(concepts[concept].get("meaning") or ""))
            slice_id = f"{t}.component:{concept}"
            elements.append({
                "id": slice_id, "path": f"{t}.component", "sliceName": concept,
                "short": str(concepts[concept].get("meaning") or concept),
                "min": 0, "max": "1",
                "constraint": [{
                    "key": f"{profile.id}-{concept.replace('_', '-')}", "severity": "error",
                    "human": f"{concept}: the component value is {low}-{high}",
                    "expression": _value_in(low, high), "source": url}]})
            elements.append({"id": f"{slice_id}.code", "path": f"{t}.component.code",
                             "patternCodeableConcept": {"coding": [_single_code(doc, concept)]}})
    if profile.body_site:
        elements.append({"id": f"{t}.bodySite", "path": f"{t}.bodySite", "min": 1,
                         "short": "the vertebral levels (C1-S)",
                         "binding": {"strength": "required",
                                     "valueSet": valuesets.value_set_url(
                                         "vertebral-body-site")}})
    sd: dict[str, Any] = {"resourceType": "StructureDefinition", "id": profile.id, "url": url}
    if version:
        sd["version"] = version
    sd.update({
        "name": valuesets._name(profile.id), "title": profile.title,  # noqa: SLF001
        "status": "active", "publisher": "fhir-spine", "description": profile.description,
        "fhirVersion": FHIR_VERSION, "kind": "resource", "abstract": False, "type": t,
        "baseDefinition": CORE + t, "derivation": "constraint",
        "differential": {"element": elements},
    })
    return sd


def resources(doc: Mapping[str, Any] | None = None, version: str | None = None
              ) -> list[dict[str, Any]]:
    """CodeSystem, grouping ValueSets, StructureDefinitions (the files of `profiles/`)."""
    doc = _doc() if doc is None else doc
    version = _version() if version is None else version
    return [code_system(doc, version),
            *(group_value_set(g, doc, version) for g in GROUPS),
            *(structure_definition(p, doc, version) for p in PROFILES)]


def all_resources() -> list[dict[str, Any]]:
    """What a server needs to validate against the profiles: these and the concept
    ValueSets, in the order to store them (code system, value sets, profiles)."""
    doc = _doc()
    mine = resources(doc)
    return [mine[0], *valuesets.value_sets(doc, _version()), *mine[1:]]


def file_name(resource: Mapping[str, Any]) -> str:
    return f"{resource['resourceType']}-{resource['id']}.json"


_OWNED = ("CodeSystem-*.json", "ValueSet-*.json", "StructureDefinition-*.json")


def write(folder: Path, concepts_yaml: Path = valuesets.DEFAULT_CONCEPTS) -> list[Path]:
    """Write the resources into `folder` (stale ones of these kinds removed; the concept
    ValueSets in `folder/valuesets/` and the examples are not this module's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in _OWNED:
        for old in folder.glob(pattern):
            old.unlink()
    paths = []
    for resource in resources(_doc(concepts_yaml)):
        path = folder / file_name(resource)
        path.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m fhir_spine.conformance profiles
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "profiles")
    print(f"{len(write(target))} conformance resources written to {target}")
