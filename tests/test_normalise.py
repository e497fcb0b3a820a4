"""Messy FHIR -> records: the variants of issue 2 at the normalisation layer."""

from __future__ import annotations

import pytest

from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource

CPT = "http://www.ama-assn.org/go/cpt"
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


def patient(pid="p1"):
    return {"resourceType": "Patient", "id": pid, "birthDate": "1960-05-01", "gender": "male"}


def procedure(rid, code=("20225", CPT), subject="Patient/p1", **extra):
    return {"resourceType": "Procedure", "id": rid, "status": "completed",
            "subject": {"reference": subject},
            "code": {"coding": [{"system": code[1], "code": code[0]}]}, **extra}


def med_request(rid, atc="L01XE03", **extra):
    base = {"resourceType": "MedicationRequest", "id": rid, "status": "active",
            "intent": "order", "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"coding": [{"system": ATC, "code": atc}]},
            "authoredOn": "2023-04-01"}
    return {**base, **extra}


def run(mappings, *resources):
    items = [RawResource(r, f"test:{i}") for i, r in enumerate(resources)]
    result = extract(items, mappings, validation="off")
    assert result.accounting.balanced, result.accounting
    return result


def events_of(result, pid="p1"):
    return {e.source.resource_id: e for e in result.inputs[pid].events}


def decisions_of(result, pid="p1"):
    [r] = [r for r in result.results if r.patient_id == pid]
    return {d.source.resource_id: d for d in r.decisions}


def issue_codes(result):
    return {(i.resource_id, i.code) for i in result.issues}


def test_performed_datetime_and_period_both_give_the_start(mappings):
    r = run(mappings, patient(),
            procedure("a", performedDateTime="2023-03-01T10:00:00Z"),
            procedure("b", performedPeriod={"start": "2023-03-05T10:00:00Z",
                                            "end": "2023-03-05T11:00:00Z"}))
    ev = events_of(r)
    assert str(ev["a"].start.day) == "2023-03-01"
    assert str(ev["b"].start.day) == "2023-03-05" and ev["b"].end.instant.hour == 11


@pytest.mark.parametrize("status", ["not-done", "entered-in-error", "in-progress", "stopped"])
def test_procedure_statuses_other_than_completed_are_kept_but_not_counted(mappings, status):
    r = run(mappings, patient(),
            procedure("x", status=status, performedDateTime="2023-01-01T10:00:00Z"),
            procedure("bx", performedDateTime="2023-03-01T10:00:00Z"))
    assert not events_of(r)["x"].countable
    d = decisions_of(r)["x"]
    assert not d.used and d.note == f"status {status}"
    assert r.results[0].index_biopsy_date.isoformat() == "2023-03-01"


@pytest.mark.parametrize("change,note", [
    ({"status": "cancelled"}, "status cancelled"),
    ({"status": "entered-in-error"}, "status entered-in-error"),
    ({"intent": "proposal"}, "intent proposal"),
    ({"status": "draft"}, "status draft"),
])
def test_orders_never_started_do_not_count(mappings, change, note):
    r = run(mappings, patient(), med_request("m", **change))
    e = events_of(r)["m"]
    assert not e.countable and e.status_note == note


def test_order_start_prefers_bounds_period(mappings):
    r = run(mappings, patient(), med_request(
        "m", dosageInstruction=[{"timing": {"repeat": {"boundsPeriod": {"start": "2023-04-10"}}}}]))
    assert str(events_of(r)["m"].start.day) == "2023-04-10"


@pytest.mark.parametrize("reference", [
    "Patient/p1", "https://ehr.example.org/fhir/Patient/p1", "Patient/p1/_history/3"])
def test_reference_forms_resolve_to_the_logical_id(mappings, reference):
    r = run(mappings, patient(), procedure("bx", subject=reference,
                                           performedDateTime="2023-03-01T10:00:00Z"))
    assert "bx" in events_of(r)


def test_reference_to_missing_patient_is_an_error_issue(mappings):
    r = run(mappings, patient(), procedure("bx", subject="Patient/ghost",
                                           performedDateTime="2023-03-01"))
    assert ("bx", "missing-patient") in issue_codes(r)


def test_medication_reference_resolves_through_medication_resource(mappings):
    med = {"resourceType": "Medication", "id": "med1",
           "code": {"coding": [{"system": ATC, "code": "M05BA08"}]}}
    req = med_request("m", medicationReference={"reference": "Medication/med1"})
    del req["medicationCodeableConcept"]
    r = run(mappings, patient(), med, req)
    assert events_of(r)["m"].concept == "bone-modifying-agent"


def test_unresolved_medication_reference_is_reported(mappings):
    req = med_request("m", medicationReference={"reference": "Medication/nope"})
    del req["medicationCodeableConcept"]
    r = run(mappings, patient(), req)
    assert ("m", "unresolved-medication") in issue_codes(r)


def test_coded_ecog_and_out_of_range_vas(mappings):
    ecog = {"resourceType": "Observation", "id": "e", "status": "final",
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2023-02-01",
            "code": {"coding": [{"system": LOINC, "code": "89247-1"}]},
            "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA9624-3"}]}}
    vas = {"resourceType": "Observation", "id": "v", "status": "final",
           "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2023-02-01",
           "code": {"coding": [{"system": LOINC, "code": "38214-3"}]},
           "valueQuantity": {"value": 14}}
    r = run(mappings, patient(), ecog, vas)
    [m] = r.inputs["p1"].measurements
    assert (m.measure, m.value) == ("ecog", 2.0)
    assert ("v", "value-out-of-range") in issue_codes(r)


def test_generic_biopsy_code_needs_a_vertebral_body_site(mappings):
    sct = "http://snomed.info/sct"
    plain = procedure("skin", code=("86273004", sct), performedDateTime="2023-03-01")
    spine = procedure("spine", code=("86273004", sct), performedDateTime="2023-03-02",
                      bodySite=[{"coding": [{"system": sct, "code": "7610001"}]}])
    r = run(mappings, patient(), plain, spine)
    assert set(events_of(r)) == {"spine"} and events_of(r)["spine"].levels == ("T10",)
    assert r.set_aside_counted["unmapped-code"]["Procedure"] >= 1  # counted, no row


def test_partial_and_unparseable_dates_are_issues(mappings):
    r = run(mappings, patient(), procedure("p", performedDateTime="2023-04"),
            procedure("u", performedDateTime="2023-02-30"))
    codes = issue_codes(r)
    assert ("p", "partial-date") in codes and ("u", "unparseable-date") in codes
    d = decisions_of(r)
    assert not d["p"].used and not d["u"].used


def test_duplicate_resource_keeps_the_newer_version(mappings):
    old = procedure("bx", performedDateTime="2023-03-01",
                    meta={"lastUpdated": "2023-03-01T00:00:00Z"})
    new = procedure("bx", performedDateTime="2023-03-02",
                    meta={"lastUpdated": "2023-04-01T00:00:00Z"})
    r = run(mappings, patient(), new, old)
    assert str(events_of(r)["bx"].start.day) == "2023-03-02"
    assert ("bx", "duplicate-resource") in issue_codes(r)
    assert r.accounting.read == 3 and r.accounting.set_aside >= 1
