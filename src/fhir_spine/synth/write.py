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
from fhir_spine.synth.generate import Cohort, CohortPlan
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
# Types only the background (`--background`) has; their files exist only when it is on.
BACKGROUND_TYPES = ("Immunization", "AllergyIntolerance")
BACKGROUND_FILES: tuple[str, ...] = tuple(f"{t}.ndjson" for t in BACKGROUND_TYPES)


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


def _readme(cohort: CohortPlan, background_mean: int = 0) -> bytes:
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
        f" --timezone {cohort.timezone}"
        + (f" --background {background_mean}" if background_mean else "")
        + " --out <dir>` (same arguments, same bytes).",
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
    if background_mean:
        lines[-1:-1] = [
            f"Background: on average {background_mean} irrelevant resources per patient "
            "(vital signs, labs, unrelated visits and problems, immunizations, allergies; "
            "`Immunization.ndjson`, `AllergyIntolerance.ndjson`); they change no truth cell.",
            ""]
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


class _Bundle:
    """The transaction Bundle written entry by entry, in `_bundle`'s exact bytes.

    `json.dumps(indent=1)` of the whole Bundle puts each entry two levels deep: dumping an
    entry alone and indenting its lines by two spaces gives the same text. Each resource
    was validated when built; the first entry is validated inside a Bundle to check the
    envelope.
    """

    def __init__(self, handle: io.BufferedWriter, seed: int) -> None:
        self.handle = handle
        self.seed = seed
        self.count = 0

    def add(self, built: Built) -> None:
        entry = {"fullUrl": f"urn:uuid:{built.uuid}", "resource": built.resource,
                 "request": {"method": "POST", "url": built.resource_type}}
        if self.count == 0:
            validated({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
            head = json.dumps({"resourceType": "Bundle", "id": f"synth-{self.seed}-transaction",
                               "type": "transaction"}, ensure_ascii=False, indent=1)
            self.handle.write((head[:-2] + ',\n "entry": [\n').encode("utf-8"))
        else:
            self.handle.write(b",\n")
        text = json.dumps(entry, ensure_ascii=False, indent=1)
        self.handle.write("\n".join("  " + line for line in text.split("\n")).encode("utf-8"))
        self.count += 1

    def close(self) -> None:
        if self.count:
            self.handle.write(b"\n ]\n}\n")
        else:
            self.handle.write(_bundle([], self.seed))


def write_cohort(cohort: CohortPlan, out: Path, background_mean: int = 0) -> list[Path]:
    """Write every file, one patient at a time; each file via a temporary name and an
    atomic rename once all are complete.

    Memory holds one patient's resources at a time (plus the plans and truth), so
    100,000 patients fit. With `background_mean` 0 the bytes equal `render_files` (a test).
    """
    out.mkdir(parents=True, exist_ok=True)
    names = [*(f"{t}.ndjson" for t in NDJSON_TYPES), *OBSERVATION_PARTS, REPORT_FILE,
             BUNDLE_FILE]
    if background_mean:
        names += BACKGROUND_FILES
    handles = {name: (out / f".{name}.tmp").open("wb") for name in names}
    report = gzip.GzipFile(filename="", mode="wb", fileobj=handles[REPORT_FILE], mtime=0)
    bundle = _Bundle(handles[BUNDLE_FILE], cohort.seed)
    plain = sum(p.ref_style != "bundle" for p in cohort.plans)
    half, seen = (plain + 1) // 2, 0
    try:
        for index, plan in enumerate(cohort.plans):
            resources = cohort.build(index, background_mean)
            if plan.ref_style == "bundle":
                for built in resources:
                    bundle.add(built)
                continue
            observations = handles[OBSERVATION_PARTS[0 if seen < half else 1]]
            seen += 1
            for built in resources:
                line = _line(built.resource).encode("utf-8")
                if built.resource_type == "Observation":
                    observations.write(line)
                elif built.resource_type == "DiagnosticReport":
                    report.write(line)
                else:
                    handles[f"{built.resource_type}.ndjson"].write(line)
        report.close()
        bundle.close()
    finally:
        for handle in handles.values():
            handle.close()
    tail = {TRUTH_FILE: _truth_csv(cohort.truth), README_FILE: _readme(cohort, background_mean)}
    for name, content in tail.items():
        (out / f".{name}.tmp").write_bytes(content)
    written = []
    for name in [*names, *tail]:
        os.replace(out / f".{name}.tmp", out / name)
        written.append(out / name)
    if not background_mean:  # a regeneration without background leaves none behind
        for name in BACKGROUND_FILES:
            (out / name).unlink(missing_ok=True)
    return written
