"""The mapping review loop (issue 12 item 4), end to end through the CLI: a patient excluded
for an unmapped therapy code, the suggestion in codes.csv and issues, the closing warning,
the draft site mapping, and the same patient included after rerunning with it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from fhir_spine import review
from fhir_spine.settings import DEMO_COHORT

ROOT = Path(__file__).resolve().parents[1]
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CODE = "test-carboplatin-450"  # not in concepts.yaml
DISPLAY = "Carboplatin 10 MG/ML Injectable Solution"
PATIENT = "p091"  # demo: staged, excluded only for no-definitive-therapy (stabilized 2023-06-13)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "--quiet", *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False)


def _patient(out: Path) -> dict[str, str]:
    with (out / "patients.csv").open(encoding="utf-8") as f:
        return next(r for r in csv.DictReader(f) if r["patient_id"] == PATIENT)


def test_excluded_suggested_drafted_and_included(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(DEMO_COHORT, source)
    order = {
        "resourceType": "MedicationRequest", "id": "p091-carboplatin", "status": "completed",
        "intent": "order", "subject": {"reference": f"Patient/{PATIENT}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": CODE,
                                                  "display": DISPLAY}]},
        "authoredOn": "2023-06-20T09:00:00Z",
    }
    with (source / "MedicationRequest.ndjson").open("a", encoding="utf-8") as f:
        f.write(json.dumps(order) + "\n")

    first = _cli("extract", "--source", str(source), "--out", str(tmp_path / "out1"))
    assert first.returncode == 0, first.stderr
    assert _patient(tmp_path / "out1")["exclusion_reasons"] == "no-definitive-therapy"
    codes = pd.read_csv(tmp_path / "out1" / "codes.csv", dtype=str)
    row = codes[codes["code"] == CODE].iloc[0]
    assert pd.isna(row["concept"])
    assert row["suggested_concept"] == "systemic-therapy"
    assert "carboplatin" in row["suggestion_rule"]
    assert row["patients_affected"] == "1"
    issues = pd.read_csv(tmp_path / "out1" / "issues.csv", dtype=str)
    flagged = issues[issues["code"] == review.ISSUE_CODE]
    assert len(flagged) == 1 and CODE in flagged.iloc[0]["message"]
    assert flagged.iloc[0]["severity"] == "warning"
    warned = [line for line in first.stderr.splitlines() if "unmapped code(s)" in line]
    assert len(warned) == 1 and warned[0].startswith("WARNING"), first.stderr
    assert "1 unmapped code(s) with a suggested concept" in warned[0] and CODE in warned[0]
    meta = json.loads((tmp_path / "out1" / "manifest.json").read_text(encoding="utf-8"))
    assert any(w in warned[0] for w in meta["warnings"] if "unmapped code(s)" in w)

    site = tmp_path / "site"
    drafted = _cli("codes", str(tmp_path / "out1"), "--write-site-mappings", str(site))
    assert drafted.returncode == 0, drafted.stderr
    text = (site / "concepts.yaml").read_text(encoding="utf-8")
    assert DISPLAY in text and "carboplatin" in text  # commented with display and rule
    doc = yaml.safe_load(text)
    assert doc["extends"] == "default"
    assert {"system": RXNORM, "code": CODE, "confidence": "L"} in \
        doc["concepts"]["systemic-therapy"]["codes"]
    again = _cli("codes", str(tmp_path / "out1"), "--write-site-mappings", str(site))
    assert again.returncode == 2  # never overwrites a site mapping

    second = _cli("extract", "--source", str(source), "--out", str(tmp_path / "out2"),
                  "--mappings", str(site))
    assert second.returncode == 0, second.stderr
    assert _patient(tmp_path / "out2")["included"] == "true"
    assert "unmapped code(s)" not in second.stderr
    codes2 = pd.read_csv(tmp_path / "out2" / "codes.csv", dtype=str)
    assert codes2[codes2["code"] == CODE].iloc[0]["concept"] == "systemic-therapy"


def test_suggestions_by_element():
    assert review.suggest("MedicationRequest", "MedicationRequest.medicationCodeableConcept",
                          "PACLitaxel 100 MG Injection")[0] == "systemic-therapy"
    assert review.suggest("Procedure", "Procedure.code",
                          "Teleradiotherapy procedure (procedure)") is None  # word start only
    assert review.suggest("Procedure", "Procedure.code",
                          "Radiation therapy care (regime/therapy)")[0] == "radiotherapy"
    assert review.suggest("Procedure", "Procedure.code",
                          "Insertion of pedicle screw")[0] == "stabilization"
    assert review.suggest("Procedure", "Procedure.code", "Biopsy of lung") is None
    assert review.suggest("Procedure", "Procedure.code",
                          "Percutaneous biopsy of vertebral body")[0] == "vertebral-biopsy"
    assert review.suggest("Procedure", "Procedure.code", "Subcutaneous immunotherapy") is None
    assert review.suggest("MedicationRequest", "MedicationRequest.medicationCodeableConcept",
                          "Hydrocortisone 10 MG/ML Topical Cream") is None
    assert review.suggest("MedicationRequest", "MedicationRequest.medicationCodeableConcept",
                          "predniSONE 5 MG Oral Tablet")[0] == "steroid"
    assert review.suggest("Encounter", "Encounter.reasonCode", "chemotherapy") is None
    assert review.suggest("Procedure", "Procedure.code", None) is None


def _order(pid: str, code: str, display: str, authored: str) -> dict[str, object]:
    return {"resourceType": "MedicationRequest", "id": f"{pid}-{code}", "status": "completed",
            "intent": "order", "subject": {"reference": f"Patient/{pid}"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code,
                                                      "display": display}]},
            "authoredOn": authored}


def test_patients_affected_is_the_patients_whose_classification_changes(tmp_path):
    """Exact, not an upper bound: the pathway is rerun with the code mapped as suggested.

    p018 is excluded as cervical (with a therapy already): a chemotherapy order changes
    nothing. p091 is excluded only for no-definitive-therapy: an order before its biopsy is
    no definitive therapy (the old bound counted it), one after its stabilization is."""
    from fhir_spine.pipeline import extract_files
    from fhir_spine.settings import load_mappings
    from fhir_spine.sources.files import FileSource
    from fhir_spine.tables import build_tables

    source = tmp_path / "source"
    shutil.copytree(DEMO_COHORT, source)
    orders = [
        _order("p018", "t-docetaxel", "Docetaxel 20 MG/ML Injection", "2023-06-20T09:00:00Z"),
        _order("p091", "t-paclitaxel", "Paclitaxel 6 MG/ML Injection", "2019-01-10T09:00:00Z"),
        _order("p018", "t-cisplatin", "Cisplatin 1 MG/ML Injection", "2023-06-20T09:00:00Z"),
        _order("p091", "t-cisplatin", "Cisplatin 1 MG/ML Injection", "2023-06-20T09:00:00Z"),
    ]
    with (source / "MedicationRequest.ndjson").open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(o) + "\n" for o in orders)
    mappings = load_mappings()
    tables = build_tables(extract_files(FileSource(source), mappings, jobs=1))
    codes = tables.codes.set_index("code")
    for code, carriers, affected in (("t-docetaxel", 1, 0), ("t-paclitaxel", 1, 0),
                                     ("t-cisplatin", 2, 1)):
        assert codes.loc[code, "suggested_concept"] == "systemic-therapy"
        assert (codes.loc[code, "patients"], codes.loc[code, "patients_affected"]) == \
            (carriers, affected), code
    flagged = tables.issues[tables.issues["code"] == review.ISSUE_CODE]
    assert list(flagged["message"].str.contains("t-cisplatin")) == [True]
    # the same numbers whatever the split of the work (--jobs)
    again = build_tables(extract_files(FileSource(source), mappings, jobs=2)).codes
    assert again.equals(tables.codes)


def test_patients_affected_counts_a_suggested_procedure_code(tmp_path):
    """A Procedure whose code no concept maps is one the prefilter would flatten by its
    accounting view only (no date); a display the lexicon suggests a concept for keeps
    it whole, so the rerun places it: p091's radiotherapy after its stabilization makes
    it included (1 patient affected), as the order does in the test above."""
    from fhir_spine.pipeline import extract_files
    from fhir_spine.settings import load_mappings
    from fhir_spine.sources.files import FileSource
    from fhir_spine.tables import build_tables

    source = tmp_path / "source"
    shutil.copytree(DEMO_COHORT, source)
    radiation = {"resourceType": "Procedure", "id": "p091-rt", "status": "completed",
                 "subject": {"reference": "Patient/p091"},
                 "code": {"coding": [{"system": "http://site.example/procedures",
                                      "code": "RT-SPINE",
                                      "display": "Palliative radiation therapy, spine"}]},
                 "performedDateTime": "2023-06-20T09:00:00Z"}
    with (source / "Procedure.ndjson").open("a", encoding="utf-8") as f:
        f.write(json.dumps(radiation) + "\n")
    tables = build_tables(extract_files(FileSource(source), load_mappings(), jobs=1))
    codes = tables.codes.set_index("code")
    assert codes.loc["RT-SPINE", "suggested_concept"] == "radiotherapy"
    assert (codes.loc["RT-SPINE", "patients"], codes.loc["RT-SPINE", "patients_affected"]) \
        == (1, 1)


def test_the_rerun_map_keeps_the_terminology_servers_answers():
    """A code mapped through a terminology server's per-code answer must stay mapped in
    the rerun, or the rerun would differ from the run for another reason than the code."""
    from fhir_spine.concepts import Coding
    from fhir_spine.settings import load_mappings

    cmap = load_mappings().concepts
    cmap.decider = object()  # type: ignore[assignment]
    cmap.decide_by_server("secondary-malignancy", "http://snomed.info/sct", "128462008")
    copy = cmap.with_code("procedure", "radiotherapy", "http://site.example", "RT")
    assert copy.decider is cmap.decider
    assert copy.open_systems() == cmap.open_systems() == {"http://snomed.info/sct"}
    assert copy.lookup("procedure", Coding("http://site.example", "RT")).concept == "radiotherapy"
    assert cmap.lookup("procedure", Coding("http://site.example", "RT")) is None
