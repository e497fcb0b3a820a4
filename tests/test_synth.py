"""The synthetic cohort generator: determinism, FHIR validity, calibration, coverage."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import statistics
from collections import Counter
from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class

from fhir_spine.cli import synth as synth_cli
from fhir_spine.errors import UsageError
from fhir_spine.settings import DEFAULT_MAPPINGS, DEMO_COHORT
from fhir_spine.synth import FILES, calibrate, clock, generate, render_files, truth
from fhir_spine.synth.model import ProcedurePlan, When
from fhir_spine.synth.targets import EXCLUSION_REASONS
from fhir_spine.synth.variants import ALL_TAGS
from fhir_spine.synth.vocab import (
    BIOPSY_PCS,
    CPT_LONG_CONSTRUCT,
    DRUGS,
    LESION_CODES,
    LEVEL_SCT,
    LOCAL,
    MEASURE_CODES,
    PAIN_REASONS,
    PROCEDURE_CODES,
    REPORT_CODES,
    TUMOURS,
)

DEMO = DEMO_COHORT  # src/fhir_spine/demo, package data
DEMO_SEED = 2025


def _run(out: Path, patients: int = 12, seed: int = 7, tz: str = "UTC") -> int:
    return synth_cli.run(argparse.Namespace(patients=patients, seed=seed, out=out, timezone=tz))


def _truth(folder: Path) -> list[dict[str, str]]:
    with (folder / "ground-truth.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _resources(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".ndjson"):
            lines = path.read_text(encoding="utf-8").splitlines()
        elif path.name.endswith(".ndjson.gz"):
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
        elif path.name.endswith(".json"):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            out.append(bundle)
            out += [e["resource"] for e in bundle["entry"]]
            continue
        else:
            continue
        out += [json.loads(line) for line in lines if line]
    return out


@pytest.fixture(scope="module")
def demo_truth() -> list[dict[str, str]]:
    return _truth(DEMO)


@pytest.fixture(scope="module")
def included(demo_truth) -> dict[str, list[dict[str, str]]]:
    rows = [r for r in demo_truth if r["included"] == "true"]
    return {g: [r for r in rows if r["strategy"] == g] for g in ("single-stage", "staged")}


# ---------------------------------------------------------------- determinism, fixtures


def test_two_runs_are_byte_identical(tmp_path):
    assert _run(tmp_path / "a") == 0
    assert _run(tmp_path / "b") == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_other_seed_or_timezone_changes_the_files_but_not_the_truth_dates(tmp_path):
    """Truth dates are site-local: a site in another zone sees the same calendar days."""
    _run(tmp_path / "utc")
    _run(tmp_path / "ny", tz="America/New_York")
    _run(tmp_path / "seed", seed=8)
    utc = (tmp_path / "utc" / "Procedure.ndjson").read_bytes()
    assert utc != (tmp_path / "ny" / "Procedure.ndjson").read_bytes()
    assert utc != (tmp_path / "seed" / "Procedure.ndjson").read_bytes()
    assert _truth(tmp_path / "utc") == _truth(tmp_path / "ny")


def test_committed_demo_equals_a_fresh_regeneration():
    """The demo cohort (src/fhir_spine/demo) is generated, never edited:
    `fhir-spine synth --seed 2025 --out ...`."""
    fresh = render_files(generate(100, DEMO_SEED, "UTC"))
    assert sorted(p.name for p in DEMO.iterdir()) == sorted(fresh)
    for name, content in fresh.items():
        committed = (DEMO / name).read_bytes()
        if name.endswith(".gz"):  # compare content: zlib builds may differ in bytes
            committed, content = gzip.decompress(committed), gzip.decompress(content)
        assert committed == content, f"{name} differs: regenerate src/fhir_spine/demo"


def test_demo_is_small():
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 3_000_000


def test_every_demo_resource_validates_with_fhir_resources_r4b():
    resources = _resources(DEMO)
    assert len(resources) > 3000
    for res in resources:
        model = get_fhir_model_class(res["resourceType"])
        model.model_validate(res)


# ---------------------------------------------------------------- references


def _references(node: object):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _logical(reference: str) -> tuple[str, str]:
    if reference.startswith("urn:uuid:"):
        return "", reference.removeprefix("urn:uuid:")
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2], parts[-1]


def test_every_reference_resolves_and_subjects_are_existing_patients():
    ids: set[tuple[str, str]] = set()
    uuids: dict[str, str] = {}
    for path in sorted(DEMO.glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            uuid = entry["fullUrl"].removeprefix("urn:uuid:")
            uuids[uuid] = entry["resource"]["resourceType"]
            assert entry["resource"].get("id", uuid) == uuid
    resources = [r for r in _resources(DEMO) if r["resourceType"] != "Bundle"]
    ids |= {(r["resourceType"], r["id"]) for r in resources if "id" in r}
    patients = {i for t, i in ids if t == "Patient"} | {
        u for u, t in uuids.items() if t == "Patient"}
    dangling = []
    for res in resources:
        if res["resourceType"] in ("Patient", "Medication"):
            continue
        kind, subject = _logical(res["subject"]["reference"])
        assert kind in ("Patient", ""), res["subject"]
        assert subject in patients, res["subject"]
        for ref in _references(res):
            kind, target = _logical(ref)
            if not ((kind, target) in ids or (kind == "" and target in uuids)):
                dangling.append(ref)
    assert not dangling
    assert len(patients) == 100


def test_reference_styles_in_the_demo():
    text = "\n".join(p.read_text() for p in DEMO.glob("*.ndjson"))
    assert '"reference":"Patient/p0' in text
    assert '"reference":"https://ehr.example.org/fhir/Patient/' in text
    assert "/_history/" in text
    bundle = json.loads((DEMO / "transaction-bundle.json").read_text())
    assert bundle["type"] == "transaction"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    assert not any(r.startswith(("Patient/", "http")) for r in _references(bundle["entry"]))
    assert any("id" not in e["resource"] for e in bundle["entry"])


# ---------------------------------------------------------------- calibration


def test_group_sizes_and_exact_marginals(included):
    single, staged = included["single-stage"], included["staged"]
    assert (len(single), len(staged)) == (21, 44)
    for rows, female, asa, ecog_low, metastatic, one_level in (
        (single, 16, {"1": 8, "2": 10, "3": 3}, 9, 9, 17),
        (staged, 26, {"1": 8, "2": 25, "3": 11}, 26, 18, 37),
    ):
        assert sum(r["sex"] == "female" for r in rows) == female
        assert Counter(r["asa"] for r in rows) == asa
        assert sum(int(r["ecog"]) <= 2 for r in rows) == ecog_low
        assert {int(r["ecog"]) for r in rows} <= {0, 1, 2, 3, 4}
        assert sum(r["metastatic_outside_index"] == "true" for r in rows) == metastatic
        assert sum(r["involved_vertebrae"] == "1" for r in rows) == one_level
        assert {r["involved_vertebrae"] for r in rows} <= {"1", "2", "3"}


def test_cohort_wide_marginals(included):
    rows = included["single-stage"] + included["staged"]
    assert Counter(r["fixation_levels"] for r in rows) == {
        "3": 28, "4": 4, "5": 25, "6": 6, "7": 2}
    assert Counter(r["tumour_group"] for r in rows) == {
        "solid-metastasis": 43, "haematological": 7, "primary-bone": 6, "other": 9}
    modalities = Counter(r["therapy_modalities"] for r in rows)
    assert modalities["systemic;radiotherapy"] == 38
    assert modalities["radiotherapy"] == 6
    assert modalities["radiotherapy;surgery"] == 2 and modalities["surgery"] == 3


def test_adverse_events(included):
    def total(rows, column):
        return sum(int(r[column]) for r in rows)

    single, staged = included["single-stage"], included["staged"]
    assert (total(single, "ae_repeat_biopsy"), total(single, "ae_revision")) == (2, 1)
    assert total(single, "ae_unplanned_fixation") + total(single, "ae_pain_readmission") == 0
    assert total(staged, "ae_pain_readmission") == 3
    assert total(staged, "ae_repeat_biopsy") == 3
    assert total(staged, "ae_unplanned_fixation") == 2
    assert total(staged, "ae_revision") == 0


def _mean(rows, column):
    return statistics.mean(float(r[column]) for r in rows)


def test_days_to_therapy_land_on_the_published_means(included):
    single, staged = included["single-stage"], included["staged"]
    assert abs(_mean(single, "days_biopsy_to_therapy") - 30.2) <= 1.0
    assert abs(_mean(staged, "days_biopsy_to_therapy") - 40.1) <= 1.0
    assert min(int(r["days_biopsy_to_therapy"]) for r in single + staged) >= 10
    assert 8 <= statistics.stdev(float(r["days_biopsy_to_therapy"]) for r in single) <= 17


def test_staged_components_differ_clearly(included):
    from scipy.stats import wilcoxon

    staged = included["staged"]
    first = [int(r["days_biopsy_to_stabilization"]) for r in staged]
    second = [int(r["days_stabilization_to_therapy"]) for r in staged]
    assert abs(statistics.mean(first) - 14) <= 1.5
    assert all(a + b == int(r["days_biopsy_to_therapy"])
               for a, b, r in zip(first, second, staged, strict=True))
    assert wilcoxon(first, second).pvalue < 0.001


@pytest.mark.parametrize(("column", "single", "staged"), [
    ("age_at_biopsy", 55.3, 57.1),
    ("sins_total", 12.7, 11.8),
    ("vas_baseline", 7.5, 7.5),
    ("vas_at_diagnosis", 4.3, 6.9),
    ("sosgoq_total_at_diagnosis", 63.2, 57.0),
    ("sosgoq_physical_at_diagnosis", 77.7, 65.5),
    ("sosgoq_pain_at_diagnosis", 51.2, 37.5),
])
def test_score_means(included, column, single, staged):
    assert abs(_mean(included["single-stage"], column) - single) < 0.05
    assert abs(_mean(included["staged"], column) - staged) < 0.05


def test_mental_and_social_equal_between_groups_and_baselines_move_as_planned(included):
    single, staged = included["single-stage"], included["staged"]
    for domain in ("mental", "social"):
        column = f"sosgoq_{domain}_at_diagnosis"
        assert abs(_mean(single, column) - _mean(staged, column)) < 0.5
    assert _mean(single, "sosgoq_total_baseline") < _mean(single, "sosgoq_total_at_diagnosis") - 5
    assert abs(_mean(staged, "sosgoq_total_baseline") - _mean(staged, "sosgoq_total_at_diagnosis")
               ) < 2


def test_value_ranges_and_dates(demo_truth):
    for r in demo_truth:
        if r["included"] == "true":
            assert 18 <= int(r["age_at_biopsy"]) <= 90
            assert 7 <= int(r["sins_total"]) <= 17
            assert r["diagnosis_available_date"] < r["therapy_start_date"]
            gap = (date.fromisoformat(r["diagnosis_available_date"])
                   - date.fromisoformat(r["index_biopsy_date"])).days
            assert 5 <= gap <= 30
        if r["index_biopsy_date"]:
            assert "2020-11-01" <= r["index_biopsy_date"] <= "2025-05-31"
        if r["therapy_start_date"]:
            assert r["therapy_start_date"] <= "2025-05-31"


# ---------------------------------------------------------------- coverage


def test_every_exclusion_reason_at_least_three_times(demo_truth):
    reasons = Counter(x for r in demo_truth for x in r["exclusion_reasons"].split(";") if x)
    assert set(reasons) == set(EXCLUSION_REASONS)
    assert min(reasons.values()) >= 3
    assert sum(r["included"] == "false" for r in demo_truth) == 35
    for r in demo_truth:  # profile order, and the two dependencies
        listed = [x for x in r["exclusion_reasons"].split(";") if x]
        assert listed == sorted(listed, key=EXCLUSION_REASONS.index)
        if "no-index-biopsy" in listed:
            assert listed == ["no-index-biopsy"]
        if "directed-to-resection" in listed:
            assert "no-stabilization" in listed


def test_every_variant_tag_appears(demo_truth):
    tags = Counter(t for r in demo_truth for t in r["variants"].split(";") if t)
    assert set(tags) == set(ALL_TAGS)
    assert all(n >= 2 for n in tags.values()), tags


def test_every_strategy_basis_appears(demo_truth):
    bases = {r["strategy_basis"] for r in demo_truth if r["included"] == "true"}
    assert bases == {"same-encounter", "part-of", "time-window", "separate-session"}


def test_every_exclusion_reason_from_twenty_patients_on():
    rows = generate(20, 3).truth
    found = {x for r in rows for x in r["exclusion_reasons"].split(";") if x}
    assert found == set(EXCLUSION_REASONS)


# ---------------------------------------------------------------- consistency with the project


def test_generator_codes_are_known_to_the_default_mappings():
    concepts = yaml.safe_load((DEFAULT_MAPPINGS / "concepts.yaml").read_text())
    systems = concepts["systems"]
    known = {(systems[c["system"]], str(c["code"]))
             for entry in concepts["concepts"].values() for c in entry["codes"] if "code" in c}
    used = [*(c for kind in ("biopsy", "stabilization", "revision", "decompression",
                             "resection", "separation", "radiotherapy", "systemic-procedure")
              for c in PROCEDURE_CODES[kind]),
            *BIOPSY_PCS.values(), CPT_LONG_CONSTRUCT, *REPORT_CODES.values(),
            *MEASURE_CODES.values(), *PAIN_REASONS, LESION_CODES[1]]
    missing = [(c.system, c.code) for c in used
               if (c.system, c.code) not in known and c.system != LOCAL]
    assert not missing
    assert {("http://snomed.info/sct", code) for code in LEVEL_SCT.values()} <= known
    local = {c["code"] for entry in concepts["concepts"].values() for c in entry["codes"]
             if c["system"] == "local"}
    assert {c.code for c in used if c.system == LOCAL} <= local
    drugs = [d for d in DRUGS.values() if d.rxnorm and d.role == "systemic"]
    assert {d.rxnorm for d in drugs} <= {code for s, code in known if s.endswith("rxnorm")}
    assert {t.group for t in TUMOURS} == {
        "solid-metastasis", "haematological", "primary-bone", "other"}


def test_truth_rules_use_the_default_settings():
    settings = yaml.safe_load((DEFAULT_MAPPINGS / "settings.yaml").read_text())
    rules = truth.DEFAULT_RULES
    for key in ("same_session_gap_hours", "therapy_modality_window_days",
                "baseline_lookback_days", "at_diagnosis_window_days",
                "metastasis_lookahead_days", "minimum_age_years"):
        assert getattr(rules, key) == settings[key], key
    assert settings["timezone"] == "UTC"
    assert tuple(settings["required_measures"]) == rules.required_measures
    for key in ("procedure_statuses", "report_statuses", "observation_statuses",
                "medication_request_statuses", "medication_request_intents",
                "medication_administration_statuses", "condition_verification_excluded",
                "readmission_encounter_classes", "excluded_level_prefixes"):
        assert tuple(settings[key]) == getattr(rules, key), key


def test_truth_rules_use_the_default_role_statuses():
    settings = yaml.safe_load((DEFAULT_MAPPINGS / "settings.yaml").read_text())
    by_role = settings["procedure_statuses_by_role"]
    assert tuple(by_role["definitive-therapy"]) == truth.DEFAULT_RULES.therapy_procedure_statuses
    assert tuple(by_role["biopsy"]) == tuple(by_role["stabilization"]) \
        == truth.DEFAULT_RULES.procedure_statuses


# ---------------------------------------------------------------- small units


def test_apportion_is_exact_at_the_base_size_and_scales_otherwise():
    assert calibrate.apportion(65, {3: 28, 4: 4, 5: 25, 6: 6, 7: 2}) == {
        3: 28, 4: 4, 5: 25, 6: 6, 7: 2}
    scaled = calibrate.apportion(13, {3: 28, 4: 4, 5: 25, 6: 6, 7: 2})
    assert sum(scaled.values()) == 13


def test_calibrated_ints_hit_the_mean_within_bounds():
    values = calibrate.calibrated_ints(random.Random(1), 44, 40.1, 11.2, 10, 90)
    assert sum(values) == round(40.1 * 44) and min(values) >= 10


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Pacific/Honolulu",
                                  "Asia/Kolkata", "Pacific/Kiritimati"])
def test_midnight_crossing_renders_another_date_but_the_same_site_date(zone):
    tz = ZoneInfo(zone)
    day = date(2023, 4, 5)
    text = clock.render(clock.crossing_moment(day, tz), tz)
    written = datetime.fromisoformat(text)
    assert written.date() != day
    assert written.astimezone(tz).date() == day


def test_utc_site_crossing_matches_the_profile_example():
    text = clock.render(clock.crossing_moment(date(2023, 4, 5), ZoneInfo("UTC")), ZoneInfo("UTC"))
    assert text == "2023-04-04T23:40:00-05:00"
    assert datetime.fromisoformat(text).astimezone(UTC).date() == date(2023, 4, 5)


def _proc(key: str, hour: int, encounter: str | None = None, part_of: str | None = None,
          status: str = "completed") -> ProcedurePlan:
    start = When(datetime.combine(date(2023, 1, 1), time(hour)))
    return ProcedurePlan(key, "biopsy", start, None, (), status=status, encounter=encounter,
                         part_of=part_of)


def test_session_link_precedence():
    assert truth.session_link(_proc("a", 9, "e"), _proc("b", 20, "e")) == "same-encounter"
    assert truth.session_link(_proc("a", 9), _proc("b", 20, part_of="a")) == "part-of"
    assert truth.session_link(_proc("a", 9), _proc("b", 15)) == "time-window"
    assert truth.session_link(_proc("a", 9), _proc("b", 16)) is None
    assert truth.session_link(_proc("a", 9, "e"), _proc("b", 16, "f")) is None


# ---------------------------------------------------------------- CLI


def test_cli_registers_synth_with_help():
    parser = argparse.ArgumentParser(prog="fhir-spine")
    synth_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--out", "x", "--patients", "5"])
    assert args.func is synth_cli.run and args.seed == 2025 and args.timezone == "UTC"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["synth", "--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize(("patients", "tz"), [(0, "UTC"), (5, "Mars/Olympus_Mons")])
def test_cli_rejects_bad_arguments(tmp_path, patients, tz):
    with pytest.raises(UsageError):
        _run(tmp_path / "out", patients=patients, tz=tz)


def test_cli_refuses_a_folder_with_foreign_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError):
        _run(tmp_path)
    assert _run(tmp_path / "fresh", patients=2) == 0
    assert _run(tmp_path / "fresh", patients=2) == 0  # its own earlier output is replaced
