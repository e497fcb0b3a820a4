"""One patient's records -> one patient's result: strategy, intervals, measures, adverse
events, inclusion and every exclusion reason that applies (PATHWAY.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from fhir_spine.pathway import adverse, measures
from fhir_spine.pathway.decisions import Landmarks, decide
from fhir_spine.pathway.model import (
    ConditionRecord,
    DatedMeasurement,
    Measurement,
    PatientInput,
    PatientRecord,
    PatientResult,
    PlacedEvent,
    is_dated,
    is_placed,
)
from fhir_spine.pathway.time import OnDay, days_between
from fhir_spine.pathway.timeline import (
    BIOPSY,
    NEOPLASTIC_FINDINGS,
    STABILIZATION,
    THERAPY_MODALITY,
    DiagnosisFinding,
    StabilizationFinding,
    TherapyFinding,
    after,
    find_biopsies,
    find_definitive_therapy,
    find_diagnosis,
    find_stabilization,
    undated,
)
from fhir_spine.pathway.vocabulary import (
    BASELINE_MEASURES,
    EXCLUSION_REASONS,
    PRO_MEASURES,
    TUMOUR_FINDINGS,
    ExclusionReason,
    TumourGroup,
)
from fhir_spine.settings import PathwaySettings


def age_in_years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def age_at(patient: PatientRecord, on: date) -> tuple[int | None, int | None]:
    """(age, upper bound) in whole years on a day; the upper bound only when undecided.

    A year-only or year-month birthDate (FHIR R4 `date` keeps its precision) gives the age
    when every day it may stand for gives the same age; otherwise the lower bound (the
    youngest the patient can be), with the oldest possible age as the upper bound.
    """
    if patient.birth_date is not None:
        return age_in_years(patient.birth_date, on), None
    if patient.birth_range is None:
        return None, None
    earliest, latest = patient.birth_range
    low, high = age_in_years(latest, on), age_in_years(earliest, on)
    return low, (high if high != low else None)


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
    conditions: Sequence[ConditionRecord], index_levels: set[str], until: OnDay | None,
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
            if (c.onset.day - until.day).days > lookahead_days:
                continue
        return True
    return False


def tumour_group(
    conditions: Sequence[ConditionRecord], diagnosis: DiagnosisFinding
) -> TumourGroup | None:
    """From the primary cancer Condition, else from the pathology conclusion."""
    for c in conditions:
        if c.countable and c.finding is not None and c.finding in TUMOUR_FINDINGS:
            return TUMOUR_FINDINGS[c.finding]
    if diagnosis.report is not None and diagnosis.report.finding is not None:
        return TUMOUR_FINDINGS.get(diagnosis.report.finding)
    return None


def reconstruct(inp: PatientInput, settings: PathwaySettings) -> PatientResult:
    result = PatientResult(patient_id=inp.patient.patient_id, sex=inp.patient.sex)
    gap = settings.same_session_gap_hours
    biopsies = find_biopsies(inp.events, gap)
    if biopsies.index is None:
        result.exclusion_reasons = ["biopsy-date-unusable" if undated(inp.events, BIOPSY)
                                    else "no-index-biopsy"]
        result.decisions = decide(inp, result, Landmarks(biopsies))
        return result

    index = biopsies.index
    result.index_biopsy_date = index.start.day
    index_levels = set(index.levels) or {
        lv for c in inp.conditions if c.countable and c.finding in NEOPLASTIC_FINDINGS
        for lv in c.levels
    }
    result.age_at_biopsy, result.age_upper_bound = age_at(inp.patient, index.start.day)

    stab = find_stabilization(index, inp.events, gap)
    diagnosis = find_diagnosis(index, inp.reports, inp.conditions)
    therapy = find_definitive_therapy(index, inp.events, settings.therapy_modality_window_days)
    _fill_timeline(result, index, stab, diagnosis, therapy)

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
    result.decisions = decide(inp, result, Landmarks(
        biopsies, stab, diagnosis, therapy, {r.source.resource_id for r in readmissions}))
    return result


def _fill_timeline(
    result: PatientResult, index: PlacedEvent, stab: StabilizationFinding,
    diagnosis: DiagnosisFinding, therapy: TherapyFinding,
) -> None:
    index_day = index.start.day
    if stab.event is not None:
        result.strategy, result.strategy_basis = stab.strategy, stab.basis
        result.stabilization_date = stab.event.start.day
    if diagnosis.report is not None and diagnosis.report.issued is not None:
        result.diagnosis_available_date = diagnosis.report.issued.day
        result.histology_basis = diagnosis.basis
    if therapy.first is not None:
        result.therapy_start_date = therapy.first.start.day
        result.therapy_modalities = list(therapy.modalities)
        result.days_biopsy_to_therapy = (therapy.first.start.day - index_day).days
    if stab.event is not None and result.stabilization_date is not None:
        if stab.strategy == "single-stage":
            result.days_biopsy_to_stabilization = 0
        else:
            result.days_biopsy_to_stabilization = (result.stabilization_date - index_day).days
        if therapy.first is not None:
            result.days_stabilization_to_therapy = days_between(stab.event.start,
                                                                therapy.first.start)


def _fill_measures(
    result: PatientResult, values: Sequence[Measurement], index: OnDay, dx: OnDay | None,
    settings: PathwaySettings,
) -> None:
    by_measure: dict[str, list[DatedMeasurement]] = {}
    for m in values:
        if is_dated(m):
            by_measure.setdefault(m.measure, []).append(m)
    for measure in PRO_MEASURES:
        series = by_measure.get(measure, [])
        base = measures.baseline(series, index, settings.baseline_lookback_days)
        if base is not None:
            result.measures[f"{measure}_baseline"] = base.value
            result.timepoints[(*base.source.key, base.measure)] = "baseline"
        if dx is not None:
            near = measures.at_diagnosis(series, index, dx, settings.at_diagnosis_window_days)
            if near is not None:
                result.measures[f"{measure}_at_diagnosis"] = near.value
                result.timepoints[(*near.source.key, near.measure)] = "at-diagnosis"
    for name in BASELINE_MEASURES:
        base = measures.baseline(by_measure.get(name, []), index,
                                 settings.baseline_lookback_days)
        if base is not None:
            setattr(result, name, base.value)
            result.timepoints[(*base.source.key, base.measure)] = "baseline"


def _exclusions(
    inp: PatientInput, settings: PathwaySettings, result: PatientResult,
    index: PlacedEvent, index_levels: set[str], stab: StabilizationFinding,
    diagnosis: DiagnosisFinding, therapy: TherapyFinding,
) -> list[ExclusionReason]:
    reasons: set[ExclusionReason] = set()
    if result.age_at_biopsy is not None and result.age_at_biopsy < settings.minimum_age_years:
        reasons.add("under-18")
    if is_cervical(sorted(index_levels), settings.excluded_level_prefixes):
        reasons.add("cervical")
    therapy_start = therapy.first.start if therapy.first else None
    for e in inp.events:
        if not (e.countable and is_placed(e)):
            continue
        if e.concept == "decompression":
            if therapy_start is None or not after(e.start, therapy_start):
                reasons.add("decompression")
        if e.concept == "oncologic-resection":
            if after(e.start, index.start) and (
                stab.event is None or not after(e.start, stab.event.start)
            ):
                reasons.add("directed-to-resection")
    if diagnosis.histology == "non-neoplastic":
        reasons.add("histology-not-neoplastic")
    elif diagnosis.histology is None:
        reasons.add("histology-unconfirmed")
    # A record whose date cannot be placed on a day names that date, not a missing event.
    if stab.event is None:
        reasons.add("stabilization-date-unusable" if undated(inp.events, STABILIZATION)
                    else "no-stabilization")
    if therapy.first is None:
        reasons.add("therapy-date-unusable"
                    if undated(inp.events, THERAPY_MODALITY, index.start)
                    else "no-definitive-therapy")
    for measure, timepoints in settings.required_measures.items():
        for tp in timepoints:
            if tp == "at-diagnosis" and result.diagnosis_available_date is None:
                continue
            column = f"{measure}_{tp.replace('-', '_')}"
            value = result.measures.get(column, getattr(result, measure, None)
                                        if tp == "baseline" else None)
            if value is None:
                reasons.add("missing-outcome-measures")
    return [r for r in EXCLUSION_REASONS if r in reasons]
