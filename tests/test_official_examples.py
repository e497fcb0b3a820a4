"""Every resource of the official FHIR R4 examples (npm `hl7.fhir.r4.examples` 4.0.1, CC0)
through the file source, the views, normalisation, the pathway and the tables.

The package is installed by `tests/data/setup_examples.sh` (called by `make test`; this
test calls it too when the folder is missing). A missing package is a failure, never a
skip: the check must not silently stop running. The counts are printed and written to
`tests/.cache/official-examples-report.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource, ReadProblem, iter_folder
from fhir_spine.tables import build_tables

TESTS = Path(__file__).resolve().parent
SETUP = TESTS / "data" / "setup_examples.sh"
DEFAULT_DIR = TESTS / ".cache" / "npm" / "node_modules" / "hl7.fhir.r4.examples"
REPORT = TESTS / ".cache" / "official-examples-report.json"
PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"


def _examples_dir() -> Path:
    """The package folder; installs it (npm) when missing, fails clearly if that fails."""
    override = os.environ.get("FHIR_R4_EXAMPLES_DIR")
    folder = Path(override) if override else DEFAULT_DIR
    if not (folder / "package.json").is_file() and not override:
        try:
            proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True,
                                  timeout=600, check=False)
            detail = (proc.stderr or proc.stdout).strip()[-2000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if not (folder / "package.json").is_file():
            pytest.fail(f"the official FHIR R4 examples are missing: {folder} does not exist. "
                        f"`bash {SETUP}` (npm install {PACKAGE}@{VERSION}) failed:\n{detail}",
                        pytrace=False)
    if not (folder / "package.json").is_file():
        pytest.fail(f"FHIR_R4_EXAMPLES_DIR={folder} holds no package.json", pytrace=False)
    meta = json.loads((folder / "package.json").read_text())
    assert (meta.get("name"), meta.get("version")) == (PACKAGE, VERSION), meta
    return folder


@pytest.fixture(scope="module")
def run():
    folder = _examples_dir()
    started = time.monotonic()
    items = list(iter_folder(folder))
    extraction = extract(items, load_mappings(None, {}), validation="warn")
    tables = build_tables(extraction)
    elapsed = time.monotonic() - started
    return folder, items, extraction, tables, elapsed


def test_official_examples_are_all_accounted_for_and_reported(run):
    folder, items, extraction, tables, elapsed = run
    acc = extraction.accounting
    files = sum(1 for p in folder.iterdir() if p.name.endswith(".json"))
    issues = tables.issues
    set_aside_reasons = Counter(issues.loc[issues["set_aside"], "code"])
    unused_events = tables.events.loc[~tables.events["used"]]
    pathway_types = set(load_mappings(None, {}).views)
    report = {
        "package": f"{PACKAGE}@{VERSION}",
        "files": files,
        "read": acc.read,
        "used": acc.used,
        "set_aside": acc.set_aside,
        "unaccounted": len(acc.unaccounted),
        "balanced": acc.balanced,
        "read_problems": sum(isinstance(i, ReadProblem) for i in items),
        "read_by_type_pathway": {t: n for t, n in sorted(extraction.read_by_type.items())
                                 if t in pathway_types},
        "issues_by_severity": dict(sorted(Counter(issues["severity"]).items())),
        "issues_by_code": dict(sorted(Counter(issues["code"]).items())),
        "set_aside_issue_rows_by_code": dict(sorted(set_aside_reasons.items())),
        "events_rows": len(tables.events),
        "events_not_used": len(unused_events),
        "patients": len(tables.patients),
        "observations_rows": len(tables.observations),
        "codes_rows": len(tables.codes),
        "seconds": round(elapsed, 1),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nofficial examples {PACKAGE}@{VERSION}: {files} files, read {acc.read}, "
          f"used {acc.used}, set aside {acc.set_aside}, unaccounted {len(acc.unaccounted)}; "
          f"issues by severity {report['issues_by_severity']}; report: {REPORT}")

    assert files > 5000 and acc.read > files  # Bundles hold many resources
    assert acc.unaccounted == [], acc.unaccounted[:20]
    assert acc.balanced, report
    assert acc.read == len(items)
    assert acc.read == acc.used + acc.set_aside


def test_every_resource_read_is_traceable_to_an_output_row(run):
    """Independent of `Accounting`: each item read shows up as a patient, an events row,
    an observation, or an issues row that says why it was set aside."""
    _, items, extraction, tables, _ = run
    ev, obs, iss = tables.events, tables.observations, tables.issues
    traced = set(zip(ev["resource_type"], ev["resource_id"], strict=True))
    traced |= set(zip(obs["resource_type"], obs["resource_id"], strict=True))
    traced |= {("Patient", p) for p in tables.patients["patient_id"]}
    aside = iss[iss["set_aside"]]
    traced |= set(zip(aside["resource_type"], aside["resource_id"], strict=True))
    traced |= {("Medication", m) for m in extraction.referenced_medications}
    aside_origins = set(aside["origin"].dropna())
    untraced = []
    quiet: Counter[str] = Counter()  # set aside needing no attention: counted per type
    for item in items:
        if isinstance(item, ReadProblem):
            if item.origin not in aside_origins:
                untraced.append(item.origin)
            continue
        assert isinstance(item, RawResource)
        key = (str(item.resource.get("resourceType")), str(item.resource.get("id") or ""))
        if key not in traced and item.origin not in aside_origins:
            quiet[key[0]] += 1
    counted: Counter[str] = Counter()
    for by_type in extraction.set_aside_counted.values():
        counted.update(by_type)
    assert not untraced, f"{len(untraced)} untraced: {untraced[:20]}"
    # an id read twice may be traced by its other copy, so at most as many as counted
    assert all(n <= counted[t] for t, n in quiet.items()), (quiet, counted)


def test_pathway_types_reach_normalisation_and_problems_are_issue_rows(run):
    _, _, extraction, tables, _ = run
    for rtype in ("Patient", "Procedure", "Observation", "Condition", "Encounter",
                  "DiagnosticReport", "MedicationRequest", "Medication"):
        assert extraction.read_by_type[rtype] > 0, rtype
    assert len(tables.patients) > 20
    codes = set(tables.issues["code"])
    assert {"missing-patient", "no-patient-reference"} <= codes
    # set aside needing no attention: counted, never a row (pipeline.QUIET_REASONS)
    assert not codes & {"unsupported-type", "unmapped-code"}
    assert extraction.set_aside_counted["unsupported-type"]
    assert extraction.set_aside_counted["unmapped-code"]
    # everything in the issues table is complete enough to act on
    assert tables.issues["code"].notna().all() and tables.issues["message"].notna().all()
    assert set(tables.issues["severity"]) <= {"error", "warning", "info"}
    assert tables.issues.loc[tables.issues["set_aside"], "origin"].notna().all()


def test_a_missing_package_is_a_clear_failure_not_a_skip(monkeypatch, tmp_path):
    me = sys.modules[__name__]
    failing = tmp_path / "setup_examples.sh"
    failing.write_text("echo 'npm error code ENOTFOUND' >&2\nexit 1\n")
    monkeypatch.delenv("FHIR_R4_EXAMPLES_DIR", raising=False)
    monkeypatch.setattr(me, "SETUP", failing)
    monkeypatch.setattr(me, "DEFAULT_DIR", tmp_path / "absent")
    with pytest.raises(pytest.fail.Exception,
                       match=r"(?s)official FHIR R4 examples are missing.*ENOTFOUND"):
        me._examples_dir()
