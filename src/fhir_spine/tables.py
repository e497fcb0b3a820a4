"""The contract's tables: the row rules (one result or record -> one row) and the table
rules (columns, types, row order).

Both are applied in one place so `extract` and `refresh` cannot drift: rows are made
per computation (`rows_of`: a whole extraction, or one refreshed patient), kept as plain
records, and `to_tables` turns any collection of them into the tables. The row order is
canonical (it depends on the rows, never on how they were split into computations), so
a refresh that recomputes a few patients publishes the same tables as a full extract.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from fhir_spine import review, schema
from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    EncounterRecord,
    PathologyReport,
    PatientInput,
    PatientResult,
)

if TYPE_CHECKING:
    from fhir_spine.issues import Issue
    from fhir_spine.normalise import CodeCount
    from fhir_spine.pipeline import Extraction

Record = dict[str, Any]

_PANDAS_DTYPES: dict[str, Any] = {  # Any: pandas-stubs types astype by literal dtype name
    "string": "string", "bool": "boolean", "int": "Int64", "float": "Float64"}


@dataclass
class Tables:
    patients: pd.DataFrame
    events: pd.DataFrame
    observations: pd.DataFrame
    issues: pd.DataFrame
    codes: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [(name, getattr(self, name)) for name in schema.TABLES]


def frame(records: list[dict[str, Any]], columns: list[schema.Column]) -> pd.DataFrame:
    """A DataFrame with exactly the schema's columns, in order, with nullable dtypes."""
    df = pd.DataFrame.from_records(records, columns=[c.name for c in columns])
    for c in columns:
        if c.dtype == "date":
            df[c.name] = df[c.name].astype("object").where(df[c.name].notna(), None)
        else:
            df[c.name] = df[c.name].astype(_PANDAS_DTYPES[c.dtype])
    return df


def sins_category(total: float | None) -> str | None:
    if total is None:
        return None
    return "stable" if total <= 6 else "indeterminate" if total <= 12 else "unstable"


def ecog_group(ecog: float | None) -> str | None:
    if ecog is None:
        return None
    return "0-2" if ecog <= 2 else "3-4" if ecog <= 4 else "5"


def vertebrae_group(n: int | None) -> str | None:
    if n is None:
        return None
    return "1" if n == 1 else "2-3" if n <= 3 else "4+"


def patient_row(r: PatientResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "patient_id": r.patient_id, "included": r.included,
        "exclusion_reasons": ";".join(r.exclusion_reasons),
        "strategy": r.strategy, "strategy_basis": r.strategy_basis,
        "age_at_biopsy": r.age_at_biopsy, "sex": r.sex,
        "index_biopsy_date": r.index_biopsy_date, "stabilization_date": r.stabilization_date,
        "diagnosis_available_date": r.diagnosis_available_date,
        "histology_basis": r.histology_basis,
        "therapy_start_date": r.therapy_start_date,
        "therapy_modalities": ";".join(r.therapy_modalities) or None,
        "days_biopsy_to_therapy": r.days_biopsy_to_therapy,
        "days_biopsy_to_stabilization": r.days_biopsy_to_stabilization,
        "days_stabilization_to_therapy": r.days_stabilization_to_therapy,
        "fixation_levels": r.fixation_levels,
        "sins_total": r.sins_total, "sins_category": sins_category(r.sins_total),
        "ecog": r.ecog, "ecog_group": ecog_group(r.ecog), "asa": r.asa,
        "metastatic_outside_index": r.metastatic_outside_index,
        "involved_vertebrae": r.involved_vertebrae,
        "involved_vertebrae_group": vertebrae_group(r.involved_vertebrae),
        "tumour_group": r.tumour_group,
        "ae_repeat_biopsy": r.ae_repeat_biopsy, "ae_revision": r.ae_revision,
        "ae_unplanned_fixation": r.ae_unplanned_fixation,
        "ae_pain_readmission": r.ae_pain_readmission,
    }
    row.update(r.measures)
    return row


def _event_details(record: Any) -> dict[str, Any]:
    if isinstance(record, ClinicalEvent):
        return {"start": record.start.iso() if record.start else None,
                "end": record.end.iso() if record.end else None,
                "encounter_id": record.encounter_id, "status": record.status,
                "concept": record.concept, "coding": record.coding}
    if isinstance(record, PathologyReport):
        return {"start": record.issued.iso() if record.issued else None,
                "status": record.status, "concept": record.finding, "coding": record.coding}
    if isinstance(record, ConditionRecord):
        return {"start": record.onset.iso() if record.onset else None,
                "concept": record.finding, "coding": record.coding}
    if isinstance(record, EncounterRecord):
        return {"start": record.start.iso() if record.start else None,
                "end": record.end.iso() if record.end else None, "status": record.status,
                "concept": "pain" if record.pain_reason else None, "coding": None}
    return {}


def _decided_records(inp: PatientInput, result: PatientResult) -> list[ClinicalEvent | None]:
    """The record behind each decision, in order: `decide` explains every event first, one
    decision each, so a resource with several concepts (one event per concept) shows each
    concept on its own `events` row."""
    events, count = list(inp.events), len(result.decisions)
    if count < len(events) or any(
            d.source != e.source for d, e in zip(result.decisions, events, strict=False)):
        return [None] * count
    return [*events, *([None] * (count - len(events)))]


@dataclass(frozen=True)
class Rows:
    """The row-table records of one computation, before the table rules."""

    patients: list[Record]
    events: list[Record]
    observations: list[Record]
    issues: list[Record]


def rows_of(extraction: Extraction) -> Rows:
    """Every row an extraction contributes (the pending Medications excepted: their
    rows are decided with the whole dataset)."""
    patients = [patient_row(r) for r in extraction.results]
    events: list[Record] = []
    timepoints: dict[tuple[str, str, str], str] = {}
    for result in extraction.results:
        timepoints.update(result.timepoints)
        inp = extraction.inputs[result.patient_id]
        records = {r.source.key: r for group in (inp.events, inp.reports, inp.conditions,
                                                   inp.encounters) for r in group}
        for d, record in zip(result.decisions, _decided_records(inp, result), strict=True):
            details = _event_details(record if record is not None
                                     else records.get(d.source.key))
            coding = details.pop("coding", None)
            events.append({
                "patient_id": result.patient_id, "event_type": d.event_type,
                **details, "resource_type": d.source.resource_type,
                "resource_id": d.source.resource_id,
                "code_system": coding.system if coding else None,
                "code": coding.code if coding else None,
                "display": (coding.display or None) if coding else None,
                "used": d.used, "note": d.note or None,
            })
    observations = [
        {"patient_id": pid, "measure": m.measure, "value": m.value,
         "effective": m.effective.iso(), "effective_date": m.effective.day,
         "timepoint": timepoints.get((*m.source.key, m.measure)),
         "resource_type": m.source.resource_type, "resource_id": m.source.resource_id}
        for pid, m in extraction.measurements
    ]
    issues = [issue_row(i) for i in (*extraction.read_issues, *extraction.normalise_issues)]
    return Rows(patients, events, observations, issues)


def issue_row(i: Issue) -> Record:
    return {"severity": i.severity, "patient_id": i.patient_id or None,
            "resource_type": i.resource_type or None, "resource_id": i.resource_id or None,
            "code": i.code, "message": i.message, "origin": i.origin or None,
            "set_aside": i.sets_aside}


# The row order of each table: sort keys, ascending, stable, missing values first.
ORDER: dict[str, list[str]] = {
    "patients": ["patient_id"],
    # each patient's events keep the pathway's decision order
    "events": ["patient_id"],
    "observations": ["patient_id", "measure", "effective_date", "resource_id", "effective"],
    "issues": ["patient_id", "resource_type", "resource_id", "code", "message", "origin",
               "severity"],
}


def to_tables(rows: Iterable[Rows], codes: Iterable[CodeCount]) -> Tables:
    """Records of any number of computations -> the tables, in the canonical order."""
    collected: dict[str, list[Record]] = {name: [] for name in ORDER}
    for part in rows:
        for name in ORDER:
            collected[name].extend(getattr(part, name))
    code_frame = codes_table(codes)
    collected["issues"].extend(review.issue_rows(code_frame))
    frames = {name: _ordered(frame(collected[name], schema.TABLES[name]), ORDER[name])
              for name in ORDER}
    return Tables(frames["patients"], frames["events"], frames["observations"],
                  frames["issues"], code_frame)


def _ordered(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if not len(df):
        return df
    return df.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def codes_table(counts: Iterable[CodeCount]) -> pd.DataFrame:
    """Code counts of any number of computations, added up per code; unmapped codes
    first, then the most frequent. The display shown is the most frequent one (ties:
    alphabetical), so it does not depend on reading order. An unmapped code whose display
    the lexicon knows gets `suggested_concept` (from its most frequent display) and
    `patients_affected`: the patients whose classification changes if it were mapped so,
    computed by what_if.py in each computation and united here."""
    resources: Counter[tuple[str, str, str, str]] = Counter()
    code_patients: dict[tuple[str, str, str, str], set[str]] = {}
    displays: dict[tuple[str, str, str, str], Counter[str]] = {}
    concepts: dict[tuple[str, str, str, str], str] = {}
    counts_seen = list(counts)
    for c in counts_seen:
        resources[c.key] += c.resources
        code_patients.setdefault(c.key, set()).update(c.patients)
        displays.setdefault(c.key, Counter()).update(c.displays)
        if c.concept and c.key not in concepts:
            concepts[c.key] = c.concept
    hints: dict[tuple[str, str, str, str], dict[str, tuple[str, str]]] = {}
    changed: dict[tuple[str, str, str, str], dict[str, set[str]]] = {}
    for c in counts_seen:
        hints.setdefault(c.key, {}).update(c.hints)
        for concept, pids in c.changed.items():
            changed.setdefault(c.key, {}).setdefault(concept, set()).update(pids)
    rows = []
    for k, n in resources.items():
        display = _most_common(displays.get(k))
        hint = None if k in concepts or display is None else hints.get(k, {}).get(display)
        rows.append({
            "resource_type": k[0], "element": k[1], "system": k[2] or None, "code": k[3],
            "display": display, "resources": n, "patients": len(code_patients.get(k, ())),
            "concept": concepts.get(k),
            "suggested_concept": hint[0] if hint else None,
            "suggestion_rule": hint[1] if hint else None,
            "patients_affected": len(changed.get(k, {}).get(hint[0], ())) if hint else 0})
    codes = frame(rows, schema.CODES)
    if len(codes):
        codes["_mapped"] = codes["concept"].notna()
        codes = codes.sort_values(
            ["_mapped", "resources", "resource_type", "element", "system", "code"],
            ascending=[True, False, True, True, True, True], kind="stable",
        ).drop(columns="_mapped").reset_index(drop=True)
    return codes


def _most_common(displays: Counter[str] | None) -> str | None:
    if not displays:
        return None
    return min(displays.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def build_tables(extraction: Extraction) -> Tables:
    """One extraction's tables, as if it were the whole dataset (for library use and
    tests; the commands go through `dataset.build_dataset`, which this calls)."""
    from fhir_spine.dataset import build_dataset, part_of  # dataset builds on this module

    return build_dataset([part_of(extraction)]).tables
