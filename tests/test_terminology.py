"""terminology.apply without a server: a stub session answers $expand."""

from __future__ import annotations

import pytest
import requests
import yaml

from fhir_spine import terminology, valuesets
from fhir_spine.concepts import Coding, build_concept_map
from fhir_spine.errors import ServerError, ServerUnreachable

SCT = "http://snomed.info/sct"


class _Answer:
    def __init__(self, status: int, body: dict) -> None:
        self.status_code, self._body = status, body

    def json(self) -> dict:
        return self._body


class _Session:
    def __init__(self, answer: _Answer | Exception) -> None:
        self.answer, self.calls = answer, []

    def post(self, url, json, timeout, headers):
        self.calls.append((url, json))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _cmap():
    return build_concept_map([yaml.safe_load(valuesets.DEFAULT_CONCEPTS.read_text())])


def test_expansion_adds_descendants_and_reports():
    expansion = {"resourceType": "ValueSet", "expansion": {
        "parameter": [{"name": "used-codesystem", "valueUri": f"{SCT}|20240101"}],
        "contains": [{"system": SCT, "code": c} for c in ("128462008", "94222008", "555")]}}
    session = _Session(_Answer(200, expansion))
    cmap = _cmap()
    report = terminology.apply(cmap, "http://127.0.0.1:1/fhir/", session=session)
    # one $expand per is-a entry: secondary-malignancy's 128462008, tumour-other's 363346000
    assert [url for url, _ in session.calls] == ["http://127.0.0.1:1/fhir/ValueSet/$expand"] * 2
    parents = [body["parameter"][0]["resource"]["compose"]["include"][0]["filter"]
               for _, body in session.calls]
    assert parents == [[{"property": "concept", "op": "is-a", "value": v}]
                       for v in ("128462008", "363346000")]
    # the fake server gives both the same answer: the earlier, more specific concept keeps
    # its codes, and the catch-all's expansion adds no second concept to them
    assert cmap.lookup("finding", Coding(SCT, "555")).concept == "secondary-malignancy"
    assert cmap.matches("finding", [Coding(SCT, "555")])[0].concept == "secondary-malignancy"
    assert len(cmap.matches("finding", [Coding(SCT, "555")])) == 1
    assert [e["added"] for e in report["expansions"]] == [1, 3]
    assert report["code_systems"] == {SCT: ["20240101"]}
    assert report["expansions"][0]["codes"] == 3


def test_unreachable_is_an_error_or_with_optional_a_warning():
    down = _Session(requests.ConnectionError("refused"))
    with pytest.raises(ServerUnreachable, match="unreachable"):
        terminology.apply(_cmap(), "http://127.0.0.1:1/fhir", session=down)
    cmap = _cmap()
    report = terminology.apply(cmap, "http://127.0.0.1:1/fhir", optional=True, session=down)
    assert report["used"] is False and "offline expansions" in report["warning"]
    assert cmap.lookup("finding", Coding(SCT, "555")) is None


def test_server_error_answer():
    with pytest.raises(ServerError, match="answered 500"):
        terminology.apply(_cmap(), "http://127.0.0.1:1/fhir", session=_Session(_Answer(500, {})))
