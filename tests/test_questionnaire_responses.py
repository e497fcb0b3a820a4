"""Issue 11, item 8: pain and SOSGOQ2.0 recorded as QuestionnaireResponse.

`qr()` builds a response; `item()` one answered item. The map is
`mappings/questionnaires.yaml` (site-extendable with --mappings).
"""

from __future__ import annotations

import pytest

from fhir_spine.errors import ConfigError
from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource
from fhir_spine.tables import build_tables

SOSGOQ = "http://fhir-spine.org/fhir/Questionnaire/sosgoq2"
PAIN = "http://fhir-spine.org/fhir/Questionnaire/pain"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


def item(link_id: str, *answers: dict, children: tuple[dict, ...] = ()) -> dict:
    out: dict = {"linkId": link_id, "answer": list(answers)}
    if children:
        out["item"] = list(children)
    return out


def qr(rid: str, questionnaire: str, *items: dict, authored: str | None = "2024-03-01T10:00:00Z",
       status: str = "completed") -> dict:
    res = {"resourceType": "QuestionnaireResponse", "id": rid, "status": status,
           "questionnaire": questionnaire, "subject": {"reference": "Patient/p1"},
           "item": list(items)}
    if authored:
        res["authored"] = authored
    return res


def run(mappings, *resources):
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01"}
    items = [RawResource(r, f"test:{i}") for i, r in enumerate((patient, *resources))]
    result = extract(items, mappings, validation="warn")
    assert result.accounting.balanced, result.accounting
    return result


def measured(result) -> dict[tuple[str, str], tuple[float, str]]:
    return {(m.source.resource_id, m.measure): (m.value, str(m.effective.day))
            for m in result.inputs["p1"].measurements}


def test_sosgoq_domains_and_pain_read_through_the_map(mappings):
    sos = qr("sos", SOSGOQ + "|2.0",
             item("total", {"valueDecimal": 57.5}),
             item("domains", children=(item("physical-function", {"valueInteger": 70}),
                                       item("pain", {"valueQuantity": {"value": 40}}),
                                       item("mental-health", {"valueString": "65"}),
                                       item("social-function", {"valueInteger": 55}))),
             item("free-text", {"valueString": "back pain at night"}))
    pain = qr("nrs", PAIN, item("pain-intensity",
                                {"valueCoding": {"system": LOINC, "code": "LA6115-5"}}),
              authored="2024-03-02")
    loinc = qr("lhc", "http://example.org/Questionnaire/lhc-pain",
               item("/72514-3", {"valueInteger": 6}), authored="2024-03-12T08:00:00+02:00")
    r = run(mappings, sos, pain, loinc)
    assert measured(r) == {
        ("sos", "sosgoq_total"): (57.5, "2024-03-01"),
        ("sos", "sosgoq_physical"): (70, "2024-03-01"),
        ("sos", "sosgoq_pain"): (40, "2024-03-01"), ("sos", "sosgoq_mental"): (65, "2024-03-01"),
        ("sos", "sosgoq_social"): (55, "2024-03-01"), ("nrs", "vas"): (4, "2024-03-02"),
        ("lhc", "vas"): (6, "2024-03-12")}
    obs = build_tables(r).observations
    assert set(obs["resource_type"]) == {"QuestionnaireResponse"}
    assert r.accounting.used == 4


def test_a_response_the_map_does_not_cover_is_counted_not_an_error(mappings):
    r = run(mappings, qr("phq", "http://example.org/Questionnaire/phq9",
                         item("q1", {"valueInteger": 2})))
    [issue] = [i for i in r.issues if i.resource_id == "phq"]
    assert (issue.severity, issue.code, issue.sets_aside) == (
        "info", "questionnaire-not-mapped", True)
    assert r.accounting.set_aside == 1


def test_status_authored_and_unreadable_answers(mappings):
    r = run(mappings,
            qr("draft", PAIN, item("pain-intensity", {"valueInteger": 3}), status="in-progress"),
            qr("undated", PAIN, item("pain-intensity", {"valueInteger": 3}), authored=None),
            qr("month", PAIN, item("pain-intensity", {"valueInteger": 3}), authored="2024-03"),
            qr("word", PAIN, item("pain-intensity", {"valueString": "a lot"})),
            qr("high", PAIN, item("pain-intensity", {"valueInteger": 30})))
    assert measured(r) == {}
    codes = {(i.resource_id, i.code): i for i in r.issues}
    assert codes[("draft", "status-not-counted")].sets_aside
    assert codes[("undated", "no-date")].sets_aside
    assert codes[("month", "partial-date")].sets_aside
    assert "valueString 'a lot'" in codes[("word", "unreadable-value")].message
    assert codes[("high", "value-out-of-range")].severity == "error"


def test_site_map_extends_or_replaces_and_is_checked(tmp_path):
    (tmp_path / "questionnaires.yaml").write_text(
        "extends: default\nquestionnaires:\n"
        "  http://hospital.example/Questionnaire/spine-pro:\n    nrs: vas\n")
    site = load_mappings(tmp_path)
    assert site.questionnaires.measures_for("http://hospital.example/Questionnaire/spine-pro")[
        "nrs"] == "vas"
    assert site.questionnaires.measures_for(SOSGOQ)["total"] == "sosgoq_total"
    assert any(f.path.name == "questionnaires.yaml" and f.path.parent == tmp_path
               for f in site.files)
    (tmp_path / "questionnaires.yaml").write_text(
        "questionnaires:\n  http://h/Q:\n    nrs: pain_score\n")
    with pytest.raises(ConfigError, match="pain_score"):
        load_mappings(tmp_path)


def test_rest_pull_skips_questionnaire_responses_a_server_does_not_offer():
    from fhir_spine.fhir import optional_types_not_offered
    from fhir_spine.sources.capabilities import Capabilities, parse_capabilities

    def statement(*resources: dict) -> Capabilities:
        return parse_capabilities({"resourceType": "CapabilityStatement",
                                   "rest": [{"mode": "server", "resource": list(resources)}]})

    types = ("Observation", "Procedure", "QuestionnaireResponse")
    procedure = {"type": "Procedure", "searchParam": [{"name": "patient"}]}
    assert optional_types_not_offered(statement(procedure), types) == ("QuestionnaireResponse",)
    no_patient = {"type": "QuestionnaireResponse", "searchParam": [{"name": "authored"}]}
    assert optional_types_not_offered(statement(procedure, no_patient), types) == (
        "QuestionnaireResponse",)
    offered = {"type": "QuestionnaireResponse", "searchParam": [{"name": "patient"}]}
    assert optional_types_not_offered(statement(procedure, offered), types) == ()
    # not declared is not offered, even by a statement that lists no resources: searching
    # a type the server lacks would fail the whole pull
    assert optional_types_not_offered(statement(), types) == ("QuestionnaireResponse",)


def test_an_unusable_authored_time_sets_aside_only_its_own_response(mappings):
    """Only the response's own row sets it aside, never another resource's row."""
    odd = qr("odd", PAIN, item("pain-intensity", {"valueInteger": 3}))
    odd["authored"] = 20240301
    r = run(mappings, qr("fine", PAIN, item("pain-intensity", {"valueInteger": 5})), odd)
    assert ("fine", "vas") in measured(r) and ("odd", "vas") not in measured(r)
    rows = [i for i in r.issues if i.resource_id == "odd"]
    assert any(i.code == "unparseable-date" and i.sets_aside for i in rows), rows
    assert not any(i.sets_aside for i in r.issues if i.resource_id == "fine")
