"""`extract --jobs N` (issue 16): the same folder gives byte-identical tables for any N,
and the same tables as reading its items one by one."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd

from fhir_spine.dataset import build_dataset, part_of
from fhir_spine.pipeline import extract, extract_files
from fhir_spine.settings import DEMO_COHORT, load_mappings
from fhir_spine.sources.files import FileSource, iter_folder

TABLES = ("patients", "events", "observations", "issues", "codes")


def _folder(tmp_path):
    """The demo cohort plus a duplicate in another file and an unsupported type."""
    src = tmp_path / "src"
    shutil.copytree(DEMO_COHORT, src)
    first = (src / "Procedure.ndjson").read_text().splitlines()[0]
    (src / "zz-late.ndjson").write_text(first + "\n" + json.dumps(
        {"resourceType": "Basic", "id": "b1"}) + "\n")
    return src


def _cli(src, out, jobs):
    subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "--quiet", "extract",
                    "--source", str(src), "--out", str(out), "--jobs", str(jobs)],
                   check=True, capture_output=True)


def test_tables_are_byte_identical_whatever_the_jobs(tmp_path):
    src = _folder(tmp_path)
    _cli(src, tmp_path / "j1", 1)
    _cli(src, tmp_path / "j2", 2)
    for name in TABLES:
        for ext in ("parquet", "csv"):
            a = (tmp_path / "j1" / f"{name}.{ext}").read_bytes()
            b = (tmp_path / "j2" / f"{name}.{ext}").read_bytes()
            assert a == b, f"{name}.{ext} differs between --jobs 1 and --jobs 2"
    m1 = json.loads((tmp_path / "j1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "j2" / "manifest.json").read_text())
    for key in ("accounting", "resources_read", "issues", "set_aside_counted"):
        assert m1[key] == m2[key]
    assert m1["set_aside_counted"]["unsupported-type"] == {"Basic": 1}
    issues = pd.read_parquet(tmp_path / "j2" / "issues.parquet")
    assert "duplicate-resource" in set(issues["code"])


def test_file_parts_equal_reading_items_in_order(tmp_path):
    src = _folder(tmp_path)
    mappings = load_mappings(None, {})
    one = build_dataset([part_of(extract(iter_folder(src), mappings))]).tables
    for jobs in (1, 2):
        par = build_dataset([part_of(extract_files(FileSource(src), mappings,
                                                   jobs=jobs))]).tables
        for name in TABLES:
            pd.testing.assert_frame_equal(getattr(one, name), getattr(par, name))


def test_ranges_of_a_large_ndjson_file_equal_reading_it_whole(tmp_path):
    """The demo's Observations in one file read as many byte ranges (a range size of a
    few hundred bytes forces it), with a malformed and a blank line, a line longer than a
    range and a duplicate at boundaries: the same tables, issues and origins as reading
    each file whole, for --jobs 1 and --jobs 2; the gzip file stays one unit."""
    src = _folder(tmp_path)
    observations = [line for path in sorted(src.glob("Observation*.ndjson"))
                    for line in path.read_text().splitlines()]
    for path in src.glob("Observation*.ndjson"):
        path.unlink()
    long = json.loads(observations[0])
    long["id"] = "long-one"
    long["note"] = [{"text": "x" * 2000}]
    lines = [*observations[:5], "{not json", "", json.dumps(long), observations[3],
             *observations[5:]]
    (src / "Observation.ndjson").write_text("\n".join(lines) + "\n")
    (src / "Encounter.ndjson.gz").write_bytes(
        gzip.compress((src / "Encounter.ndjson").read_bytes()))
    (src / "Encounter.ndjson").unlink()

    mappings = load_mappings(None, {})
    whole = extract(iter_folder(src), mappings)
    one = build_dataset([part_of(whole)]).tables
    ranged = FileSource(src, range_bytes=300)
    units = ranged.units()
    by_file = Counter(unit.path.name for unit in units)
    assert by_file["Observation.ndjson"] > 10
    assert by_file["Encounter.ndjson.gz"] == 1
    issues = one.issues
    assert {"malformed-json", "duplicate-resource"} <= set(issues["code"])
    for jobs in (1, 2):
        extraction = extract_files(ranged, mappings, jobs=jobs)
        assert extraction.read_issues == whole.read_issues  # origins `file:line` included
        assert extraction.counts == whole.counts
        assert extraction.read_by_type == whole.read_by_type
        assert extraction.set_aside_counted == whole.set_aside_counted
        par = build_dataset([part_of(extraction)]).tables
        for name in TABLES:
            pd.testing.assert_frame_equal(getattr(one, name), getattr(par, name))
