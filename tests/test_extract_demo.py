"""End to end on the committed demo cohort: the extraction equals the generator's truth."""

from __future__ import annotations

import json
import stat

import pandas as pd
import pytest

from fhir_spine.cli.main import main
from fhir_spine.settings import DEMO_COHORT

COMPARED = [
    "included", "exclusion_reasons", "strategy", "strategy_basis", "age_at_biopsy", "sex",
    "index_biopsy_date", "stabilization_date", "diagnosis_available_date", "therapy_start_date",
    "therapy_modalities", "days_biopsy_to_therapy", "days_biopsy_to_stabilization",
    "days_stabilization_to_therapy", "fixation_levels", "involved_vertebrae",
    "metastatic_outside_index", "tumour_group", "sins_total", "ecog", "asa",
    "vas_baseline", "vas_at_diagnosis", "sosgoq_total_baseline", "sosgoq_total_at_diagnosis",
    "sosgoq_pain_baseline", "sosgoq_pain_at_diagnosis", "sosgoq_physical_baseline",
    "sosgoq_physical_at_diagnosis", "sosgoq_mental_baseline", "sosgoq_mental_at_diagnosis",
    "sosgoq_social_baseline", "sosgoq_social_at_diagnosis",
    "ae_repeat_biopsy", "ae_revision", "ae_unplanned_fixation", "ae_pain_readmission",
]


def _norm(value: object) -> str:
    """Compare as text: both sides hold the same facts in different dtypes."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    try:
        return f"{float(text):g}"
    except ValueError:
        return text.lower() if text in ("True", "False") else text


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    status = main(["extract", "--out", str(out)])
    return out, status


def test_demo_extraction_exits_cleanly(demo_out):
    _, status = demo_out
    assert status == 0


def test_demo_matches_ground_truth_for_every_patient(demo_out):
    out, _ = demo_out
    got = pd.read_parquet(out / "patients.parquet").set_index("patient_id")
    truth = pd.read_csv(DEMO_COHORT / "ground-truth.csv", dtype=str,
                        keep_default_na=False).set_index("patient_id")
    assert sorted(got.index) == sorted(truth.index)
    mismatches = []
    for pid in truth.index:
        for column in COMPARED:
            if column not in truth.columns:
                continue
            expected, actual = _norm(truth.at[pid, column]), _norm(got.at[pid, column])
            if expected != actual:
                mismatches.append(f"{pid}.{column}: truth {expected!r} got {actual!r}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:40])


def test_demo_cohort_counts(demo_out):
    out, _ = demo_out
    patients = pd.read_parquet(out / "patients.parquet")
    included = patients[patients["included"]]
    assert (included["strategy"] == "single-stage").sum() == 21
    assert (included["strategy"] == "staged").sum() == 44


def test_accounting_balances_read_equals_used_plus_set_aside(demo_out):
    out, _ = demo_out
    manifest = json.loads((out / "manifest.json").read_text())
    acc = manifest["accounting"]
    assert acc["read"] == acc["used"] + acc["set_aside"] and acc["unaccounted"] == 0
    assert acc["read"] == sum(manifest["resources_read"].values())
    # every set-aside resource is traceable: an unused events row or an issues row
    events = pd.read_parquet(out / "events.parquet")
    issues = pd.read_parquet(out / "issues.parquet")
    traced_aside = set(zip(events.loc[~events["used"], "resource_type"],
                           events.loc[~events["used"], "resource_id"], strict=True))
    traced_aside |= set(zip(issues.loc[issues["set_aside"], "resource_type"],
                            issues.loc[issues["set_aside"], "resource_id"], strict=True))
    assert len(traced_aside) > 0


def test_every_table_in_parquet_and_csv_with_codebook_and_manifest(demo_out):
    out, _ = demo_out
    for name in ("patients", "events", "observations", "issues", "codes", "codebook"):
        parquet = pd.read_parquet(out / f"{name}.parquet")
        csv = pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False)
        assert list(parquet.columns) == list(csv.columns)
        assert len(parquet) == len(csv)
    codebook = pd.read_csv(out / "codebook.csv")
    for name in ("patients", "events", "observations", "issues", "codes"):
        columns = pd.read_parquet(out / f"{name}.parquet").columns
        documented = set(codebook.loc[codebook["table"] == name, "name"])
        assert set(columns) == documented
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("schema_version", "tool_version", "started", "finished", "source",
                "fhir_version", "resources_read", "rows", "mapping_files", "warnings"):
        assert key in manifest
    assert all(len(f["sha256"]) == 64 for f in manifest["mapping_files"])
    # the defaults are package data, named relative to the package wherever it is installed
    paths = [f["path"] for f in manifest["mapping_files"]]
    assert paths[:2] == ["fhir_spine/mappings/settings.yaml", "fhir_spine/mappings/concepts.yaml"]
    assert "fhir_spine/mappings/views/Procedure.json" in paths


def test_outputs_are_owner_only(demo_out):
    out, _ = demo_out
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_codes_table_lists_unmapped_codes_first(demo_out):
    out, _ = demo_out
    codes = pd.read_parquet(out / "codes.parquet")
    mapped = codes["concept"].notna().tolist()
    assert mapped == sorted(mapped)  # all False (unmapped) before True
    assert (codes["resources"] >= codes["patients"]).all()


def test_dates_are_iso_calendar_dates_in_csv(demo_out):
    out, _ = demo_out
    csv = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False)
    dates = csv["index_biopsy_date"][csv["index_biopsy_date"] != ""]
    assert dates.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert set(csv["included"]) <= {"true", "false"}


@pytest.mark.parametrize("timezone", ["America/New_York", "Asia/Tokyo"])
def test_site_time_zone_round_trip(tmp_path, timezone):
    """A cohort generated for a site zone and extracted in that zone matches its truth:
    timestamps with offsets (some crossing midnight) land on the site's calendar days."""
    source, out = tmp_path / "src", tmp_path / "out"
    assert main(["synth", "--patients", "30", "--seed", "7", "--timezone", timezone,
                 "--out", str(source)]) == 0
    assert main(["extract", "--source", str(source), "--out", str(out),
                 "--timezone", timezone]) == 0
    got = pd.read_parquet(out / "patients.parquet").set_index("patient_id")
    truth = pd.read_csv(source / "ground-truth.csv", dtype=str,
                        keep_default_na=False).set_index("patient_id")
    for column in ("index_biopsy_date", "stabilization_date", "therapy_start_date",
                   "days_biopsy_to_therapy", "strategy", "exclusion_reasons"):
        expected = [_norm(v) for v in truth[column]]
        actual = [_norm(got.at[pid, column]) for pid in truth.index]
        assert actual == expected, column
