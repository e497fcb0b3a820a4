"""One test per pathway rule of PATHWAY.md and per messy variant of issue 2."""

from dataclasses import replace
from datetime import date

from fhir_spine.pathway.classify import reconstruct
from fhir_spine.settings import PathwaySettings
from pathway_builders import (
    complete_patient,
    condition,
    encounter,
    event,
    measure,
    report,
)

S = PathwaySettings()


def run(inp, settings=S):
    return reconstruct(inp, settings)


# ----------------------------------------------------------------- baseline case
def test_complete_single_stage_patient_is_included():
    r = run(complete_patient())
    assert r.included and r.exclusion_reasons == []
    assert (r.strategy, r.strategy_basis) == ("single-stage", "time-window")
    assert r.index_biopsy_date == date(2023, 3, 1)
    assert r.therapy_start_date == date(2023, 3, 31)
    assert r.days_biopsy_to_therapy == 30
    assert r.days_biopsy_to_stabilization == 0
    assert r.days_stabilization_to_therapy == 30
    assert r.fixation_levels == 3
    assert r.age_at_biopsy == 63


# ------------------------------------------------------------------ strategy
def test_same_encounter_is_single_stage_even_days_apart():
    r = run(complete_patient(stab="2023-03-02T10:00:00Z", encounter_ids=("e1", "e1")))
    assert (r.strategy, r.strategy_basis) == ("single-stage", "same-encounter")


def test_part_of_links_the_two_procedures():
    inp = complete_patient(stab="2023-03-01T20:00:00Z")
    inp.events[1] = replace(inp.events[1], part_of=("bx",))
    r = run(inp)
    assert (r.strategy, r.strategy_basis) == ("single-stage", "part-of")


def test_time_window_gap_is_configurable():
    inp = complete_patient(stab="2023-03-01T14:00:00Z")  # 5 h later
    assert run(inp).strategy == "single-stage"
    assert run(inp, replace(S, same_session_gap_hours=4)).strategy == "staged"


def test_overlapping_periods_are_one_session():
    inp = complete_patient(stab="2023-03-01T02:00:00Z")
    inp.events[0] = event("vertebral-biopsy", "2023-03-01T01:00:00Z", end="2023-03-01T10:00:00Z",
                          rid="bx")
    assert run(inp, replace(S, same_session_gap_hours=0.5)).strategy_basis == "time-window"


def test_separate_later_stabilization_is_staged_with_components():
    r = run(complete_patient(stab="2023-03-15T10:00:00Z", encounter_ids=("e1", "e2")))
    assert (r.strategy, r.strategy_basis) == ("staged", "separate-session")
    assert r.days_biopsy_to_stabilization == 14
    assert r.days_stabilization_to_therapy == 16


def test_stabilization_recorded_just_before_biopsy_in_same_session_is_single_stage():
    r = run(complete_patient(biopsy="2023-03-01T09:40:00Z", stab="2023-03-01T09:00:00Z"))
    assert (r.strategy, r.strategy_basis) == ("single-stage", "time-window")


def test_old_stabilization_before_biopsy_is_set_aside():
    old = event("stabilization", "2019-05-01T10:00:00Z", rid="old-stab")
    r = run(complete_patient(stab="2023-03-20T10:00:00Z", extra_events=[old]))
    assert r.strategy == "staged" and r.stabilization_date == date(2023, 3, 20)
    note = {d.source.resource_id: d for d in r.decisions}["old-stab"]
    assert not note.used and "before the index biopsy" in note.note


def test_unplanned_urgent_fixation_is_staged_and_an_adverse_event():
    inp = complete_patient(stab="2023-03-08T10:00:00Z", encounter_ids=("e1", "e2"))
    inp.encounters = [encounter("e1", "2023-03-01"), encounter("e2", "2023-03-08", urgent=True)]
    r = run(inp)
    assert r.strategy == "staged" and r.ae_unplanned_fixation == 1


def test_urgent_single_stage_is_not_unplanned_fixation():
    inp = complete_patient(encounter_ids=("e1", "e1"))
    inp.encounters = [encounter("e1", "2023-03-01", urgent=True)]
    assert run(inp).ae_unplanned_fixation == 0


# ------------------------------------------------------------ index biopsy
def test_several_biopsies_first_is_index_later_is_repeat_adverse_event():
    repeat = event("vertebral-biopsy", "2023-03-09T09:00:00Z", rid="bx2")
    r = run(complete_patient(extra_events=[repeat], report_on="2023-03-15"))
    assert r.index_biopsy_date == date(2023, 3, 1)
    assert r.ae_repeat_biopsy == 1
    assert {d.source.resource_id: d.event_type for d in r.decisions}["bx2"] == "repeat-biopsy"


def test_not_done_biopsy_is_not_the_index():
    not_done = event("vertebral-biopsy", "2023-02-01T09:00:00Z", countable=False,
                     note="status not-done", rid="nd")
    r = run(complete_patient(extra_events=[not_done]))
    assert r.index_biopsy_date == date(2023, 3, 1)
    d = {d.source.resource_id: d for d in r.decisions}["nd"]
    assert not d.used and d.note == "status not-done"


def test_partial_date_biopsy_is_set_aside():
    partial = event("vertebral-biopsy", "2023-02", rid="partial")
    r = run(complete_patient(extra_events=[partial]))
    assert r.index_biopsy_date == date(2023, 3, 1)
    assert not {d.source.resource_id: d for d in r.decisions}["partial"].used


def test_no_biopsy_is_the_only_reason():
    inp = complete_patient()
    inp.events = inp.events[1:]
    r = run(inp)
    assert r.exclusion_reasons == ["no-index-biopsy"] and not r.included


# --------------------------------------------------------------- therapy
def test_therapy_before_biopsy_is_ignored():
    early = event("radiotherapy", "2020-01-01", rid="old-rt", levels=())
    r = run(complete_patient(extra_events=[early]))
    assert r.therapy_start_date == date(2023, 3, 31)


def test_bone_modifying_agent_alone_is_no_definitive_therapy():
    inp = complete_patient()
    inp.events[2] = event("bone-modifying-agent", "2023-03-12", rid="zol",
                          rtype="MedicationRequest", levels=())
    r = run(inp)
    assert r.therapy_start_date is None and "no-definitive-therapy" in r.exclusion_reasons
    assert not {d.source.resource_id: d for d in r.decisions}["zol"].used


def test_cancelled_order_before_real_start_does_not_count():
    cancelled = event("systemic-therapy", "2023-03-20", rid="cx", countable=False,
                      note="status cancelled", rtype="MedicationRequest", levels=())
    assert run(complete_patient(extra_events=[cancelled])).therapy_start_date == date(2023, 3, 31)


def test_modalities_within_window_only():
    rt = event("radiotherapy", "2023-04-10", rid="rt", levels=())
    surgery = event("oncologic-resection", "2023-06-01", rid="res", levels=())
    r = run(complete_patient(extra_events=[rt, surgery]))
    assert r.therapy_modalities == ["systemic", "radiotherapy"]
    assert run(complete_patient(extra_events=[rt]),
               replace(S, therapy_modality_window_days=5)).therapy_modalities == ["systemic"]


# ----------------------------------------------------------- diagnosis
def test_diagnosis_is_first_conclusive_report_after_insufficient_one():
    inp = complete_patient()
    inp.reports = [report("2023-03-08", "histology-insufficient"), report("2023-03-16")]
    assert run(inp).diagnosis_available_date == date(2023, 3, 16)


def test_report_before_biopsy_does_not_count():
    inp = complete_patient()
    inp.reports = [report("2023-02-01")]
    assert "histology-unconfirmed" in run(inp).exclusion_reasons


def test_non_neoplastic_histology_excludes():
    inp = complete_patient()
    inp.reports = [report("2023-03-10", "histology-non-neoplastic")]
    assert "histology-not-neoplastic" in run(inp).exclusion_reasons


def test_unconfirmed_histology_does_not_also_need_at_diagnosis_measures():
    inp = complete_patient()
    inp.reports = []
    assert run(inp).exclusion_reasons == ["histology-unconfirmed"]


# ----------------------------------------------------------- exclusions
def test_under_18_excluded():
    assert run(complete_patient(birth=date(2006, 1, 1))).exclusion_reasons == ["under-18"]


def test_cervical_index_level_excluded():
    inp = complete_patient()
    inp.events[0] = replace(inp.events[0], levels=("C5",))
    assert run(inp).exclusion_reasons == ["cervical"]


def test_decompression_before_therapy_excluded_after_not():
    before = event("decompression", "2023-03-05", rid="dec")
    assert "decompression" in run(complete_patient(extra_events=[before])).exclusion_reasons
    after = event("decompression", "2023-06-05", rid="dec2")
    assert run(complete_patient(extra_events=[after])).included


def test_directed_to_resection_without_stabilization():
    inp = complete_patient()
    inp.events = [inp.events[0], event("oncologic-resection", "2023-03-20", rid="res")]
    r = run(inp)
    assert r.exclusion_reasons == ["directed-to-resection", "no-stabilization"]


def test_resection_after_stabilization_is_definitive_surgery_not_exclusion():
    res = event("oncologic-resection", "2023-03-25", rid="res")
    r = run(complete_patient(extra_events=[res]))
    assert r.included and r.therapy_modalities == ["systemic", "surgery"]


def test_missing_outcome_measures_excluded():
    inp = complete_patient()
    inp.measurements = [m for m in inp.measurements if m.measure != "sosgoq_total"]
    assert run(inp).exclusion_reasons == ["missing-outcome-measures"]


def test_no_stabilization_and_no_therapy_reported_together():
    inp = complete_patient()
    inp.events = inp.events[:1]
    assert run(inp).exclusion_reasons == ["no-stabilization", "no-definitive-therapy"]


# ------------------------------------------------------------ measures
def test_baseline_is_last_before_biopsy_within_lookback():
    inp = complete_patient()
    inp.measurements += [measure("vas", 9, "2023-02-28"), measure("vas", 3, "2022-01-01")]
    r = run(inp)
    assert r.measures["vas_baseline"] == 9
    inp.measurements = [measure("vas", 3, "2022-01-01")]
    assert "vas_baseline" not in run(inp).measures


def test_at_diagnosis_is_nearest_after_biopsy_and_ties_take_later():
    inp = complete_patient(report_on="2023-03-20")  # the builder's 03-11 value is 9 days off
    inp.measurements += [measure("vas", 5, "2023-03-18"), measure("vas", 6, "2023-03-22"),
                         measure("vas", 1, "2023-02-28")]
    r = run(inp)
    assert r.measures["vas_at_diagnosis"] == 6  # 03-18 and 03-22 both 2 days away: later


def test_sins_ecog_asa_are_baseline_values():
    inp = complete_patient()
    inp.measurements += [measure("sins_total", 12, "2023-02-27"), measure("ecog", 3, "2023-02-27"),
                         measure("asa", 2, "2023-02-28"), measure("ecog", 1, "2023-04-01")]
    r = run(inp)
    assert (r.sins_total, r.ecog, r.asa) == (12, 3, 2)


# --------------------------------------------------- conditions and groups
def test_metastasis_outside_index_and_involved_vertebrae():
    inp = complete_patient()
    inp.conditions = [condition("secondary-malignancy", ("T10", "T11"), "2023-03-10"),
                      condition("tumour-haematological", (), "2023-03-10")]
    r = run(inp)
    assert r.involved_vertebrae == 2 and r.metastatic_outside_index is False
    assert r.tumour_group == "haematological"
    inp.conditions.append(condition("secondary-malignancy", ("L3",), "2023-03-09"))
    assert run(inp).metastatic_outside_index is True


def test_metastasis_recorded_after_diagnosis_does_not_count():
    inp = complete_patient()
    inp.conditions.append(condition("secondary-malignancy", (), "2023-05-01"))
    assert run(inp).metastatic_outside_index is False


def test_tumour_group_falls_back_to_pathology_conclusion():
    inp = complete_patient()
    inp.conditions = []
    inp.reports = [report("2023-03-10", "tumour-primary-bone")]
    assert run(inp).tumour_group == "primary-bone"


# ------------------------------------------------------------ adverse events
def test_revision_after_stabilization_counts():
    rev = event("revision", "2023-03-05", rid="rev", levels=("T10",))
    assert run(complete_patient(extra_events=[rev])).ae_revision == 1


def test_pain_readmission_between_biopsy_and_therapy():
    inp = complete_patient(encounter_ids=("e1", "e1"))
    inp.encounters = [encounter("e1", "2023-03-01"),
                      encounter("e2", "2023-03-12", class_code="EMER", pain=True),
                      encounter("e3", "2023-04-12", pain=True),
                      encounter("e4", "2023-03-13", class_code="AMB", pain=True)]
    assert run(inp).ae_pain_readmission == 1
