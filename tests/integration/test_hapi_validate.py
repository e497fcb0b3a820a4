"""FHIR ``[type]/$validate`` on the HAPI test server (see tests/servers/README.md, "Validation").

Three things are checked against the real validator inside the launcher:

* the project's own ValueSets (``profiles/valuesets/``) are valid R4, and broken ones are not;
* core R4 resources are validated against the base StructureDefinitions (HAPI 8.8.0 with its
  validation cache off answered every call with the fatal "unknown or unrecognized resource
  name 'Patient'" until the launcher replaced its validation support chain);
* a profile stored on the server with a differential only (the server generates the snapshot)
  is applied through ``?profile=`` and ``meta.profile``, including a ``required`` binding to a
  ValueSet and CodeSystem stored on the server.

Everything is PUT with fixed ids, so the module also works against a server that is already
running (``FHIR_SPINE_HAPI_URL``) and has seen these resources before.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration

FHIR_JSON = "application/fhir+json"
HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
# The first $validate of a server loads the core definitions (a few seconds, more on a busy
# machine); later calls take well under a second.
TIMEOUT = 180

VALUE_SET_DIR = Path(__file__).resolve().parents[2] / "profiles" / "valuesets"
VALUE_SET_FILES = sorted(VALUE_SET_DIR.glob("ValueSet-*.json"))

LOINC = "http://loinc.org"
PROFILE_CODE = "89243-0"  # the code the test profile fixes Observation.code to
TEST_CS_URL = "http://fhir-spine.test/fhir/CodeSystem/validate-method"
TEST_VS_URL = "http://fhir-spine.test/fhir/ValueSet/validate-method-ab"
PROFILE_URL = "http://fhir-spine.test/fhir/StructureDefinition/validate-observation"
MAX_VALUE = 5

CODE_SYSTEM = {
    "resourceType": "CodeSystem",
    "id": "fhir-spine-test-validate-method",
    "url": TEST_CS_URL,
    "name": "ValidateMethod",
    "status": "active",
    "content": "complete",
    "concept": [
        {"code": "a", "display": "Method A"},
        {"code": "b", "display": "Method B"},
        {"code": "c", "display": "Method C"},
    ],
}

# Only a and b: c is a valid code of the CodeSystem but outside the ValueSet.
VALUE_SET = {
    "resourceType": "ValueSet",
    "id": "fhir-spine-test-validate-method-ab",
    "url": TEST_VS_URL,
    "name": "ValidateMethodAB",
    "status": "active",
    "compose": {"include": [{"system": TEST_CS_URL, "concept": [{"code": "a"}, {"code": "b"}]}]},
}

# Differential only: the server has to generate the snapshot from the base Observation.
PROFILE = {
    "resourceType": "StructureDefinition",
    "id": "fhir-spine-test-validate-observation",
    "url": PROFILE_URL,
    "name": "ValidateObservation",
    "status": "active",
    "fhirVersion": "4.0.1",
    "kind": "resource",
    "abstract": False,
    "type": "Observation",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
    "derivation": "constraint",
    "differential": {
        "element": [
            {
                "id": "Observation.code",
                "path": "Observation.code",
                "patternCodeableConcept": {"coding": [{"system": LOINC, "code": PROFILE_CODE}]},
            },
            {
                "id": "Observation.value[x]",
                "path": "Observation.value[x]",
                "type": [{"code": "integer"}],
                "maxValueInteger": MAX_VALUE,
            },
            {
                "id": "Observation.method",
                "path": "Observation.method",
                "min": 1,
                "binding": {"strength": "required", "valueSet": TEST_VS_URL},
            },
        ]
    },
}


def validate(
    base: str, resource: dict[str, Any], profile: str | None = None
) -> list[dict[str, Any]]:
    """``POST [base]/[type]/$validate`` (optionally ``?profile=URL``): the OperationOutcome's
    issues as dicts (``severity``, ``code``, ``diagnostics``, ``expression``, ...).

    HAPI answers 200 with the validator's outcome, and 400 with an ``error`` issue when its
    own parser already rejects the body (e.g. an unknown code of a required enumeration such
    as ``Patient.gender``); both are outcomes of the validation, anything else fails the test.
    """
    url = f"{base}/{resource['resourceType']}/$validate"
    params = {"profile": profile} if profile else None
    r = requests.post(url, json=resource, params=params, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code in (200, 400), f"POST {r.url}: {r.status_code} {r.text[:2000]}"
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    issues: list[dict[str, Any]] = outcome.get("issue", [])
    return issues


def errors(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in issues if i.get("severity") in ("error", "fatal")]


def has_error(issues: list[dict[str, Any]], text: str) -> bool:
    """Whether an error or fatal issue's diagnostics contain ``text`` (loose on purpose: the
    validator's wording changes between releases, the fact reported does not)."""
    return any(text in i.get("diagnostics", "") for i in errors(issues))


def messages(issues: list[dict[str, Any]]) -> str:
    """All diagnostics in one string, for loose (substring) assertions and failure output."""
    return "\n".join(f"{i.get('severity')}: {i.get('diagnostics', '')}" for i in issues)


def _put(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{base}/{resource['resourceType']}/{resource['id']}"
    r = requests.put(url, json=resource, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code in (200, 201), f"PUT {url}: {r.status_code} {r.text[:2000]}"
    stored: dict[str, Any] = r.json()
    return stored


# -- (a) ValueSets ----------------------------------------------------------------------------
def test_the_project_has_value_sets():
    # Guards the parametrization below against an empty glob (a moved folder).
    assert len(VALUE_SET_FILES) >= 10, VALUE_SET_DIR


@pytest.mark.parametrize("path", VALUE_SET_FILES, ids=lambda p: p.stem)
def test_project_value_set_is_valid(hapi_server, path):
    value_set = json.loads(path.read_text(encoding="utf-8"))
    issues = validate(hapi_server.base_url, value_set)
    assert errors(issues) == [], messages(issues)


def _asa_value_set() -> dict[str, Any]:
    return json.loads((VALUE_SET_DIR / "ValueSet-spine-asa.json").read_text(encoding="utf-8"))


def test_value_set_filter_without_op_is_an_error(hapi_server):
    broken = _asa_value_set()
    broken["compose"]["include"] = [
        {"system": "http://snomed.info/sct", "filter": [{"property": "concept", "value": "1"}]}
    ]
    issues = validate(hapi_server.base_url, broken)
    assert has_error(issues, "filter.op"), messages(issues)


def test_value_set_unknown_status_is_an_error(hapi_server):
    broken = dict(_asa_value_set(), status="bogus")
    issues = validate(hapi_server.base_url, broken)
    assert has_error(issues, "bogus"), messages(issues)


# -- (b) core R4 resources --------------------------------------------------------------------
def test_valid_patient_has_no_error(hapi_server):
    patient = {"resourceType": "Patient", "gender": "male", "birthDate": "1960-04-02"}
    issues = validate(hapi_server.base_url, patient)
    assert errors(issues) == [], messages(issues)


def test_patient_with_unknown_gender_is_an_error(hapi_server):
    issues = validate(hapi_server.base_url, {"resourceType": "Patient", "gender": "bogus"})
    assert has_error(issues, "bogus"), messages(issues)


def test_observation_without_status_is_an_error(hapi_server):
    observation = {"resourceType": "Observation", "code": {"text": "ECOG"}}
    issues = validate(hapi_server.base_url, observation)
    assert has_error(issues, "Observation.status"), messages(issues)


# -- (c) a differential profile stored on the server ------------------------------------------
@pytest.fixture(scope="module")
def profiled(hapi_server) -> str:
    """Base URL of the HAPI server with the CodeSystem, the ValueSet and the profile stored."""
    base = hapi_server.base_url
    _put(base, CODE_SYSTEM)
    _put(base, VALUE_SET)
    stored = _put(base, PROFILE)
    # HAPI stores what it was given: the snapshot the validator uses is generated on the fly.
    assert "snapshot" not in stored, "the test profile must reach the validator without one"
    return base


def _observation(
    code: str = PROFILE_CODE, value: int = 3, method: str = "a", meta_profile: bool = False
) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"display": "test patient"},
        "effectiveDateTime": "2024-03-01",
        "valueInteger": value,
        "method": {"coding": [{"system": TEST_CS_URL, "code": method}]},
    }
    if meta_profile:
        observation["meta"] = {"profile": [PROFILE_URL]}
    return observation


def test_conforming_observation_by_profile_parameter(profiled):
    issues = validate(profiled, _observation(), profile=PROFILE_URL)
    assert errors(issues) == [], messages(issues)


def test_conforming_observation_by_meta_profile(profiled):
    issues = validate(profiled, _observation(meta_profile=True))
    assert errors(issues) == [], messages(issues)


def test_wrong_code_breaks_the_pattern(profiled):
    issues = validate(profiled, _observation(code="8867-4"), profile=PROFILE_URL)
    assert has_error(issues, "pattern"), messages(issues)
    assert has_error(issues, PROFILE_URL), messages(issues)


@pytest.mark.parametrize("meta_profile", [False, True], ids=["parameter", "meta"])
def test_value_above_the_maximum_is_an_error(profiled, meta_profile):
    observation = _observation(value=MAX_VALUE + 4, meta_profile=meta_profile)
    issues = validate(profiled, observation, profile=None if meta_profile else PROFILE_URL)
    assert has_error(issues, "greater than permitted maximum"), messages(issues)


def test_value_above_the_maximum_is_fine_without_the_profile(profiled):
    """The maximum comes from the stored profile, not from the base Observation."""
    issues = validate(profiled, _observation(value=MAX_VALUE + 4))
    assert errors(issues) == [], messages(issues)


@pytest.mark.parametrize("meta_profile", [False, True], ids=["parameter", "meta"])
def test_code_outside_the_stored_value_set_is_an_error(profiled, meta_profile):
    observation = _observation(method="c", meta_profile=meta_profile)
    issues = validate(profiled, observation, profile=None if meta_profile else PROFILE_URL)
    assert has_error(issues, TEST_VS_URL), messages(issues)


def test_missing_required_method_is_an_error(profiled):
    observation = _observation()
    del observation["method"]
    issues = validate(profiled, observation, profile=PROFILE_URL)
    assert has_error(issues, "Observation.method"), messages(issues)


def test_unknown_profile_is_an_error(profiled):
    issues = validate(profiled, _observation(), profile=PROFILE_URL + "-missing")
    assert has_error(issues, "profile"), messages(issues)


def test_profile_changes_apply_to_the_next_call(profiled):
    """No cache between a PUT and the next $validate: a raised maximum is used at once."""
    raised = copy.deepcopy(PROFILE)
    raised["differential"]["element"][1]["maxValueInteger"] = MAX_VALUE + 10
    try:
        _put(profiled, raised)
        issues = validate(profiled, _observation(value=MAX_VALUE + 4), profile=PROFILE_URL)
        assert errors(issues) == [], messages(issues)
    finally:
        _put(profiled, PROFILE)
    issues = validate(profiled, _observation(value=MAX_VALUE + 4), profile=PROFILE_URL)
    assert errors(issues) != [], messages(issues)
