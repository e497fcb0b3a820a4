"""terminology.apply and the per-code decisions without a server: `responses` answers."""

from __future__ import annotations

import json
import json as _json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import yaml

from fhir_spine import terminology, valuesets
from fhir_spine.concepts import Coding, build_concept_map
from fhir_spine.errors import ServerError, ServerUnreachable

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
BASE = "http://127.0.0.1:1/fhir"
EXPAND = f"{BASE}/ValueSet/$expand"
SUBSUMES = f"{BASE}/CodeSystem/$subsumes"
VALIDATE = f"{BASE}/ValueSet/$validate-code"
PARENT = "128462008"


def _cmap():
    return build_concept_map([yaml.safe_load(valuesets.DEFAULT_CONCEPTS.read_text())])


def _expansion(codes, total=None):
    expansion = {"parameter": [{"name": "used-codesystem", "valueUri": f"{SCT}|20240101"}],
                 "contains": [{"system": SCT, "code": c} for c in codes]}
    if total is not None:
        expansion["total"] = total
    return {"resourceType": "ValueSet", "expansion": expansion}


def _outcome(code, text):
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _subsumes_answers(outcomes):
    """A $subsumes callback: codeB -> outcome, or -> (status, body)."""
    def callback(request):
        code = parse_qs(urlsplit(request.url).query)["codeB"][0]
        answer = outcomes[code]
        if isinstance(answer, tuple):
            return answer[0], {}, json.dumps(answer[1])
        return 200, {}, json.dumps({"resourceType": "Parameters", "parameter": [
            {"name": "outcome", "valueCode": answer}]})
    return callback


def _expand_secondary(status=200, json=None):
    """$expand answers `status`/`json` for secondary-malignancy's is-a 128462008 and a
    complete one-code expansion for any other is-a entry (tumour-other's 363346000), so
    only the entry under test is left to per-code decisions."""
    def callback(request):
        body = _json.loads(request.body)
        parent = body["parameter"][0]["resource"]["compose"]["include"][0]["filter"][0]["value"]
        if parent == PARENT:
            return status, {}, _json.dumps(json)
        return 200, {}, _json.dumps(_expansion([parent], total=1))
    responses.add_callback(responses.POST, EXPAND, callback=callback)


def _asked(kind):
    return [c.request for c in responses.calls if kind in c.request.url]


def _finding(cmap, code, system=SCT):
    match = cmap.lookup("finding", Coding(system, code))
    return match.concept if match else None


# -- complete expansions (as before) -----------------------------------------------------------
@responses.activate
def test_expansion_adds_descendants_and_reports():
    responses.post(EXPAND, json=_expansion([PARENT, "94222008", "555"], total=3))
    cmap = _cmap()
    report = terminology.apply(cmap, BASE + "/")
    # one $expand per is-a entry: secondary-malignancy's 128462008, tumour-other's 363346000
    assert [c.request.url for c in responses.calls] == [EXPAND] * 2
    bodies = [json.loads(c.request.body) for c in responses.calls]
    assert [b["parameter"][0]["resource"]["compose"]["include"][0]["filter"] for b in bodies] \
        == [[{"property": "concept", "op": "is-a", "value": v}] for v in (PARENT, "363346000")]
    assert bodies[0]["parameter"][1] == {"name": "count", "valueInteger": terminology.MAX_CODES}
    # the fake server gives both the same answer: the earlier, more specific concept keeps
    # its codes, and the catch-all's expansion adds no second concept to them
    assert _finding(cmap, "555") == "secondary-malignancy"
    assert len(cmap.matches("finding", [Coding(SCT, "555")])) == 1
    assert [e["added"] for e in report["expansions"]] == [1, 3]
    assert report["codes_added"] == 4 and report["code_systems"] == {SCT: ["20240101"]}
    assert report["expansions"][0]["codes"] == 3
    assert report["expansions"][0]["incomplete"] is None
    # complete: an unknown code is simply unmapped, and never asked
    assert _finding(cmap, "777") is None
    assert cmap.decider is None and len(responses.calls) == 2


@responses.activate
def test_unreachable_is_an_error_or_with_optional_a_warning():
    responses.post(EXPAND, body=requests.ConnectionError("refused"))
    with pytest.raises(ServerUnreachable, match="unreachable"):
        terminology.apply(_cmap(), BASE)
    cmap = _cmap()
    report = terminology.apply(cmap, BASE, optional=True)
    assert report["used"] is False and "offline expansions" in report["warning"]
    assert _finding(cmap, "555") is None


@responses.activate
def test_server_error_answer():
    responses.post(EXPAND, status=500, json={})
    with pytest.raises(ServerError, match="answered 500"):
        terminology.apply(_cmap(), BASE)


# -- incomplete expansions: per-code decisions -----------------------------------------------
@responses.activate
def test_truncated_expansion_decides_unknown_codes_with_subsumes_once_each():
    _expand_secondary(json=_expansion([PARENT, "94222008"], total=40000))
    responses.add_callback(responses.GET, SUBSUMES, callback=_subsumes_answers(
        {"555": "subsumes", "777": "not-subsumed", "888": "subsumed-by"}))
    cmap = _cmap()
    report = terminology.apply(cmap, BASE)
    assert report["expansions"][0]["incomplete"] == "total 40000 > 2 returned"
    assert _finding(cmap, "555") == "secondary-malignancy"
    assert _finding(cmap, "777") is None
    assert _finding(cmap, "888") is None  # a parent of 128462008 is not in it
    # known codes (the parent, listed descendants, expansion codes, other systems' codes
    # and codes the ranges map) never cost a request
    for code, system in ((PARENT, SCT), ("94222008", SCT), ("94225005", SCT),
                         ("C79.51", ICD), ("J18.9", ICD)):
        _finding(cmap, code, system)
    for element in ("procedure", "observation"):  # no open entry in these groups
        cmap.lookup(element, Coding(SCT, "999"))
    cmap._cache.clear()  # the decider's own cache answers again, without a request
    assert _finding(cmap, "555") == "secondary-malignancy"
    asked = [parse_qs(urlsplit(r.url).query) for r in _asked("$subsumes")]
    assert [(q["codeA"], q["codeB"], q["system"]) for q in asked] == [
        ([PARENT], ["555"], [SCT]), ([PARENT], ["777"], [SCT]), ([PARENT], ["888"], [SCT])]
    assert report["codes_decided"] == 3 and report["codes_member"] == 1
    assert report["codes_not_member"] == 2 and report["requests"] == 3
    assert report["operations"] == {"$subsumes": 3} and report["codes_failed"] == 0


@pytest.mark.parametrize("cap_answer", [
    (2, _expansion([PARENT, "94222008"])),   # no total, as many codes as the cap
    (10000, _expansion([PARENT], total=5)),  # total above what came
])
@responses.activate
def test_cap_reached_or_total_larger_is_incomplete(cap_answer):
    cap, answer = cap_answer
    _expand_secondary(json=answer)
    responses.add_callback(responses.GET, SUBSUMES,
                           callback=_subsumes_answers({"555": "equivalent"}))
    cmap = _cmap()
    report = terminology.apply(cmap, BASE, max_expansion=cap)
    assert json.loads(responses.calls[0].request.body)["parameter"][1]["valueInteger"] == cap
    assert report["expansions"][0]["incomplete"]
    assert _finding(cmap, "555") == "secondary-malignancy"
    assert report["codes_member"] == 1


@pytest.mark.parametrize(("status", "outcome"), [
    (422, _outcome("too-costly", "expansion too large")),
    (400, _outcome("processing", "cannot expand this value set")),
    (500, _outcome("processing", "HAPI-0831: Expansion of ValueSet produced too many codes "
                                 "(maximum 1) - Operation aborted!")),
])
@responses.activate
def test_refused_expansion_is_incomplete(status, outcome):
    _expand_secondary(status=status, json=outcome)
    responses.add_callback(responses.GET, SUBSUMES,
                           callback=_subsumes_answers({"555": "subsumes"}))
    cmap = _cmap()
    report = terminology.apply(cmap, BASE)
    entry, catch_all = report["expansions"]
    assert catch_all["concept"] == "tumour-other" and catch_all["incomplete"] is None
    assert entry["incomplete"].startswith(f"refused: {status} ")
    assert entry["codes"] == entry["added"] == 0
    # listed offline: no request; a new descendant: asked
    assert _finding(cmap, "94225005") == "secondary-malignancy"
    assert report["requests"] == 0
    assert _finding(cmap, "555") == "secondary-malignancy"
    assert report["requests"] == 1 and report["codes_member"] == 1


@responses.activate
def test_server_error_without_outcome_is_still_an_error():
    responses.post(EXPAND, status=500, body="boom")
    with pytest.raises(ServerError, match="answered 500"):
        terminology.apply(_cmap(), BASE)


@responses.activate
def test_subsumes_not_supported_falls_back_to_validate_code():
    _expand_secondary(json=_expansion([PARENT], total=9))
    responses.get(SUBSUMES, status=400, json=_outcome(
        "not-supported", "Invalid request: The FHIR endpoint on this server does not know "
                         "how to handle GET operation[CodeSystem/$subsumes]"))

    def validate(request):
        params = {p["name"]: p for p in json.loads(request.body)["parameter"]}
        include = params["valueSet"]["resource"]["compose"]["include"][0]
        assert include["filter"][0]["value"] == PARENT and include["system"] == SCT
        member = params["code"]["valueCode"] == "555"
        return 200, {}, json.dumps({"resourceType": "Parameters", "parameter": [
            {"name": "result", "valueBoolean": member},
            {"name": "version", "valueString": "20250301"}]})

    responses.add_callback(responses.POST, VALIDATE, callback=validate)
    cmap = _cmap()
    report = terminology.apply(cmap, BASE)
    assert _finding(cmap, "555") == "secondary-malignancy"
    assert _finding(cmap, "777") is None
    assert len(_asked("$subsumes")) == 1  # not asked again once it said it has none
    assert len(_asked("$validate-code")) == 2
    assert report["operations"] == {"$validate-code": 2} and report["requests"] == 3
    assert report["code_systems"] == {SCT: ["20240101", "20250301"]}


@responses.activate
def test_unknown_code_answer_is_not_a_member():
    """HAPI 8.8: $subsumes of a code its CodeSystem lacks is 400 "Unknown code"."""
    _expand_secondary(json=_expansion([PARENT], total=9))
    responses.add_callback(responses.GET, SUBSUMES, callback=_subsumes_answers(
        {"123": (400, _outcome("processing", f"Unknown code: [{SCT}|123]"))}))
    cmap = _cmap()
    report = terminology.apply(cmap, BASE)
    assert _finding(cmap, "123") is None
    assert report["codes_unknown"] == 1 and report["codes_not_member"] == 1
    assert not _asked("$validate-code")


@responses.activate
def test_server_error_mid_run_is_an_error():
    _expand_secondary(json=_expansion([PARENT], total=9))
    responses.add_callback(responses.GET, SUBSUMES, callback=_subsumes_answers(
        {"555": "subsumes", "777": (503, _outcome("transient", "overloaded"))}))
    cmap = _cmap()
    terminology.apply(cmap, BASE)
    assert _finding(cmap, "555") == "secondary-malignancy"
    with pytest.raises(ServerError, match=r"\$subsumes of .*\|777 answered 503"):
        _finding(cmap, "777")


@responses.activate
def test_server_error_mid_run_with_optional_is_a_warning_and_an_issue():
    _expand_secondary(json=_expansion([PARENT], total=9))
    responses.add_callback(responses.GET, SUBSUMES, callback=_subsumes_answers(
        {"555": "subsumes", "777": (503, _outcome("transient", "overloaded"))}))
    cmap = _cmap()
    report = terminology.apply(cmap, BASE, optional=True)
    assert _finding(cmap, "555") == "secondary-malignancy"
    assert _finding(cmap, "777") is None
    cmap._cache.clear()
    assert _finding(cmap, "777") is None and len(_asked("$subsumes")) == 2  # cached
    [issue] = cmap.decider.take_issues()
    assert issue.severity == "warning" and issue.code == "terminology-undecided"
    assert f"{SCT}|777" in issue.message and "503" in issue.message
    assert cmap.decider.take_issues() == []
    assert report["codes_failed"] == 1 and report["codes_not_member"] == 1
    assert report["codes_member"] == 1 and report["codes_decided"] == 2


@responses.activate
def test_unreachable_mid_run_is_exit_4():
    _expand_secondary(json=_expansion([PARENT], total=9))
    responses.get(SUBSUMES, body=requests.ConnectionError("refused"))
    cmap = _cmap()
    terminology.apply(cmap, BASE)
    with pytest.raises(ServerUnreachable, match=r"unreachable \(\$subsumes\)"):
        _finding(cmap, "555")


@responses.activate
def test_subsumes_answer_of_the_wrong_shape_is_an_error():
    _expand_secondary(json=_expansion([PARENT], total=9))
    responses.get(SUBSUMES, json={"resourceType": "Bundle"})
    cmap = _cmap()
    terminology.apply(cmap, BASE)
    with pytest.raises(ServerError, match="not a Parameters"):
        _finding(cmap, "555")
