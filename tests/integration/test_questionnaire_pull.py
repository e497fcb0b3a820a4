"""QuestionnaireResponse pulled from real servers by REST and by Bulk Data (issue 11, item 8).

A one-patient cohort whose pain and SOSGOQ2.0 are recorded only as QuestionnaireResponses
is loaded, then extracted by REST (`--patients`) and by a group `$export`: the measures
come from the responses, the same either way, and the patient is included. On a server
that does not offer QuestionnaireResponse searches (sekmet-fhir) the REST pull skips the
type and says so in the manifest instead of failing.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest

from fhir_spine.cli.main import main

pytestmark = pytest.mark.integration

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"
SOSGOQ = "http://fhir-spine.org/fhir/Questionnaire/sosgoq2"


def _cohort(folder: Path, pid: str) -> str:
    """Write the cohort; returns the id of the Group holding its patient."""
    subject = {"reference": f"Patient/{pid}"}

    def proc(rid: str, code: str, when: str, sites: list[str]) -> dict:
        return {"resourceType": "Procedure", "id": f"{pid}-{rid}", "status": "completed",
                "subject": subject, "performedDateTime": when,
                "code": {"coding": [{"system": CPT, "code": code}]},
                "bodySite": [{"coding": [{"system": SCT, "code": s}]} for s in sites]}

    def answers(rid: str, questionnaire: str, authored: str, **values: float) -> dict:
        return {"resourceType": "QuestionnaireResponse", "id": f"{pid}-{rid}",
                "status": "completed", "questionnaire": questionnaire, "subject": subject,
                "authored": authored,
                "item": [{"linkId": k.replace("_", "-"), "answer": [{"valueDecimal": v}]}
                         for k, v in values.items()]}

    group = f"{pid}-group"
    resources = [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1961-05-02"},
        proc("bx", "20225", "2024-03-04T09:00:00Z", ["11994002"]),
        proc("fix", "22842", "2024-03-04T10:30:00Z", ["36470004", "11994002", "49668003"]),
        {"resourceType": "DiagnosticReport", "id": f"{pid}-path", "status": "final",
         "subject": subject, "issued": "2024-03-11T12:00:00Z",
         "code": {"coding": [{"system": "http://loinc.org", "code": "11529-5"}]},
         "conclusionCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                         "code": "C79.51"}]}]},
        {"resourceType": "MedicationRequest", "id": f"{pid}-mr", "status": "active",
         "intent": "order", "subject": subject, "authoredOn": "2024-03-20",
         "medicationCodeableConcept": {"coding": [{
             "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2555"}]}},
        answers("sos-b", SOSGOQ, "2024-03-01T10:00:00Z", total=57, pain=40),
        answers("sos-d", SOSGOQ + "|2.0", "2024-03-12T10:00:00Z", total=54, pain=45),
        answers("nrs-b", "http://example.org/Questionnaire/lhc-pain", "2024-03-02",
                **{"/72514-3": 7}),
        answers("nrs-d", "http://fhir-spine.org/fhir/Questionnaire/pain", "2024-03-12",
                pain_intensity=4),
        {"resourceType": "Group", "id": group, "type": "person", "actual": True,
         "member": [{"entity": subject}]},
    ]
    folder.mkdir(parents=True)
    (folder / "cohort.ndjson").write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    return group


def _extract(*argv: str) -> None:
    assert main(["--quiet", "extract", *argv]) in (0, 1)


def _measures(out: Path, pid: str) -> pd.DataFrame:
    obs = pd.read_parquet(out / "observations.parquet")
    obs = obs[obs["patient_id"] == pid][["measure", "value", "effective_date", "timepoint",
                                         "resource_type", "resource_id"]]
    return obs.astype(str).sort_values(["measure", "resource_id"]).reset_index(drop=True)


def test_questionnaire_responses_by_rest_and_bulk(hapi_server, tmp_path):
    pid = f"qr-{uuid.uuid4().hex[:10]}"
    group = _cohort(tmp_path / "cohort", pid)
    assert main(["--quiet", "load", "--server", hapi_server.base_url,
                 str(tmp_path / "cohort")]) == 0
    (tmp_path / "patients.txt").write_text(pid + "\n")
    rest, bulk = tmp_path / "rest", tmp_path / "bulk"
    _extract("--server", hapi_server.base_url, "--patients", str(tmp_path / "patients.txt"),
             "--out", str(rest))
    _extract("--server", hapi_server.base_url, "--bulk", f"group:{group}", "--out", str(bulk))

    got = _measures(rest, pid)
    assert set(got["resource_type"]) == {"QuestionnaireResponse"}
    assert sorted(zip(got["measure"], got["value"], got["timepoint"], strict=True)) == [
        ("sosgoq_pain", "40.0", "baseline"), ("sosgoq_pain", "45.0", "at-diagnosis"),
        ("sosgoq_total", "54.0", "at-diagnosis"), ("sosgoq_total", "57.0", "baseline"),
        ("vas", "4.0", "at-diagnosis"), ("vas", "7.0", "baseline")]
    pd.testing.assert_frame_equal(_measures(bulk, pid), got, obj="bulk vs REST")
    for out in (rest, bulk):
        patients = pd.read_parquet(out / "patients.parquet").set_index("patient_id")
        assert bool(patients.at[pid, "included"]), patients.loc[pid, "exclusion_reasons"]
        assert patients.at[pid, "vas_baseline"] == 7 and patients.at[pid, "vas_at_diagnosis"] == 4
    query = json.loads((rest / "manifest.json").read_text())["query"]
    assert "QuestionnaireResponse" in query["resource_types"]
    assert "types_not_offered" not in query


def test_a_server_without_questionnaire_responses_is_pulled_without_them(sekmet_server,
                                                                         tmp_path):
    pid = f"qr-{uuid.uuid4().hex[:10]}"
    _cohort(tmp_path / "cohort", pid)
    assert main(["--quiet", "load", "--server", sekmet_server.base_url,
                 str(tmp_path / "cohort")]) == 0
    (tmp_path / "patients.txt").write_text(pid + "\n")
    out = tmp_path / "rest"
    _extract("--server", sekmet_server.base_url, "--patients", str(tmp_path / "patients.txt"),
             "--out", str(out))
    query = json.loads((out / "manifest.json").read_text())["query"]
    assert query["types_not_offered"] == ["QuestionnaireResponse"]
    assert "QuestionnaireResponse" not in query["resource_types"]
    assert _measures(out, pid).empty
