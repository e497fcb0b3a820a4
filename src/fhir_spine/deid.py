"""De-identified datasets: every column and manifest field by the rule it declares.

What `--pseudonymise` publishes, for `extract` and `refresh` alike (through
`dataset.deidentified`), so the two commands cannot de-identify differently. A pure
transformation of the contract's `Tables` and of a manifest, applied after the pathway
ran on the real data, so every rule sees the true dates and ids and only the published
dataset is de-identified.

Every column, manifest field and codebook column declares a rule in `schema.py`
(`schema.DEID_RULES`), and `Deidentifier` applies exactly those; a column without one
publishes nothing (`DeidentificationError`), a manifest field without one is left out.
Ids become pseudonyms and dates move by the patient's offset (`pseudonymise.py`, found
in free text by `known_ids.py`). Provenance (paths, file names, URLs with their
queries, positions) becomes keyed `src-<hex>` pseudonyms; source displays become the
mappings' standard text or are dropped; local codes and systems the mappings do not
name become keyed pseudonyms; server text is withheld. The mapping back (`origin_map`,
written by `write_origin_map`) is for the state folder, never the dataset.
`drop_raw_layer` removes what a `--bulk` export downloaded (identified data) after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from fhir_spine.errors import ExitCode, SpineError
from fhir_spine.known_ids import PATHLIKE, REDACTED, VALID_ID, Context, KnownIds, clip
from fhir_spine.pseudonymise import HEX_CHARS, key_id, keyed_digest, shift_date, shift_text
from fhir_spine.tables import Tables

DEID_MAP = "deid-map.json"  # the mapping back, in the state folder (OUT.state/)
PROVENANCE_PREFIX = "src"
CODE_PREFIX = "code"
SYSTEM_PREFIX = "urn:fhir-spine:system:"
OTHER = "[other]"
SERVER_TEXT_WITHHELD = "server message (OperationOutcome); its text is withheld in " \
                       "de-identified output"
TOP_CODED_AGE = 90  # Safe Harbor: ages over 89 are published as one group, "90 or older"

_PROVENANCE_DOMAIN = "fhir-spine/provenance/v1"
_CODE_DOMAIN = "fhir-spine/local-code/v1"
_SYSTEM_DOMAIN = "fhir-spine/local-system/v1"

# Terminologies whose codes name concepts, never people: kept under --pseudonymise even
# when no mapping names the code. Anything else is a site's local system.
STANDARD_SYSTEMS = (
    "http://snomed.info/sct", "http://loinc.org", "http://www.ama-assn.org/go/cpt",
    "http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-9-cm",
    "http://www.cms.gov/Medicare/Coding/ICD10", "http://www.whocc.no/atc",
    "http://www.nlm.nih.gov/research/umls/rxnorm", "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/", "http://unitsofmeasure.org",
    "http://fhir-spine.org/fhir/CodeSystem/spine-pathway",
)

# FHIR R4 status codes of the resources the pathway reads (Procedure, Encounter,
# Observation, DiagnosticReport, Condition, Medication*): the `vocabulary` rule.
FHIR_STATUSES = frozenset({
    "preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
    "entered-in-error", "unknown", "planned", "arrived", "triaged", "onleave", "finished",
    "cancelled", "registered", "partial", "preliminary", "final", "amended", "corrected",
    "appended", "active", "draft", "inactive", "recurrence", "relapse", "remission",
    "resolved", "intended", "received", "declined",
})

_CODED = re.compile(r"(?P<system>[^\s|,;'\"()]+)\|(?P<code>[^\s|,;'\"()]+)")


@lru_cache(maxsize=512)
def is_resource_type(name: str) -> bool:
    """A FHIR resource type name (fhir.resources knows it)."""
    if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", name):
        return False
    try:
        from fhir.resources import get_fhir_model_class

        get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return False
    return True


def is_standard_system(system: str) -> bool:
    return any(system == s or (s.endswith("/") and system.startswith(s))
               or system.startswith(s + "|") for s in STANDARD_SYSTEMS) \
        or system.startswith(("http://hl7.org/fhir/sid/icd-10",))


@dataclass
class DeidOptions:
    """What `--pseudonymise` was asked for."""

    key: bytes
    date_shift_days: int = 0
    top_code_ages: bool = False


class DeidentificationError(SpineError):
    """A column without a declared rule: a bug, nothing is published."""

    exit_code = ExitCode.INTERNAL


class Deidentifier:
    """Applies the rules `schema.py` declares for every column and manifest field.

    One instance per published dataset: `tables()` first (it learns the ids), then
    `manifest()`; `origin_map()` is the mapping back (provenance tokens, local codes and
    systems -> real values) for the state folder, never for the dataset.
    """

    def __init__(self, options: DeidOptions, mappings: Any = None, *,
                 extra_ids: Mapping[str, Iterable[str]] | None = None) -> None:
        self.options = options
        self.p = KnownIds(options.key, options.date_shift_days)
        self.mappings = mappings
        self.extra_ids = {t: [str(i) for i in ids] for t, ids in (extra_ids or {}).items()}
        self.origins: dict[str, str] = {}
        self.codes: dict[str, list[str]] = {}
        self.systems: dict[str, str] = {}
        self._sensitive: dict[str, str] = {}   # raw source text -> its replacement
        self._index: dict[str, list[str]] | None = None
        self._code_cache: dict[tuple[str, str], str] = {}
        self._named = self._named_codes(mappings)
        self._mapped_systems = {e.system for group in self._entries(mappings)
                                for e in group}
        self.dropped_fields: list[str] = []
        self._search_type = ""

    # -- mappings
    @staticmethod
    def _entries(mappings: Any) -> list[list[Any]]:
        if mappings is None:
            return []
        return list(mappings.concepts.entries.values())

    def _named_codes(self, mappings: Any) -> set[tuple[str, str]]:
        return {(e.system, e.code) for group in self._entries(mappings) for e in group
                if e.code is not None}

    def _mapping_names(self, system: str, code: str) -> bool:
        if (system, code) in self._named:
            return True
        if self.mappings is None:
            return False
        from fhir_spine.concepts import Coding

        coding = Coding(system, code)
        return any(e.code is None and e.matches(coding)
                   for group in self._entries(self.mappings) for e in group)

    # -- single values
    def provenance(self, origin: Any) -> Any:
        if origin is None or (not isinstance(origin, str) and pd.isna(origin)):
            return origin
        text = str(origin)
        if not text or _PROVENANCE_TOKEN.fullmatch(text):
            return text
        digest = keyed_digest(self.p.key, _PROVENANCE_DOMAIN, text).hex()[:HEX_CHARS]
        token = f"{PROVENANCE_PREFIX}-{digest}"
        self.origins.setdefault(token, text)
        return token

    def code(self, system: Any, code: Any) -> Any:
        if not isinstance(code, str) or not code:
            return code
        system = system if isinstance(system, str) else ""
        cached = self._code_cache.get((system, code))
        if cached is not None:
            return cached
        if is_standard_system(system) or self._mapping_names(system, code) \
                or _CODE_TOKEN.fullmatch(code):
            token = code
        else:
            digest = keyed_digest(self.p.key, _CODE_DOMAIN, system, code).hex()[:HEX_CHARS]
            token = f"{CODE_PREFIX}-{digest}"
            self.codes.setdefault(token, [system, code])
            self._note_sensitive(code, token)
        self._code_cache[(system, code)] = token
        return token

    def system(self, system: Any) -> Any:
        if not isinstance(system, str) or not system:
            return system
        if is_standard_system(system) or system in self._mapped_systems \
                or _SYSTEM_TOKEN.fullmatch(system):
            return system
        token = SYSTEM_PREFIX + keyed_digest(self.p.key, _SYSTEM_DOMAIN, system).hex()[:HEX_CHARS]
        self.systems.setdefault(token, system)
        self._note_sensitive(system, token)
        return token

    def display(self, concept: Any) -> Any:
        if not isinstance(concept, str) or not concept or self.mappings is None:
            return None
        return self.mappings.concepts.meanings.get(concept) or None

    def vocabulary(self, value: Any, column: str) -> Any:
        if not isinstance(value, str) or not value:
            return value
        known = is_resource_type(value) if column == "resource_type" \
            else value in FHIR_STATUSES
        return value if known else OTHER

    def age(self, value: Any) -> Any:
        if self.options.top_code_ages and value is not None and not pd.isna(value) \
                and int(value) > TOP_CODED_AGE - 1:
            return TOP_CODED_AGE
        return value

    def _coding(self, m: re.Match[str]) -> str:
        return f"{self.system(m.group('system'))}|{self.code(m.group('system'), m.group('code'))}"

    def _path_or_coding(self, m: re.Match[str]) -> str:
        coded = _CODED.fullmatch(m.group())
        return self._coding(coded) if coded else str(self.provenance(m.group()))

    def _note_sensitive(self, raw: str, replacement: str) -> None:
        if len(raw) >= 3 and raw not in self.p.types_of and raw not in self._sensitive:
            self._sensitive[raw] = replacement
            self._index = None

    def scrub(self, text: Any, ctx: Context | None = None, *, origin: str | None = None,
              server_text: bool = False) -> Any:
        """Tool-written text under the `scrub` rule (see schema.DEID_RULES)."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return text
        text = clip(str(text))
        if server_text:
            prefix = ""
            if origin and text.startswith(f"{origin}: "):
                prefix = f"{self.provenance(origin)}: "
            return prefix + SERVER_TEXT_WITHHELD
        if origin:
            text = text.replace(origin, str(self.provenance(origin)))
        text = PATHLIKE.sub(self._path_or_coding, text)
        text = _CODED.sub(self._coding, text)
        for raw in self._sensitive_in(text):
            if raw in text:
                text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(raw) + r"(?![A-Za-z0-9])",
                              self._sensitive[raw], text)
        return self.p.scrub_free_text(text, ctx or Context())

    def _sensitive_in(self, text: str) -> list[str]:
        """The raw source texts that may occur in `text`, longest first: looked up by
        their first word, so a message costs its length, not the number of codes."""
        if self._index is None:
            self._index = {}
            for raw in self._sensitive:
                first = _WORD.search(raw)
                self._index.setdefault(first.group() if first else "", []).append(raw)
        found = list(self._index.get("", ()))
        for word in set(_WORD.findall(text)):
            found += self._index.get(word, ())
        return sorted(set(found), key=len, reverse=True)

    # -- tables
    def tables(self, tables: Tables) -> Tables:
        from fhir_spine import schema

        for name, df in tables.items():
            columns = {c.name: c for c in schema.TABLES[name]}
            for column in df.columns:
                rule = columns[column].deid if column in columns else ""
                if rule not in schema.DEID_RULES:
                    raise DeidentificationError(
                        f"{name}.{column} has no de-identification rule in schema.py; "
                        "nothing published (a bug)")
        self.p.learn(tables)
        for rtype, ids in self.extra_ids.items():
            for original in ids:
                known = self.p.types_of.setdefault(original, [])
                if rtype not in known:
                    known.append(rtype)
        self.p.odd_ids = sorted((i for i in self.p.types_of if not VALID_ID.fullmatch(i)),
                                key=len, reverse=True)
        # raw source text that free text may quote: displays (never published), and the
        # local codes and systems the rules replace
        for df in (tables.events, tables.codes):
            for value in df["display"].dropna().unique():
                self._note_sensitive(str(value), REDACTED)
        for s, c in zip(tables.codes["system"], tables.codes["code"], strict=True):
            self.code(s, c)
            self.system(s)
        for s, c in zip(tables.events["code_system"], tables.events["code"], strict=True):
            self.code(s, c)
            self.system(s)
        out = {name: self._table(name, df) for name, df in tables.items()}
        return Tables(**out)

    def _table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        from fhir_spine import schema

        out = df.copy()
        rules = {c.name: c.deid for c in schema.TABLES[name]}
        types = _texts(df["resource_type"]) if "resource_type" in df else [None] * len(df)
        rids = _texts(df["resource_id"]) if "resource_id" in df else [None] * len(df)
        pids = _texts(df["patient_id"]) if "patient_id" in df else [None] * len(df)
        encs = _texts(df["encounter_id"]) if "encounter_id" in df else [None] * len(df)
        contexts = [Context(t or "", r or "", p or "", e or "")
                    for t, r, p, e in zip(types, rids, pids, encs, strict=True)]
        offsets = self.p.offsets(df["patient_id"]) if "patient_id" in df \
            and self.options.date_shift_days else [0] * len(df)
        for column in df.columns:
            rule, values = rules[column], df[column]
            new: list[Any]
            if rule == "keep":
                continue
            if rule == "pseudonym":
                rtype = {"patient_id": "Patient", "encounter_id": "Encounter"}.get(column)
                new = [self.p.pseudo(rtype if rtype else (t or ""), v)
                       for v, t in zip(values, types, strict=True)]
            elif rule == "date-shift":
                if not self.options.date_shift_days:
                    continue
                shift = shift_date if schema_dtype(name, column) == "date" else shift_text
                new = [shift(v, d) for v, d in zip(values, offsets, strict=True)]
            elif rule == "age":
                new = [self.age(v) for v in values]
            elif rule == "provenance":
                new = [self.provenance(v) for v in values]
            elif rule == "scrub":
                origins = _texts(df["origin"]) if "origin" in df else [None] * len(df)
                server = [c == "operation-outcome" for c in df["code"]] \
                    if name == "issues" else [False] * len(df)
                new = [self.scrub(v, ctx, origin=o, server_text=s) for v, ctx, o, s in zip(
                    values, contexts, origins, server, strict=True)]
            elif rule == "vocabulary":
                new = [self.vocabulary(v, column) for v in values]
            elif rule == "code":
                systems = df["code_system" if "code_system" in df else "system"]
                new = [self.code(s, v) for s, v in zip(systems, values, strict=True)]
            elif rule == "code-system":
                new = [self.system(v) for v in values]
            elif rule == "display":
                new = [self.display(c) for c in df["concept"]]
            elif rule == "drop":
                new = [None] * len(df)
            else:  # checked in tables(); a manifest-only rule on a column is a bug too
                raise DeidentificationError(f"{name}.{column}: rule {rule!r} is not one "
                                            "a column can have")
            out[column] = pd.Series(new, index=df.index,
                                    dtype="object" if str(values.dtype) == "object"
                                    else values.dtype)
        return out

    # -- manifest
    def manifest(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        from fhir_spine import schema

        patterns = [schema._pattern(c.name) for c in schema.MANIFEST]

        def declared_below(path: tuple[str, ...]) -> bool:
            return any(len(p) > len(path) and all(a in ("*", b) for a, b in zip(
                p, path, strict=False)) for p in patterns)

        def walk(value: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
            if isinstance(value, Mapping) and isinstance(value.get("resource_type"), str):
                self._search_type = value["resource_type"]  # a search record: its `_id`s
            if isinstance(value, Mapping) and (not path or declared_below(path)):
                return True, {k: v for k, (keep, v) in
                              ((k, walk(v, (*path, str(k)))) for k, v in value.items())
                              if keep}
            if isinstance(value, list) and declared_below(path):
                return True, [v for keep, v in (walk(x, (*path, "[]")) for x in value)
                              if keep]
            rule = schema.deid_rule(path)
            if rule is None or rule == "drop":
                if rule is None:
                    self.dropped_fields.append(".".join(path))
                return False, None
            return True, self._manifest_value(rule, value, path)

        _, out = walk(dict(manifest), ())
        out["pseudonymisation"] = {
            "method": "HMAC-SHA256", "key_id": key_id(self.p.key),
            "pseudonym_hex_digits": HEX_CHARS,
            "date_shift_days": int(self.options.date_shift_days),
            "ages_top_coded_at": TOP_CODED_AGE if self.options.top_code_ages else None,
            "rules": "every column and manifest field by its declared rule: see the "
                     "codebook's deid column",
            "free_text": "ids replaced; file names, URLs and positions replaced by "
                         "provenance pseudonyms; quoted values redacted; dates replaced by "
                         "[date]; source displays and local codes never published; server "
                         "messages withheld",
            "birth_dates": "not output (age at the index biopsy only)",
            **({"fields_not_published": sorted(set(self.dropped_fields))}
               if self.dropped_fields else {}),
        }
        return out

    def _manifest_value(self, rule: str, value: Any, path: tuple[str, ...]) -> Any:
        if rule == "keep":
            return value
        if isinstance(value, list):
            if rule == "withhold":
                return len(value)
            if rule == "ids" and path[-1] == "params":
                return [self._param(pair, path) for pair in value]
            return [self._manifest_value(rule, v, path) for v in value]
        if isinstance(value, Mapping):
            return {k: self._manifest_value(rule, v, (*path, str(k))) for k, v in value.items()}
        if not isinstance(value, str):
            return value if rule != "withhold" else 1
        if rule == "provenance":
            if value.startswith("fhir_spine/mappings/"):
                return value  # a default mapping file: package data, the same everywhere
            return self.provenance(value)
        if rule == "pseudonym":
            return self.p.pseudo("Group" if path[-1] == "group_id" else "", value)
        if rule == "ids":
            rtype = path[-1] if is_resource_type(path[-1]) else "Patient"
            return ",".join(self._id(piece, rtype) for piece in value.split(","))
        if rule == "vocabulary":
            return self.vocabulary(value, "resource_type")
        if rule == "withhold":
            return 1
        return self.scrub(value)  # scrub

    def _id(self, piece: str, rtype: str) -> str:
        kind, slash, rest = piece.partition("/")
        if slash and is_resource_type(kind) and rest:
            return f"{kind}/{self.p.pseudo(kind, rest)}"
        return str(self.p.pseudo(rtype, piece)) if piece else piece

    def _param(self, pair: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            return self.scrub(str(pair))
        name, value = str(pair[0]), str(pair[1])
        base = name.split(":")[0]
        if base in ("_id", "patient", "subject", "encounter", "_has"):
            rtype = {"patient": "Patient", "subject": "Patient",
                     "encounter": "Encounter"}.get(base, "")
            if base == "_id":
                rtype = self._search_type if is_resource_type(self._search_type) else ""
            return [name, ",".join(self._id(v, rtype or self._type_of(v)) for v in
                                   value.split(","))]
        if base in ("code", "_elements", "_count", "_lastUpdated", "_type", "_since",
                    "_include", "_revinclude", "_sort", "_total", "_summary", "status",
                    "category"):
            return [name, value]
        return [name, self.scrub(value)]

    def _type_of(self, original: str) -> str:
        types = self.p.types_of.get(original)
        return types[0] if types else "Patient"

    def origin_map(self) -> dict[str, Any]:
        return {"note": "fhir-spine de-identification: pseudonyms of provenance, local codes "
                        "and local systems -> the real values. Identified data: keep it with "
                        "the state, owner-only, never with the dataset.",
                "key_id": key_id(self.p.key),
                "origins": dict(sorted(self.origins.items())),
                "local_codes": dict(sorted(self.codes.items())),
                "local_systems": dict(sorted(self.systems.items()))}


def _texts(column: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in column]


_WORD = re.compile(r"[A-Za-z0-9]+")
_PROVENANCE_TOKEN = re.compile(PROVENANCE_PREFIX + r"-[0-9a-f]{" + str(HEX_CHARS) + r"}")
_CODE_TOKEN = re.compile(CODE_PREFIX + r"-[0-9a-f]{" + str(HEX_CHARS) + r"}")
_SYSTEM_TOKEN = re.compile(re.escape(SYSTEM_PREFIX) + r"[0-9a-f]{" + str(HEX_CHARS) + r"}")


def schema_dtype(table: str, column: str) -> str:
    from fhir_spine import schema

    return next(c.dtype for c in schema.TABLES[table] if c.name == column)


def drop_raw_layer(folder: Path, *, keep: bool) -> None:
    """After a successful pseudonymised `--bulk` run the export's job folder (the raw
    NDJSON: identified data) is deleted, unless `--keep-raw`: then stderr says where it
    is. Only what an export job holds is removed (`job.json` and its file folders)."""
    import shutil
    import sys

    from fhir_spine.sources.bulk.job import FOLDERS, JOB_FILE

    if not folder.is_dir():
        return
    if keep:
        print(f"fhir-spine: --keep-raw: the raw export in {folder.absolute()} holds "
              "identified data (names, identifiers); delete it when done", file=sys.stderr)
        return
    for name in FOLDERS.values():
        shutil.rmtree(folder / name, ignore_errors=True)
    (folder / JOB_FILE).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else is in there: not ours to delete
    print(f"fhir-spine: deleted the raw export {folder.absolute()} (identified data; "
          "--keep-raw keeps it)", file=sys.stderr)


def write_origin_map(path: Path, data: Mapping[str, Any]) -> None:
    """The mapping back, owner-only (0600 in a 0700 folder), replaced atomically."""
    import json
    import os

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
