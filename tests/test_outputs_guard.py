"""Issue 14, points 1, 2 and 5: `--out` replaces only a fhir-spine dataset, never the
source or a folder the run keeps; an empty result or a sudden shrink is not published;
the report is regenerated inside the new dataset with `--report`."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_spine.errors import ExitCode
from fhir_spine.settings import DEMO_COHORT

SMALL = Path(__file__).parent / "data"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, check=False,
                          timeout=600)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("fhir-spine:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    """Five demo patients' resources as one NDJSON folder (fast to extract)."""
    folder = tmp_path_factory.mktemp("src")
    keep = {"p001", "p002", "p003", "p004", "p005"}
    lines = []
    for path in sorted(DEMO_COHORT.glob("*.ndjson*")):
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" \
            else path.read_text()
        for line in text.splitlines():
            r = json.loads(line)
            ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
            if r["resourceType"] == "Medication" or r.get("id") in keep \
                    or ref.removeprefix("Patient/") in keep:
                lines.append(line)
    (folder / "small.ndjson").write_text("\n".join(lines) + "\n")
    return folder


# ------------------------------------------------------------------ 1. data loss

def test_out_holding_a_foreign_manifest_is_refused_and_left_untouched(tmp_path, small_source):
    web = tmp_path / "web"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my web app"}')
    (web / "index.html").write_text("<html></html>")
    before = tree(web)
    done = cli("extract", "--source", str(small_source), "--out", str(web))
    assert done.returncode == ExitCode.USAGE
    assert "is not a fhir-spine dataset" in one_error_line(done)
    assert tree(web) == before


def test_a_dataset_with_a_stranger_file_is_refused(tmp_path, small_source):
    out = tmp_path / "out"
    assert cli("extract", "--source", str(small_source), "--out", str(out)).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    done = cli("extract", "--source", str(small_source), "--out", str(out))
    assert done.returncode == ExitCode.USAGE
    assert "holds files a fhir-spine dataset does not (notes.txt)" in one_error_line(done)
    assert tree(out) == before


@pytest.mark.parametrize("where", ["source", "parent", "inside"])
def test_out_overlapping_the_source_is_refused(tmp_path, small_source, where):
    project = tmp_path / "project"
    source = project / "export"
    source.mkdir(parents=True)
    for f in small_source.iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    # a Bulk export folder has its own manifest.json
    (source / "manifest.json").write_text('{"transactionTime": "2024-01-01T00:00:00Z"}')
    out = {"source": source, "parent": project, "inside": source / "out"}[where]
    before = tree(project)
    done = cli("extract", "--source", str(source), "--out", str(out))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "--source" in one_error_line(done)
    assert tree(project) == before


def test_refresh_out_inside_its_state_is_refused(tmp_path):
    state = tmp_path / "state"
    done = cli("refresh", "--server", "http://127.0.0.1:9/fhir", "--out",
               str(state / "out"), "--state-dir", str(state))
    assert done.returncode == ExitCode.USAGE
    assert "lies inside --state-dir" in one_error_line(done)


# ------------------------------------------------------------------ 2. blank dataset

def test_a_source_without_fhir_files_does_not_replace_the_dataset(tmp_path, small_source):
    out = tmp_path / "out"
    assert cli("extract", "--source", str(small_source), "--out", str(out)).returncode == 0
    before = tree(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    done = cli("extract", "--source", str(empty), "--out", str(out))
    assert done.returncode == ExitCode.EMPTY == 10
    assert "no resource was read (no FHIR files" in one_error_line(done)
    assert "nothing published" in one_error_line(done)
    assert tree(out) == before
    assert not list(tmp_path.glob(".out.building-*"))
    allowed = cli("extract", "--source", str(empty), "--out", str(out), "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads((out / "manifest.json").read_text())["rows"]["patients"] == 0


def test_shrink_guard(tmp_path, small_source):
    from fhir_spine.errors import ShrinkRefused
    from fhir_spine.outputs import PublishPolicy, guard

    def dataset(folder: Path, patients: int) -> Path:
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({
            "tool": "fhir-spine", "schema_version": 1, "rows": {"patients": patients},
            "accounting": {"read": patients * 10}}))
        return folder

    published, small, fine = (dataset(tmp_path / n, k) for n, k in
                              (("pub", 100), ("small", 49), ("fine", 50)))
    scheduled = PublishPolicy(allow_shrink=False)
    with pytest.raises(ShrinkRefused, match="49 patients screened, 100 in the published"):
        guard(small, published, scheduled)
    guard(fine, published, scheduled)
    guard(small, published, PublishPolicy(allow_shrink=False, min_share=0.4))
    guard(small, published, PublishPolicy(allow_shrink=True))
    guard(small, tmp_path / "nothing-yet", scheduled)


# ------------------------------------------------------------------ 5. the report

def test_report_is_regenerated_inside_the_new_dataset(tmp_path, small_source):
    out = tmp_path / "out"
    done = cli("extract", "--source", str(small_source), "--out", str(out), "--report")
    assert done.returncode == 0, done.stderr
    first = (out / "report" / "report.md").read_text()
    assert str(out.absolute()) in (out / "report" / "manifest.json").read_text()
    again = cli("extract", "--source", str(small_source), "--out", str(out), "--report")
    assert again.returncode == 0, again.stderr
    finished = json.loads((out / "manifest.json").read_text())["finished"]
    assert finished in (out / "report" / "report.md").read_text() != first  # the new data
    # without --report the old report goes with the old dataset, and the log says so
    plain = cli("extract", "--source", str(small_source), "--out", str(out))
    assert plain.returncode == 0
    assert "pass --report to regenerate it" in plain.stderr
    assert not (out / "report").exists()
