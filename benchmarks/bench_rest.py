"""Issue 16 point 4: the REST pull's own cost, replayed and live, against the peers.

    .venv-bench/bin/python benchmarks/bench_rest.py [--server URL] [--source DIR]
        [--repeat 3] [--json bench-rest.json]

Without --server, starts the HAPI FHIR test server (`tests/servers/start.sh hapi`, on
127.0.0.1) and loads --source into it (default: the demo cohort) with `fhir-spine load`;
it stops that server at the end. Then:

1. record: fhir-spine's cohort pull runs once through a recording proxy
   (`rest_replay.py`); its searches are the workload every client fetches; each other
   client runs once through the proxy too, so its pages are recorded;
2. replay: the recorded pages are served from memory by a separate process on 127.0.0.1;
3. each client (`rest_clients.py`: bare loop = the floor, fhir-spine, FHIR-PYrate, fhiry)
   runs --repeat times against the replay and against the live server, interleaved.

Each row: median seconds, distinct resources, resources/s and `x floor` (seconds over the
bare loop's: the client's own cost; targets for fhir-spine: replay <= 1.3, live <= 1.1).
A point whose clients fetched different distinct counts is failed (exit 1). A peer that is
not installed or cannot run is reported with its reason and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from rest_clients import (  # noqa: E402
    CLIENTS,
    Ids,
    Workload,
    check_counts,
    default_mappings,
    fhir_spine_source,
    workload_from,
)
from rest_replay import RecordingProxy, serve_in_thread  # noqa: E402

FLOOR = "bare loop (floor)"
OURS = "fhir-spine"
TARGETS = {"replay": 1.3, "live": 1.1}


@contextlib.contextmanager
def _process_url(cmd: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None) -> Iterator[str]:
    """Start a server process that prints its base URL as its first stdout line (its
    stderr to `log` when given); stop it (SIGTERM to the process we started, nothing
    else) on exit."""
    err = log.open("wb") if log else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                            cwd=ROOT)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"{cmd[:3]} did not print a loopback base URL (got {url!r})")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if err:
            err.close()


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.server:
        yield args.server.rstrip("/")
        return
    env = dict(os.environ, FHIR_SPINE_STOP_WITH_PID=str(os.getpid()))
    env.setdefault("FHIR_SPINE_PYTHON", sys.executable)
    log = Path(tempfile.gettempdir()) / f"fhir-spine-bench-hapi-{os.getpid()}.log"
    print(f"starting the HAPI FHIR test server (first time: builds it; log {log}) ...",
          flush=True)
    with _process_url(["bash", "tests/servers/start.sh", "hapi"], env, log) as url:
        load = [sys.executable, "-m", "fhir_spine.cli.main", "--quiet", "load",
                "--server", url] + ([str(args.source)] if args.source else [])
        print(f"loading {args.source or 'the demo cohort'} into {url} ...", flush=True)
        subprocess.run(load, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        yield url


def _record(live: str, store: Path) -> tuple[Workload, dict[str, str]]:
    """The workload (fhir-spine's searches) and, per client that failed, why; every
    client's pages are recorded in `store`."""
    from fhir_spine.sources.search import RestOptions

    proxy = RecordingProxy(live)
    serve_in_thread(proxy)
    base = proxy.base_origin + "/fhir"
    try:
        source = fhir_spine_source(base, default_mappings())
        for _ in source.items():
            pass
        work = workload_from(source.query_log.records, RestOptions().page_size)
        errors: dict[str, str] = {}
        for name, client in CLIENTS.items():
            if name == OURS:
                continue
            try:
                client(base, work)
            except Exception as exc:  # noqa: BLE001 - a peer's failure is a result
                errors[name] = _reason(exc)
        if proxy.failures:
            raise SystemExit(f"the live server stopped answering while recording "
                             f"({len(proxy.failures)} requests, first {proxy.failures[0]})")
        proxy.save(store)
    finally:
        proxy.shutdown()
    return work, errors


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"not installed ({exc.name}): run `make bench`, which installs the extra `bench`"
    return f"{type(exc).__name__}: {exc}"[:300]


def _point(label: str, base: str, work: Workload, repeat: int,
           errors: dict[str, str]) -> list[dict[str, Any]]:
    times: dict[str, list[float]] = {name: [] for name in CLIENTS}
    counts: dict[str, int | None] = {}
    failed = dict(errors)
    for _ in range(repeat):  # interleaved: each client once per round
        for name, client in CLIENTS.items():
            if name in failed:
                continue
            start = time.perf_counter()
            try:
                ids: Ids = client(base, work)
            except Exception as exc:  # noqa: BLE001 - a peer's failure is a result
                failed[name] = _reason(exc)
                continue
            times[name].append(time.perf_counter() - start)
            if counts.get(name) not in (None, len(ids)):
                failed[name] = f"distinct count changed between runs ({counts[name]}, {len(ids)})"
            counts[name] = len(ids)
    problem = check_counts({n: counts.get(n) for n in CLIENTS if n not in failed})
    floor = statistics.median(times[FLOOR]) if times[FLOOR] else None
    rows = []
    for name in CLIENTS:
        row: dict[str, Any] = {"point": f"rest-{label}", "what": name}
        if name in failed:
            row["error"] = failed[name]
        else:
            secs = statistics.median(times[name])
            row.update(seconds=secs, runs=times[name], resources=counts[name],
                       per_second=(counts[name] or 0) / secs,
                       x_floor=secs / floor if floor else None)
            if name == OURS:
                row["target_x_floor"] = TARGETS[label]
                row["target_met"] = bool(floor) and secs / floor <= TARGETS[label]
        if problem:
            row["count_check"] = problem
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="an already running FHIR server on 127.0.0.1 "
                        "holding the cohort (default: start the HAPI test server)")
    parser.add_argument("--source", type=Path, help="folder to load into the started "
                        "server (default: the demo cohort), e.g. a `fhir-spine synth` folder")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench-rest.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, _server(args) as live:
        store = Path(tmp) / "replay.pickle"
        print(f"recording every client's pages from {live} ...", flush=True)
        work, errors = _record(live, store)
        replay_cmd = [sys.executable, str(HERE / "rest_replay.py"), "serve", str(store)]
        with _process_url(replay_cmd) as replay:
            rows += _point("replay", replay, work, args.repeat, errors)
        rows += _point("live", live, work, args.repeat, errors)
    result = {"load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "repeat": args.repeat, "searches": len(work),
              "targets_x_floor": TARGETS, "rows": rows}
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{'point':<12} {'client':<20} {'seconds':>8} {'resources':>9} {'res/s':>8} "
          f"{'x floor':>8} {'target':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['point']:<12} {r['what']:<20} not run: {r['error']}")
            continue
        target = f"<={r['target_x_floor']}" if "target_x_floor" in r else ""
        print(f"{r['point']:<12} {r['what']:<20} {r['seconds']:>8.3f} {r['resources']:>9} "
              f"{r['per_second']:>8.0f} {r['x_floor'] or 0:>8.2f} {target:>7}")
    problems = sorted({r["count_check"] for r in rows if "count_check" in r})
    for p in problems:
        print(f"FAILED: {p}", file=sys.stderr)
    print(f"{len(work)} searches; load average before {load_before}, after "
          f"{os.getloadavg()}; wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
