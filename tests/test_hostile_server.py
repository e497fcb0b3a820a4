"""Hostile or broken servers and folders cannot leak the token, hang the run, fill the
disk or touch the published dataset (issue 15).

Each case runs the real CLI (`python -m fhir_spine.cli.main`) against
`tests/faults/hostile.py` on 127.0.0.1, with small limits given as options so it ends in
seconds, and checks: the exit status, the one `fhir-spine: error:` line, that no form of
the token (raw, percent-encoded, base64) is in any byte of stdout, stderr or the output
folder, that the time (or the requests) stayed bounded, that the previous dataset is
untouched, and that "another host" was never asked anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

try:
    from faults.hostile import HostileServer, all_output_bytes, secret_forms
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.faults.hostile import HostileServer, all_output_bytes, secret_forms

TOKEN = "Sp1ne+t0k3n/with=plus+slash=="  # noqa: S105 - a test value with + / =
FORMS = [f.encode() for f in secret_forms(TOKEN)]
CLI_TIMEOUT = 120


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[bytes], seconds: float,
                 out: Path) -> None:
        self.debug = "--debug" in proc.args
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds
        self.out = out

    @property
    def lines(self) -> list[str]:
        """stderr's lines; with --log-format json, each event's `message`."""
        out = []
        for line in self.stderr.decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                line = json.loads(line).get("message", "")
            out.append(line)
        return out

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.lines if line.startswith("fhir-spine: error:")
                or line.startswith("fhir-spine: internal error:")]

    def text(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")


@pytest.fixture
def other():
    """'Another host': records every request it gets; none may reach it."""
    with HostileServer("record") as server:
        yield server
        assert server.seen() == [], f"another host was asked: {server.seen()}"


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """An already published dataset in --out (a manifest and a table)."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    (out / "manifest.json").write_text(
        '{"tool": "fhir-spine", "schema_version": 1, "rows": {"patients": 1}}\n')
    (out / "patients.csv").write_text("patient_id\np001\n")
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): b for p, b in all_output_bytes(folder)}


def fhir_spine(*args: str, fmt: str = "text", token: str = TOKEN) -> Run:
    out = Path(args[args.index("--out") + 1]) if "--out" in args else Path()
    env = {**os.environ, "FHIR_SPINE_TOKEN": token}
    env.pop("FHIR_SPINE_PSEUDONYM_KEY", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "--log-format", fmt,
                           *args], capture_output=True, env=env, timeout=CLI_TIMEOUT,
                          check=False)
    return Run(proc, time.monotonic() - started, out)


def extract(server: HostileServer, out: Path, *extra: str, fmt: str = "text",
            bulk: bool = False) -> Run:
    args = ["extract", "--server", server.base, "--out", str(out), "--timeout", "5",
            "--retry-time", "0", "--workers", "1", "--page-size", "5", "--allow-empty"]
    if bulk:
        args += ["--bulk", "system", "--bulk-dir", str(out.parent / "job")]
    return fhir_spine(*args, *extra, fmt=fmt)


def assert_no_secret(run: Run, *folders: Path) -> None:
    for form in FORMS:
        assert form not in run.stdout, form
        assert form not in run.stderr, form
        for path, data in all_output_bytes(*folders):
            assert form not in data, (form, path)


def assert_failed(run: Run, status: int, words: str, before: dict[str, bytes],
                  seconds: float = 60.0) -> None:
    """Exit `status`, exactly one error line (the last) naming `words`, nothing published,
    no secret, within `seconds`."""
    assert run.rc == status, run.text()[-3000:]
    assert len(run.error_lines) == 1, run.text()[-3000:]
    assert run.lines[-1] == run.error_lines[0]
    assert words in run.error_lines[0], run.error_lines[0]
    assert run.debug or "Traceback" not in run.text()
    assert snapshot(run.out) == before, "the previous dataset changed"
    assert_no_secret(run, run.out)
    assert run.seconds < seconds, run.seconds


# ------------------------------------------------------------------ the token in outputs

@pytest.mark.parametrize("fmt", ["text", "json"])
def test_search_answered_with_an_outcome_quoting_the_token(fmt, other, previous):
    before = snapshot(previous)
    with HostileServer("search-outcome-token", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--debug", fmt=fmt)
    assert_failed(run, 5, "invalid token ***", before)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_export_kickoff_answered_200_with_an_outcome_quoting_the_token(fmt, other, previous):
    before = snapshot(previous)
    with HostileServer("kickoff-outcome-token", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--debug", fmt=fmt, bulk=True)
    assert_failed(run, 5, "expected 202", before)
    assert "***" in run.error_lines[0]
    assert_no_secret(run, previous.parent / "job")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_outcome_in_a_search_bundle_quoting_the_token(fmt, other, previous):
    with HostileServer("bundle-outcome-token", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, fmt=fmt)
    assert run.rc == 0, run.text()[-3000:]  # a search's message: in the manifest
    manifest = (previous / "manifest.json").read_text()
    assert "server_messages" in manifest and "invalid token ***" in manifest
    assert_no_secret(run, previous)


def test_bulk_error_file_quoting_the_token(other, previous):
    with HostileServer("bulk-error-token", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, bulk=True)
    assert run.rc == 1, run.text()[-3000:]
    issues = pd.read_csv(previous / "issues.csv")
    assert issues["message"].str.contains(r"\*\*\*").any()
    assert_no_secret(run, previous, previous.parent / "job")  # the raw layer too


def test_401_quoting_the_token_percent_encoded(other, previous):
    before = snapshot(previous)
    with HostileServer("unauthorized-encoded", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--debug")
    assert_failed(run, 6, "401", before)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_next_link_carrying_the_token_encoded(fmt, other, previous):
    with HostileServer("next-token", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--debug", fmt=fmt)
        assert len(server.seen("page=2")) == 1
    assert run.rc == 0, run.text()[-3000:]
    assert_no_secret(run, previous)


# ------------------------------------------------------------------ unbounded work

def test_bulk_file_with_an_endless_body_stops_at_max_file_size(other, previous):
    before = snapshot(previous)
    with HostileServer("bulk-endless", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--max-file-size", "2M", bulk=True)
    assert_failed(run, 5, "--max-file-size", before, seconds=60)
    assert not list((previous.parent / "job").rglob("*bulk-endless*"))


@pytest.mark.parametrize("mode", ["bulk-bomb", "bulk-bomb-encoded"])
def test_gzip_bomb_stops_at_the_ratio_limit(mode, other, previous):
    before = snapshot(previous)
    with HostileServer(mode, token=TOKEN, other=other.base) as server:
        run = extract(server, previous, bulk=True)
    assert_failed(run, 5, "--max-gzip-ratio", before, seconds=60)
    job = previous.parent / "job"
    assert sum(p.stat().st_size for p in job.rglob("*") if p.is_file()) < 64 << 20


def test_no_download_without_free_space(other, previous):
    before = snapshot(previous)
    with HostileServer("ok", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--min-free-space", "1000000T", bulk=True)
        assert not server.seen("/files/")
    assert_failed(run, 8, "--min-free-space", before)


@pytest.mark.parametrize("mode", ["bulk-drip", "search-drip"])
def test_a_dripping_body_meets_the_request_deadline(mode, other, previous):
    before = snapshot(previous)
    with HostileServer(mode, token=TOKEN, other=other.base, drip=0.3) as server:
        run = extract(server, previous, "--request-deadline", "2", "--min-rate", "1K",
                      bulk=mode.startswith("bulk"))
    assert_failed(run, 4, "--request-deadline 2", before, seconds=45)


def test_endless_next_links_stop_past_total(other, previous):
    before = snapshot(previous)
    with HostileServer("endless-next", token=TOKEN, other=other.base) as server:
        run = extract(server, previous)
        pages = len(server.seen("/Procedure"))
    assert_failed(run, 5, "announced total 5", before)
    assert pages <= 3, pages


def test_max_pages_bounds_a_search_without_total(other, previous):
    before = snapshot(previous)
    with HostileServer("endless-next", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--max-pages", "2", "--page-size", "50")
        pages = len(server.seen("/Procedure"))
    assert_failed(run, 5, "--max-pages 2", before)
    assert pages == 2


@pytest.mark.parametrize(("mode", "words"), [
    ("manifest-url:file:///etc/passwd", "not an http(s) URL"),
    ("manifest-url:javascript:alert(1)", "not an http(s) URL"),
    ("manifest-url:http://[::1", "not a valid URL"),
    ("manifest-long-type", "is not a resource type"),
    ("kickoff-location:file:///etc/passwd", "not an http(s) URL"),
])
def test_bad_urls_and_names_from_the_export(mode, words, other, previous):
    before = snapshot(previous)
    with HostileServer(mode, token=TOKEN, other=other.base) as server:
        run = extract(server, previous, bulk=True)
    assert_failed(run, 5, words, before)


def test_deeply_nested_resource_is_one_issues_row(other, previous):
    patients = previous.parent / "patients.txt"
    patients.write_text("deep\n")
    with HostileServer("deep-entry", token=TOKEN, other=other.base) as server:
        run = extract(server, previous, "--patients", str(patients))
    assert run.rc == 1, run.text()[-3000:]
    issues = pd.read_parquet(previous / "issues.parquet")
    assert issues["code"].tolist().count("too-deep") == 1
    assert "RecursionError" not in run.text()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_to_another_origin_is_refused(status, other, previous):
    before = snapshot(previous)
    with HostileServer(f"redirect-{status}", token=TOKEN, other=other.base) as server:
        run = extract(server, previous)
    assert_failed(run, 5, "another origin", before)


def test_unopenable_files_in_a_folder_are_issues_rows(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "Patient.ndjson").write_text(
        '{"resourceType": "Patient", "id": "p1"}\n')
    (source / "Condition.ndjson").symlink_to(tmp_path / "nowhere.ndjson")
    (source / "Loop.ndjson").symlink_to(source / "Loop.ndjson")
    out = tmp_path / "out"
    run = fhir_spine("extract", "--source", str(source), "--out", str(out))
    assert run.rc == 1, run.text()[-3000:]
    issues = pd.read_csv(out / "issues.csv")
    rows = issues[issues["code"] == "unreadable-file"]
    assert sorted(rows["origin"]) == ["Condition.ndjson", "Loop.ndjson"]
    assert rows["message"].str.contains("dangling").sum() == 1
    assert rows["message"].str.contains("loop").sum() == 1


def test_a_thousand_export_files_save_the_job_in_constant_time_per_file(tmp_path,
                                                                       monkeypatch):
    """job.json is written at phase changes only; each finished file is one appended
    line of files.log (O(1)), and a resumed run reads both."""
    from fhir_spine.auth import BearerAuth
    from fhir_spine.sources.bulk import BulkExporter, BulkRequest, exporter, job

    writes: list[str] = []
    real = job.write_atomic

    def counting(path: Path, data: bytes) -> None:
        writes.append(path.name)
        real(path, data)

    monkeypatch.setattr(job, "write_atomic", counting)
    monkeypatch.setattr(exporter, "write_atomic", counting)
    from fhir_spine.sources.http import FhirClient

    with HostileServer("bulk-many", token=TOKEN, files=1000) as server:
        client = FhirClient(server.base, auth=BearerAuth(TOKEN))
        started = time.monotonic()
        result = BulkExporter(client, tmp_path / "job").run(
            BulkRequest("system", None, ("Patient",)))
        seconds = time.monotonic() - started
        client.close()
    assert len(result.files) == 1000 and all(f.done for f in result.files)
    assert writes.count("job.json") < 10, writes.count("job.json")
    assert seconds < 60, seconds
    saved = job.load_job(tmp_path / "job")
    assert saved is not None and all(f.done for f in saved.files)


def test_files_log_is_replayed_after_a_kill(tmp_path):
    from fhir_spine.sources.bulk import FileState, JobState
    from fhir_spine.sources.bulk.job import load_job, record_file, save_job

    state = JobState(server="http://127.0.0.1/fhir", request={}, status_url="s1",
                     state="downloading",
                     files=[FileState("output", "Patient", f"u{i}", None) for i in range(3)])
    save_job(tmp_path, state)
    state.files[1].done, state.files[1].name = True, "files/0001.Patient.ndjson"
    record_file(tmp_path, state, 1)
    with (tmp_path / "files.log").open("ab") as handle:
        handle.write(b'{"status_url": "s1", "index": 2, "kind": "outp')  # cut by a kill
    loaded = load_job(tmp_path)
    assert loaded is not None
    assert [f.done for f in loaded.files] == [False, True, False]
    other = JobState(server="x", request={}, status_url="s2", files=list(state.files))
    other.files[1] = FileState("output", "Patient", "u1", None)
    (tmp_path / "job.json").write_bytes(other.to_json())  # a new export, old log lines
    assert [f.done for f in load_job(tmp_path).files] == [False, False, False]


@pytest.mark.parametrize("mode", ["search-outcome-token", "unauthorized-encoded"])
def test_refresh_json_log_error_field_holds_no_token(mode, other, previous):
    """`refresh.failed` carries the error in its own JSON field: scrubbed too."""
    before = snapshot(previous)
    with HostileServer(mode, token=TOKEN, other=other.base) as server:
        run = fhir_spine("refresh", "--server", server.base, "--out", str(previous),
                         "--timeout", "5", "--retry-time", "0", fmt="json")
    assert_failed(run, 5 if mode.startswith("search") else 6, "***", before)
    assert b'"event": "refresh.failed"' in run.stderr
    assert_no_secret(run, previous.with_name(previous.name + ".state"))
