"""Benchmark: end-to-end file extraction throughput and peak memory.

Generates a synthetic cohort (`fhir-spine synth`) of --patients patients, then times
`extract` on it in a fresh process and reports resources/second and peak RSS. Numbers are
printed, never asserted: the machine and its load vary.

    .venv/bin/python benchmarks/bench_extract.py --patients 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "src", Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "--quiet", "synth",
                        "--patients", str(args.patients), "--seed", str(args.seed),
                        "--out", str(source)], check=True, stdout=subprocess.DEVNULL)
        size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "--quiet", "extract",
                        "--source", str(source), "--out", str(out)], check=False,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        manifest = json.loads((out / "manifest.json").read_text())
        read = manifest["accounting"]["read"]
        print(json.dumps({
            "patients": args.patients, "resources": read, "source_mib": round(size / 2**20, 1),
            "seconds": round(seconds, 1), "resources_per_second": round(read / seconds),
            "peak_rss_mib": round(peak_mib),
        }))


if __name__ == "__main__":
    main()
