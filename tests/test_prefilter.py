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


# ------------------------------------------------ the accounting view of what cannot matter

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fhir_spine import pipeline  # noqa: E402
from fhir_spine.prefilter import ACCOUNTING_COLUMNS, CODED_TYPES, accounting_view  # noqa: E402
from fhir_spine.sources.files import RawResource  # noqa: E402

MAPPINGS = load_mappings(None, {})


@pytest.mark.parametrize("rtype", sorted(CODED_TYPES))
def test_the_project_views_reduce_to_their_accounting_columns(rtype):
    reduced = accounting_view(MAPPINGS.views[rtype])
    assert reduced is not None
    names = [c["name"] for c in reduced["select"][0]["column"]]
    assert set(names) <= ACCOUNTING_COLUMNS
    assert {"id", "patient_ref", "codings"} <= set(names)
    assert len(names) < len(MAPPINGS.views[rtype]["select"][0]["column"])


def test_a_view_that_iterates_is_not_reduced():
    view = {**MAPPINGS.views["Observation"]}
    view["select"] = [{"forEach": "component", "column": [{"name": "id", "path": "id"}]}]
    assert accounting_view(view) is None
    assert accounting_view({**MAPPINGS.views["Observation"], "where": [{"path": "x"}]}) is None


def _mixed() -> list[RawResource]:
    pat = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    unmapped_obs = {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-01",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                             "display": "Heart rate"}]},
        "category": [{"coding": [{"system": "x", "code": "vital-signs"}]}],
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                       "valueQuantity": {"value": 120}}],
        "valueQuantity": {"value": 70}}
    proc_other = {"resourceType": "Procedure", "id": "pr1", "status": "completed",
                  "subject": {"reference": "Patient/p1"}, "performedDateTime": "2024-01-02",
                  "code": {"coding": [{"system": SCT, "code": "73761001",
                                       "display": "Colonoscopy"}]},
                  "bodySite": [{"coding": [{"system": SCT, "code": "71854001"}]}]}
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": SCT, "code": "38341003", "display": "Hypertension"}]}}
    report = {"resourceType": "DiagnosticReport", "id": "d1", "status": "final",
              "subject": {"reference": "Patient/nobody"},
              "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]}}
    no_code = {"resourceType": "Observation", "id": "o2", "status": "final",
               "subject": {"reference": "Patient/p1"}}
    # read twice: the newer copy is a mapped pain score, the older one is not
    pain_old = {"resourceType": "Observation", "id": "o3", "status": "final",
                "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-01",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "valueQuantity": {"value": 3}}
    pain_new = {**pain_old, "meta": {"lastUpdated": "2024-02-01T00:00:00Z"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]}}
    return [RawResource(json.loads(json.dumps(r)), f"t#{i}") for i, r in enumerate(
        [pat, unmapped_obs, proc_other, cond, report, no_code, pain_new, pain_old])]


def test_what_cannot_matter_is_accounted_as_its_whole_view_would(monkeypatch):
    """The accounting view changes the cost, not the result: codes, issues, counts and
    measurements equal those of the full views (which the reader uses without it)."""
    fast = pipeline.extract(_mixed(), MAPPINGS)
    monkeypatch.setattr(pipeline, "_accounting_views", lambda mappings: {})
    full = pipeline.extract(_mixed(), MAPPINGS)
    assert fast.codes == full.codes
    assert fast.issues == full.issues
    assert fast.accounting == full.accounting
    assert fast.measurements == full.measurements
    assert fast.set_aside_counted == full.set_aside_counted
    assert fast.accounting.read == 8 and not fast.accounting.unaccounted
    assert any(c.key[:2] == ("Observation", "Observation.component.code") for c in fast.codes)
    assert any(i.code == "missing-patient" for i in fast.issues)  # d1's patient is absent
    assert [m.measure for _, m in fast.measurements] == ["vas"]    # the newer copy of o3


def test_a_site_view_is_always_flattened_whole(tmp_path: Path):
    site = tmp_path / "views"
    site.mkdir()
    (site / "Condition.json").write_text(json.dumps(MAPPINGS.views["Condition"]))
    mappings = load_mappings(tmp_path, {})
    assert "Condition" not in pipeline._accounting_views(mappings)
    assert "Observation" in pipeline._accounting_views(mappings)


def test_codes_a_terminology_server_decides_one_by_one_are_never_rejected():
    """An `is-a` entry whose expansion was incomplete leaves its system's codes to the
    server (terminology_codes.py): the prefilter must let them through whole, or a code
    the server puts under the entry would be flattened without its dates."""
    cmap = load_mappings(None, {}).concepts
    unknown = {"resourceType": "Condition", "id": "c", "code": {"coding": [
        {"system": SCT, "code": "999999999"}]}}
    assert not Prefilter(cmap).may_matter(unknown)
    cmap.decider = object()  # type: ignore[assignment]  # never asked by the prefilter
    cmap.decide_by_server("secondary-malignancy", SCT, "128462008")
    assert Prefilter(cmap).may_matter(unknown)
    other = {"resourceType": "Condition", "id": "c", "code": {"coding": [
        {"system": "http://loinc.org", "code": "0000-0"}]}}
    assert not Prefilter(cmap).may_matter(other)


def test_an_unmapped_code_the_lexicon_suggests_a_concept_for_can_matter():
    """what_if.py reruns the pathway with such a code mapped: it needs the whole row."""
    from fhir_spine.review import default_lexicon

    radiation = proc("999000111")
    radiation["code"]["coding"][0]["display"] = "Stereotactic radiation therapy of spine"
    assert not PF.may_matter(radiation)
    with_lexicon = Prefilter(MAPPINGS.concepts, default_lexicon())
    assert with_lexicon.may_matter(radiation)
    assert not with_lexicon.may_matter(proc("73761001"))  # no display: nothing to suggest
    colonoscopy = proc("73761001")
    colonoscopy["code"]["coding"][0]["display"] = "Colonoscopy"
    assert not with_lexicon.may_matter(colonoscopy)
