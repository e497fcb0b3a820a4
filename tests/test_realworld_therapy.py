"""Issue 11, therapy side: the shapes EHRs, US Core, mCODE and Synthea send for therapy,
dates and codes. One test per kind of input, each from a small builder."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from fhir_spine.errors import ConfigError
from fhir_spine.pathway.classify import reconstruct
from fhir_spine.pathway.model import PatientRecord
from fhir_spine.pipeline import extract
from fhir_spine.settings import PathwaySettings, load_mappings
from fhir_spine.sources.files import RawResource
from pathway_builders import complete_patient, event

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
S = PathwaySettings()


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


# ------------------------------------------------------------------ FHIR builders
def _subject(pid: str) -> dict:
    return {"reference": f"Patient/{pid}"}


def pathway_core(pid: str = "p1", birth: str = "1960-05-01", *, biopsy: dict | None = None,
                 fixation: dict | None = None) -> list[dict]:
    """An includable patient without therapy: biopsy 2024-03-04 09:00Z at L4, fixation
    90 minutes later, report issued 2024-03-11, VAS and SOSGOQ before and after."""
    def obs(rid, system, code, day, value):
        return {"resourceType": "Observation", "id": f"{pid}-{rid}", "status": "final",
                "subject": _subject(pid), "effectiveDateTime": day,
                "code": {"coding": [{"system": system, "code": code}]},
                "valueQuantity": {"value": value}}
    l4 = [{"coding": [{"system": SCT, "code": "11994002"}]}]
    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": birth},
        {"resourceType": "Procedure", "id": f"{pid}-bx", "status": "completed",
         "subject": _subject(pid), "code": {"coding": [{"system": CPT, "code": "20225"}]},
         "performedDateTime": "2024-03-04T09:00:00Z", "bodySite": l4, **(biopsy or {})},
        {"resourceType": "Procedure", "id": f"{pid}-fix", "status": "completed",
         "subject": _subject(pid), "code": {"coding": [{"system": CPT, "code": "22842"}]},
         "performedDateTime": "2024-03-04T10:30:00Z", "bodySite": l4, **(fixation or {})},
        {"resourceType": "DiagnosticReport", "id": f"{pid}-path", "status": "final",
         "subject": _subject(pid), "code": {"coding": [{"system": LOINC, "code": "11529-5"}]},
         "issued": "2024-03-11T12:00:00Z",
         "conclusionCode": [{"coding": [{"system": ICD, "code": "C79.51"}]}]},
        obs("vas-b", LOINC, "38214-3", "2024-03-01", 7),
        obs("vas-d", LOINC, "38214-3", "2024-03-12", 4),
        obs("sos-b", LOCAL, "sosgoq-total", "2024-03-01", 57),
        obs("sos-d", LOCAL, "sosgoq-total", "2024-03-12", 54),
    ]


def order(rid: str, code: str = "2555", pid: str = "p1", **extra) -> dict:
    base = {"resourceType": "MedicationRequest", "id": rid, "status": "active",
            "intent": "order", "subject": _subject(pid),
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
            "authoredOn": "2024-03-20T10:00:00Z"}
    return {k: v for k, v in {**base, **extra}.items() if v is not None}


def administration(rid: str, day: str, request: str | None = None, **extra) -> dict:
    base = {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
            "subject": _subject("p1"), "effectiveDateTime": day,
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2555"}]}}
    if request:
        base["request"] = {"reference": f"MedicationRequest/{request}"}
    return {**base, **extra}


def statement(rid: str, status: str = "active", **extra) -> dict:
    return {"resourceType": "MedicationStatement", "id": rid, "status": status,
            "subject": _subject("p1"), "effectiveDateTime": "2024-03-18",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "349472"}]},
            **extra}


def rt_course(rid: str, status: str, period: dict) -> dict:
    return {"resourceType": "Procedure", "id": rid, "status": status, "subject": _subject("p1"),
            "code": {"coding": [{"system": SCT, "code": "1217123003"}]},
            "performedPeriod": period}


def run(mappings, *resources):
    items = [RawResource(r, f"test:{i}") for i, r in enumerate(resources)]
    result = extract(items, mappings, validation="off")
    assert result.accounting.balanced, result.accounting
    return result


def patient_result(result, pid="p1"):
    [r] = [r for r in result.results if r.patient_id == pid]
    return r


def decisions(result, pid="p1"):
    return {(d.source.resource_id, d.event_type): d for d in patient_result(result, pid).decisions}


def issues(result):
    return {(i.resource_id, i.code): i for i in result.issues}


# ------------------------------------------------------------- 1. medications
def test_contained_medication_reference_resolves_inside_its_container(mappings):
    med = {"resourceType": "Medication", "id": "m0",
           "code": {"coding": [{"system": RXNORM, "code": "2555"}]}}
    req = order("mr", medicationCodeableConcept=None, contained=[med],
                medicationReference={"reference": "#m0"})
    ghost = order("mr-ghost", medicationCodeableConcept=None,
                  medicationReference={"reference": "#nowhere"})
    r = run(mappings, *pathway_core(), req, ghost)
    assert patient_result(r).therapy_start_date == date(2024, 3, 20)
    assert patient_result(r).included
    assert ("mr-ghost", "unresolved-medication") in issues(r)


def test_medication_classified_by_its_ingredients_when_its_code_is_unmapped(mappings):
    med = {"resourceType": "Medication", "id": "kit",
           "code": {"coding": [{"system": "http://example.org/pharmacy", "code": "K-17"}]},
           "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM,
                                                               "code": "2555"}]}}]}
    req = order("mr", medicationCodeableConcept=None,
                medicationReference={"reference": "Medication/kit"})
    r = run(mappings, *pathway_core(), med, req)
    assert patient_result(r).therapy_modalities == ["systemic"]
    concepts = {c.key: c.concept for c in r.codes}
    assert concepts[("MedicationRequest", "Medication.ingredient", RXNORM, "2555")] \
        == "systemic-therapy"
    assert ("MedicationRequest", "MedicationRequest.medication", "http://example.org/pharmacy",
            "K-17") in concepts


@pytest.mark.parametrize("status,counts", [
    ("active", True), ("completed", True), ("stopped", True), ("on-hold", True),
    ("intended", False), ("not-taken", False), ("entered-in-error", False)])
def test_medication_statement_is_a_record_of_therapy_with_its_own_statuses(
        mappings, status, counts):
    r = run(mappings, *pathway_core(), statement("ms", status))
    res = patient_result(r)
    assert (res.therapy_start_date == date(2024, 3, 18)) is counts
    d = decisions(r)[("ms", "therapy-systemic")]
    assert d.used is counts and (counts or d.note == f"status {status}")


def test_therapy_starts_at_the_first_administration_of_an_order(mappings):
    planned = {"dosageInstruction": [{"timing": {"repeat": {"boundsPeriod": {
        "start": "2024-03-22"}}}}]}
    r = run(mappings, *pathway_core(), order("mr", **planned),
            administration("ma2", "2024-03-27T09:00:00Z", request="mr"),
            administration("ma1", "2024-03-25T09:00:00Z", request="mr"))
    assert patient_result(r).therapy_start_date == date(2024, 3, 25)
    note = decisions(r)[("mr", "therapy-systemic")].note
    assert not decisions(r)[("mr", "therapy-systemic")].used and "ma1" in note
    # no administration: the planned start; no planned start: authoredOn
    assert patient_result(run(mappings, *pathway_core(), order("mr", **planned))
                          ).therapy_start_date == date(2024, 3, 22)
    assert patient_result(run(mappings, *pathway_core(), order("mr"))
                          ).therapy_start_date == date(2024, 3, 20)


def test_administration_rule_in_the_pathway_alone():
    inp = complete_patient(therapy="2023-03-20")
    inp.events.append(event("systemic-therapy", "2023-03-26", rid="ma", levels=(),
                            rtype="MedicationAdministration", request="chemo"))
    r = reconstruct(inp, S)
    assert r.therapy_start_date == date(2023, 3, 26)
    not_given = replace(inp.events[-1], countable=False, status_note="status not-done")
    inp.events[-1] = not_given
    assert reconstruct(inp, S).therapy_start_date == date(2023, 3, 20)


# ------------------------------------------------------------- 2. statuses by role
@pytest.mark.parametrize("status,counts", [
    ("in-progress", True), ("stopped", True), ("completed", True),
    ("not-done", False), ("entered-in-error", False), ("preparation", False)])
def test_a_started_radiotherapy_course_counts_as_definitive_therapy(mappings, status, counts):
    course = rt_course("rt", status, {"start": "2024-03-18"})
    res = patient_result(run(mappings, *pathway_core(), course))
    assert (res.therapy_start_date == date(2024, 3, 18)) is counts
    assert ("no-definitive-therapy" in res.exclusion_reasons) is not counts


@pytest.mark.parametrize("status", ["in-progress", "stopped"])
def test_biopsy_and_stabilization_keep_their_own_statuses(mappings, status):
    r = run(mappings, *pathway_core(fixation={"status": status}),
            rt_course("rt", "completed", {"start": "2024-03-18"}))
    assert "no-stabilization" in patient_result(r).exclusion_reasons
    r = run(mappings, *pathway_core(biopsy={"status": status}))
    assert patient_result(r).exclusion_reasons == ["no-index-biopsy"]


def test_procedure_statuses_are_set_per_role_in_settings(tmp_path):
    (tmp_path / "settings.yaml").write_text(
        "procedure_statuses_by_role:\n  definitive-therapy: [completed]\n")
    settings = load_mappings(tmp_path).settings
    assert settings.procedure_statuses_for("definitive-therapy") == {"completed"}
    assert settings.procedure_statuses_for("revision") == {"completed"}
    (tmp_path / "settings.yaml").write_text("procedure_statuses_by_role:\n  surgery: [done]\n")
    with pytest.raises(ConfigError, match="unknown role"):
        load_mappings(tmp_path)


# ------------------------------------------------- codes of several concepts (Synthea)
def test_a_code_listed_under_several_concepts_gives_every_modality(mappings):
    chemort = {"resourceType": "Procedure", "id": "cr", "status": "completed",
               "subject": _subject("p1"), "performedPeriod": {
                   "start": "2024-03-25T19:20:06+00:00", "end": "2024-03-25T20:20:06+00:00"},
               "code": {"coding": [{"system": SCT, "code": "703423002"}]}}
    r = run(mappings, *pathway_core(), chemort)
    res = patient_result(r)
    assert res.therapy_modalities == ["systemic", "radiotherapy"]
    assert res.therapy_start_date == date(2024, 3, 25) and res.included
    assert {k for k in decisions(r) if k[0] == "cr"} == {("cr", "therapy-systemic"),
                                                         ("cr", "therapy-radiotherapy")}


@pytest.mark.parametrize("code", ["94225005", "94391008", "94381002", "94161006", "94222008"])
def test_snomed_descendants_of_secondary_malignancy_count_outside_the_index(mappings, code):
    mets = {"resourceType": "Condition", "id": "mets", "subject": _subject("p1"),
            "code": {"coding": [{"system": SCT, "code": code}]}, "onsetDateTime": "2024-02-10"}
    r = run(mappings, *pathway_core(), order("mr"), mets)
    assert patient_result(r).metastatic_outside_index is True


# ------------------------------------------------------------- 4. dates
@pytest.mark.parametrize("shape,issue_code", [
    ({"authoredOn": "2024-03"}, "partial-date"),
    ({"authoredOn": None, "_authoredOn": {"extension": [{"url": DAR,
                                                          "valueCode": "unsupported"}]}},
     "no-date"),
])
def test_an_order_whose_date_is_unusable_names_the_date(mappings, shape, issue_code):
    r = run(mappings, *pathway_core(), order("mr", **shape))
    res = patient_result(r)
    assert "therapy-date-unusable" in res.exclusion_reasons
    assert "no-definitive-therapy" not in res.exclusion_reasons
    assert issues(r)[("mr", issue_code)].severity == "warning"


def test_period_with_only_an_end_is_an_unusable_date(mappings):
    r = run(mappings, *pathway_core(), rt_course("rt", "completed", {"end": "2024-03-29"}))
    assert "therapy-date-unusable" in patient_result(r).exclusion_reasons
    assert "only an end" in issues(r)[("rt", "no-date")].message
    # one that ended before the biopsy cannot be the therapy: nothing is missing but therapy
    r = run(mappings, *pathway_core(), rt_course("rt", "completed", {"end": "2024-01-10"}))
    assert "no-definitive-therapy" in patient_result(r).exclusion_reasons


def test_partial_therapy_date_wholly_before_the_biopsy_is_no_therapy(mappings):
    r = run(mappings, *pathway_core(), order("mr", authoredOn="2023"))
    assert "no-definitive-therapy" in patient_result(r).exclusion_reasons


def test_biopsy_or_stabilization_without_a_day_names_the_date(mappings):
    r = run(mappings, *pathway_core(fixation={"performedDateTime": "2024-03"}), order("mr"))
    assert "stabilization-date-unusable" in patient_result(r).exclusion_reasons
    assert "no-stabilization" not in patient_result(r).exclusion_reasons
    r = run(mappings, *pathway_core(biopsy={"performedDateTime": None,
                                            "_performedDateTime": {"extension": [{
                                                "url": DAR, "valueCode": "unknown"}]}}))
    assert patient_result(r).exclusion_reasons == ["biopsy-date-unusable"]
    assert issues(r)[("p1-bx", "no-date")].severity == "warning"


@pytest.mark.parametrize("birth,age,upper", [
    ("1960", 63, 64),          # undecided: lower bound
    ("1960-01", 64, None),     # every day of January 1960 gives 64 on 2024-03-04
    ("1960-03", 63, 64),
    ("1960-05", 63, None),
])
def test_partial_birth_date_gives_the_age_or_its_lower_bound(mappings, birth, age, upper):
    r = run(mappings, *pathway_core(birth=birth), order("mr"))
    res = patient_result(r)
    assert (res.age_at_biopsy, res.age_upper_bound) == (age, upper)
    note = issues(r)[("p1", "partial-birth-date")]
    assert note.severity == "info" and ("lower bound" in note.message) is (upper is not None)


def test_partial_birth_date_rule_in_the_pathway_alone():
    inp = complete_patient()
    inp.patient = PatientRecord("p1", None, "female", (date(2005, 1, 1), date(2005, 12, 31)))
    r = reconstruct(inp, S)   # biopsy 2023-03-01: 17 or 18
    assert (r.age_at_biopsy, r.age_upper_bound) == (17, 18)
    assert "under-18" in r.exclusion_reasons
