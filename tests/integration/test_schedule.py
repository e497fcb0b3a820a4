"""Issue 14 on a real server (sekmet-fhir by default; HAPI too through `fhir_server`):
safe to schedule. A cohort search that matches nothing publishes nothing (exit 10) and
`check` warns and shows the server's codes; a sudden shrink is refused (exit 11); every
line of a JSON-mode run of `check`, `load`, `extract --server` and `refresh`, failing or
succeeding, is one JSON object ending with the final event; a wrong port fails in
seconds; `load` says what it overwrites and refuses a remote server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_spine.settings import DEFAULT_MAPPINGS, DEMO_COHORT

pytestmark = pytest.mark.integration

SRC = Path(__file__).parents[2] / "src"


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", *args],
                          capture_output=True, text=True, env=env, check=False,
                          timeout=timeout)


def json_run(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run with --log-format json; every line of both streams must be a JSON object."""
    done = cli("--log-format", "json", *args)
    for line in (done.stdout + done.stderr).splitlines():
        assert isinstance(json.loads(line), dict), line
    final = json.loads(done.stderr.splitlines()[-1])
    assert final["exit_code"] == done.returncode
    assert final["event"] == f"{final['command']}." + (
        "finished" if done.returncode in (0, 1) else "failed")
    return done, final


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def server(sekmet_server):
    done = cli("--quiet", "load", "--server", sekmet_server.base_url, str(DEMO_COHORT))
    assert done.returncode == 0, done.stderr
    return sekmet_server


@pytest.fixture(scope="module")
def unmapped_site(tmp_path_factory) -> Path:
    """Site mappings whose index-procedure code the server does not have."""
    site = tmp_path_factory.mktemp("site")
    doc = yaml.safe_load((DEFAULT_MAPPINGS / "concepts.yaml").read_text())
    doc["concepts"]["vertebral-biopsy"]["codes"] = [
        {"system": "http://example.org/site-codes", "code": "NOT-ON-SERVER"}]
    (site / "concepts.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (site / "settings.yaml").write_text("timezone: UTC\n")
    return site


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ 8. load

def test_load_says_what_it_overwrites_and_refuses_a_remote_server(server):
    done, final = json_run("load", "--server", server.base_url, str(DEMO_COHORT))
    assert done.returncode == 0, done.stderr
    said = [json.loads(line) for line in done.stderr.splitlines()]
    total = final["loaded"]
    warned = [e for e in said if "already holds" in e["message"]]
    assert warned and warned[0]["level"] == "warning"
    assert f"already holds {total} of the {total} resources" in warned[0]["message"]
    assert said.index(warned[0]) < min(i for i, e in enumerate(said)
                                       if "transaction 1:" in e["message"])
    assert final["overwritten"] == total
    done, final = json_run("load", "--server", "http://fhir.example.org/r4",
                           str(DEMO_COHORT))
    assert done.returncode == 2 and "--allow-remote" in final["error"]


# ------------------------------------------------------------------ 2. check and empty

def test_check_warns_and_lists_codes_when_the_cohort_search_finds_nothing(server,
                                                                           unmapped_site):
    done = cli("check", "--server", server.base_url, "--mappings", str(unmapped_site))
    assert done.returncode == 0, done.stderr
    assert "result        WARNING" in done.stdout and "result        ok" not in done.stdout
    assert "most frequent Procedure codes" in done.stdout
    assert "http://snomed.info/sct|" in done.stdout  # the demo's biopsy codes, to map
    assert "found no procedure" in done.stderr


def test_an_empty_cohort_does_not_replace_the_dataset(server, unmapped_site, tmp_path):
    out = tmp_path / "out"
    done, final = json_run("refresh", "--server", server.base_url, "--out", str(out))
    assert done.returncode in (0, 1), done.stderr
    before = tree(out)
    state = tree(tmp_path / "out.state")
    done, final = json_run("refresh", "--server", server.base_url, "--out", str(out),
                           "--mappings", str(unmapped_site), "--full")
    assert done.returncode == 10, done.stderr
    assert "a cohort search that matched nothing); nothing published" in final["error"]
    assert tree(out) == before
    assert {k: v for k, v in tree(tmp_path / "out.state").items()
            if k.startswith("state")} == {k: v for k, v in state.items()
                                          if k.startswith("state")}
    done, _ = json_run("extract", "--server", server.base_url, "--out", str(out),
                       "--mappings", str(unmapped_site))
    assert done.returncode == 10 and tree(out) == before


def test_a_sudden_shrink_is_refused(server, tmp_path):
    out = tmp_path / "out"
    assert cli("--quiet", "refresh", "--server", server.base_url, "--out",
               str(out)).returncode in (0, 1)
    before = tree(out)
    few = tmp_path / "few.txt"
    few.write_text("\n".join(f"p00{n}" for n in range(1, 10)) + "\n")
    argv = ["refresh", "--server", server.base_url, "--out", str(out), "--patients",
            str(few), "--full"]
    done, final = json_run(*argv)
    assert done.returncode == 11, done.stderr
    assert "9 patients screened, 100 in the published dataset" in final["error"]
    assert tree(out) == before
    done, final = json_run(*argv, "--allow-shrink")
    assert done.returncode in (0, 1) and final["screened"] == 9


# ------------------------------------------------------------------ 3. JSON, 4. fast fail

def test_json_runs_of_the_server_commands(server, tmp_path):
    done, final = json_run("check", "--server", server.base_url)
    assert done.returncode == 0 and final["outcome"] == "ok"
    out = tmp_path / "out"
    done, final = json_run("extract", "--server", server.base_url, "--out", str(out))
    assert done.returncode in (0, 1) and final["screened"] == 100
    done, final = json_run("--quiet", "refresh", "--server", server.base_url, "--out",
                           str(tmp_path / "r"))
    assert done.returncode in (0, 1), done.stderr
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert final["screened"] == manifest["rows"]["patients"] == 100
    assert final["read"] == manifest["accounting"]["read"]
    assert final["issues"] == manifest["issues"]
    assert sum(final["included_by_strategy"].values()) == final["included"]
    assert final["timezone"] == "UTC" and final["timezone_assumed"] is True
    assert final["resources_fetched"] > 0 and final["watermark_after"]
    print("refresh final event:", json.dumps(final))


@pytest.mark.parametrize("command", ["check", "extract", "refresh"])
def test_a_wrong_port_fails_in_seconds(command, tmp_path):
    argv = [command, "--server", f"http://127.0.0.1:{closed_port()}/fhir"]
    if command != "check":
        argv += ["--out", str(tmp_path / "out")]
    started = time.monotonic()
    done, final = json_run(*argv)
    seconds = time.monotonic() - started
    assert done.returncode == 4
    assert "check the host and port of --server" in final["error"]
    assert seconds < 15, seconds
    assert not (tmp_path / "out").exists()
    print(f"{command} on a wrong port failed in {seconds:.1f} s")


# ------------------------------------------------------------------ 5. the report

def test_refresh_report_survives_each_publish(server, tmp_path):
    out = tmp_path / "out"
    argv = ["--quiet", "refresh", "--server", server.base_url, "--out", str(out),
            "--timezone", "Europe/Berlin", "--report"]
    assert cli(*argv).returncode in (0, 1)
    first = json.loads((out / "report" / "manifest.json").read_text())
    time.sleep(1.1)
    assert cli(*argv).returncode in (0, 1)
    second = json.loads((out / "report" / "manifest.json").read_text())
    finished = json.loads((out / "manifest.json").read_text())["finished"]
    assert second["input"]["extraction_finished"] == finished != \
        first["input"]["extraction_finished"]
    report = (out / "report" / "report.md").read_text()
    assert f"Source: {server.base_url}" in report and "time zone Europe/Berlin," in report
