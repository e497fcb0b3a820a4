"""Profile selection by type and code, and the issue table and summary of `validate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_spine import conformance_check as cc
from fhir_spine.cli.main import main
from fhir_spine.settings import load_mappings

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
SCT = "http://snomed.info/sct"
T9 = {"coding": [{"system": SCT, "code": "82687006"}]}
LUNG = {"coding": [{"system": SCT, "code": "39607008"}]}


@pytest.fixture(scope="module")
def concepts():
    return load_mappings(None).concepts


def _obs(system: str, code: str) -> dict:
    return {"resourceType": "Observation", "code": {"coding": [{"system": system, "code": code}]}}


def _proc(system: str, code: str, *sites: dict) -> dict:
    resource = {"resourceType": "Procedure",
                "code": {"coding": [{"system": system, "code": code}]}}
    if sites:
        resource["bodySite"] = list(sites)
    return resource


@pytest.mark.parametrize(("resource", "expected"), [
    (_obs(LOCAL, "sins-total"), "spine-sins"),
    (_obs(LOCAL, "sins-collapse"), "spine-sins"),  # a component as its own Observation
    (_obs(LOCAL, "sosgoq-social-function"), "spine-sosgoq"),
    (_obs("http://loinc.org", "72514-3"), "spine-pain-score"),
    (_obs("http://loinc.org", "89247-1"), None),  # ECOG: core validation only
    (_proc("http://www.ama-assn.org/go/cpt", "20225"), "spine-vertebral-biopsy"),
    (_proc(SCT, "86273004", T9), "spine-vertebral-biopsy"),
    (_proc(SCT, "86273004", LUNG), None),  # a generic biopsy counts only at a vertebra
    (_proc(SCT, "86273004"), None),
    (_proc(LOCAL, "percutaneous-pedicle-screw-fixation"), "spine-stabilization"),
    (_proc(SCT, "1217123003"), None),  # radiotherapy
    ({"resourceType": "Patient"}, None),
    ({"resourceType": "Observation"}, None),
])
def test_profile_for_selects_by_type_and_code(concepts, resource, expected):
    profile = cc.profile_for(resource, concepts)
    assert (profile.id if profile else None) == expected


def test_each_example_selects_the_profile_it_declares(concepts):
    paths = sorted((ROOT / "profiles" / "examples").glob("*.json"))
    assert len(paths) == len(cc.conformance.PROFILES)
    for path in paths:
        resource = json.loads(path.read_text(encoding="utf-8"))
        profile = cc.profile_for(resource, concepts)
        assert profile is not None, path.name
        assert resource["meta"]["profile"] == [cc.conformance.profile_url(profile.id)]


OUTCOME = {"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "processing", "diagnostics": "Constraint failed:\n spine-sins-1",
     "expression": ["Observation"]},
    {"severity": "warning", "code": "invariant", "details": {"text": "dom-6 narrative"}},
    {"severity": "information", "code": "informational", "diagnostics": "No issues"},
]}


def test_findings_are_one_line_each():
    found = cc.findings_of(OUTCOME)
    assert found[0] == cc.Finding("error", "processing", "Constraint failed: spine-sins-1",
                                  "Observation")
    assert found[1].message == "dom-6 narrative" and found[1].location == ""
    assert [f.severity for f in found] == ["error", "warning", "information"]


def _checked() -> list[cc.Checked]:
    found = cc.findings_of(OUTCOME)
    return [cc.Checked("Observation/a", "spine-sins", found),
            cc.Checked("Observation/b", "spine-sins", found[2:]),
            cc.Checked("Patient/p", cc.CORE, found[1:]),
            cc.Checked("x.ndjson:3", cc.UNREAD, (cc.Finding("error", "invalid-json", "bad"),))]


def test_table_hides_information_unless_verbose():
    lines = cc.table(_checked())
    assert lines[0].split() == ["resource", "profile", "severity", "location", "message"]
    assert len(lines) == 1 + 4  # a: error + warning; Patient: warning; unreadable: error
    assert not any("No issues" in line for line in lines)
    assert not any(line.startswith("Observation/b") for line in lines)
    verbose = cc.table(_checked(), verbose=True)
    assert sum("No issues" in line for line in verbose) == 3
    assert cc.table([cc.Checked("Patient/q", cc.CORE, ())]) == []


def test_summary_counts_resources_with_errors_and_warnings_per_profile():
    by = cc.by_profile(_checked())
    assert list(by) == ["spine-sins", cc.CORE, cc.UNREAD]
    assert by["spine-sins"] == {"resources": 2, "with_errors": 1, "with_warnings": 1}
    assert by[cc.CORE] == {"resources": 1, "with_errors": 0, "with_warnings": 1}
    lines = cc.summary_lines(by)
    assert lines[-1].split() == ["total", "4", "2", "2"]


def test_without_server_it_says_it_needs_one(capsys):
    assert main(["validate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fhir-spine: error: validate needs a FHIR server that supports $validate "
                   "(the HAPI test server does): pass --server URL"]


def test_a_remote_server_is_refused_without_allow_remote(capsys):
    assert main(["validate", "--server", "http://192.0.2.1/fhir"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
