"""The project's ViewDefinitions (src/fhir_spine/mappings/views): shape, columns, rows.

The column names are a contract with the pathway engine, so they are spelled out
here rather than read back from the JSON.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_spine.settings import DEFAULT_MAPPINGS
from fhir_spine.views import compile_view, load_view
from fhir_spine.views.fhirpath import compile_path

VIEWS_DIR = DEFAULT_MAPPINGS / "views"

COMMON = [
    "id",
    "resource_type",
    "patient_ref",
    "patient_reference",
    "status",
    "meta_last_updated",
    "codings",
]
COLUMNS: dict[str, list[str]] = {
    "Patient": [*COMMON, "birth_date", "gender", "deceased_boolean", "deceased_datetime"],
    "Procedure": [
        *COMMON,
        "performed_datetime",
        "performed_period_start",
        "performed_period_end",
        "performed_string",
        "encounter_ref",
        "encounter_reference",
        "part_of_refs",
        "body_site_codings",
        "category_codings",
        "status_reason_codings",
        "reason_codings",
        "profiles",
        "date_extensions",
    ],
    "Observation": [
        *COMMON,
        "effective_datetime",
        "effective_period_start",
        "effective_instant",
        "issued",
        "value_quantity",
        "value_unit",
        "value_integer",
        "value_string",
        "value_boolean",
        "value_codings",
        "category_codings",
        "encounter_ref",
        "has_member_refs",
        "data_absent_reason_codings",
        "value_comparator",
        "value_coding_extensions",
        "value_range_low",
        "value_range_high",
        "value_ratio_numerator",
        "value_sampled_data",
        "value_time",
        "value_datetime",
        "value_period_start",
        "components",
    ],
    "DiagnosticReport": [
        *COMMON,
        "issued",
        "effective_datetime",
        "effective_period_start",
        "category_codings",
        "conclusion",
        "conclusion_codings",
        "based_on_refs",
        "result_refs",
        "specimen_refs",
        "encounter_ref",
    ],
    "MedicationRequest": [
        *COMMON,
        "intent",
        "authored_on",
        "medication_codings",
        "medication_ref",
        "medication_reference",
        "bounds_period_start",
        "status_reason_codings",
        "encounter_ref",
        "category_codings",
        "date_extensions",
    ],
    "MedicationAdministration": [
        *COMMON,
        "effective_datetime",
        "effective_period_start",
        "effective_period_end",
        "medication_codings",
        "medication_ref",
        "medication_reference",
        "request_ref",
        "context_ref",
        "date_extensions",
    ],
    "MedicationStatement": [
        *COMMON,
        "effective_datetime",
        "effective_period_start",
        "effective_period_end",
        "medication_codings",
        "medication_ref",
        "medication_reference",
        "date_asserted",
        "context_ref",
        "date_extensions",
    ],
    "Encounter": [
        *COMMON,
        "class_system",
        "class_code",
        "priority_codings",
        "type_codings",
        "period_start",
        "period_end",
        "reason_codings",
        "hospitalization_admit_source_codings",
    ],
    "Condition": [
        *COMMON,
        "onset_datetime",
        "onset_period_start",
        "recorded_date",
        "abatement_datetime",
        "clinical_status_codes",
        "verification_status_codes",
        "category_codings",
        "body_site_codings",
        "encounter_ref",
    ],
    "Medication": ["id", "codings", "ingredient_codings"],
    "QuestionnaireResponse": [*COMMON, "questionnaire", "authored", "encounter_ref", "items"],
}
COLLECTIONS = {
    "codings",
    "part_of_refs",
    "body_site_codings",
    "category_codings",
    "status_reason_codings",
    "reason_codings",
    "value_codings",
    "has_member_refs",
    "data_absent_reason_codings",
    "value_coding_extensions",
    "components",
    "items",
    "profiles",
    "conclusion_codings",
    "based_on_refs",
    "result_refs",
    "specimen_refs",
    "medication_codings",
    "priority_codings",
    "type_codings",
    "hospitalization_admit_source_codings",
    "clinical_status_codes",
    "verification_status_codes",
    "ingredient_codings",
    "date_extensions",
}

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10"
META = {"lastUpdated": "2024-05-01T12:00:00Z"}
SUBJECT = {"reference": "Patient/pt1"}


def _row(rtype: str, /, **values: Any) -> dict[str, Any]:
    """Expected row: every listed column, null/empty unless given."""
    row: dict[str, Any] = {c: ([] if c in COLLECTIONS else None) for c in COLUMNS[rtype]}
    unknown = set(values) - set(row)
    assert not unknown, unknown
    row.update(values)
    return row


def _common(resource_type: str, rid: str, **values: Any) -> dict[str, Any]:
    base = {
        "id": rid,
        "resource_type": resource_type,
        "patient_ref": "pt1",
        "patient_reference": "Patient/pt1",
        "meta_last_updated": META["lastUpdated"],
    }
    return _row(resource_type, **(base | values))


CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {
            "resourceType": "Patient",
            "id": "pt1",
            "meta": META,
            "birthDate": "1950-02-03",
            "gender": "female",
            "deceasedDateTime": "2021-06-01T00:00:00Z",
        },
        _row(
            "Patient",
            id="pt1",
            resource_type="Patient",
            patient_ref="pt1",
            meta_last_updated=META["lastUpdated"],
            birth_date="1950-02-03",
            gender="female",
            deceased_datetime="2021-06-01T00:00:00Z",
        ),
    ),
    (
        {
            "resourceType": "Procedure",
            "id": "proc1",
            "meta": META,
            "status": "completed",
            "subject": SUBJECT,
            "code": {
                "coding": [
                    {"system": SCT, "code": "387713003", "display": "Surgical procedure"},
                    {"system": "http://www.ama-assn.org/go/cpt", "code": "22612"},
                ]
            },
            "performedPeriod": {"start": "2024-01-10T08:00:00Z", "end": "2024-01-10T11:30:00Z"},
            "encounter": {"reference": "Encounter/enc1"},
            "partOf": [{"reference": "Procedure/proc0"}],
            "bodySite": [
                {"coding": [{"system": SCT, "code": "122496007", "display": "Lumbar spine"}]}
            ],
            "category": {"coding": [{"system": SCT, "code": "387713003"}]},
            "reasonCode": [{"coding": [{"system": ICD, "code": "C79.51"}]}],
        },
        _common(
            "Procedure",
            "proc1",
            status="completed",
            codings=[
                f"{SCT}|387713003|Surgical procedure",
                "http://www.ama-assn.org/go/cpt|22612|",
            ],
            performed_period_start="2024-01-10T08:00:00Z",
            performed_period_end="2024-01-10T11:30:00Z",
            encounter_ref="enc1",
            encounter_reference="Encounter/enc1",
            part_of_refs=["proc0"],
            body_site_codings=[f"{SCT}|122496007|Lumbar spine"],
            category_codings=[f"{SCT}|387713003|"],
            reason_codings=[f"{ICD}|C79.51|"],
        ),
    ),
    (
        {
            "resourceType": "Procedure",
            "id": "proc2",
            "meta": META,
            "status": "not-done",
            "subject": {"reference": "urn:uuid:6a1d0c1e-7e5e-4c1b-9a36-0e0b1c2d3e4f"},
            "performedString": "last spring",
            "statusReason": {
                "coding": [{"system": SCT, "code": "183932001", "display": "Refused"}]
            },
        },
        _common(
            "Procedure",
            "proc2",
            status="not-done",
            patient_ref="6a1d0c1e-7e5e-4c1b-9a36-0e0b1c2d3e4f",
            patient_reference="urn:uuid:6a1d0c1e-7e5e-4c1b-9a36-0e0b1c2d3e4f",
            performed_string="last spring",
            status_reason_codings=[f"{SCT}|183932001|Refused"],
        ),
    ),
    (
        {
            "resourceType": "Observation",
            "id": "obs1",
            "meta": META,
            "status": "final",
            "subject": {"reference": "http://server/fhir/Patient/pt1/_history/4"},
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "72514-3", "display": "Pain"}]
            },
            "category": [{"coding": [{"system": "cat", "code": "survey"}]}],
            "effectiveDateTime": "2024-01-09",
            "issued": "2024-01-09T10:00:00Z",
            "valueQuantity": {"value": 7, "unit": "{score}"},
            "encounter": {"reference": "Encounter/enc1"},
            "hasMember": [{"reference": "Observation/a"}, {"reference": "Observation/b"}],
        },
        _common(
            "Observation",
            "obs1",
            status="final",
            patient_reference="http://server/fhir/Patient/pt1/_history/4",
            codings=["http://loinc.org|72514-3|Pain"],
            category_codings=["cat|survey|"],
            effective_datetime="2024-01-09",
            issued="2024-01-09T10:00:00Z",
            value_quantity=7,
            value_unit="{score}",
            encounter_ref="enc1",
            has_member_refs=["a", "b"],
        ),
    ),
    (
        {
            "resourceType": "Observation",
            "id": "obs2",
            "meta": META,
            "status": "final",
            "subject": {"reference": "Group/g1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]},
            "effectivePeriod": {"start": "2024-02-01"},
            "valueCodeableConcept": {
                "coding": [{"system": SCT, "code": "10828004", "display": "Positive"}]
            },
            "dataAbsentReason": {"coding": [{"code": "unknown"}]},
        },
        _common(
            "Observation",
            "obs2",
            status="final",
            patient_ref=None,
            patient_reference="Group/g1",
            codings=["http://loinc.org|x|"],
            effective_period_start="2024-02-01",
            value_codings=[f"{SCT}|10828004|Positive"],
            data_absent_reason_codings=["|unknown|"],
        ),
    ),
    (
        {
            "resourceType": "DiagnosticReport",
            "id": "dr1",
            "meta": META,
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": "http://loinc.org", "code": "60567-5"}]},
            "category": [{"coding": [{"system": "v2", "code": "PAT"}]}],
            "effectivePeriod": {"start": "2024-01-05"},
            "issued": "2024-01-08T09:00:00Z",
            "conclusion": "Metastatic adenocarcinoma",
            "conclusionCode": [{"coding": [{"system": SCT, "code": "94222008"}]}],
            "basedOn": [{"reference": "ServiceRequest/sr1"}],
            "result": [{"reference": "Observation/obs1"}, {"reference": "Observation/obs2"}],
            "specimen": [{"reference": "Specimen/sp1"}],
            "encounter": {"reference": "Encounter/enc1"},
        },
        _common(
            "DiagnosticReport",
            "dr1",
            status="final",
            codings=["http://loinc.org|60567-5|"],
            category_codings=["v2|PAT|"],
            effective_period_start="2024-01-05",
            issued="2024-01-08T09:00:00Z",
            conclusion="Metastatic adenocarcinoma",
            conclusion_codings=[f"{SCT}|94222008|"],
            based_on_refs=["sr1"],
            result_refs=["obs1", "obs2"],
            specimen_refs=["sp1"],
            encounter_ref="enc1",
        ),
    ),
    (
        {
            "resourceType": "MedicationRequest",
            "id": "mr1",
            "meta": META,
            "status": "active",
            "intent": "order",
            "subject": SUBJECT,
            "authoredOn": "2024-01-02",
            "medicationReference": {"reference": "Medication/med1"},
            "dosageInstruction": [
                {"timing": {"repeat": {"boundsPeriod": {"start": "2024-01-03"}}}}
            ],
            "category": [{"coding": [{"system": "cat", "code": "inpatient"}]}],
            "encounter": {"reference": "Encounter/enc1"},
        },
        _common(
            "MedicationRequest",
            "mr1",
            status="active",
            intent="order",
            authored_on="2024-01-02",
            medication_ref="med1",
            medication_reference="Medication/med1",
            bounds_period_start="2024-01-03",
            category_codings=["cat|inpatient|"],
            encounter_ref="enc1",
        ),
    ),
    (
        {
            "resourceType": "MedicationAdministration",
            "id": "ma1",
            "meta": META,
            "status": "completed",
            "subject": SUBJECT,
            "medicationCodeableConcept": {
                "coding": [{"system": "rxnorm", "code": "1234", "display": "Dex"}]
            },
            "effectivePeriod": {"start": "2024-01-03T08:00:00Z", "end": "2024-01-03T09:00:00Z"},
            "request": {"reference": "MedicationRequest/mr1"},
            "context": {"reference": "Encounter/enc1"},
        },
        _common(
            "MedicationAdministration",
            "ma1",
            status="completed",
            medication_codings=["rxnorm|1234|Dex"],
            effective_period_start="2024-01-03T08:00:00Z",
            effective_period_end="2024-01-03T09:00:00Z",
            request_ref="mr1",
            context_ref="enc1",
        ),
    ),
    (
        {
            "resourceType": "Encounter",
            "id": "enc1",
            "meta": META,
            "status": "finished",
            "subject": SUBJECT,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "priority": {"coding": [{"system": "prio", "code": "EM"}]},
            "type": [{"coding": [{"system": SCT, "code": "183452005"}]}],
            "period": {"start": "2024-01-01", "end": "2024-01-12"},
            "reasonCode": [{"coding": [{"system": SCT, "code": "22253000", "display": "Pain"}]}],
            "hospitalization": {"admitSource": {"coding": [{"system": "src", "code": "emd"}]}},
        },
        _common(
            "Encounter",
            "enc1",
            status="finished",
            class_system="http://terminology.hl7.org/CodeSystem/v3-ActCode",
            class_code="IMP",
            priority_codings=["prio|EM|"],
            type_codings=[f"{SCT}|183452005|"],
            period_start="2024-01-01",
            period_end="2024-01-12",
            reason_codings=[f"{SCT}|22253000|Pain"],
            hospitalization_admit_source_codings=["src|emd|"],
        ),
    ),
    (
        {
            "resourceType": "Condition",
            "id": "c1",
            "meta": META,
            "subject": SUBJECT,
            "clinicalStatus": {"coding": [{"system": "cs", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "vs", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "cat", "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": ICD, "code": "C79.51", "display": "Bone metastasis"}]},
            "bodySite": [{"coding": [{"system": SCT, "code": "264112000"}]}],
            "onsetPeriod": {"start": "2023-12-01"},
            "recordedDate": "2023-12-05",
            "abatementDateTime": "2024-06-01",
            "encounter": {"reference": "Encounter/enc1"},
        },
        _common(
            "Condition",
            "c1",
            codings=[f"{ICD}|C79.51|Bone metastasis"],
            clinical_status_codes=["active"],
            verification_status_codes=["confirmed"],
            category_codings=["cat|problem-list-item|"],
            body_site_codings=[f"{SCT}|264112000|"],
            onset_period_start="2023-12-01",
            recorded_date="2023-12-05",
            abatement_datetime="2024-06-01",
            encounter_ref="enc1",
        ),
    ),
    (
        {
            "resourceType": "QuestionnaireResponse",
            "id": "qr1",
            "meta": META,
            "status": "completed",
            "subject": SUBJECT,
            "questionnaire": "http://fhir-spine.org/fhir/Questionnaire/pain|1",
            "authored": "2024-01-09T10:00:00Z",
            "encounter": {"reference": "Encounter/enc1"},
            "item": [{"linkId": "pain-intensity", "answer": [{"valueInteger": 4}]}],
        },
        _common(
            "QuestionnaireResponse",
            "qr1",
            status="completed",
            questionnaire="http://fhir-spine.org/fhir/Questionnaire/pain|1",
            authored="2024-01-09T10:00:00Z",
            encounter_ref="enc1",
            items=[{"linkId": "pain-intensity", "answer": [{"valueInteger": 4}]}],
        ),
    ),
    (
        {
            "resourceType": "Medication",
            "id": "med1",
            "code": {"coding": [{"system": "rxnorm", "code": "5678", "display": "Drug"}]},
        },
        _row("Medication", id="med1", codings=["rxnorm|5678|Drug"]),
    ),
]


def test_every_resource_type_has_a_view() -> None:
    assert sorted(p.stem for p in VIEWS_DIR.glob("*.json")) == sorted(COLUMNS)


@pytest.mark.parametrize("resource_type", sorted(COLUMNS))
def test_view_shape(resource_type: str) -> None:
    definition = load_view(VIEWS_DIR / f"{resource_type}.json")
    view = compile_view(definition)
    assert definition.resource == view.resource_type == resource_type
    assert view.name == resource_type.lower()
    assert list(view.column_names) == COLUMNS[resource_type]
    assert {c.name for c in view.columns if c.collection} == COLLECTIONS & set(
        COLUMNS[resource_type]
    )
    assert all(c.type for c in view.columns), "every column declares its FHIR type"
    # One row per resource: no iteration anywhere, no unions.
    for select in definition.select:
        assert not (select.for_each or select.for_each_or_null or select.repeat or select.union_all)
    # Performance guard: every column is evaluated without the interpreter.
    slow = [c.path for c in definition.columns if not compile_path(c.path).has_fast_path]
    assert not slow


@pytest.mark.parametrize(
    ("resource", "expected"), CASES, ids=[f"{r['resourceType']}-{r['id']}" for r, _ in CASES]
)
def test_expected_row(resource: dict[str, Any], expected: dict[str, Any]) -> None:
    view = compile_view(load_view(VIEWS_DIR / f"{resource['resourceType']}.json"))
    for fast in (True, False):
        rows = compile_view(view, fast_path=fast).rows(resource)
        assert rows == [expected]
        assert list(rows[0]) == COLUMNS[resource["resourceType"]]


@pytest.mark.parametrize("resource_type", sorted(COLUMNS))
def test_minimal_resource_gives_one_row(resource_type: str) -> None:
    view = compile_view(load_view(VIEWS_DIR / f"{resource_type}.json"))
    rows = view.rows({"resourceType": resource_type, "id": "x"})
    assert len(rows) == 1 and rows[0]["id"] == "x"
    assert view.rows({"resourceType": "Basic", "id": "x"}) == []
