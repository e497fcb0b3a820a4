"""Bad input: the run goes on, each problem is one issues row, exit status says so."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from fhir_spine.cli.main import main

CPT = "http://www.ama-assn.org/go/cpt"


def _bad_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01",
               "gender": "female"}
    good_biopsy = {"resourceType": "Procedure", "id": "bx", "status": "completed",
                   "subject": {"reference": "Patient/p1"},
                   "code": {"coding": [{"system": CPT, "code": "20225"}]},
                   "performedDateTime": "2023-03-01T10:00:00Z"}
    orphan = {**good_biopsy, "id": "orphan", "subject": {"reference": "Patient/ghost"}}
    bad_date = {**good_biopsy, "id": "baddate", "performedDateTime": "2023-02-30"}
    unknown = {**good_biopsy, "id": "unk",
               "code": {"coding": [{"system": "http://site.example", "code": "ZZ"}]}}
    invalid = {**good_biopsy, "id": "invalid", "status": 42}
    lines = [json.dumps(r) for r in (good_biopsy, orphan, bad_date, unknown, invalid)]
    (src / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    (src / "Procedure.ndjson").write_text("\n".join(lines) + "\n{broken\n")
    (src / "Basic.ndjson").write_text(json.dumps({"resourceType": "Basic", "id": "b"}) + "\n")
    return src


def test_bad_input_becomes_issue_rows_and_error_exit(tmp_path):
    src = _bad_folder(tmp_path)
    out = tmp_path / "out"
    status = main(["extract", "--source", str(src), "--out", str(out)])
    assert status == 1  # finished, but errors occurred
    issues = pd.read_parquet(out / "issues.parquet")
    by_code = issues.groupby("code")["resource_id"].apply(lambda s: set(s.dropna()))
    assert "orphan" in by_code["missing-patient"]
    assert "baddate" in by_code["unparseable-date"]
    # needing no attention: counted in the manifest, not a row (pipeline.QUIET_REASONS)
    assert "unmapped-code" not in by_code and "unsupported-type" not in by_code
    counted = json.loads((out / "manifest.json").read_text())["set_aside_counted"]
    assert counted["unmapped-code"] == {"Procedure": 1}
    assert counted["unsupported-type"] == {"Basic": 1}
    # `invalid` (status 42) is a second biopsy the pathway does not use: `warn` validates
    # only what is used (issue 16), so it is an unused event and no invalid-resource row
    assert "invalid-resource" not in by_code
    events = pd.read_parquet(out / "events.parquet").set_index("resource_id")
    assert not events.loc["invalid", "used"] and events.loc["bx", "used"]
    assert issues.loc[issues["code"] == "malformed-json", "origin"].tolist() == [
        "Procedure.ndjson:6"]
    manifest = json.loads((out / "manifest.json").read_text())
    acc = manifest["accounting"]
    assert acc["read"] == 8 and acc["read"] == acc["used"] + acc["set_aside"]
    codes = pd.read_parquet(out / "codes.parquet")
    assert codes.iloc[0]["code"] == "ZZ"  # unmapped first


def test_missing_source_is_one_line_and_status_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fhir_spine.cli.main", "extract", "--source",
         str(tmp_path / "absent"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_refuses_to_overwrite_a_folder_that_is_not_an_output(tmp_path):
    src = _bad_folder(tmp_path)
    victim = tmp_path / "documents"
    victim.mkdir()
    (victim / "thesis.docx").write_text("precious")
    assert main(["extract", "--source", str(src), "--out", str(victim)]) == 2
    assert (victim / "thesis.docx").read_text() == "precious"


def test_rerun_replaces_the_output_whole(tmp_path):
    src = _bad_folder(tmp_path)
    out = tmp_path / "out"
    main(["extract", "--source", str(src), "--out", str(out)])
    (out / "patients.csv").write_text("stale")
    main(["extract", "--source", str(src), "--out", str(out)])
    assert (out / "patients.csv").read_text() != "stale"
    # issue 14 changes this: a file a dataset does not hold is no longer deleted with
    # the old dataset; the folder is refused (exit 2) and left as it is
    (out / "stale.txt").write_text("from before")
    assert main(["extract", "--source", str(src), "--out", str(out)]) == 2
    assert (out / "stale.txt").read_text() == "from before"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
