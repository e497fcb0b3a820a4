"""A real Bulk Data export folder (SMART sample bulk data, 10 patients, Synthea, Apache-2.0):
../shared/data/smart-sample-bulk-10 (or $SAMPLE_BULK_DIR), 7,160 resources in gzipped
NDJSON per type plus the export client's `log.ndjson` (issue 11).

Run through the CLI as a site would: exit 0, accounting balanced, no `error` rows. A
missing folder is a failure, not a skip.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDER = Path(os.environ.get("SAMPLE_BULK_DIR")
              or REPO.parent / "shared" / "data" / "smart-sample-bulk-10")


def test_sample_bulk_export_folder_extracts_cleanly(tmp_path):
    if not (FOLDER / "Patient.000.ndjson.gz").is_file():
        pytest.fail(f"sample bulk export not found at {FOLDER}: put it at "
                    "<repo>/../shared/data/smart-sample-bulk-10 or set SAMPLE_BULK_DIR")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fhir_spine.cli.main", "extract", "--source", str(FOLDER),
         "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=600,
        check=False)
    with open(out / "issues.csv") if (out / "issues.csv").exists() else open(os.devnull) as f:
        errors = [r for r in csv.DictReader(f) if r["severity"] == "error"]
    assert not errors, [(r["code"], r["message"]) for r in errors[:10]]
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    acc = manifest["accounting"]
    assert acc["balanced"] and not acc["unaccounted"], acc
    assert acc["read"] == acc["used"] + acc["set_aside"] >= 7160
    with open(out / "patients.csv") as f:
        assert len(list(csv.DictReader(f))) == 13
