"""`extract --jobs N` (issue 16): the same folder gives byte-identical tables for any N,
and the same tables as reading its items one by one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

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
