"""One patient's records -> one patient's result: strategy, intervals, measures, adverse
events, inclusion and every exclusion reason that applies (PATHWAY.md)."""

from __future__ import annotations

from collections.abc import Sequence

from fhir_spine.pathway import adverse, measures
from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    Decision,
    Measurement,
    PatientInput,
    PatientResult,
)
from fhir_spine.pathway.time import When, days_between
from fhir_spine.pathway.timeline import (
    NEOPLASTIC_FINDINGS,
    THERAPY_MODALITY,
    BiopsyFindings,
    DiagnosisFinding,
    StabilizationFinding,
    TherapyFinding,
    after,
    find_biopsies,
    find_definitive_therapy,
    find_diagnosis,
    find_stabilization,
)
from fhir_spine.settings import PathwaySettings

EXCLUSION_ORDER = (
    "no-index-biopsy", "under-18", "cervical", "decompression", "directed-to-resection",
    "histology-not-neoplastic", "histology-unconfirmed", "no-stabilization",
    "no-definitive-therapy", "missing-outcome-measures",
)
TUMOUR_GROUPS = {
    "tumour-solid-metastasis": "solid-metastasis",
    "tumour-haematological": "haematological",
    "tumour-primary-bone": "primary-bone",
    "tumour-other": "other",
}
EVENT_TYPES = {
    "vertebral-biopsy": "biopsy", "stabilization": "stabilization", "revision": "revision",
    "decompression": "decompression", "radiotherapy": "therapy-radiotherapy",
    "systemic-therapy": "therapy-systemic", "systemic-therapy-procedure": "therapy-systemic",
    "oncologic-resection": "therapy-surgery", "separation-surgery": "therapy-surgery",
    "bone-modifying-agent": "bone-modifying-agent", "steroid": "steroid",
    "supportive-drug": "supportive-drug",
}


def age_in_years(birth, on) -> int:  # type: ignore[no-untyped-def]
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def is_cervical(levels: Sequence[str], prefixes: Sequence[str]) -> bool:
    return any(level.startswith(tuple(prefixes)) for level in levels)


def index_lesion_conditions(
    conditions: Sequence[ConditionRecord], index_levels: set[str]
) -> list[ConditionRecord]:
    return [
        c for c in conditions
        if c.countable and c.finding in NEOPLASTIC_FINDINGS and index_levels & set(c.levels)
    ]


def involved_vertebrae(conditions: Sequence[ConditionRecord], index_levels: set[str]) -> int | None:
    lesion = index_lesion_conditions(conditions, index_levels)
    lesion_levels = {lv for c in lesion for lv in c.levels}
    levels = lesion_levels or index_levels
    return len(levels) or None


def metastatic_outside_index(
    conditions: Sequence[ConditionRecord], index_levels: set[str], until: When | None,
    lookahead_days: int,
) -> bool:
    """A secondary malignancy recorded by the diagnosis at a site other than the index
    vertebra (a Condition without body site counts: it is somewhere else)."""
    for c in conditions:
        if not c.countable or c.finding != "secondary-malignancy":
            continue
        if c.levels and index_levels & set(c.levels):
            continue
        if until is not None and c.onset is not None and c.onset.day is not None:
            if (c.onset.day - until.day).days > lookahead_days:  # type: ignore[operator]
                continue
        return True
    return False


def tumour_group(conditions: Sequence[ConditionRecord], diagnosis: DiagnosisFinding) -> str | None:
    """From the primary cancer Condition, else from the pathology conclusion."""
    primaries = [c for c in conditions if c.countable and c.finding in TUMOUR_GROUPS]
    if primaries:
        return TUMOUR_GROUPS[primaries[0].finding]  # type: ignore[index]
    if diagnosis.report is not None and diagnosis.report.finding in TUMOUR_GROUPS:
        return TUMOUR_GROUPS[diagnosis.report.finding]  # type: ignore[index]
    return None


def reconstruct(inp: PatientInput, settings: PathwaySettings) -> PatientResult:
    result = PatientResult(patient_id=inp.patient.patient_id, sex=inp.patient.sex)
    gap = settings.same_session_gap_hours
    biopsies = find_biopsies(inp.events, gap)
    if biopsies.index is None:
        result.exclusion_reasons = ["no-index-biopsy"]
        result.decisions = _decisions(inp, result, biopsies, None, None, None, set())
        return result

    index = biopsies.index
    assert index.start is not None and index.start.day is not None
    result.index_biopsy_date = index.start.day
    index_levels = set(index.levels) or {
        lv for c in inp.conditions if c.countable and c.finding in NEOPLASTIC_FINDINGS
        for lv in c.levels
    }
    if inp.patient.birth_date is not None:
        result.age_at_biopsy = age_in_years(inp.patient.birth_date, index.start.day)

    stab = find_stabilization(index, inp.events, gap)
    diagnosis = find_diagnosis(index, inp.reports)
    therapy = find_definitive_therapy(index, inp.events, settings.therapy_modality_window_days)
    _fill_timeline(result, stab, diagnosis, therapy)

    result.fixation_levels = len(set(stab.event.levels)) or None if stab.event else None
    result.involved_vertebrae = involved_vertebrae(inp.conditions, index_levels)
    dx_when = diagnosis.report.issued if diagnosis.report else None
    result.metastatic_outside_index = metastatic_outside_index(
        inp.conditions, index_levels, dx_when, settings.metastasis_lookahead_days)
    result.tumour_group = tumour_group(inp.conditions, diagnosis)
    _fill_measures(result, inp.measurements, index.start, dx_when, settings)

    therapy_start = therapy.first.start if therapy.first else None
    result.ae_repeat_biopsy = adverse.repeat_biopsies(biopsies.repeats, therapy_start)
    if stab.event is not None:
        result.ae_revision = len(adverse.revisions(inp.events, stab.event, index_levels))
    encounters = {e.source.resource_id: e for e in inp.encounters}
    result.ae_unplanned_fixation = int(adverse.unplanned_fixation(stab.strategy, stab.event,
                                                                  encounters))
    pathway_encounters = {e.encounter_id for e in (index, stab.event) if e and e.encounter_id}
    readmissions = adverse.pain_readmissions(
        inp.encounters, index.start, therapy_start, pathway_encounters,
        settings.readmission_encounter_classes)
    result.ae_pain_readmission = len(readmissions)

    result.exclusion_reasons = _exclusions(
        inp, settings, result, index, index_levels, stab, diagnosis, therapy)
    result.included = not result.exclusion_reasons
    result.decisions = _decisions(
        inp, result, biopsies, stab, diagnosis, therapy,
        {r.source.resource_id for r in readmissions})
    return result


def _fill_timeline(
    result: PatientResult, stab: StabilizationFinding, diagnosis: DiagnosisFinding,
    therapy: TherapyFinding,
) -> None:
    index_day = result.index_biopsy_date
    assert index_day is not None
    if stab.event is not None:
        assert stab.event.start is not None
        result.strategy, result.strategy_basis = stab.strategy, stab.basis
        result.stabilization_date = stab.event.start.day
    if diagnosis.report is not None and diagnosis.report.issued is not None:
        result.diagnosis_available_date = diagnosis.report.issued.day
    if therapy.first is not None:
        assert therapy.first.start is not None and therapy.first.start.day is not None
        result.therapy_start_date = therapy.first.start.day
        result.therapy_modalities = list(therapy.modalities)
        result.days_biopsy_to_therapy = (therapy.first.start.day - index_day).days
    if stab.event is not None and result.stabilization_date is not None:
        if stab.strategy == "single-stage":
            result.days_biopsy_to_stabilization = 0
        else:
            result.days_biopsy_to_stabilization = (result.stabilization_date - index_day).days
        if therapy.first is not None:
            assert therapy.first.start is not None and stab.event.start is not None
            result.days_stabilization_to_therapy = days_between(stab.event.start,
                                                                therapy.first.start)


def _fill_measures(
    result: PatientResult, values: Sequence[Measurement], index: When, dx: When | None,
    settings: PathwaySettings,
) -> None:
    by_measure: dict[str, list[Measurement]] = {}
    for m in values:
        if m.effective.is_day_precise:
            by_measure.setdefault(m.measure, []).append(m)
    for column, measure in measures.PRO_MEASURES.items():
        series = by_measure.get(measure, [])
        base = measures.baseline(series, index, settings.baseline_lookback_days)
        if base is not None:
            result.measures[f"{column}_baseline"] = base.value
            result.timepoints[base.source.key] = "baseline"
        if dx is not None:
            near = measures.at_diagnosis(series, index, dx, settings.at_diagnosis_window_days)
            if near is not None:
                result.measures[f"{column}_at_diagnosis"] = near.value
                result.timepoints[near.source.key] = "at-diagnosis"
    for measure in measures.BASELINE_ONLY:
        base = measures.baseline(by_measure.get(measure, []), index,
                                 settings.baseline_lookback_days)
        if base is not None:
            setattr(result, measure, base.value)
            result.timepoints[base.source.key] = "baseline"


def _exclusions(
    inp: PatientInput, settings: PathwaySettings, result: PatientResult,
    index: ClinicalEvent, index_levels: set[str], stab: StabilizationFinding,
    diagnosis: DiagnosisFinding, therapy: TherapyFinding,
) -> list[str]:
    reasons: set[str] = set()
    if result.age_at_biopsy is not None and result.age_at_biopsy < settings.minimum_age_years:
        reasons.add("under-18")
    if is_cervical(sorted(index_levels), settings.excluded_level_prefixes):
        reasons.add("cervical")
    therapy_start = therapy.first.start if therapy.first else None
    for e in inp.events:
        if e.concept == "decompression" and e.countable and e.placed:
            if therapy_start is None or not after(e.start, therapy_start):  # type: ignore[arg-type]
                reasons.add("decompression")
        if e.concept == "oncologic-resection" and e.countable and e.placed:
            assert index.start is not None
            if after(e.start, index.start) and (  # type: ignore[arg-type]
                stab.event is None or not after(e.start, stab.event.start)  # type: ignore[arg-type]
            ):
                reasons.add("directed-to-resection")
    if diagnosis.histology == "non-neoplastic":
        reasons.add("histology-not-neoplastic")
    elif diagnosis.histology is None:
        reasons.add("histology-unconfirmed")
    if stab.event is None:
        reasons.add("no-stabilization")
    if therapy.first is None:
        reasons.add("no-definitive-therapy")
    for measure, timepoints in settings.required_measures.items():
        for tp in timepoints:
            if tp == "at-diagnosis" and result.diagnosis_available_date is None:
                continue
            column = f"{measure}_{tp.replace('-', '_')}"
            value = result.measures.get(column, getattr(result, measure, None)
                                        if tp == "baseline" else None)
            if value is None:
                reasons.add("missing-outcome-measures")
    return [r for r in EXCLUSION_ORDER if r in reasons]


def _decisions(
    inp: PatientInput, result: PatientResult, biopsies: BiopsyFindings,
    stab: StabilizationFinding | None, diagnosis: DiagnosisFinding | None,
    therapy: TherapyFinding | None, readmission_ids: set[str],
) -> list[Decision]:
    """One `events` row per record considered, with why it was not used when it was not."""
    decisions: list[Decision] = []
    index = biopsies.index
    therapy_ids = {id(e) for e in therapy.within_window} if therapy else set()
    for e in inp.events:
        kind = EVENT_TYPES.get(e.concept, e.concept)
        if not e.countable:
            decisions.append(Decision(e.source, kind, False, e.status_note))
        elif not e.placed:
            decisions.append(Decision(e.source, kind, False,
                                      f"date {e.start.raw if e.start else '(none)'} is not a "
                                      "calendar day"))
        elif index is None:
            decisions.append(Decision(e.source, kind, False, "no index biopsy"))
        elif e is index:
            decisions.append(Decision(e.source, "biopsy", True, "index biopsy"))
        elif e in biopsies.same_session:
            decisions.append(Decision(e.source, "biopsy", False,
                                      "same session as the index biopsy (duplicate record)"))
        elif e in biopsies.repeats:
            decisions.append(Decision(e.source, "repeat-biopsy", True, "repeat biopsy"))
        elif e.concept == "stabilization":
            if stab is not None and e is stab.event:
                decisions.append(Decision(e.source, kind, True, stab.basis or ""))
            elif not after(e.start, index.start):  # type: ignore[arg-type]
                decisions.append(Decision(e.source, kind, False,
                                          "before the index biopsy, not the same session"))
            else:
                decisions.append(Decision(e.source, kind, False,
                                          "later stabilization (not the first)"))
        elif e.concept in THERAPY_MODALITY:
            if id(e) in therapy_ids:
                first = therapy is not None and e is therapy.first
                decisions.append(Decision(e.source, kind, True,
                                          "definitive therapy start" if first else
                                          "within the first therapy window"))
            elif not after(e.start, index.start):  # type: ignore[arg-type]
                decisions.append(Decision(e.source, kind, False, "before the index biopsy"))
            else:
                decisions.append(Decision(e.source, kind, False,
                                          "after the first therapy window"))
        elif e.concept in ("bone-modifying-agent", "steroid", "supportive-drug"):
            decisions.append(Decision(e.source, kind, False, "not definitive therapy"))
        elif e.concept == "revision":
            used = result.ae_revision > 0 and stab is not None and stab.event is not None \
                and after(e.start, stab.event.start)  # type: ignore[arg-type]
            decisions.append(Decision(e.source, kind, used,
                                      "revision after stabilization" if used else
                                      "not after the stabilization at the index level"))
        elif e.concept == "decompression":
            used = "decompression" in result.exclusion_reasons
            decisions.append(Decision(e.source, kind, used,
                                      "exclusion: decompression" if used else
                                      "after definitive therapy start"))
        else:
            decisions.append(Decision(e.source, kind, False, "not a pathway event"))
    dx_report = diagnosis.report if diagnosis else None
    for r in inp.reports:
        if r is dx_report:
            decisions.append(Decision(r.source, "pathology-report", True, "diagnosis available"))
        elif not r.countable:
            decisions.append(Decision(r.source, "pathology-report", False, r.status_note))
        elif r.finding == "histology-insufficient":
            decisions.append(Decision(r.source, "pathology-report", index is not None,
                                      "insufficient sample"))
        elif r.finding is None:
            decisions.append(Decision(r.source, "pathology-report", False,
                                      "conclusion not coded or not mapped"))
        else:
            decisions.append(Decision(r.source, "pathology-report", False,
                                      "not the first conclusive report after the index biopsy"
                                      if index is not None else "no index biopsy"))
    for c in inp.conditions:
        if not c.countable:
            decisions.append(Decision(c.source, "condition", False, c.status_note))
        elif c.finding is None:
            decisions.append(Decision(c.source, "condition", False, "code not mapped"))
        else:
            decisions.append(Decision(c.source, "condition", index is not None,
                                      c.finding if index is not None else "no index biopsy"))
    pathway_encounters = {e.encounter_id for e in inp.events if e.encounter_id}
    for enc in inp.encounters:
        if enc.source.resource_id in readmission_ids:
            decisions.append(Decision(enc.source, "readmission", True, "pain readmission"))
        elif enc.source.resource_id in pathway_encounters:
            decisions.append(Decision(enc.source, "encounter", True,
                                      "encounter of a pathway procedure"))
        else:
            decisions.append(Decision(enc.source, "encounter", False,
                                      "not linked to a pathway event"))
    return decisions
