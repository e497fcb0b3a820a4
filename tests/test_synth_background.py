"""`fhir-spine synth --background N`: irrelevant resources that change no classification,
and the streaming writer that keeps a large cohort out of memory."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_spine.cli import synth as synth_cli
from fhir_spine.cli.main import main
from fhir_spine.synth import BACKGROUND_FILES, generate, plan_cohort, render_files, write_cohort
from fhir_spine.synth.background import TYPES


def _synth(out: Path, background: int, patients: int = 24, seed: int = 11) -> None:
    status = synth_cli.run(argparse.Namespace(patients=patients, seed=seed, out=out,
                                              timezone="UTC", background=background))
    assert status == 0


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.ndjson"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_streaming_writer_equals_the_in_memory_files(tmp_path):
    """The writer builds one patient at a time; without background it writes exactly
    `render_files` (which the committed demo is checked against)."""
    write_cohort(plan_cohort(30, 4), tmp_path)
    expected = render_files(generate(30, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    for name, content in expected.items():
        if not name.endswith(".gz"):  # gzip bytes: compared by test_synth's two runs
            assert (tmp_path / name).read_bytes() == content, name


def test_background_adds_every_kind_each_valid_fhir(tmp_path):
    _synth(tmp_path / "bg", background=30)
    resources = [r for r in _lines(tmp_path / "bg") if "-bg-" in r.get("id", "")]
    bundle = json.loads((tmp_path / "bg" / "transaction-bundle.json").read_text())
    in_bundle = [e["resource"] for e in bundle["entry"]]
    kinds = Counter(r["resourceType"] for r in resources)
    assert set(kinds) == set(TYPES), kinds
    assert kinds["Observation"] > kinds["Encounter"]  # mostly observations, as in real exports
    assert 24 * 30 * 0.6 < len(resources) + len(in_bundle) < 24 * 30 * 1.4 + 400
    for res in resources:
        get_fhir_model_class(res["resourceType"]).model_validate(res)
    model_bundle = get_fhir_model_class("Bundle")
    model_bundle.model_validate(bundle)


def test_background_is_deterministic(tmp_path):
    _synth(tmp_path / "a", background=5)
    _synth(tmp_path / "b", background=5)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_rerun_without_background_leaves_no_background_file(tmp_path):
    _synth(tmp_path / "c", background=5)
    assert all((tmp_path / "c" / n).exists() for n in BACKGROUND_FILES)
    _synth(tmp_path / "c", background=0)
    assert not any((tmp_path / "c" / n).exists() for n in BACKGROUND_FILES)


@pytest.mark.parametrize("patients,seed", [(40, 11)])
def test_background_changes_no_patient_row(tmp_path, patients, seed):
    """Same truth, and `extract` gives the same patients table with and without it."""
    tables, read = {}, {}
    for background in (0, 25):
        src, out = tmp_path / f"src-{background}", tmp_path / f"out-{background}"
        _synth(src, background, patients, seed)
        assert main(["--quiet", "extract", "--source", str(src), "--out", str(out),
                     "--no-csv", "--jobs", "1"]) == 0
        tables[background] = pd.read_parquet(out / "patients.parquet")
        read[background] = json.loads((out / "manifest.json").read_text())["accounting"]["read"]
    assert read[25] > read[0] + patients * 25 * 0.6
    assert (tmp_path / "src-0" / "ground-truth.csv").read_bytes() == \
        (tmp_path / "src-25" / "ground-truth.csv").read_bytes()
    pd.testing.assert_frame_equal(tables[0], tables[25])
