"""mCODE shapes at the normalisation layer, one small builder each (issue 11)."""

from __future__ import annotations

from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource

SCT = "http://snomed.info/sct"
SURGERY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-cancer-related-surgical-procedure"


def procedure(rid: str, code: str, profile: str | None = None) -> dict:
    res = {"resourceType": "Procedure", "id": rid, "status": "completed",
           "subject": {"reference": "Patient/p1"}, "performedDateTime": "2024-03-20",
           "code": {"coding": [{"system": SCT, "code": code}]}}
    if profile:
        res["meta"] = {"profile": [profile]}
    return res


def run(*resources):
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01"}
    items = [RawResource(r, f"test:{i}") for i, r in enumerate((patient, *resources))]
    result = extract(items, load_mappings(), validation="off")
    assert result.accounting.balanced
    return result


def test_cancer_related_surgery_is_recognised_by_its_mcode_profile():
    r = run(procedure("mast", "64368001", SURGERY), procedure("plain", "64368001"))
    events = {e.source.resource_id: e for e in r.inputs["p1"].events}
    assert set(events) == {"mast"} and events["mast"].concept == "cancer-related-surgery"
    assert ("plain", "unmapped-code") in {(i.resource_id, i.code) for i in r.issues}
    tally = {c.key: c.concept for c in r.codes}
    assert tally[("Procedure", "Procedure.category", "urn:fhir-spine:meta.profile", SURGERY)] \
        == "cancer-related-surgery"


def test_secondary_malignancy_by_site_specific_snomed_code():
    cond = {"resourceType": "Condition", "id": "brain", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": SCT, "code": "94225005"}]}}
    [c] = run(cond).inputs["p1"].conditions
    assert c.finding == "secondary-malignancy"
