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
    assert r.set_aside_counted["unmapped-code"] == {"Procedure": 1}  # "plain": counted
    tally = {c.key: c.concept for c in r.codes}
    assert tally[("Procedure", "Procedure.category", "urn:fhir-spine:meta.profile", SURGERY)] \
        == "cancer-related-surgery"


def test_secondary_malignancy_by_site_specific_snomed_code():
    cond = {"resourceType": "Condition", "id": "brain", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": SCT, "code": "94225005"}]}}
    [c] = run(cond).inputs["p1"].conditions
    assert c.finding == "secondary-malignancy"


# ------------------------------------------------ performance status (mCODE STU4 examples)

def _mcode_example(name: str) -> dict:
    """An example instance of the mCODE STU4 npm package, on our patient p1."""
    import json

    from test_mcode_examples import DEFAULT_DIR

    res = json.loads((DEFAULT_DIR / "example" / f"Observation-{name}.json").read_text())
    res["subject"] = {"reference": "Patient/p1"}
    return res


def _measures(result) -> dict[str, float]:
    return {m.measure: m.value for _, m in result.measurements}


def test_mcode_ecog_reads_a_value_integer_and_an_la_coded_value():
    as_integer = _mcode_example("ecog-performance-status-fully-active")
    assert as_integer["valueInteger"] == 0
    coded = {**as_integer, "id": "ecog-coded"}
    del coded["valueInteger"]
    coded["valueCodeableConcept"] = {"coding": [{"system": "http://loinc.org",
                                                 "code": "LA9624-3"}]}  # ECOG 2
    assert _measures(run(as_integer)) == {"ecog": 0}
    assert _measures(run(coded)) == {"ecog": 2}


def test_mcode_karnofsky_is_its_own_measure_never_ecog():
    karnofsky = _mcode_example("karnofsky-performance-status-normal-activity")
    assert karnofsky["code"]["coding"][0]["code"] == "89243-0"
    r = run(karnofsky)
    assert _measures(r) == {"karnofsky": 90}  # the value as sent; no ECOG made of it
    out_of_range = {**karnofsky, "id": "k-bad", "valueInteger": 130}
    bad = run(out_of_range)
    assert _measures(bad) == {}
    assert any("karnofsky" in i.message for i in bad.issues)
