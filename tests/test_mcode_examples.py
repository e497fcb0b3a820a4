"""Every example resource of mCODE STU4 (npm `hl7.fhir.us.mcode` 4.0.0, CC0) through the
file source, the views, normalisation, the pathway and the tables (issue 11).

The package is installed by `tests/data/setup_examples.sh hl7.fhir.us.mcode 4.0.0` (called
by `tests/setup.sh`; this test calls it too when the folder is missing). A missing package
is a failure, never a skip. Counts are printed and written to
`tests/.cache/mcode-examples-report.json`.

The examples are not spine patients (no vertebral biopsy), so every pathway record is
`used = false` with the note "no index biopsy"; what is checked is that each example that
carries pathway evidence becomes the event or measure it should (EVIDENCE below).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import iter_folder
from fhir_spine.tables import build_tables

TESTS = Path(__file__).resolve().parent
SETUP = TESTS / "data" / "setup_examples.sh"
PACKAGE, VERSION = "hl7.fhir.us.mcode", "4.0.0"
DEFAULT_DIR = TESTS / ".cache" / "npm" / "node_modules" / PACKAGE
REPORT = TESTS / ".cache" / "mcode-examples-report.json"

# example id -> (resource type, events.event_type or "measure:<name>=<value>")
EVIDENCE: dict[str, tuple[str, str]] = {
    "ecog-performance-status-jenny-m": ("Observation", "measure:ecog=0"),
    "ecog-performance-status-fully-active": ("Observation", "measure:ecog=0"),
    # its own measure, 0-100, never converted to ECOG (PATHWAY.md has no such rule)
    "karnofsky-performance-status-normal-activity": ("Observation", "measure:karnofsky=90"),
    "radiotherapy-treatment-summary-chest-wall-jenny-m": ("Procedure", "therapy-radiotherapy"),
    "radiotherapy-treatment-summary-other-with-text": ("Procedure", "therapy-radiotherapy"),
    "cancer-related-surgical-procedure-jenny-m": ("Procedure", "therapy-surgery"),
    "cancer-related-surgical-procedure-lobectomy": ("Procedure", "therapy-surgery"),
    "secondary-cancer-condition-brain-mets": ("Condition", "condition:secondary-malignancy"),
    "primary-cancer-condition-nonspecific": ("Condition", "condition:secondary-malignancy"),
    "primary-cancer-condition-breast": ("Condition", "condition:tumour-other"),
    "cancer-related-medication-request-paclitaxel-jenny-m": ("MedicationRequest",
                                                            "therapy-systemic"),
    "cancer-related-medication-admin-paclitaxel-jenny-m": ("MedicationAdministration",
                                                          "therapy-systemic"),
    "cancer-related-medication-request-cyclophosphamide-jenny-m": ("MedicationRequest",
                                                                  "therapy-systemic"),
    "cancer-related-medication-admin-cyclophosphamide-jenny-m": ("MedicationAdministration",
                                                                "therapy-systemic"),
    "cancer-related-medication-request-doxorubicin-jenny-m": ("MedicationRequest",
                                                             "therapy-systemic"),
    "cancer-related-medication-request-anastrozole-jenny-m": ("MedicationRequest",
                                                             "therapy-systemic"),
    "cancer-related-medication-request-cyclophosphamide-brian-l": ("MedicationRequest",
                                                                  "therapy-systemic"),
    "cancer-related-medication-admin-cyclophosphamide-brian-l": ("MedicationAdministration",
                                                                "therapy-systemic"),
    "cancer-related-medication-request-idarubicin-brian-l": ("MedicationRequest",
                                                            "therapy-systemic"),
    "cancer-related-medication-admin-idarubicin-brian-l": ("MedicationAdministration",
                                                          "therapy-systemic"),
    "cancer-related-medication-request-vincristine-brian-l": ("MedicationRequest",
                                                             "therapy-systemic"),
    "cancer-related-medication-admin-vincristine-brian-l": ("MedicationAdministration",
                                                           "therapy-systemic"),
    "cancer-related-medication-request-prednisone-brian-l": ("MedicationRequest", "steroid"),
    "cancer-related-medication-admin-prednisone-brian-l": ("MedicationAdministration",
                                                          "steroid"),
    "us-core-diagnosticreport-lab-jenny-m": ("DiagnosticReport", "pathology-report"),
    # RxNorm clinical drugs (SCD), not ingredients
    "cancer-related-medication-request-cisplatin": ("MedicationRequest", "therapy-systemic"),
    "cancer-related-medication-request-cisplatin-stopped": ("MedicationRequest",
                                                            "therapy-systemic"),
    "cancer-related-medication-request-gefitinib": ("MedicationRequest", "therapy-systemic"),
    "cancer-related-medication-admin-doxorubicin-jenny-m": ("MedicationAdministration",
                                                           "therapy-systemic"),
}


def _package_dir() -> Path:
    override = os.environ.get("FHIR_MCODE_PACKAGE_DIR")
    folder = Path(override) if override else DEFAULT_DIR
    if not (folder / "package.json").is_file() and not override:
        try:
            proc = subprocess.run(["bash", str(SETUP), PACKAGE, VERSION], capture_output=True,
                                  text=True, timeout=600, check=False)
            detail = (proc.stderr or proc.stdout).strip()[-2000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if not (folder / "package.json").is_file():
            pytest.fail(f"the mCODE package is missing: {folder} does not exist. `bash {SETUP} "
                        f"{PACKAGE} {VERSION}` failed:\n{detail}", pytrace=False)
    meta = json.loads((folder / "package.json").read_text())
    assert (meta.get("name"), meta.get("version")) == (PACKAGE, VERSION), meta
    return folder


@pytest.fixture(scope="module")
def run():
    folder = _package_dir() / "example"
    items = list(iter_folder(folder))
    extraction = extract(items, load_mappings(None, {}), validation="warn")
    return folder, items, extraction, build_tables(extraction)


def test_every_mcode_example_is_read_and_accounted_for(run):
    folder, items, extraction, tables = run
    acc = extraction.accounting
    issues = tables.issues
    aside = issues[issues["set_aside"]]
    report = {
        "package": f"{PACKAGE}@{VERSION}",
        "files": sum(1 for p in folder.iterdir() if p.name.endswith(".json")),
        "read": acc.read, "used": acc.used, "set_aside": acc.set_aside,
        "set_aside_issue_rows_by_code": dict(sorted(Counter(aside["code"]).items())),
        "set_aside_as_unused_events": int((~tables.events["used"]).sum()),
        "issues_by_severity": dict(sorted(Counter(issues["severity"]).items())),
        "read_by_type": dict(sorted(extraction.read_by_type.items())),
        "events_by_type": dict(sorted(Counter(tables.events["event_type"]).items())),
        "observations": len(tables.observations),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmCODE {PACKAGE}@{VERSION}: {json.dumps(report)}")
    assert report["files"] >= 170 and acc.read >= report["files"]
    assert acc.unaccounted == [] and acc.balanced and acc.read == len(items)
    assert "error" not in set(issues["severity"]), issues[issues["severity"] == "error"]


def _disposition(tables, rid: str) -> set[str]:
    ev = tables.events[tables.events["resource_id"] == rid]
    found = set()
    for _, row in ev.iterrows():
        found.add(f"condition:{row['concept']}" if row["event_type"] == "condition"
                  else str(row["event_type"]))
    obs = tables.observations[tables.observations["resource_id"] == rid]
    found |= {f"measure:{r['measure']}={r['value']:g}" for _, r in obs.iterrows()}
    return found


@pytest.mark.parametrize(("rid", "rtype", "expected"),
                         [(k, *v) for k, v in EVIDENCE.items()])
def test_mcode_examples_with_pathway_evidence_give_their_event(run, rid, rtype, expected):
    _, _, _, tables = run
    assert expected in _disposition(tables, rid), (
        rid, tables.issues[tables.issues["resource_id"] == rid][["code", "message"]].values)
    ev = tables.events[tables.events["resource_id"] == rid]
    assert set(ev["resource_type"]) <= {rtype}
    assert not ev["used"].any()  # no spine patient: "no index biopsy"
