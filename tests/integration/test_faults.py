"""Fault matrix (issue 7): `fhir-spine extract --server` through a fault-injecting proxy.

The demo cohort is loaded into the session's HAPI FHIR server once; a fault-free
extraction through the proxy (tests/faults/proxy.py) is the reference. Then, for each fault,
`fhir-spine extract --server <proxy> --out DIR` runs in a subprocess with short timeouts,
and the run must either

* complete with the same exit status and `patients`, `events` and `observations` tables
  equal to the reference (sorted rows; these tables have no origin column), or
* stop with a non-zero exit status and exactly one clear error, `fhir-spine: error: ...`
  (with `--log-format json`, as here, the message of the final `extract.failed` event),
  leaving the previous output folder byte-for-byte intact (or absent when there was none)
  and no staging folder behind.

Anything else (a published dataset that differs, a traceback, a half-written folder) fails
the test: never a silent partial dataset. Every case also checks that its fault really
fired.
The measured matrix (fault -> outcome -> retries) is written to tests/.cache/fault-matrix.md
and printed at the end of the module.

The cases run a few at a time (most of a case is waiting: backoff, timeouts, a silent
server), so the module stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from fhir_spine.settings import DEMO_COHORT

try:  # tests/ on sys.path (rootdir conftest) or tests as a package
    from faults.proxy import LOGIN_PAGE, FaultProxy, Rule
except ModuleNotFoundError:  # pragma: no cover - depends on how pytest was started
    from tests.faults.proxy import LOGIN_PAGE, FaultProxy, Rule

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]
MATRIX_PATH = TESTS_DIR / ".cache" / "fault-matrix.md"
TABLES = ("patients", "events", "observations")
# Columns that say where a row came from (a file line, a request URL): none in these
# tables today, dropped if they appear.
ORIGIN_COLUMNS = ("origin", "source", "source_url")

TIMEOUT = 6.0          # --timeout: read timeout per request
RETRY_TIME = 20.0      # --retry-time: total retrying per request
CASE_LIMIT = 90.0      # hard bound on one extraction subprocess
PARALLEL = 3           # cases at once
PAGE = r"^/fhir\?_getpages="   # HAPI's paging links (page 2 and later of every search)
# Faults that the client must survive by retrying.
TRANSIENT = frozenset({"status", "reset", "delay", "stall", "hang", "refuse"})
EXTRACT_ARGS = ["--page-size", "100", "--batch-size", "50", "--workers", "2"]


def _http_date(seconds: float) -> Callable[[], str]:
    return lambda: email.utils.formatdate(time.time() + seconds, usegmt=True)


@dataclass
class Case:
    name: str
    rules: list[Rule]
    expect: frozenset[str]           # {"complete"}, {"fail"} or both
    exit_code: int | None = None     # expected status when it fails
    prior: bool = True               # an earlier dataset sits in --out
    args: list[str] = field(default_factory=list)
    message: str = ""                # expected in the error line


COMPLETE, FAIL = frozenset({"complete"}), frozenset({"fail"})
CASES = [
    Case("429 + Retry-After: 1 on the first 2 page requests",
         [Rule("status", PAGE, first=2, status=429, retry_after="1")], COMPLETE),
    Case("503 + Retry-After (HTTP date, +2 s) on the first Observation search",
         [Rule("status", r"^/fhir/Observation\?", first=1, status=503,
               retry_after=_http_date(2))], COMPLETE, prior=False),
    Case("503 storm on Encounter searches, past --retry-time 4",
         [Rule("status", r"^/fhir/Encounter\?", every=True, status=503, retry_after="1")],
         FAIL, exit_code=5, args=["--retry-time", "4"], message="503"),
    Case("429 with Retry-After: 3600 (> --retry-time)",
         [Rule("status", r"^/fhir/MedicationRequest\?", nth=1, status=429,
               retry_after="3600")], FAIL, exit_code=5, message="--retry-time"),
    Case("connection reset mid-body (3rd page request)",
         [Rule("reset", PAGE, nth=3, fraction=0.4)], COMPLETE),
    Case("truncated JSON body, consistent Content-Length (5th page request)",
         [Rule("truncate", PAGE, nth=5, fraction=0.6)], COMPLETE | FAIL, exit_code=5),
    Case("body cut short of its Content-Length, connection closed (7th page request)",
         [Rule("truncate", PAGE, nth=7, fraction=0.5, full_length=True)], COMPLETE),
    Case(f"body stalls {TIMEOUT + 3:g} s half-way, past --timeout (2nd Observation search)",
         [Rule("stall", r"^/fhir/Observation\?", nth=2, fraction=0.3, seconds=TIMEOUT + 3)],
         COMPLETE, prior=False),
    Case(f"answer delayed {TIMEOUT + 3:g} s, past --timeout {TIMEOUT:g} (1st Condition search)",
         [Rule("delay", r"^/fhir/Condition\?", nth=1, seconds=TIMEOUT + 3)], COMPLETE,
         prior=False),
    Case("page repeated: 4th page request gets the previous page's body",
         [Rule("repeat_page", PAGE, nth=4)], FAIL, exit_code=5, message="same page"),
    Case("next link loops back to the previous page (6th page request)",
         [Rule("loop_next", PAGE, nth=6)], FAIL, exit_code=5, message="loop"),
    Case("HTML error page with status 200 (2nd DiagnosticReport search)",
         [Rule("html", r"^/fhir/DiagnosticReport\?", nth=2)], FAIL, exit_code=5,
         prior=False, message="HTML"),
    Case("HTML login page with status 200 instead of the CapabilityStatement (/metadata)",
         [Rule("html", r"^/fhir/metadata", nth=1, body=LOGIN_PAGE)], FAIL, exit_code=5,
         message="HTML page ('Hospital single sign-on')"),
    Case("OperationOutcome with status 200 instead of a Bundle (8th page request)",
         [Rule("wrong_type", PAGE, nth=8, resource="OperationOutcome")], FAIL, exit_code=5,
         message="OperationOutcome"),
    Case("Patient instead of a Bundle (1st Procedure?patient search)",
         [Rule("wrong_type", r"^/fhir/Procedure\?patient=", nth=1, resource="Patient")], FAIL,
         exit_code=5, message="Patient"),
    Case("searchset Bundle whose only match is a Patient, for the 1st Observation search",
         [Rule("wrong_type", r"^/fhir/Observation\?", nth=1, resource="Bundle:Patient")],
         FAIL, exit_code=5, message="searched Observation"),
    Case("stops answering for 10 s: accepts, never responds (from 1st Observation search)",
         [Rule("hang", r"^/fhir/Observation\?", nth=1, seconds=10)], COMPLETE),
    Case("refuses connections for 5 s (from 1st MedicationAdministration search)",
         [Rule("refuse", r"^/fhir/MedicationAdministration\?", nth=1, seconds=5)], COMPLETE,
         prior=False),
    Case("refuses connections for 60 s, past --retry-time 5 (2nd page request)",
         [Rule("refuse", PAGE, nth=2, seconds=60)], FAIL, exit_code=4,
         args=["--retry-time", "5"], message="connection failed"),
]


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    seconds: float
    out: Path
    proxy_log: str = ""
    injected: list[str] = field(default_factory=list)
    proxy_requests: int = 0
    proxy_repeats: int = 0
    proxy_errors: list[str] = field(default_factory=list)
    parent: Path | None = None       # the folder --out sits in

    @property
    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    @property
    def plain_stderr(self) -> list[str]:
        return [line for line in self.stderr.splitlines()
                if line.strip() and not line.startswith("{")]

    @property
    def client_retries(self) -> int:
        manifest = self.out / "manifest.json"
        if self.status in (0, 1) and manifest.is_file():
            return int(json.loads(manifest.read_text())["query"]["requests"]["retries"])
        return sum("retrying in" in event.get("message", "") for event in self.logs)


# ------------------------------------------------------------------ helpers

def fhir_spine(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c",
               "import sys; from fhir_spine.cli.main import main; sys.exit(main())", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SPINE_")}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def extract_through(upstream: str, rules: list[Rule], out: Path,
                    extra: list[str] | None = None) -> Run:
    with FaultProxy(upstream, rules) as proxy:
        started = time.monotonic()
        try:
            done = fhir_spine("--quiet", "--log-format", "json", "extract",
                              "--server", proxy.base_url, "--out", str(out),
                              "--timeout", str(TIMEOUT), "--retry-time", str(RETRY_TIME),
                              *EXTRACT_ARGS, *(extra or []), timeout=CASE_LIMIT)
            status, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            status = -1
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or "")
            stderr += f"\n(killed after {CASE_LIMIT:.0f} s)"
        seconds = time.monotonic() - started
    return Run(status, stdout, stderr, seconds, out, proxy.log_text(),
               [f"{e.outcome} <- {e.method} {e.target[:70]}" for e in proxy.injected],
               len(proxy.events), proxy.repeats(), list(proxy.errors))


def short(message: str, limit: int = 220) -> str:
    """An error line for the matrix: long query strings elided, `|` escaped."""
    message = re.sub(r"https?://[^/\s]+(/\S*?\?)(\S{0,24})\S*?(:?)(?=\s|$)", r"\1\2…\3",
                     message)
    message = message.replace("|", "\\|")
    return message if len(message) <= limit else message[: limit - 1] + "…"


def table(folder: Path, name: str) -> pd.DataFrame:
    frame = pd.read_parquet(folder / f"{name}.parquet")
    frame = frame.drop(columns=[c for c in ORIGIN_COLUMNS if c in frame.columns])
    frame = frame.astype(str)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, out: Path) -> list[str]:
    """Staging or retired folders an interrupted publish could leave next to `out`."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def loaded_hapi(hapi_server) -> str:
    """The session's HAPI with the demo cohort in it (load is idempotent: PUT Type/id)."""
    assert (DEMO_COHORT / "Patient.ndjson").exists(), DEMO_COHORT
    done = fhir_spine("--quiet", "load", "--server", hapi_server.base_url, str(DEMO_COHORT),
                      timeout=600)
    assert done.returncode == 0, done.stderr
    return hapi_server.base_url


@pytest.fixture(scope="module")
def reference(loaded_hapi, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("fault-free") / "out"
    run = extract_through(loaded_hapi, [], out)
    assert run.status in (0, 1), run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query"]["complete"] is True
    assert manifest["query"]["requests"]["retries"] == 0, run.stderr
    # Every request, paging included, went through the proxy: the URL rewriting works.
    assert run.proxy_requests == manifest["query"]["requests"]["requests"], run.proxy_log
    pages = [line for line in run.proxy_log.splitlines() if "/fhir?_getpages=" in line]
    assert len(pages) >= 10, "the reference must page, or the paging faults test nothing"
    assert not run.proxy_errors
    return run


@pytest.fixture(scope="module")
def matrix(request) -> Iterator[list[dict]]:
    rows: list[dict] = []
    yield rows
    text = render_matrix(rows)
    MATRIX_PATH.parent.mkdir(parents=True, exist_ok=True)
    MATRIX_PATH.write_text(text)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{text}\n(written to {MATRIX_PATH})", flush=True)


@pytest.fixture(scope="module")
def runs(request, loaded_hapi, reference, tmp_path_factory
         ) -> dict[str, tuple[Run, dict | None]]:
    """The selected cases, run a few at a time; each with its own proxy and output folder."""
    selected = {item.callspec.params["case"].name for item in request.session.items
                if getattr(item, "callspec", None) is not None
                and isinstance(item.callspec.params.get("case"), Case)}
    cases = [case for case in CASES if case.name in selected]

    def one(case: Case) -> tuple[Run, dict | None]:
        parent = tmp_path_factory.mktemp("fault")
        out = parent / "out"
        before = None
        if case.prior:
            shutil.copytree(reference.out, out)
            before = digest(out)
        run = extract_through(loaded_hapi, case.rules, out, case.args)
        run.parent = parent
        return run, before

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(one, cases))
    return {case.name: result for case, result in zip(cases, results, strict=True)}


def render_matrix(rows: list[dict]) -> str:
    lines = ["# Fault matrix: `fhir-spine extract --server` through the fault proxy", "",
             f"HAPI FHIR JPA (demo cohort), `--timeout {TIMEOUT:g} --retry-time {RETRY_TIME:g} "
             f"{' '.join(EXTRACT_ARGS)}` unless the fault says otherwise. "
             "Retries: the client's own count (manifest `query.requests.retries`, or its "
             "`retrying in` log lines when it stopped); wire: requests the proxy saw again.",
             "", "| fault | injected | outcome | exit | retries (client / wire) | time |",
             "|---|---:|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['fault']} | {row['injected']} | {row['outcome']} | "
                     f"{row['exit']} | {row['retries']} / {row['repeats']} | "
                     f"{row['seconds']:.1f} s |")
    lines += ["", "## What the proxy injected", ""]
    for row in rows:
        lines.append(f"- {row['fault']}: " + "; ".join(row["details"]))
    return "\n".join(lines) + "\n"


def differences(out: Path, reference: Path) -> list[str]:
    """How a published dataset differs from the fault-free one (empty: equal)."""
    found = []
    for name in TABLES:
        got, want = table(out, name), table(reference, name)
        if len(got) != len(want):
            found.append(f"{name} {len(got)} rows (fault-free {len(want)})")
        elif list(got.columns) != list(want.columns) or not got.equals(want):
            found.append(f"{name}: same row count, other values")
    return found


# ------------------------------------------------------------------ the test

def _param(case: Case) -> object:
    return pytest.param(case, id=case.name.split(" (")[0][:48])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault(case: Case, runs, reference, matrix):
    run, before = runs[case.name]
    parent = run.parent
    assert parent is not None
    context = f"\n--- stderr ---\n{run.stderr[-3000:]}\n--- proxy ---\n{run.proxy_log[-3000:]}"
    completed = run.status in (0, 1)
    # the one error line is the final JSON event's message (issue 14: no plain line)
    error_lines = [e["message"] for e in run.logs
                   if str(e.get("event", "")).endswith(".failed")]
    diff = differences(run.out, reference.out) if completed else []
    if completed and not diff and run.status == reference.status:
        outcome = "completed, tables equal to the fault-free run"
    elif completed:
        outcome = f"**published a partial dataset** (exit {run.status}): " + "; ".join(diff)
    else:
        outcome = "stopped: " + (short(error_lines[0].removeprefix("fhir-spine: error: "))
                                 if error_lines else "(no message)")
    matrix.append({"fault": case.name, "injected": len(run.injected), "outcome": outcome,
                   "exit": run.status, "retries": run.client_retries,
                   "repeats": run.proxy_repeats, "seconds": run.seconds,
                   "details": [short(i, 120) for i in run.injected]})

    assert run.injected, f"the fault never fired{context}"
    assert not run.proxy_errors, run.proxy_errors
    assert run.status != -1, f"extraction hung past {CASE_LIMIT:.0f} s{context}"
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, context
    assert not leftovers(parent, run.out), f"staging left behind: {leftovers(parent, run.out)}"

    if completed:
        assert not diff, f"PARTIAL DATASET PUBLISHED (exit {run.status}): {diff}{context}"
        assert "complete" in case.expect, f"expected a clear failure, got exit {run.status}" \
            + context
        assert run.status == reference.status, context
        manifest = json.loads((run.out / "manifest.json").read_text())
        assert manifest["query"]["complete"] is True
        ref_manifest = json.loads((reference.out / "manifest.json").read_text())
        assert manifest["resources_read"] == ref_manifest["resources_read"], \
            "SILENT PARTIAL DATASET: other resources read than the fault-free run"
        assert manifest["accounting"] == ref_manifest["accounting"]
        assert manifest["started"] != ref_manifest["started"]  # a new dataset, not the prior
        for name in TABLES:  # `differences` said equal; show it the long way too
            pd.testing.assert_frame_equal(table(run.out, name), table(reference.out, name),
                                          obj=f"{name} after {case.name}")
        if any(r.action in TRANSIENT or (r.action == "truncate" and r.full_length)
               for r in case.rules):
            assert run.client_retries >= 1, "a transient fault was survived without a retry?"
    else:
        assert "fail" in case.expect, f"expected completion, got exit {run.status}{context}"
        if case.exit_code is not None:
            assert run.status == case.exit_code, context
        # exactly one error event, and nothing outside the JSON log
        assert not run.plain_stderr and len(error_lines) == 1, context
        assert error_lines[0].startswith("fhir-spine: error: "), context
        assert case.message in error_lines[0], context
        # no new or partial dataset: the earlier one intact, or still nothing
        if before is not None:
            assert digest(run.out) == before, "the previous dataset was changed by a failed run"
        else:
            assert not run.out.exists(), f"a failed run left {sorted(os.listdir(run.out))}"
