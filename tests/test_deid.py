"""De-identified output is de-identified: every column and manifest field by its declared
rule, on a cohort whose identifying text is known markers (tests/deid_markers.py).

The REST and refresh halves are in tests/integration/test_deid_servers.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import deid_markers as mk
from fhir_spine import schema
from fhir_spine.deid import DeidentificationError, Deidentifier, DeidOptions
from fhir_spine.pseudonymise import ENV_VAR
from fhir_spine.settings import load_mappings
from fhir_spine.tables import Tables, frame

KEY = "0123456789abcdef" * 4
ENV = {**os.environ, ENV_VAR: KEY}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", *args],
                          capture_output=True, text=True, timeout=600, env=env or ENV)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return mk.write_cohort(tmp_path_factory.mktemp("markers"))


@pytest.fixture(scope="module")
def deid_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("deid") / "out"
    proc = cli("extract", "--source", str(cohort), "--out", str(out), "--pseudonymise",
               "--date-shift-days", "30", "--top-code-ages")
    assert proc.returncode in (0, 1), proc.stderr
    report = cli("report", str(out))
    assert report.returncode == 0, report.stderr
    return out, proc, report


def test_files_extract_with_pseudonymise_publishes_no_marker(deid_run):
    out, proc, report = deid_run
    assert (out / "report" / "report.html").is_file()
    hits = mk.scan(out, proc, report)
    assert not hits, "\n".join(hits[:30])


def test_files_extract_without_pseudonymise_shows_the_origins_as_before(cohort, tmp_path):
    out = tmp_path / "out"
    proc = cli("extract", "--source", str(cohort), "--out", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    issues = pd.read_parquet(out / "issues.parquet")
    assert issues["origin"].str.contains(mk.FILE_MARKER).any()
    assert issues["message"].str.contains(mk.SERVER_TEXT).any()
    assert pd.read_parquet(out / "codes.parquet")["display"].str.contains(mk.DISPLAY).any()
    manifest = json.loads((out / "manifest.json").read_text())
    assert mk.FOLDER_MARKER in manifest["source"]["location"]
    assert not (tmp_path / "out.state").exists()  # no mapping back without --pseudonymise


def test_the_mapping_back_is_beside_the_state_owner_only(deid_run):
    out, _, _ = deid_run
    where = out.with_name("out.state") / "deid-map.json"
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.parent.stat().st_mode) == 0o700
    back = json.loads(where.read_text())
    issues = pd.read_parquet(out / "issues.parquet")
    token = issues["origin"].dropna().iloc[0]
    assert token.startswith("src-") and token in back["origins"]
    assert any(mk.FILE_MARKER in o for o in back["origins"].values())
    assert any(c[1].startswith(mk.LOCAL_CODE) for c in back["local_codes"].values())


def test_rules_as_the_codebook_says(deid_run):
    out, _, _ = deid_run
    codebook = pd.read_csv(out / "codebook.csv")
    assert set(codebook["deid"]) <= set(schema.DEID_RULES)
    patients = pd.read_parquet(out / "patients.parquet")
    assert patients["patient_id"].str.fullmatch(r"pat-[0-9a-f]{20}").all()
    assert (patients["age_at_biopsy"].dropna() == 90).all()  # born 1930: top-coded
    events = pd.read_parquet(out / "events.parquet")
    biopsy = events[events["event_type"] == "biopsy"].iloc[0]
    # the standard display the mappings know, never the source's
    assert biopsy["display"] == "Percutaneous core-needle biopsy of a vertebra (index or " \
        "repeat biopsy)" and biopsy["code"] == "20225"
    codes = pd.read_parquet(out / "codes.parquet")
    local = codes[codes["code"].str.startswith("code-")]
    assert len(local) >= 2 and local["display"].isna().all()
    assert local["system"].str.startswith("urn:fhir-spine:system:").all()
    issues = pd.read_parquet(out / "issues.parquet")
    outcome = issues[issues["code"] == "operation-outcome"]["message"].iloc[0]
    assert "withheld" in outcome
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["location"].startswith("src-")
    assert manifest["pseudonymisation"]["ages_top_coded_at"] == 90
    assert "fields_not_published" not in manifest["pseudonymisation"]


# --------------------------------------------------------------------- rules declared
def test_every_column_and_manifest_field_declares_a_rule():
    for table, columns in [*schema.TABLES.items(), ("codebook", schema.CODEBOOK),
                           ("manifest.json", schema.MANIFEST)]:
        for c in columns:
            assert c.deid in schema.DEID_RULES, f"{table}.{c.name}: no deid rule"
    assert [r["name"] for r in schema.codebook_rows() if r["table"] == "codebook"] == [
        "table", "name", "type", "meaning", "allowed_values", "deid"]


def _empty_tables() -> Tables:
    return Tables(*(frame([], schema.TABLES[name]) for name in schema.TABLES))


def test_a_column_without_a_rule_publishes_nothing(monkeypatch):
    tables = _empty_tables()
    tables.events["new_column"] = pd.Series([], dtype="string")
    deid = Deidentifier(DeidOptions(KEY.encode()), load_mappings(None, {}))
    with pytest.raises(DeidentificationError, match="events.new_column"):
        deid.tables(tables)
    monkeypatch.setattr(schema, "ISSUES", [*schema.ISSUES, schema.Column("x", "string", "x")])
    monkeypatch.setitem(schema.TABLES, "issues", schema.ISSUES)
    tables = _empty_tables()
    with pytest.raises(DeidentificationError, match="issues.x"):
        Deidentifier(DeidOptions(KEY.encode())).tables(tables)


def test_manifest_fields_without_a_rule_are_not_published():
    deid = Deidentifier(DeidOptions(KEY.encode()))
    deid.tables(_empty_tables())
    out = deid.manifest({"tool": "fhir-spine", "query": {"kind": "rest", "novel": "secret",
                                                         "not_found": {"Patient": ["a1"]}},
                         "surprise": {"x": 1}})
    assert out["tool"] == "fhir-spine" and "surprise" not in out
    assert "novel" not in out["query"]
    assert out["query"]["not_found"]["Patient"][0].startswith("pat-")
    assert out["pseudonymisation"]["fields_not_published"] == ["query.novel", "surprise"]


def test_search_params_and_urls():
    deid = Deidentifier(DeidOptions(KEY.encode()), extra_ids={"Patient": ["1000", "abc"]})
    deid.tables(_empty_tables())
    out = deid.manifest({"query": {"searches": [{
        "resource_type": "Procedure", "purpose": "records",
        "params": [["patient", "1000,abc"], ["_count", "200"], ["code", "x|1"]],
        "url": "http://h/fhir/Procedure?patient=1000,abc", "server_messages": ["Jo Smith"],
        "pages": 2}]}})
    search = out["query"]["searches"][0]
    assert search["params"][0][1].count("pat-") == 2 and "1000" not in json.dumps(out)
    assert search["params"][1:] == [["_count", "200"], ["code", "x|1"]]
    assert search["url"].startswith("src-") and search["server_messages"] == 1
    assert search["pages"] == 2


# ------------------------------------------------------------------------------- logs
def test_error_lines_are_scrubbed_too_unless_debug(tmp_path):
    missing = tmp_path / mk.FOLDER_MARKER
    proc = cli("extract", "--source", str(missing), "--out", str(tmp_path / "o"),
               "--pseudonymise")
    assert proc.returncode == 2 and "fhir-spine: error:" in proc.stderr
    assert not mk.marker_hits({"stderr": proc.stderr.encode()}), proc.stderr
    debug = cli("extract", "--source", str(missing), "--out", str(tmp_path / "o"),
                "--pseudonymise", "--debug")
    assert debug.returncode == 2 and mk.FOLDER_MARKER in debug.stderr


def test_column_rules_one_by_one():
    tables = Tables(
        frame([{"patient_id": "p1", "age_at_biopsy": 93}, {"patient_id": "p2",
                                                           "age_at_biopsy": 89}],
              schema.PATIENTS),
        frame([{"patient_id": "p1", "resource_type": "Procedure", "resource_id": "x1",
                "code_system": "http://www.ama-assn.org/go/cpt", "code": "20225",
                "concept": "vertebral-biopsy", "display": "Bx of Jo Smith",
                "status": "Jo Smith", "used": True}], schema.EVENTS),
        frame([], schema.OBSERVATIONS),
        frame([{"severity": "info", "patient_id": "p1", "resource_type": "Smithian",
                "code": "unmapped-code", "origin": "/data/Jo_Smith.ndjson:3",
                "message": "/data/Jo_Smith.ndjson:3: code not mapped: "
                           "http://site.example/cs|LOC-77 (Bx of Jo Smith)",
                "set_aside": True}], schema.ISSUES),
        frame([{"resource_type": "Procedure", "element": "Procedure.code",
                "system": "http://site.example/cs", "code": "LOC-77",
                "display": "Bx of Jo Smith", "resources": 1, "patients": 1},
               {"resource_type": "Procedure", "element": "Procedure.code",
                "system": "http://snomed.info/sct", "code": "12345", "display": "Smith",
                "resources": 1, "patients": 1}], schema.CODES))
    deid = Deidentifier(DeidOptions(KEY.encode(), top_code_ages=True),
                        load_mappings(None, {}))
    out = deid.tables(tables)
    assert out.patients["age_at_biopsy"].tolist() == [90, 89]
    event = out.events.iloc[0]
    assert event["code"] == "20225" and event["status"] == "[other]"
    assert event["display"].startswith("Percutaneous core-needle biopsy")
    issue = out.issues.iloc[0]
    assert issue["resource_type"] == "[other]" and issue["origin"].startswith("src-")
    assert issue["message"].startswith(issue["origin"] + ": code not mapped: urn:fhir-spine")
    assert "Smith" not in issue["message"] and "LOC-77" not in issue["message"]
    assert out.codes["code"].tolist()[1] == "12345"  # a standard terminology's code
    assert out.codes["code"].tolist()[0].startswith("code-")
    assert out.codes["display"].isna().all()
    back = deid.origin_map()
    assert back["origins"][issue["origin"]] == "/data/Jo_Smith.ndjson:3"
    assert ["http://site.example/cs", "LOC-77"] in back["local_codes"].values()
