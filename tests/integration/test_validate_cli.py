"""`fhir-spine validate` against the real HAPI test server: the demo cohort conforms to the
profiles in profiles/, the examples there do, and deliberately broken resources fail with
the messages a validator gives for them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_spine import conformance

try:
    from tests.servers.fixtures import RunningServer, ServerProcess
except ImportError:  # tests/ itself on sys.path
    from servers.fixtures import RunningServer, ServerProcess  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "profiles" / "examples"
PYTHON = os.environ.get("FHIR_SPINE_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def own_hapi() -> Iterator[RunningServer]:
    """A HAPI test server of this module's own. The session's server is no clean slate:
    the terminology tests store a SNOMED CT CodeSystem there (`content = complete`, a
    handful of codes), and against it every other SNOMED code of the demo is an unknown
    code, an error. A site's server with such a partial code system would answer the
    same; the demo's conformance is asked of a server that holds only the profiles."""
    if os.environ.get("FHIR_SPINE_HAPI_URL"):  # a developer's running server: use it
        yield RunningServer("hapi", os.environ["FHIR_SPINE_HAPI_URL"].rstrip("/"))
        return
    with ServerProcess("hapi") as running:
        yield running


def _fhir_spine(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([PYTHON, "-m", "fhir_spine.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=1800, check=False)


def _final(run: subprocess.CompletedProcess[str]) -> dict:
    # --log-format json: the final event is the last line on stderr
    return json.loads(run.stderr.strip().splitlines()[-1])


def test_every_demo_resource_validates_without_errors(own_hapi):
    run = _fhir_spine("validate", "--server", own_hapi.base_url, "--log-format", "json",
                      "--quiet", "--workers", "3")
    final = _final(run)
    assert run.returncode == 0, final
    assert final["event"] == "validate.finished" and final["with_errors"] == 0
    assert final["resources"] == 3302  # every resource of the demo, the transaction Bundle's too
    by = final["by_profile"]
    assert by["spine-sins"]["resources"] == 700  # 100 totals + 6 x 100 components
    assert by["spine-sosgoq"]["resources"] == 267 + 4 * 190
    assert by["spine-pain-score"]["resources"] == 272
    assert by["spine-vertebral-biopsy"]["resources"] > 100
    assert by["spine-stabilization"]["resources"] > 80
    assert all(s["with_errors"] == 0 for s in by.values())
    assert final["profiles"]["spine-sins"] == conformance.SD_BASE + "spine-sins"


def test_the_examples_validate_each_against_its_own_profile(own_hapi):
    run = _fhir_spine("validate", "--server", own_hapi.base_url, str(EXAMPLES),
                      "--log-format", "json", "--quiet")
    final = _final(run)
    assert run.returncode == 0, final
    assert final["by_profile"] == {p.id: {"resources": 1, "with_errors": 0,
                                          "with_warnings": final["by_profile"][p.id][
                                              "with_warnings"]}
                                   for p in conformance.PROFILES}


def _example(name: str) -> dict:
    resource = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    resource.pop("meta")  # chosen by its code, not by a declared profile
    return resource


def test_broken_resources_fail_with_the_expected_messages(own_hapi, tmp_path):
    sins = _example("Observation-spine-sins-example.json")
    wrong_component = copy.deepcopy(sins)
    wrong_component["id"] = "broken-sins-component"
    wrong_component["component"][1]["code"]["coding"][0]["code"] = "sins-pain-score"
    out_of_range = copy.deepcopy(sins)
    out_of_range["id"] = "broken-sins-total"
    out_of_range["valueInteger"] = 25
    biopsy = _example("Procedure-spine-vertebral-biopsy-example.json")
    biopsy["id"] = "broken-biopsy-no-site"
    del biopsy["bodySite"]
    good = _example("Observation-spine-pain-score-example.json")
    (tmp_path / "broken.ndjson").write_text(
        "".join(json.dumps(r) + "\n" for r in (wrong_component, out_of_range, biopsy, good)),
        encoding="utf-8")

    run = _fhir_spine("validate", "--server", own_hapi.base_url, str(tmp_path))
    assert run.returncode == 1, run.stderr[-2000:]
    errors = [line for line in run.stdout.splitlines() if "  error  " in line]

    def said(key: str, *words: str) -> bool:
        return any(line.startswith(key) and all(w in line for w in words) for line in errors)

    assert said("Observation/broken-sins-component", "Observation.component[1]",
                "does not match any known slice", "CLOSED")
    assert said("Observation/broken-sins-total", "spine-sins-1", "the value is 0-18")
    assert said("Procedure/broken-biopsy-no-site", "Procedure.bodySite",
                "minimum required = 1, but only found 0")
    assert not any(line.startswith("Observation/spine-pain-score-example") for line in errors)
    summary = run.stdout[run.stdout.index("profile "):]
    assert "spine-sins                       2            2" in summary
    assert "spine-vertebral-biopsy           1            1" in summary
