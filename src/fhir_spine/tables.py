"""Pathway results and normalised records -> the contract's tables as DataFrames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fhir_spine import schema
from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    EncounterRecord,
    PathologyReport,
    PatientInput,
    PatientResult,
)
from fhir_spine.pipeline import Extraction

_PANDAS_DTYPES = {"string": "string", "bool": "boolean", "int": "Int64", "float": "Float64"}


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


def build_tables(extraction: Extraction) -> Tables:
    patients = frame([patient_row(r) for r in extraction.results], schema.PATIENTS)

    event_rows: list[dict[str, Any]] = []
    timepoints: dict[tuple[str, str], str] = {}
    for result in extraction.results:
        timepoints.update(result.timepoints)
        inp = extraction.inputs[result.patient_id]
        records = {r.source.key: r for group in (inp.events, inp.reports, inp.conditions,
                                                   inp.encounters) for r in group}
        for d, record in zip(result.decisions, _decided_records(inp, result), strict=True):
            details = _event_details(record if record is not None
                                     else records.get(d.source.key))
            coding = details.pop("coding", None)
            event_rows.append({
                "patient_id": result.patient_id, "event_type": d.event_type,
                **details, "resource_type": d.source.resource_type,
                "resource_id": d.source.resource_id,
                "code_system": coding.system if coding else None,
                "code": coding.code if coding else None,
                "display": (coding.display or None) if coding else None,
                "used": d.used, "note": d.note or None,
            })
    events = frame(event_rows, schema.EVENTS)

    obs_rows = [
        {"patient_id": pid, "measure": m.measure, "value": m.value,
         "effective": m.effective.iso(), "effective_date": m.effective.day,
         "timepoint": timepoints.get(m.source.key), "resource_type": m.source.resource_type,
         "resource_id": m.source.resource_id}
        for pid, m in extraction.normaliser.measurement_rows
    ]
    observations = frame(obs_rows, schema.OBSERVATIONS)
    if len(observations):
        observations = observations.sort_values(
            ["patient_id", "measure", "effective_date", "resource_id"], kind="stable",
            na_position="last").reset_index(drop=True)

    issues = frame([
        {"severity": i.severity, "patient_id": i.patient_id or None,
         "resource_type": i.resource_type or None, "resource_id": i.resource_id or None,
         "code": i.code, "message": i.message, "origin": i.origin or None,
         "set_aside": i.sets_aside}
        for i in extraction.issues
    ], schema.ISSUES)

    tally = extraction.normaliser.codes
    code_rows = [
        {"resource_type": k[0], "element": k[1], "system": k[2] or None, "code": k[3],
         "display": tally.displays.get(k), "resources": n,
         "patients": len(tally.patients.get(k, ())), "concept": tally.concepts.get(k)}
        for k, n in tally.resources.items()
    ]
    codes = frame(code_rows, schema.CODES)
    if len(codes):
        codes["_mapped"] = codes["concept"].notna()
        codes = codes.sort_values(
            ["_mapped", "resources", "resource_type", "element", "system", "code"],
            ascending=[True, False, True, True, True, True], kind="stable",
        ).drop(columns="_mapped").reset_index(drop=True)
    return Tables(patients, events, observations, issues, codes)
