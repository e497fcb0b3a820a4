"""`fhir-spine report` on synthetic output folders: files, self-containment, robustness."""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fhir_spine import schema
from fhir_spine.cli import report as report_cli
from fhir_spine.errors import UsageError
from fhir_spine.report import stats as st
from fhir_spine.report.build import data_section
from fhir_spine.report.data import load_cohort
from fhir_spine.report.tables import build_tables
from fhir_spine.tables import frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def patient(i: int, strategy: str | None, rng: np.random.Generator, *,
            included: bool = True, reasons: str = "") -> dict[str, Any]:
    staged = strategy == "staged"
    b2s = int(rng.integers(5, 25)) if staged else 0
    s2t = int(rng.integers(8, 30))
    row: dict[str, Any] = {c.name: None for c in schema.PATIENTS}
    row.update(
        patient_id=f"p{i:03d}", included=included, exclusion_reasons=reasons,
        strategy=strategy, sex="female" if rng.random() < 0.65 else "male",
        age_at_biopsy=int(rng.normal(56, 10)), asa=int(rng.choice([1, 2, 3])),
        ecog_group="0-2" if rng.random() < 0.55 else "3-4",
        metastatic_outside_index=bool(rng.random() < 0.4),
        involved_vertebrae_group="1" if rng.random() < 0.8 else "2-3",
        sins_total=int(rng.integers(7, 18)),
        fixation_levels=int(rng.choice([3, 4, 5, 6, 7])),
        tumour_group=str(rng.choice(["solid-metastasis", "haematological", "primary-bone",
                                     "other"])),
        therapy_modalities=str(rng.choice(["systemic;radiotherapy", "systemic",
                                           "radiotherapy"])),
        days_biopsy_to_therapy=(b2s + s2t) if included else None,
        days_biopsy_to_stabilization=b2s if included else None,
        days_stabilization_to_therapy=s2t if included else None,
        ae_repeat_biopsy=int(rng.random() < 0.1), ae_revision=0,
        ae_unplanned_fixation=int(staged and rng.random() < 0.1),
        ae_pain_readmission=int(staged and rng.random() < 0.1),
    )
    for measure, lo, hi in (("vas", 0, 10), ("sosgoq_total", 0, 100),
                            ("sosgoq_pain", 0, 100), ("sosgoq_physical", 0, 100),
                            ("sosgoq_mental", 0, 100), ("sosgoq_social", 0, 100)):
        row[f"{measure}_baseline"] = float(rng.integers(lo, hi + 1))
        row[f"{measure}_at_diagnosis"] = float(rng.integers(lo, hi + 1))
    return row


def write_folder(folder: Path, rows: list[dict[str, Any]],
                 drop: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df = frame(rows, schema.PATIENTS).drop(columns=list(drop))
    df.to_parquet(folder / "patients.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "tool": "fhir-spine", "tool_version": "test",
        "finished": "2025-01-01T00:00:00+00:00"}))
    return folder


def cohort_rows(n_single: int, n_staged: int, n_excluded: int = 0,
                seed: int = 1) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = [patient(i, "single-stage", rng) for i in range(n_single)]
    rows += [patient(n_single + i, "staged", rng) for i in range(n_staged)]
    reasons = ["cervical", "decompression;no-stabilization", "missing-outcome-measures"]
    rows += [patient(500 + i, None, rng, included=False, reasons=reasons[i % 3])
             for i in range(n_excluded)]
    return rows


def run_report(out_dir: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    report_cli.register(sub)
    args = parser.parse_args(["report", str(out_dir), *extra])
    return int(args.func(args))


@pytest.fixture(scope="module")
def study_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One study-sized folder with its report, shared: drawing figures is the slow part."""
    out = write_folder(tmp_path_factory.mktemp("study") / "out", cohort_rows(21, 44, 9))
    assert run_report(out) == 0
    return out


def test_report_writes_everything(study_like: Path) -> None:
    rep = study_like / "report"
    html = (rep / "report.html").read_text(encoding="utf-8")
    md = (rep / "report.md").read_text(encoding="utf-8")
    # self-contained: no external URL of any kind, images inline
    assert 'src="http' not in html and "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    for text in (html, md):
        assert "Table 1. Baseline characteristics by strategy" in text
        assert "Single-stage (n = 21)" in text and "Staged (n = 44)" in text
        assert "Primary outcome" in text and "Adverse events" in text
        assert "Patient flow" in text and "Statistical methods" in text
    for stem in ("figure3_time_to_therapy", "figure4_pros", "flow"):
        assert (rep / "figures" / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
        assert "<svg" in (rep / "figures" / f"{stem}.svg").read_text()
        assert f"figures/{stem}.png" in md
    for slug in ("table1_baseline", "primary_outcome", "primary_tests", "staged_components",
                 "pros_between", "pros_change", "adverse_events", "therapy_modalities",
                 "exclusion_flow", "statistics", "summaries", "footnotes"):
        assert (rep / "tables" / f"{slug}.csv").is_file(), slug
    manifest = json.loads((rep / "manifest.json").read_text())
    assert manifest["input"]["patients_included"] == 65
    assert "report.html" in manifest["files"]


def test_statistics_csv_holds_full_precision_results(study_like: Path) -> None:
    stats_csv = pd.read_csv(study_like / "report" / "tables" / "statistics.csv")
    pts = pd.read_parquet(study_like / "patients.parquet")
    inc = pts[pts["included"].fillna(False).astype(bool)]
    x = inc.loc[inc["strategy"] == "single-stage", "days_biopsy_to_therapy"].astype(float)
    y = inc.loc[inc["strategy"] == "staged", "days_biopsy_to_therapy"].astype(float)
    welch = st.welch_t_test(list(x), list(y))
    row = stats_csv[(stats_csv["table"] == "primary_tests")
                    & (stats_csv["statistic_name"] == "t")].iloc[0]
    assert row["p_value"] == pytest.approx(welch.p_value, rel=1e-12)
    assert row["df"] == pytest.approx(welch.df, rel=1e-12)


def test_table1_counts_and_percentages(study_like: Path) -> None:
    cohort = load_cohort(study_like)
    t1 = build_tables(cohort).get("table1_baseline").frame
    female = t1[t1.iloc[:, 0].str.strip() == "Female"].iloc[0]
    inc = cohort.included
    n_f = int(((inc["strategy"] == "single-stage") & (inc["sex"] == "female")).sum())
    assert female.iloc[1].startswith(f"{n_f} (")
    assert t1.columns[1] == "Single-stage (n = 21)"


def test_rerun_is_byte_identical(study_like: Path) -> None:
    rep = study_like / "report"
    first = {p.relative_to(rep): p.read_bytes() for p in rep.rglob("*") if p.is_file()}
    run_report(study_like)
    second = {p.relative_to(rep): p.read_bytes() for p in rep.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    changed = [str(k) for k in first if first[k] != second[k]]
    assert changed == []


@pytest.mark.parametrize("rows", [
    pytest.param([], id="empty"),
    pytest.param(cohort_rows(0, 0, 4), id="all-excluded"),
    pytest.param(cohort_rows(6, 0, 1), id="single-stage-only"),
    pytest.param(cohort_rows(1, 1), id="one-each"),
])
def test_awkward_cohorts_do_not_crash(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    out = write_folder(tmp_path / "out", rows)
    assert run_report(out) == 0
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "nan" not in re.sub(r"<[^>]+>", " ", html).lower().split()
    assert (out / "report" / "figures" / "figure3_time_to_therapy.png").is_file()
    stats_csv = pd.read_csv(out / "report" / "tables" / "statistics.csv")
    missing_p = stats_csv["p_value"].isna()
    assert stats_csv.loc[missing_p, "note"].notna().all()  # every empty p has its reason


@pytest.mark.parametrize("rows", [
    pytest.param(cohort_rows(0, 5), id="staged-only"),
    pytest.param(cohort_rows(2, 2), id="two-each"),
    pytest.param(cohort_rows(3, 0, 2), id="single-stage-only"),
])
def test_awkward_cohort_tables(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    """Tables only (no figures): every cell is a value, a dash or a footnoted dash."""
    tables = build_tables(load_cohort(write_folder(tmp_path / "out", rows)))
    for t in tables.tables:
        cells = t.frame.astype(str).to_numpy().ravel()
        assert not any("nan" in c.lower().split() for c in cells), t.slug
        markers = {int(m) for c in cells for m in re.findall(r"\[(\d+)\]", c)}
        assert markers <= set(range(1, len(t.footnotes) + 1)), t.slug
    empty_p = tables.statistics["p_value"].isna()
    assert tables.statistics.loc[empty_p, "note"].notna().all()


def test_constant_column_gives_footnote(tmp_path: Path) -> None:
    rows = cohort_rows(5, 6)
    for r in rows:
        r["sins_total"] = 12
    out = write_folder(tmp_path / "out", rows)
    tables = build_tables(load_cohort(out))
    t1 = tables.get("table1_baseline")
    sins = t1.frame[t1.frame.iloc[:, 0].str.startswith("SINS total, score, mean")].iloc[0]
    assert "[" in sins["p-value"]
    assert any("constant" in n for n in t1.footnotes)


def test_missing_columns_are_reported_not_fatal(tmp_path: Path) -> None:
    out = write_folder(tmp_path / "out", cohort_rows(4, 4), drop=("sosgoq_social_baseline",))
    cohort = load_cohort(out)
    assert cohort.missing_columns == ("sosgoq_social_baseline",)
    section = data_section(cohort)
    assert section is not None and "sosgoq_social_baseline" in " ".join(section.paragraphs)
    build_tables(cohort)  # the column's rows are empty, not an error


def test_report_dir_option_and_safety(tmp_path: Path, study_like: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    assert run_report(study_like, "--report-dir", str(elsewhere)) == 0
    assert (elsewhere / "report.html").is_file()
    user_files = tmp_path / "mine"
    user_files.mkdir()
    (user_files / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError):
        run_report(study_like, "--report-dir", str(user_files))
    assert (user_files / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError):
        run_report(study_like, "--report-dir", str(study_like))
    assert (study_like / "patients.parquet").is_file()


def test_bad_out_dir_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        run_report(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="manifest.json"):
        run_report(tmp_path / "plain")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    (broken / "patients.parquet").write_bytes(b"not parquet")
    with pytest.raises(UsageError, match="cannot read"):
        run_report(broken)
    (broken / "manifest.json").write_text("[not json")
    with pytest.raises(UsageError):
        run_report(broken)


def test_main_cli_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_spine.cli import main

    code = main.main(["report", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "does not exist" in err
