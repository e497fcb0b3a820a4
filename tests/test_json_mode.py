"""Issue 14, points 3 and 6 (the commands that need no server; the server commands are in
tests/integration/test_schedule.py): under `--log-format json` every line on stdout and
stderr is one JSON object and the last is the command's final event, success or failure,
also with `--quiet`; the time zone used is in the summary, the manifest and the report."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_spine.settings import DEMO_COHORT

SRC = Path(__file__).parents[1] / "src"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", *args],
                          capture_output=True, text=True, env=env, check=False, timeout=600)


def json_lines(done: subprocess.CompletedProcess[str]) -> tuple[list[dict], dict[str, Any]]:
    """Every line of both streams parsed (fails on any that is not one JSON object);
    the final event, which must be the last line of stderr."""
    events = []
    for stream in (done.stdout, done.stderr):
        for line in stream.splitlines():
            value = json.loads(line)
            assert isinstance(value, dict), line
            events.append(value)
    final = json.loads(done.stderr.splitlines()[-1])
    return events, final


def assert_final(final: dict[str, Any], command: str, code: int) -> None:
    assert final["command"] == command and final["exit_code"] == code
    assert final["event"] == f"{command}.{'finished' if code in (0, 1) else 'failed'}"
    assert final["outcome"] == ("ok" if code == 0 else "data-issues" if code == 1
                                else "failed")
    assert isinstance(final["seconds"], float)
    if code not in (0, 1):
        assert final["error"] and final["message"].startswith("fhir-spine: error: ")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Eight demo patients, outside the demo folder (so no time zone is implied)."""
    folder = tmp_path_factory.mktemp("small")
    keep = {f"p00{n}" for n in range(1, 9)}
    lines = []
    for path in sorted(DEMO_COHORT.glob("*.ndjson*")):
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" \
            else path.read_text()
        for line in text.splitlines():
            r = json.loads(line)
            ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
            if r["resourceType"] == "Medication" or r.get("id") in keep \
                    or ref.removeprefix("Patient/") in keep:
                lines.append(line)
    (folder / "small.ndjson").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_extract_success_is_json_only_with_a_final_event(tmp_path, small, quiet):
    out = tmp_path / "out"
    done = cli("--log-format", "json", *quiet, "extract", "--source", str(small),
               "--out", str(out), "--timezone", "Europe/Berlin")
    assert done.returncode == 0, done.stderr
    events, final = json_lines(done)
    assert_final(final, "extract", 0)
    manifest = json.loads((out / "manifest.json").read_text())
    acc = manifest["accounting"]
    assert (final["read"], final["used"], final["set_aside"]) == \
        (acc["read"], acc["used"], acc["set_aside"])
    assert final["screened"] == 8 and final["screened"] == final["included"] + final["excluded"]
    assert sum(final["included_by_strategy"].values()) == final["included"]
    assert final["issues"] == manifest["issues"]
    assert final["timezone"] == "Europe/Berlin" and final["timezone_assumed"] is False
    if quiet:
        assert [e for e in events if e.get("level") == "info"] == [final]


def test_json_mode_failures_are_json_only(tmp_path):
    cases = [
        (["extract", "--source", str(tmp_path / "nope")], "extract", 2),
        (["report", str(tmp_path / "nope")], "report", 2),
        (["synth", "--patients", "0", "--out", str(tmp_path / "s")], "synth", 2),
        (["load", "--server", "https://fhir.example.org/r4"], "load", 2),
        (["check", "--server", "ftp://x"], "check", 2),
        (["refresh", "--server", "http://127.0.0.1:9/fhir", "--out", str(tmp_path / "r"),
          "--state-dir", str(tmp_path / "r" / "s")], "refresh", 2),
    ]
    for argv, command, code in cases:
        done = cli("--log-format", "json", *argv)
        assert done.returncode == code, (argv, done.stderr)
        _, final = json_lines(done)
        assert_final(final, command, code)


def test_argparse_errors_are_json_too():
    done = cli("--log-format", "json", "extract", "--ot", "x")
    assert done.returncode == 2
    _, final = json_lines(done)
    assert final["event"] == "cli.failed" and "did you mean --ot -> --out?" in final["error"]


def test_report_and_synth_succeed_in_json(tmp_path, small):
    out = tmp_path / "out"
    assert cli("--quiet", "extract", "--source", str(small), "--out", str(out)).returncode == 0
    done = cli("--log-format", "json", "report", str(out))
    assert done.returncode == 0, done.stderr
    _, final = json_lines(done)
    assert_final(final, "report", 0)
    assert final["screened"] == 8
    done = cli("--log-format", "json", "synth", "--patients", "3", "--out",
               str(tmp_path / "syn"))
    assert done.returncode == 0, done.stderr
    _, final = json_lines(done)
    assert_final(final, "synth", 0)
    assert final["patients"] == 3


# ------------------------------------------------------------------ 6. the time zone

def test_utc_assumed_is_said_in_the_log_summary_manifest_and_report(tmp_path, small):
    out = tmp_path / "out"
    done = cli("extract", "--source", str(small), "--out", str(out), "--report")
    assert done.returncode == 0, done.stderr
    assert "no time zone configured: calendar days are counted in UTC (assumed)" in done.stderr
    assert "time zone: UTC (assumed: none configured" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["timezone"] == "UTC"
    assert any("no time zone configured" in w for w in manifest["warnings"])
    report = (out / "report" / "report.md").read_text()
    assert "time zone UTC (assumed: none configured)" in report
    assert f"Source: {small.absolute()}" in report and "Issues: " in report


def test_a_configured_time_zone_is_named_without_warning(tmp_path, small):
    out = tmp_path / "out"
    done = cli("extract", "--source", str(small), "--out", str(out), "--report",
               "--timezone", "Pacific/Auckland")
    assert done.returncode == 0, done.stderr
    assert "no time zone configured" not in done.stderr
    assert "time zone: Pacific/Auckland\n" in done.stdout
    assert json.loads((out / "manifest.json").read_text())["warnings"] == []
    assert "time zone Pacific/Auckland," in (out / "report" / "report.md").read_text()
    site = tmp_path / "site"
    site.mkdir()
    (site / "settings.yaml").write_text("timezone: Europe/Berlin\n")
    done = cli("extract", "--source", str(small), "--out", str(out), "--mappings", str(site))
    assert done.returncode == 0 and "no time zone configured" not in done.stderr
    assert "time zone: Europe/Berlin\n" in done.stdout


def test_the_demo_is_not_warned_about(tmp_path):
    done = cli("extract", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0
    assert "WARNING" not in done.stderr and "time zone: UTC\n" in done.stdout
