"""De-identified output from a server: REST extraction with `--patients`, Bulk Data
export, and refresh, all with `--pseudonymise`, publish no marker of the cohort
(tests/deid_markers.py) in any output file or log line; the same runs without it still
show the real origins.

The files half is tests/test_deid.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import deid_markers as mk
from fhir_spine.pseudonymise import ENV_VAR

pytestmark = pytest.mark.integration

KEY = "fedcba9876543210" * 4
ENV = {**os.environ, ENV_VAR: KEY}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", *args],
                          capture_output=True, text=True, timeout=900, env=ENV)


def put(base_url: str, resource: dict) -> None:
    response = requests.put(f"{base_url}/{resource['resourceType']}/{resource['id']}",
                            json=resource, timeout=60,
                            headers={"Content-Type": "application/fhir+json"})
    assert response.status_code in (200, 201), response.text[:500]


@pytest.fixture
def marked(fhir_server, tmp_path) -> tuple[str, Path]:
    """The marker cohort on the server (PUT by id: loading twice changes nothing), and a
    --patients file naming its patients and one the server does not have."""
    for resource in mk.server_resources():
        put(fhir_server.base_url, resource)
    return fhir_server.base_url, mk.write_patients_file(tmp_path / "patients.txt")


def test_rest_extract_with_pseudonymise_publishes_no_marker(marked, tmp_path):
    base_url, patients = marked
    out = tmp_path / "out"
    runs = [cli("extract", "--server", base_url, "--patients", str(patients), "--out",
                str(out), "--pseudonymise", "--date-shift-days", "30", "--top-code-ages",
                *fmt) for fmt in ([], ["--log-format", "json"])]
    for proc in runs:
        assert proc.returncode in (0, 1), proc.stderr
    runs.append(cli("report", str(out)))
    assert runs[-1].returncode == 0, runs[-1].stderr
    hits = mk.scan(out, *runs)
    assert not hits, "\n".join(hits[:30])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query"]["not_found"]["Patient"][0].startswith("pat-")
    assert "fields_not_published" not in manifest["pseudonymisation"]


def test_rest_extract_without_pseudonymise_shows_the_origins(marked, tmp_path):
    base_url, patients = marked
    out = tmp_path / "out"
    proc = cli("extract", "--server", base_url, "--patients", str(patients), "--out", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    manifest = (out / "manifest.json").read_text()
    assert mk.GHOST_ID in manifest and mk.PATIENT_ID in manifest
    assert mk.DISPLAY in (out / "codes.csv").read_text()


def test_bulk_extract_with_pseudonymise_deletes_the_raw_export(marked, tmp_path):
    base_url, _ = marked
    out = tmp_path / "out"
    proc = cli("extract", "--server", base_url, "--bulk", "patient", "--out", str(out),
               "--pseudonymise")
    assert proc.returncode in (0, 1), proc.stderr
    hits = mk.scan(out, proc)
    assert not hits, "\n".join(hits[:30])
    assert not (tmp_path / "out.bulk").exists()
    assert "deleted the raw export" in proc.stderr
    kept = cli("extract", "--server", base_url, "--bulk", "patient", "--out", str(out),
               "--pseudonymise", "--keep-raw")
    assert kept.returncode in (0, 1), kept.stderr
    assert (tmp_path / "out.bulk").is_dir() and "identified data" in kept.stderr


def test_refresh_with_pseudonymise_publishes_no_marker(marked, tmp_path):
    base_url, patients = marked
    out = tmp_path / "out"
    argv = ("refresh", "--server", base_url, "--out", str(out), "--patients", str(patients),
            "--pseudonymise", "--date-shift-days", "30")
    first = cli(*argv)
    assert first.returncode in (0, 1), first.stderr
    # a change on the server: a new version carrying a new display and a new local code
    changed = next(r for r in mk.server_resources() if r["id"].endswith("1-local"))
    changed["code"]["coding"][0].update(code=f"{mk.LOCAL_CODE}77",
                                        display=f"changed {mk.DISPLAY} {mk.NAME}")
    put(base_url, changed)
    second = cli(*argv, "--log-format", "json")
    assert second.returncode in (0, 1), second.stderr
    assert '"full": false' in second.stderr or "changes since" in second.stdout
    report = cli("report", str(out))
    assert report.returncode == 0, report.stderr
    hits = mk.scan(out, first, second, report)
    assert not hits, "\n".join(hits[:30])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["location"].startswith("src-")
    assert "fields_not_published" not in manifest["pseudonymisation"], \
        manifest["pseudonymisation"]
    back = json.loads((tmp_path / "out.state" / "deid-map.json").read_text())
    assert any(c[1] == f"{mk.LOCAL_CODE}77" for c in back["local_codes"].values())
    # the same refresh without --pseudonymise shows the origins as before
    plain = tmp_path / "plain"
    proc = cli("refresh", "--server", base_url, "--out", str(plain), "--patients",
               str(patients))
    assert proc.returncode in (0, 1), proc.stderr
    assert mk.GHOST_ID in (plain / "manifest.json").read_text()
    assert mk.DISPLAY in (plain / "codes.csv").read_text()


def test_bulk_refresh_with_pseudonymise_deletes_the_raw_layer(marked, tmp_path):
    base_url, _ = marked
    out = tmp_path / "out"
    proc = cli("refresh", "--server", base_url, "--out", str(out), "--bulk", "patient",
               "--pseudonymise")
    assert proc.returncode in (0, 1), proc.stderr
    hits = mk.scan(out, proc)
    assert not hits, "\n".join(hits[:30])
    assert not (tmp_path / "out.state" / "bulk").exists()
    assert "deleted the raw export" in proc.stderr
    again = cli("refresh", "--server", base_url, "--out", str(out), "--bulk", "patient",
                "--pseudonymise", "--keep-raw")
    assert again.returncode in (0, 1), again.stderr
    assert (tmp_path / "out.state" / "bulk").is_dir() and "identified data" in again.stderr
    assert not mk.scan(out, again)
