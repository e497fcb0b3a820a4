"""Per-patient recomputation and the assembly of a dataset from per-patient rows.

The pathway is strictly per patient (`pathway.classify.reconstruct` sees one patient's
records), so a refresh recomputes only the patients whose resources changed. The unit
of recomputation is the patient compartment as the views see it: the Patient itself and
every resource whose `patient_ref` names it. Two more units hold what belongs to no
patient: `#medications` (every Medication) and `#unlinked` (resources with no usable
patient reference, or of a type no view reads); `#run` holds the problems met while
reading this run's changes (unreadable lines, export error files).

A unit is computed by running the ordinary pipeline (`pipeline.extract` then
`tables.build_tables`) on the unit's resources plus the Medications they reference, so
the rules, validation and issue texts are exactly those of `fhir-spine extract`. Its
rows are kept in the store:

- `patients`, `events`, `observations`: every row (they all belong to the patient);
- `issues`: every row except those about Medication resources (the `#medications` unit
  owns those, once);
- its code tally (resources per code, the patient) and its accounting, less the
  Medications it only borrowed.

How unchanged patients' rows are carried over: the new dataset is the concatenation of
every unit's stored rows, recomputed units replaced, in patient-id order; `patients`
and `events` then come out in the order a full extraction writes them (patients sorted
by id, each patient's events in decision order), `observations` are sorted as
`build_tables` sorts them, `issues` by patient, resource, code and message, and `codes`
is re-aggregated from the per-unit tallies (resources summed, patients counted once)
and sorted as `build_tables` sorts it. `#medications` is finished at assembly time
because whether a Medication is used depends on all orders: referenced ones are `used`,
the others get the `unreferenced-medication` issue, exactly as in `pipeline._account`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import pandas as pd

from fhir_spine import schema
from fhir_spine.normalise import Normaliser
from fhir_spine.pipeline import Accounting, Extraction, extract
from fhir_spine.settings import Mappings
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem
from fhir_spine.sources.rest import MEDICATION_USERS, reference_id
from fhir_spine.tables import Tables, build_tables, frame
from fhir_spine.validate import Mode
from fhir_spine.views.runner import compile_view

from .store import MEDS, RUN, UNLINKED, RawStore

ROW_TABLES = ("patients", "events", "observations", "issues")
_DATE_COLUMNS = {name: [c.name for c in cols if c.dtype == "date"]
                 for name, cols in schema.TABLES.items()}


class UnitResolver:
    """Which unit a resource belongs to, and which Medication it references, as the
    views read them (the same `patient_ref` / `medication_ref` the normaliser uses)."""

    def __init__(self, mappings: Mappings) -> None:
        self.views = {t: compile_view(v) for t, v in mappings.views.items()}

    def unit_of(self, resource: dict[str, Any]) -> tuple[str, str | None]:
        rtype = str(resource.get("resourceType"))
        if rtype == "Medication":
            return MEDS, None
        if rtype == "Patient":
            return str(resource.get("id")), None
        view = self.views.get(rtype)
        if view is None:
            return UNLINKED, None
        try:
            rows = view.rows(resource)
        except Exception:  # noqa: BLE001 - the pipeline reports the failure in `issues`
            rows = []
        row = rows[0] if rows else {}
        ref = row.get("patient_ref")
        medication: str | None = None
        if rtype in MEDICATION_USERS:
            medication = str(row.get("medication_ref") or "") or reference_id(
                (resource.get("medicationReference") or {}).get("reference"), "Medication")
        return (str(ref) if ref else UNLINKED), medication or None


@dataclass
class UnitResult:
    """What one unit contributes to the dataset (stored as one JSON blob)."""

    unit: str
    rows: dict[str, list[dict[str, Any]]]
    codes: list[dict[str, Any]]
    referenced_medications: list[str]
    accounting: dict[str, Any]
    read_by_type: dict[str, int]
    present_medications: list[str] = field(default_factory=list)  # #medications only

    def to_blob(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_blob(cls, data: bytes) -> UnitResult:
        raw = orjson.loads(data)
        for name, records in raw["rows"].items():
            for column in _DATE_COLUMNS.get(name, ()):
                for record in records:
                    value = record.get(column)
                    if isinstance(value, str):
                        record[column] = date.fromisoformat(value)
        return cls(**raw)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as plain Python values (NA -> None), ready for JSON.

    Column-wise `tolist()` (nullable arrays give Python ints, floats, bools and `pd.NA`)
    is much faster than converting the frame to object dtype."""
    if df.empty:
        return []
    columns = [(name, df[name].tolist()) for name in df.columns]
    out: list[dict[str, Any]] = []
    for i in range(len(df)):
        record: dict[str, Any] = {}
        for name, values in columns:
            value = values[i]
            if value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value):
                value = None
            record[name] = value
        out.append(record)
    return out


# Units per `build_tables` call: a table build has a fixed cost (~0.1 s of pandas), so
# units are extracted one by one (their code tallies and accounting must stay apart)
# but their rows are tabulated together and split again by patient.
TABULATE_BATCH = 200


def compute_units(units: Iterable[str], store: RawStore, mappings: Mappings,
                  validation: Mode) -> dict[str, UnitResult | None]:
    """Recompute units from the store; None for a unit that has no resources any more."""
    out: dict[str, UnitResult | None] = {}
    pending: list[tuple[str, Extraction, set[str]]] = []
    for unit in units:
        resources = list(store.resources_of(unit))
        if not resources:
            out[unit] = None
            continue
        if unit == MEDS:
            out[unit] = _medications_unit(resources, mappings, validation)
            continue
        items: list[SourceItem] = [RawResource(r, o) for r, o in resources]
        meds = list(store.resources_by_id("Medication", store.medications_of(unit)))
        items += [RawResource(r, o) for r, o in meds]
        pending.append((unit, extract(items, mappings, validation=validation),
                        {str(r["id"]) for r, _ in meds}))
        if len(pending) >= TABULATE_BATCH:
            out.update(_tabulate(pending, mappings))
            pending = []
    if pending:
        out.update(_tabulate(pending, mappings))
    return out


def _tabulate(pending: list[tuple[str, Extraction, set[str]]], mappings: Mappings
              ) -> dict[str, UnitResult]:
    """One `build_tables` over several units' extractions, rows split back per unit."""
    combined = Extraction([], {}, Normaliser(mappings.concepts, mappings.settings),
                          Counter(), Accounting())
    issue_owner: list[str] = []
    for unit, extraction, _ in pending:
        combined.results.extend(extraction.results)
        combined.inputs.update(extraction.inputs)
        combined.normaliser.measurement_rows.extend(extraction.normaliser.measurement_rows)
        combined.normaliser.issues.extend(extraction.normaliser.issues)
        issue_owner += [unit] * len(extraction.normaliser.issues)
    tables = build_tables(combined)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        unit: {name: [] for name in ROW_TABLES} for unit, _, _ in pending}
    for name in ("patients", "events", "observations"):
        for record in records(getattr(tables, name)):
            rows[str(record["patient_id"])][name].append(record)
    for owner, record in zip(issue_owner, records(tables.issues), strict=True):
        if record.get("resource_type") != "Medication":
            rows[owner]["issues"].append(record)

    out: dict[str, UnitResult] = {}
    for unit, extraction, med_ids in pending:
        norm = extraction.normaliser
        tally = norm.codes
        codes = [{"key": list(k), "display": tally.displays.get(k), "resources": n,
                  "patients": sorted(tally.patients.get(k, ())),
                  "concept": tally.concepts.get(k)} for k, n in tally.resources.items()]
        used_meds = len(med_ids & norm.referenced_medications & set(norm.medications))
        acc = extraction.accounting
        accounting = {"read": acc.read - len(med_ids), "used": acc.used - used_meds,
                      "set_aside": acc.set_aside - (len(med_ids) - used_meds),
                      "unaccounted": list(acc.unaccounted)}
        read_by_type = dict(extraction.read_by_type)
        if med_ids:
            left = read_by_type.get("Medication", 0) - len(med_ids)
            if left > 0:
                read_by_type["Medication"] = left
            else:
                read_by_type.pop("Medication", None)
        out[unit] = UnitResult(unit, rows[unit], codes, sorted(norm.referenced_medications),
                               accounting, read_by_type)
    return out


def _medications_unit(resources: list[tuple[dict[str, Any], str]], mappings: Mappings,
                      validation: Mode) -> UnitResult:
    extraction = extract([RawResource(r, o) for r, o in resources], mappings,
                         validation=validation)
    tables = build_tables(extraction)
    acc = extraction.accounting
    return UnitResult(MEDS, {"issues": records(tables.issues)}, [], [],
                      {"read": acc.read, "used": 0, "set_aside": acc.read,
                       "unaccounted": []}, dict(extraction.read_by_type),
                      sorted(extraction.normaliser.medications))


def compute_run_unit(problems: list[ReadProblem], mappings: Mappings) -> UnitResult:
    """The problems met reading this run's input: one `issues` row each."""
    extraction = extract(list(problems), mappings)
    acc = extraction.accounting
    return UnitResult(RUN, {"issues": records(build_tables(extraction).issues)}, [], [],
                      {"read": acc.read, "used": acc.used, "set_aside": acc.set_aside,
                       "unaccounted": []}, {})


@dataclass
class Assembled:
    tables: Tables
    accounting: Accounting
    read_by_type: Counter[str]
    units: int


def assemble(results: Iterable[UnitResult]) -> Assembled:
    """Every unit's rows -> the dataset's tables (see the module docstring for order)."""
    by_unit = {r.unit: r for r in results}
    patient_units = sorted(u for u in by_unit if not u.startswith("#"))
    order = patient_units + [u for u in (UNLINKED, RUN) if u in by_unit]
    referenced: set[str] = set()
    for r in by_unit.values():
        referenced.update(r.referenced_medications)
    collected: dict[str, list[dict[str, Any]]] = {name: [] for name in ROW_TABLES}
    accounting = Accounting()
    read_by_type: Counter[str] = Counter()
    for unit in order:
        result = by_unit[unit]
        for name in ROW_TABLES:
            collected[name].extend(result.rows.get(name, ()))
        accounting.read += int(result.accounting["read"])
        accounting.used += int(result.accounting["used"])
        accounting.set_aside += int(result.accounting["set_aside"])
        accounting.unaccounted += list(result.accounting.get("unaccounted") or ())
        read_by_type.update(result.read_by_type)
    meds = by_unit.get(MEDS)
    if meds is not None:
        present = set(meds.present_medications)
        used = len(present & referenced)
        collected["issues"].extend(
            r for r in meds.rows.get("issues", ())
            if not (r.get("code") == "unreferenced-medication"
                    and r.get("resource_id") in referenced))
        accounting.read += int(meds.accounting["read"])
        accounting.used += used
        accounting.set_aside += int(meds.accounting["read"]) - used
        read_by_type.update(meds.read_by_type)

    patients = frame(collected["patients"], schema.PATIENTS)
    events = frame(collected["events"], schema.EVENTS)
    observations = frame(collected["observations"], schema.OBSERVATIONS)
    if len(observations):
        observations = observations.sort_values(
            ["patient_id", "measure", "effective_date", "resource_id"], kind="stable",
            na_position="last").reset_index(drop=True)
    issues = frame(collected["issues"], schema.ISSUES)
    if len(issues):
        issues = issues.sort_values(
            ["patient_id", "resource_type", "resource_id", "code", "message", "origin"],
            kind="stable", na_position="first").reset_index(drop=True)
    codes = _codes(by_unit[u] for u in order)
    return Assembled(Tables(patients, events, observations, issues, codes), accounting,
                     read_by_type, len(by_unit))


def _codes(results: Iterable[UnitResult]) -> pd.DataFrame:
    resources: Counter[tuple[str, ...]] = Counter()
    patients: dict[tuple[str, ...], set[str]] = {}
    displays: dict[tuple[str, ...], str] = {}
    concepts: dict[tuple[str, ...], str] = {}
    for result in results:
        for entry in result.codes:
            key = tuple(entry["key"])
            resources[key] += int(entry["resources"])
            patients.setdefault(key, set()).update(entry["patients"])
            if entry.get("display") and key not in displays:
                displays[key] = entry["display"]
            if entry.get("concept") and key not in concepts:
                concepts[key] = entry["concept"]
    rows = [{"resource_type": k[0], "element": k[1], "system": k[2] or None, "code": k[3],
             "display": displays.get(k), "resources": n, "patients": len(patients.get(k, ())),
             "concept": concepts.get(k)} for k, n in resources.items()]
    codes = frame(rows, schema.CODES)
    if len(codes):  # the order of tables.build_tables
        codes["_mapped"] = codes["concept"].notna()
        codes = codes.sort_values(
            ["_mapped", "resources", "resource_type", "element", "system", "code"],
            ascending=[True, False, True, True, True, True], kind="stable",
        ).drop(columns="_mapped").reset_index(drop=True)
    return codes
