"""The HAPI test server as a terminology server (prerequisite of ``--terminology URL``).

A small SNOMED CT fragment is loaded as a CodeSystem (``url = http://snomed.info/sct``,
``content = complete``, ``hierarchyMeaning = is-a``) with the hierarchy
128462008 > {94225005, 94222008} plus one unrelated root concept, and a ValueSet whose compose
includes ``concept is-a 128462008``. Then ``CodeSystem/$subsumes``, ``ValueSet/$expand`` and
``ValueSet/$validate-code`` must answer like a terminology server, right after the PUTs: the
launcher stores concepts synchronously and indexes them before the write returns (see
tests/servers/README.md, "Terminology"), so there is no polling here on purpose.

Everything is PUT with fixed ids, so the module also works against a server that is already
running (``FHIR_SPINE_HAPI_URL``) and has seen these resources before.
"""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration

FHIR_JSON = "application/fhir+json"
HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
TIMEOUT = 60

SCT = "http://snomed.info/sct"
CODE_SYSTEM_ID = "fhir-spine-test-sct"
VALUE_SET_ID = "fhir-spine-test-secondary-malignancy"
VALUE_SET_URL = "http://fhir-spine.test/fhir/ValueSet/secondary-malignancy"

SECONDARY_MALIGNANCY = "128462008"  # Secondary malignant neoplastic disease
BRAIN_METASTASIS = "94225005"  # Secondary malignant neoplasm of brain
BONE_METASTASIS = "94222008"  # Secondary malignant neoplasm of bone
LUNG_CANCER = "254637007"  # Non-small cell lung cancer: in the CodeSystem, outside the hierarchy
UNKNOWN_CODE = "999999999"  # not in the CodeSystem at all

HIERARCHY = {SECONDARY_MALIGNANCY, BRAIN_METASTASIS, BONE_METASTASIS}

CODE_SYSTEM = {
    "resourceType": "CodeSystem",
    "id": CODE_SYSTEM_ID,
    "url": SCT,
    "version": "http://snomed.info/sct/900000000000207008/version/20240101",
    "name": "FhirSpineTestSnomedFragment",
    "status": "active",
    "content": "complete",
    "hierarchyMeaning": "is-a",
    "concept": [
        {
            "code": SECONDARY_MALIGNANCY,
            "display": "Secondary malignant neoplastic disease",
            "concept": [
                {"code": BRAIN_METASTASIS, "display": "Secondary malignant neoplasm of brain"},
                {"code": BONE_METASTASIS, "display": "Secondary malignant neoplasm of bone"},
            ],
        },
        {"code": LUNG_CANCER, "display": "Non-small cell lung cancer"},
    ],
}

VALUE_SET = {
    "resourceType": "ValueSet",
    "id": VALUE_SET_ID,
    "url": VALUE_SET_URL,
    "name": "SecondaryMalignancy",
    "status": "active",
    "compose": {
        "include": [
            {
                "system": SCT,
                "filter": [{"property": "concept", "op": "is-a", "value": SECONDARY_MALIGNANCY}],
            }
        ]
    },
}


def _put(base: str, resource: dict) -> dict:
    url = f"{base}/{resource['resourceType']}/{resource['id']}"
    r = requests.put(url, json=resource, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code in (200, 201), f"PUT {url}: {r.status_code} {r.text[:2000]}"
    return r.json()


def _get(base: str, path: str, params: dict[str, str] | None = None) -> dict:
    r = requests.get(f"{base}/{path}", params=params, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, f"GET {r.url}: {r.status_code} {r.text[:2000]}"
    return r.json()


def _parameter(parameters: dict, name: str):
    assert parameters["resourceType"] == "Parameters", parameters
    for p in parameters.get("parameter", []):
        if p["name"] == name:
            for key, value in p.items():
                if key.startswith("value"):
                    return value
    raise AssertionError(f"no parameter {name!r} in {parameters}")


def _expanded_codes(value_set: dict) -> set[str]:
    assert value_set["resourceType"] == "ValueSet", value_set
    contains = value_set["expansion"].get("contains", [])
    assert all(c["system"] == SCT for c in contains), contains
    return {c["code"] for c in contains}


@pytest.fixture(scope="module")
def terminology(hapi_server) -> str:
    """Base URL of the HAPI server with the CodeSystem and the ValueSet stored."""
    base = hapi_server.base_url
    _put(base, CODE_SYSTEM)
    _put(base, VALUE_SET)
    return base


# -- CodeSystem -------------------------------------------------------------------------------
def test_lookup_finds_stored_concept(terminology):
    out = _get(terminology, "CodeSystem/$lookup", {"system": SCT, "code": BRAIN_METASTASIS})
    assert _parameter(out, "display") == "Secondary malignant neoplasm of brain"


@pytest.mark.parametrize(
    ("code_a", "code_b", "outcome"),
    [
        (SECONDARY_MALIGNANCY, BRAIN_METASTASIS, "subsumes"),
        (SECONDARY_MALIGNANCY, BONE_METASTASIS, "subsumes"),
        (BRAIN_METASTASIS, SECONDARY_MALIGNANCY, "subsumed-by"),
        (BRAIN_METASTASIS, BONE_METASTASIS, "not-subsumed"),
        (SECONDARY_MALIGNANCY, LUNG_CANCER, "not-subsumed"),
    ],
)
def test_subsumes(terminology, code_a, code_b, outcome):
    out = _get(
        terminology, "CodeSystem/$subsumes", {"system": SCT, "codeA": code_a, "codeB": code_b}
    )
    assert _parameter(out, "outcome") == outcome


def test_subsumes_same_code_twice_is_not_equivalent_on_hapi(terminology):
    """HAPI 8.8.0 only tests "subsumes" and "subsumed-by", never "equivalent" (FHIR's answer
    for codeA == codeB): a client must treat equal codes itself."""
    params = {"system": SCT, "codeA": SECONDARY_MALIGNANCY, "codeB": SECONDARY_MALIGNANCY}
    out = _get(terminology, "CodeSystem/$subsumes", params)
    assert _parameter(out, "outcome") == "not-subsumed"


def test_subsumes_unknown_code_is_an_error(terminology):
    r = requests.get(
        f"{terminology}/CodeSystem/$subsumes",
        params={"system": SCT, "codeA": SECONDARY_MALIGNANCY, "codeB": UNKNOWN_CODE},
        headers=HEADERS,
        timeout=TIMEOUT,
    )
    assert r.status_code == 400, r.text[:2000]
    assert r.json()["resourceType"] == "OperationOutcome"


# -- ValueSet $expand -------------------------------------------------------------------------
def test_expand_by_url_lists_the_hierarchy(terminology):
    out = _get(terminology, "ValueSet/$expand", {"url": VALUE_SET_URL})
    # is-a: the concept itself and all its descendants, nothing else from the CodeSystem
    assert _expanded_codes(out) == HIERARCHY


def test_expand_by_id_lists_the_hierarchy(terminology):
    out = _get(terminology, f"ValueSet/{VALUE_SET_ID}/$expand")
    assert _expanded_codes(out) == HIERARCHY
    displays = {c["code"]: c.get("display") for c in out["expansion"]["contains"]}
    assert displays[BONE_METASTASIS] == "Secondary malignant neoplasm of bone"


def test_expand_of_a_value_set_in_the_request(terminology):
    """A ValueSet that is not stored: POSTed in Parameters.valueSet (how a client asks ad hoc)."""
    value_set = {
        "resourceType": "ValueSet",
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": SCT,
                    "filter": [{"property": "concept", "op": "is-a", "value": BRAIN_METASTASIS}],
                }
            ]
        },
    }
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "valueSet", "resource": value_set}],
    }
    r = requests.post(
        f"{terminology}/ValueSet/$expand", json=body, headers=HEADERS, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text[:2000]
    assert _expanded_codes(r.json()) == {BRAIN_METASTASIS}


# -- ValueSet $validate-code ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (BRAIN_METASTASIS, True),
        (BONE_METASTASIS, True),
        (SECONDARY_MALIGNANCY, True),
        (LUNG_CANCER, False),
        (UNKNOWN_CODE, False),
    ],
)
def test_validate_code_by_url(terminology, code, expected):
    out = _get(
        terminology,
        "ValueSet/$validate-code",
        {"url": VALUE_SET_URL, "system": SCT, "code": code},
    )
    assert _parameter(out, "result") is expected


def test_validate_code_by_id(terminology):
    path = f"ValueSet/{VALUE_SET_ID}/$validate-code"
    assert _parameter(_get(terminology, path, {"system": SCT, "code": BRAIN_METASTASIS}), "result")
    assert not _parameter(_get(terminology, path, {"system": SCT, "code": LUNG_CANCER}), "result")


# -- a larger CodeSystem is usable right after its PUT as well ---------------------------------
def test_code_system_above_hapis_deferral_size_is_usable_at_once(hapi_server):
    """HAPI stores >100 concepts in a background job by default; the launcher does not."""
    url = "urn:fhir-spine:test:big-code-system"
    n = 250
    code_system = {
        "resourceType": "CodeSystem",
        "id": "fhir-spine-test-big",
        "url": url,
        "status": "active",
        "content": "complete",
        "hierarchyMeaning": "is-a",
        "concept": [
            {
                "code": "root",
                "display": "Root",
                "concept": [{"code": f"c{i}", "display": f"Child {i}"} for i in range(n)],
            }
        ],
    }
    base = hapi_server.base_url
    _put(base, code_system)
    out = _get(base, "CodeSystem/$subsumes", {"system": url, "codeA": "root", "codeB": f"c{n - 1}"})
    assert _parameter(out, "outcome") == "subsumes"
    value_set = {
        "resourceType": "ValueSet",
        "url": "urn:fhir-spine:test:big-value-set",
        "status": "active",
        "compose": {
            "include": [
                {"system": url, "filter": [{"property": "concept", "op": "is-a", "value": "root"}]}
            ]
        },
    }
    r = requests.post(
        f"{base}/ValueSet/$expand",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "valueSet", "resource": value_set}],
        },
        params={"count": "1000"},
        headers=HEADERS,
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text[:2000]
    expansion = r.json()["expansion"]
    assert expansion.get("total", n + 1) == n + 1
    assert len(expansion["contains"]) == n + 1


def test_replaced_code_system_is_used_at_once(hapi_server):
    """A PUT that changes the hierarchy is visible to the very next $subsumes and $expand."""
    url = "urn:fhir-spine:test:replaced-code-system"
    base = hapi_server.base_url

    def code_system(children_of_a: list[str], roots: list[str]) -> dict:
        return {
            "resourceType": "CodeSystem",
            "id": "fhir-spine-test-replaced",
            "url": url,
            "status": "active",
            "content": "complete",
            "hierarchyMeaning": "is-a",
            "concept": [{"code": "a", "concept": [{"code": c} for c in children_of_a]}]
            + [{"code": r} for r in roots],
        }

    value_set = {
        "resourceType": "ValueSet",
        "status": "active",
        "compose": {
            "include": [
                {"system": url, "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}
            ]
        },
    }
    expand_body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "valueSet", "resource": value_set}],
    }

    def state() -> tuple[str, set[str]]:
        outcome = _parameter(
            _get(base, "CodeSystem/$subsumes", {"system": url, "codeA": "a", "codeB": "b"}),
            "outcome",
        )
        r = requests.post(
            f"{base}/ValueSet/$expand", json=expand_body, headers=HEADERS, timeout=TIMEOUT
        )
        assert r.status_code == 200, r.text[:2000]
        return outcome, {c["code"] for c in r.json()["expansion"].get("contains", [])}

    _put(base, code_system(["b", "c"], []))
    assert state() == ("subsumes", {"a", "b", "c"})
    _put(base, code_system(["c"], ["b"]))
    assert state() == ("not-subsumed", {"a", "c"})
    _put(base, code_system(["b", "c"], []))
    assert state() == ("subsumes", {"a", "b", "c"})


# -- CapabilityStatement ----------------------------------------------------------------------
def test_capability_statement_lists_terminology_operations(hapi_server):
    cs = _get(hapi_server.base_url, "metadata")
    resources = {r["type"]: r for r in cs["rest"][0]["resource"]}
    ops = {
        t: {o["name"] for o in resources[t].get("operation", [])}
        for t in ("CodeSystem", "ValueSet")
    }
    assert {"lookup", "subsumes", "validate-code"} <= ops["CodeSystem"], ops
    assert {"expand", "validate-code"} <= ops["ValueSet"], ops
