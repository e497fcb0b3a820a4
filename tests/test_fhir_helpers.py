"""fhir_spine.fhir: references, instants and the resource types a pull asks for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from fhir_spine.fhir import (
    export_types,
    instant,
    medication_id,
    parse_instant,
    patient_types,
    pulled_types,
    reference_key,
)
from fhir_spine.settings import load_mappings

BASE = "https://ehr.example.org/fhir"


def test_reference_keys_of_references_and_urls():
    assert reference_key("Procedure/x9") == ("Procedure", "x9")
    assert reference_key(f"{BASE}/Observation/o3/_history/2") == ("Observation", "o3")
    assert reference_key("Patient/p1/") == ("Patient", "p1")
    assert reference_key("Patient?identifier=123") is None
    assert reference_key("Patient/p1?_format=json") == ("Patient", "p1")
    for other in ("#contained", "urn:uuid:0b3c", "p1", "", None, 42, "fhir/x1"):
        assert reference_key(other) is None


def test_medication_id_only_for_orders():
    order = {"resourceType": "MedicationRequest",
             "medicationReference": {"reference": "Medication/m1"}}
    assert medication_id(order) == "m1"
    assert medication_id({**order, "resourceType": "Observation"}) is None
    assert medication_id({"resourceType": "MedicationAdministration"}) is None


def test_instants_in_utc():
    moment = datetime(2025, 6, 1, 14, 0, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert instant(moment) == "2025-06-01T12:00:05.123Z"
    assert instant(moment, millis=False) == "2025-06-01T12:00:05Z"
    assert parse_instant("2025-06-01T12:00:05.123Z") == moment.replace(microsecond=123000)
    assert parse_instant("2025-06-01T12:00:05").tzinfo is UTC


def test_types_a_pull_asks_for():
    mappings = load_mappings()
    by_patient = patient_types(mappings)
    assert "Patient" not in by_patient and "Medication" not in by_patient
    assert pulled_types(mappings) == ("Patient", *by_patient, "Medication")
    assert export_types(mappings, "system") == pulled_types(mappings)
    assert export_types(mappings, "group") == ("Patient", *by_patient)
