"""Throughput of the ViewDefinition runner on synthetic Procedures.

Runs a 20-column view (the project Procedure view plus two columns) over 20,000
synthetic Procedure dicts and prints resources/second, once with the dict-walking
fast path and once with every path forced through fhirpathpy.  The interpreter is
much slower, so by default it is timed on a sample (``--interpreted-sample``).

    python benchmarks/bench_views.py [--resources N] [--interpreted-sample N]

Prints numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import orjson

from fhir_spine.settings import DEFAULT_MAPPINGS
from fhir_spine.views import compile_view

VIEW_FILE = DEFAULT_MAPPINGS / "views" / "Procedure.json"
SYSTEMS = ["http://snomed.info/sct", "http://www.ama-assn.org/go/cpt", "http://loinc.org"]


def benchmark_view() -> dict[str, Any]:
    view = orjson.loads(VIEW_FILE.read_bytes())
    columns = view["select"][0]["column"]
    columns += [
        {"name": "code_text", "path": "code.text", "type": "string"},
        {"name": "location_ref", "path": "location.getReferenceKey(Location)", "type": "string"},
    ]
    assert len(columns) == 20, len(columns)
    return view


def synthetic_procedures(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not security
    out = []
    for i in range(count):
        coding = [
            {"system": rng.choice(SYSTEMS), "code": str(rng.randint(10000, 99999)), "display": "P"}
            for _ in range(rng.randint(1, 3))
        ]
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": f"proc-{i}",
            "meta": {"lastUpdated": "2024-05-01T12:00:00Z"},
            "status": rng.choice(["completed", "in-progress", "not-done"]),
            "subject": {"reference": f"Patient/pt-{rng.randint(1, 2000)}"},
            "code": {"coding": coding, "text": "procedure"},
            "encounter": {"reference": f"Encounter/enc-{i}"},
            "bodySite": [{"coding": [{"system": SYSTEMS[0], "code": "122496007"}]}],
            "reasonCode": [
                {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C79.51"}]}
            ],
            "location": {"reference": "Location/loc-1"},
        }
        if rng.random() < 0.5:
            proc["performedPeriod"] = {
                "start": "2024-01-10T08:00:00Z",
                "end": "2024-01-10T11:00:00Z",
            }
        else:
            proc["performedDateTime"] = "2024-01-10T08:00:00Z"
        if rng.random() < 0.2:
            proc["partOf"] = [{"reference": f"Procedure/proc-{max(0, i - 1)}"}]
        out.append(proc)
    return out


def rate(view: Any, resources: list[dict[str, Any]]) -> tuple[float, int]:
    start = time.perf_counter()
    rows = sum(len(view.rows(r)) for r in resources)
    elapsed = time.perf_counter() - start
    return len(resources) / elapsed, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--interpreted-sample", type=int, default=2_000)
    args = parser.parse_args()

    view_json = benchmark_view()
    resources = synthetic_procedures(args.resources)
    fast = compile_view(view_json)
    slow = compile_view(view_json, fast_path=False)
    sample = resources[: args.interpreted_sample]
    assert [fast.rows(r) for r in sample[:200]] == [slow.rows(r) for r in sample[:200]]

    fast_rate, rows = rate(fast, resources)
    print(f"view: {len(fast.columns)} columns; resources: {len(resources)}; rows: {rows}")
    print(f"fast path:  {fast_rate:10,.0f} resources/s")
    slow_rate, _ = rate(slow, sample)
    print(f"fhirpathpy: {slow_rate:10,.0f} resources/s (timed on {len(sample)} resources)")
    print(f"speed-up:   {fast_rate / slow_rate:10.1f}x")


if __name__ == "__main__":
    main()
