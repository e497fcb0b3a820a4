"""Measure a FHIR test server: start-up time, load time and resident memory.

    .venv/bin/python tests/servers/bench_load.py hapi|sekmet [--count 10000]

Starts the server with tests/servers/start.sh (on 127.0.0.1, fresh database), records the time
from launching start.sh to its first answered GET /metadata, then loads ``--count`` resources
(Patients, each with Observations that reference it) in transaction Bundles from one client,
and reads the server process's resident set size (VmRSS) before and after loading. Prints one
JSON object, with the CPU time the server process used for each phase and the load average
(other work on a shared machine stretches the wall-clock times). Talks only to 127.0.0.1.
``--url URL --pid PID`` measures a server that is already running instead (no start-up time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import KINDS, ServerProcess, cpu_seconds, rss_bytes  # noqa: E402

FHIR_JSON = "application/fhir+json"
HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON, "Prefer": "return=minimal"}


def make_bundle(n_patients: int, per_patient: int, run: str, start_index: int) -> dict:
    entries = []
    for p in range(n_patients):
        idx = start_index + p
        patient_url = f"urn:uuid:{uuid.uuid4()}"
        entries.append(
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:fhir-spine:bench", "value": f"{run}-{idx}"}],
                    "name": [{"family": f"Bench{idx}", "given": ["Load"]}],
                    "gender": "female" if idx % 2 else "male",
                    "birthDate": f"19{50 + idx % 50:02d}-0{1 + idx % 9}-1{idx % 10}",
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        )
        for o in range(per_patient - 1):
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "category": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/"
                                        "observation-category",
                                        "code": "laboratory",
                                    }
                                ]
                            }
                        ],
                        "code": {
                            "coding": [{"system": "http://loinc.org", "code": f"bench-{o % 7}"}]
                        },
                        "subject": {"reference": patient_url},
                        "effectiveDateTime": f"2023-{1 + o % 12:02d}-{1 + o % 28:02d}T08:00:00Z",
                        "valueQuantity": {
                            "value": o * 1.5,
                            "unit": "mg/dL",
                            "system": "http://unitsofmeasure.org",
                            "code": "mg/dL",
                        },
                    },
                    "request": {"method": "POST", "url": "Observation"},
                }
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def count(base: str, resource_type: str) -> int | None:
    r = requests.get(
        f"{base}/{resource_type}", params={"_summary": "count"}, headers=HEADERS, timeout=120
    )
    r.raise_for_status()
    return r.json().get("total")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("server", choices=KINDS)
    ap.add_argument("--count", type=int, default=10_000, help="resources to load (default 10000)")
    ap.add_argument("--per-patient", type=int, default=20, help="Patient + N-1 Observations")
    ap.add_argument("--bundle-patients", type=int, default=10, help="patients per transaction")
    ap.add_argument("--url", help="measure a running server at this base URL instead")
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, for RSS")
    args = ap.parse_args(argv)

    result: dict = {"server": args.server, "count": args.count}
    server = None
    if args.url:
        base, pid = args.url.rstrip("/"), args.pid
    else:
        server = ServerProcess(args.server)
        running = server.start()
        base, pid = running.base_url, running.pid
        result["start_to_metadata_s"] = round(server.startup_seconds or 0, 1)
        result["log"] = str(running.log_path)
    if urlsplit(base).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"refusing to load a server that is not on 127.0.0.1: {base}")
    result["base_url"] = base
    try:
        if pid:
            result["rss_idle_mib"] = round(rss_bytes(pid) / 2**20, 1)
            cpu_before_load = cpu_seconds(pid)
            if server is not None:
                result["server_cpu_s_to_metadata"] = round(cpu_before_load, 1)
        result["loadavg_before"] = os.getloadavg()[0]
        patients = args.count // args.per_patient
        run = uuid.uuid4().hex[:8]
        t0 = time.monotonic()
        bundles = 0
        for start in range(0, patients, args.bundle_patients):
            n = min(args.bundle_patients, patients - start)
            bundle = make_bundle(n, args.per_patient, run, start)
            r = requests.post(base, json=bundle, headers=HEADERS, timeout=600)
            if r.status_code != 200:
                raise SystemExit(f"transaction failed: {r.status_code} {r.text[:1000]}")
            bundles += 1
        load_s = time.monotonic() - t0
        loaded = patients * args.per_patient
        result.update(
            loaded=loaded,
            bundles=bundles,
            load_s=round(load_s, 1),
            resources_per_s=round(loaded / load_s, 1),
        )
        result["loadavg_after"] = os.getloadavg()[0]
        if pid:
            result["rss_after_load_mib"] = round(rss_bytes(pid) / 2**20, 1)
            result["server_cpu_s_load"] = round(cpu_seconds(pid) - cpu_before_load, 1)
        result["server_counts"] = {t: count(base, t) for t in ("Patient", "Observation")}
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
