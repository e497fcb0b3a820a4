"""The cheap pre-filter (issue 16): which resources can matter, decided on the dict."""

from __future__ import annotations

from fhir_spine.prefilter import Prefilter
from fhir_spine.settings import load_mappings

SCT = "http://snomed.info/sct"
PF = Prefilter(load_mappings(None, {}).concepts)


def proc(code: str, system: str = SCT, **extra):
    return {"resourceType": "Procedure", "id": "x", "code": {"coding": [
        {"system": system, "code": code}]}, **extra}


def test_types_not_decided_by_codes_always_can_matter():
    assert PF.may_matter({"resourceType": "Patient", "id": "p"})
    assert PF.may_matter({"resourceType": "Encounter", "id": "e"})


def test_a_mapped_code_can_matter_an_unmapped_one_cannot():
    assert PF.may_matter(proc("703423002"))           # combined chemoradiation
    assert not PF.may_matter(proc("73761001"))        # colonoscopy
    assert not PF.may_matter(proc("ZZ", "http://site.example"))


def test_a_mapped_profile_or_body_site_can_matter():
    mcode = "http://hl7.org/fhir/us/mcode/StructureDefinition/" \
        "mcode-cancer-related-surgical-procedure"
    assert PF.may_matter(proc("ZZ", "http://site.example", meta={"profile": [mcode]}))
    assert PF.may_matter(proc("ZZ", "http://site.example",
                              bodySite=[{"coding": [{"system": SCT, "code": "7610001"}]}]))


def test_odd_shapes_do_not_fail():
    assert not PF.may_matter({"resourceType": "Observation", "code": [1, "x"],
                              "component": [None, {"code": {"coding": [None]}}]})
