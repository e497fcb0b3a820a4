"""Write a generated cohort as a Bulk-Data-style folder plus its ground truth.

Layout (fixed, whatever the cohort size, so a regeneration replaces every file):
one NDJSON file per resource type, Observation split over two numbered files,
DiagnosticReport gzip-compressed, the Bundle patients in one transaction Bundle,
`ground-truth.csv` and a README. Bytes depend only on the cohort: compact JSON with a
fixed key order, `\\n` line ends, gzip with no name and a zero timestamp.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections import Counter
from pathlib import Path

from fhir_spine.synth.build import Built, validated
from fhir_spine.synth.generate import Cohort
from fhir_spine.synth.targets import EXCLUSION_REASONS
from fhir_spine.synth.truth import COLUMNS

NDJSON_TYPES = (
    "Patient", "Encounter", "Procedure", "Condition", "Medication", "MedicationRequest",
    "MedicationAdministration",
)
OBSERVATION_PARTS = ("Observation.000.ndjson", "Observation.001.ndjson")
REPORT_FILE = "DiagnosticReport.ndjson.gz"
BUNDLE_FILE = "transaction-bundle.json"
TRUTH_FILE = "ground-truth.csv"
README_FILE = "README.md"
FILES: tuple[str, ...] = (
    *(f"{t}.ndjson" for t in NDJSON_TYPES), *OBSERVATION_PARTS, REPORT_FILE, BUNDLE_FILE,
    TRUTH_FILE, README_FILE,
)


def _line(resource: dict) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n"


def _ndjson(resources: list[dict]) -> bytes:
    return "".join(_line(r) for r in resources).encode("utf-8")


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as out:
        out.write(data)
    return buffer.getvalue()


def _bundle(patients: list[list[Built]], seed: int) -> bytes:
    entries = [
        {"fullUrl": f"urn:uuid:{b.uuid}", "resource": b.resource,
         "request": {"method": "POST", "url": b.resource_type}}
        for resources in patients for b in resources
    ]
    bundle = validated({"resourceType": "Bundle", "id": f"synth-{seed}-transaction",
                        "type": "transaction", "entry": entries})
    return (json.dumps(bundle, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _truth_csv(rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _readme(cohort: Cohort) -> bytes:
    rows = cohort.truth
    included = [r for r in rows if r["included"] == "true"]
    strategies = Counter(r["strategy"] for r in included)
    reasons = Counter(x for r in rows for x in r["exclusion_reasons"].split(";") if x)
    bundle = [p.patient_id for p in cohort.plans if p.ref_style == "bundle"]
    lines = [
        "# Synthetic spinal-oncology pathway cohort",
        "",
        "Made by `fhir-spine synth`: entirely synthetic FHIR R4 data, no real patients.",
        f"Regenerate with `fhir-spine synth --patients {cohort.patients} --seed {cohort.seed}"
        f" --timezone {cohort.timezone} --out <dir>` (same arguments, same bytes).",
        "",
        f"- patients screened: {len(rows)}",
        f"- included: {len(included)} ({strategies['single-stage']} single-stage, "
        f"{strategies['staged']} staged), calibrated to the study in `PATHWAY.md`",
        f"- excluded: {len(rows) - len(included)}; patients per exclusion reason: "
        + ", ".join(f"{r} {reasons[r]}" for r in EXCLUSION_REASONS),
        f"- site time zone of the ground truth: {cohort.timezone}",
        "",
        "Files: one NDJSON file per resource type (`Observation` split in two, "
        f"`{REPORT_FILE}` gzip-compressed); `{BUNDLE_FILE}` holds {len(bundle)} of the patients "
        "instead, as a transaction Bundle with `urn:uuid` references (their patient ids are "
        f"those uuids); `{TRUTH_FILE}` is the expected pathway result per patient, computed "
        "from the generator's plan (column `variants` names the messy records each "
        "patient carries).",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def render_files(cohort: Cohort) -> dict[str, bytes]:
    """File name -> content, for every file of the layout."""
    plain = [r for p, r in zip(cohort.plans, cohort.resources, strict=True)
             if p.ref_style != "bundle"]
    bundled = [r for p, r in zip(cohort.plans, cohort.resources, strict=True)
               if p.ref_style == "bundle"]
    by_type: dict[str, list[dict]] = {}
    for resources in plain:
        for built in resources:
            by_type.setdefault(built.resource_type, []).append(built.resource)
    half = (len(plain) + 1) // 2
    observations = [
        [b.resource for resources in part for b in resources
         if b.resource_type == "Observation"]
        for part in (plain[:half], plain[half:])
    ]
    files = {f"{t}.ndjson": _ndjson(by_type.get(t, [])) for t in NDJSON_TYPES}
    files.update(zip(OBSERVATION_PARTS, (_ndjson(o) for o in observations), strict=True))
    files[REPORT_FILE] = _gzip(_ndjson(by_type.get("DiagnosticReport", [])))
    files[BUNDLE_FILE] = _bundle(bundled, cohort.seed)
    files[TRUTH_FILE] = _truth_csv(cohort.truth)
    files[README_FILE] = _readme(cohort)
    return files


def write_cohort(cohort: Cohort, out: Path) -> list[Path]:
    """Write every file, each via a temporary name and an atomic rename."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render_files(cohort).items():
        target = out / name
        temporary = out / f".{name}.tmp"
        temporary.write_bytes(content)
        os.replace(temporary, target)
        written.append(target)
    return written
