"""Issue 16 benchmark: extraction against the parse floor, run on demand (never a test).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_speed.py \\
        [--synthea DIR] [--patients 10000 100000] [--repeat 3] [--json bench.json]

Points (all in one run, each the median of --repeat runs, floor and ours interleaved):
1. Synthea corpus (--synthea, e.g. `tar -xzf ../shared/data/synthea-r4-589-bundles.tar.gz
   -C /tmp/synthea` then `--synthea /tmp/synthea/SYNTHEA`): the `orjson` parse floor (one
   core) vs `extract --jobs 1` and default jobs; ratio floor/extract, peak RSS, issues
   rows per resource read.
2. synthetic NDJSON (`fhir-spine synth --background N`: N irrelevant resources per patient
   on average besides the pathway's ~33) at each --patients: the generator's own time and
   peak RSS, then extract time, resources/s, peak RSS, ratio to its parse floor, and the
   time ratio of the largest to the smallest.
3. view flattening alone on the same rows: compiled vs fhirpathpy vs the parse floor.
Point 4 (REST) is `bench_rest.py`; `make bench` runs both. Prints a table and writes it
as JSON. Numbers depend on the machine and its load: the load average is recorded with
them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson


def parse_floor(folder: Path) -> tuple[float, int]:
    """Seconds to read and orjson-parse every file (one core), and resources seen."""
    start = time.perf_counter()
    n = 0
    for path in sorted(folder.rglob("*")):
        name = path.name.lower()
        if not path.is_file() or not name.endswith((".json", ".ndjson", ".json.gz",
                                                     ".ndjson.gz")):
            continue
        data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") \
            else path.read_bytes()
        if ".ndjson" in name:
            for line in data.splitlines():
                if line.strip():
                    orjson.loads(line)
                    n += 1
        else:
            doc = orjson.loads(data)
            n += len(doc.get("entry") or ()) if doc.get("resourceType") == "Bundle" else 1
    return time.perf_counter() - start, n


def run_extract(source: Path, out: Path, jobs: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "fhir_spine.cli.main", "--quiet", "extract", "--source",
           str(source), "--out", str(out), "--no-csv"]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    read = manifest["accounting"]["read"]
    issues = sum(manifest["issues"].values())
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "read": read,
            "issues_rows": issues, "status": os.waitstatus_to_exitcode(status)}


def run_synth(patients: int, background: int, out: Path) -> dict[str, Any]:
    """Generate the cohort once; its time and peak RSS (the generator streams per patient)."""
    cmd = [sys.executable, "-m", "fhir_spine.cli.main", "--quiet", "synth", "--patients",
           str(patients), "--seed", "1", "--background", str(background), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"synth --patients {patients} failed")
    seconds = time.perf_counter() - start
    return {"point": f"synth-{patients}", "what": f"synth --background {background}",
            "seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def median(values: list[float]) -> float:
    return statistics.median(values)


def corpus_point(label: str, source: Path, repeat: int, tmp: Path,
                 jobs_list: list[int | None]) -> list[dict[str, Any]]:
    floors: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {str(j): [] for j in jobs_list}
    resources = 0
    for i in range(repeat):  # interleaved: floor, then each jobs setting
        seconds, resources = parse_floor(source)
        floors.append(seconds)
        for j in jobs_list:
            runs[str(j)].append(run_extract(source, tmp / f"out-{label}-{j}-{i}", j))
    floor = median(floors)
    rows = [{"point": label, "what": "orjson parse floor", "seconds": floor,
             "resources": resources, "per_second": resources / floor, "ratio": 1.0}]
    for j in jobs_list:
        r = runs[str(j)]
        secs = median([x["seconds"] for x in r])
        rows.append({
            "point": label, "what": f"extract --jobs {j if j is not None else 'default'}",
            "seconds": secs, "resources": r[0]["read"], "per_second": r[0]["read"] / secs,
            "ratio": floor / secs, "peak_rss_mib": median([x["peak_rss_mib"] for x in r]),
            "issues_rows": r[0]["issues_rows"],
            "issues_per_read": r[0]["issues_rows"] / max(1, r[0]["read"])})
    return rows


def views_point(source: Path, limit: int) -> list[dict[str, Any]]:
    from fhir_spine.settings import load_mappings
    from fhir_spine.sources.files import RawResource, iter_folder
    from fhir_spine.views import compile_view

    mappings = load_mappings(None, {})
    resources: list[dict[str, Any]] = []
    for item in iter_folder(source):
        if isinstance(item, RawResource) and item.resource.get("resourceType") in \
                mappings.views:
            resources.append(item.resource)
            if len(resources) >= limit:
                break
    raw = [orjson.dumps(r) for r in resources]
    start = time.perf_counter()
    for b in raw:
        orjson.loads(b)
    floor = time.perf_counter() - start
    rows = [{"point": "views", "what": "orjson parse floor", "seconds": floor,
             "resources": len(raw), "per_second": len(raw) / floor, "ratio": 1.0}]
    for label, fast in (("compiled", True), ("fhirpathpy", False)):
        views = {t: compile_view(v, fast_path=fast) for t, v in mappings.views.items()}
        start = time.perf_counter()
        for r in resources:
            views[r["resourceType"]].rows(r)
        secs = time.perf_counter() - start
        rows.append({"point": "views", "what": label, "seconds": secs,
                     "resources": len(raw), "per_second": len(raw) / secs,
                     "ratio": floor / secs})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthea", type=Path, help="folder of the Synthea bundles")
    parser.add_argument("--patients", type=int, nargs="*", default=[10000, 100000])
    parser.add_argument("--background", type=int, default=30,
                        help="synth --background: irrelevant resources per patient")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--view-resources", type=int, default=20000)
    parser.add_argument("--json", type=Path, default=Path("bench-speed.json"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.synthea:
            rows += corpus_point("synthea", args.synthea, args.repeat, tmp, [1, None])
            rows += views_point(args.synthea, args.view_resources)
        synth_seconds: dict[int, float] = {}
        for n in args.patients:
            src = tmp / f"synth-{n}"
            rows.append(run_synth(n, args.background, src))
            point = corpus_point(f"synth-{n}", src, args.repeat, tmp, [1])
            synth_seconds[n] = point[-1]["seconds"]
            rows += point
        if len(synth_seconds) >= 2:
            small, large = min(synth_seconds), max(synth_seconds)
            rows.append({"point": f"synth {large}/{small}", "what": "time ratio",
                         "ratio": synth_seconds[large] / synth_seconds[small]})
    result = {"load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "repeat": args.repeat, "rows": rows}
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{'point':<16} {'what':<26} {'seconds':>9} {'res/s':>9} {'ratio':>7} "
          f"{'RSS MiB':>8} {'issues/read':>11}")
    for r in rows:
        print(f"{r['point']:<16} {r['what']:<26} {r.get('seconds', 0):>9.2f} "
              f"{r.get('per_second', 0):>9.0f} {r.get('ratio', 0):>7.3f} "
              f"{r.get('peak_rss_mib', 0):>8.0f} {r.get('issues_per_read', 0):>11.4f}")
    print(f"load average before {load_before}, after {os.getloadavg()}; wrote {args.json}")


if __name__ == "__main__":
    main()
