"""What the pathway made of every record: one `events` row each, used or not, and why.

Kept apart from the rules themselves: the rules find landmarks, this module explains
them record by record, so an analyst can see why a biopsy was not the index or an order
did not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    Decision,
    EncounterRecord,
    PathologyReport,
    PatientInput,
    PatientResult,
    is_placed,
)
from fhir_spine.pathway.timeline import (
    INSUFFICIENT,
    THERAPY_MODALITY,
    BiopsyFindings,
    DiagnosisFinding,
    StabilizationFinding,
    TherapyFinding,
    after,
)

EVENT_TYPES = {
    "vertebral-biopsy": "biopsy", "stabilization": "stabilization", "revision": "revision",
    "decompression": "decompression", "radiotherapy": "therapy-radiotherapy",
    "systemic-therapy": "therapy-systemic", "systemic-therapy-procedure": "therapy-systemic",
    "oncologic-resection": "therapy-surgery", "separation-surgery": "therapy-surgery",
    "cancer-related-surgery": "therapy-surgery",
    "bone-modifying-agent": "bone-modifying-agent", "steroid": "steroid",
    "supportive-drug": "supportive-drug",
}
NON_DEFINITIVE = ("bone-modifying-agent", "steroid", "supportive-drug")


@dataclass(frozen=True)
class Landmarks:
    """The landmarks one patient's rules found (all empty without an index biopsy)."""

    biopsies: BiopsyFindings
    stabilization: StabilizationFinding = field(default_factory=lambda: StabilizationFinding(None))
    diagnosis: DiagnosisFinding = field(default_factory=lambda: DiagnosisFinding(None))
    therapy: TherapyFinding = field(default_factory=lambda: TherapyFinding(None))
    readmission_ids: set[str] = field(default_factory=set)


def decide(inp: PatientInput, result: PatientResult, marks: Landmarks) -> list[Decision]:
    decisions = [event_decision(e, result, marks) for e in inp.events]
    decisions += [report_decision(r, marks) for r in inp.reports]
    decisions += [condition_decision(c, marks) for c in inp.conditions]
    pathway_encounters = {e.encounter_id for e in inp.events if e.encounter_id}
    decisions += [encounter_decision(enc, marks, pathway_encounters) for enc in inp.encounters]
    return decisions


def event_decision(e: ClinicalEvent, result: PatientResult, marks: Landmarks) -> Decision:
    kind = EVENT_TYPES.get(e.concept, e.concept)
    index = marks.biopsies.index

    def said(used: bool, note: str, event_type: str = kind) -> Decision:
        return Decision(e.source, event_type, used, note)

    if not e.countable:
        return said(False, e.status_note)
    if not is_placed(e):
        return said(False, f"date {e.start.raw} is not a calendar day" if e.start
                    else "no start date" + (f" (ends {e.end.raw})" if e.end else ""))
    if index is None:
        return said(False, "no index biopsy")
    before_index = not after(e.start, index.start)
    if e is index:
        return said(True, "index biopsy", "biopsy")
    if e in marks.biopsies.same_session:
        return said(False, "same session as the index biopsy (duplicate record)", "biopsy")
    if e in marks.biopsies.repeats:
        return said(True, "repeat biopsy", "repeat-biopsy")
    if e.concept == "stabilization":
        if e is marks.stabilization.event:
            return said(True, marks.stabilization.basis or "")
        return said(False, "before the index biopsy, not the same session" if before_index
                    else "later stabilization (not the first)")
    if e.concept in THERAPY_MODALITY:
        given = marks.therapy.started_by.get(e.source.resource_id) \
            if e.source.resource_type == "MedicationRequest" else None
        if given is not None:
            return said(False, "started by its administration "
                        f"MedicationAdministration/{given.source.resource_id}")
        if e in marks.therapy.within_window:
            return said(True, "definitive therapy start" if e is marks.therapy.first
                        else "within the first therapy window")
        return said(False, "before the index biopsy" if before_index
                    else "after the first therapy window")
    if e.concept in NON_DEFINITIVE:
        return said(False, "not definitive therapy")
    if e.concept == "revision":
        stab = marks.stabilization.event
        used = result.ae_revision > 0 and stab is not None and after(e.start, stab.start)
        return said(used, "revision after stabilization" if used
                    else "not after the stabilization at the index level")
    if e.concept == "decompression":
        used = "decompression" in result.exclusion_reasons
        return said(used, "exclusion: decompression" if used
                    else "after definitive therapy start")
    return said(False, "not a pathway event")


def report_decision(r: PathologyReport, marks: Landmarks) -> Decision:
    has_index = marks.biopsies.index is not None
    if r is marks.diagnosis.report:
        basis = marks.diagnosis.basis
        return Decision(r.source, "pathology-report", True, "diagnosis available"
                        + (f" (histology: {basis})" if basis not in (None, "coded") else ""))
    if not r.countable:
        return Decision(r.source, "pathology-report", False, r.status_note)
    if r.finding == INSUFFICIENT:
        return Decision(r.source, "pathology-report", has_index, "insufficient sample")
    if r.finding is None:
        return Decision(r.source, "pathology-report", False,
                        "conclusion not read (narrative only, no text rule matched)"
                        if r.conclusion_text else "conclusion not coded or not mapped")
    return Decision(r.source, "pathology-report", False,
                    "not the first conclusive report after the index biopsy" if has_index
                    else "no index biopsy")


def condition_decision(c: ConditionRecord, marks: Landmarks) -> Decision:
    has_index = marks.biopsies.index is not None
    if not c.countable:
        return Decision(c.source, "condition", False, c.status_note)
    if c.finding is None:
        return Decision(c.source, "condition", False, "code not mapped")
    return Decision(c.source, "condition", has_index,
                    c.finding if has_index else "no index biopsy")


def encounter_decision(enc: EncounterRecord, marks: Landmarks,
                       pathway_encounters: set[str]) -> Decision:
    rid = enc.source.resource_id
    if rid in marks.readmission_ids:
        return Decision(enc.source, "readmission", True, "pain readmission")
    if rid in pathway_encounters:
        return Decision(enc.source, "encounter", True, "encounter of a pathway procedure")
    return Decision(enc.source, "encounter", False, "not linked to a pathway event")
