"""A cohort whose identifying text is known marker strings, and a scan for them.

Every place identifying text can hide in a FHIR source carries a marker: folder and file
names, resource ids, identifiers, names, code displays, local codes and systems, server
messages (OperationOutcome), and the patient ids given with `--patients`. A de-identified
output (`--pseudonymise`) must show none of them, in any file (Parquet decompressed and
raw, CSV, manifest, codebook, report) or in the logs.

Markers contain `MRK` (case kept) and letters outside hex, so a pseudonym (`pat-<hex>`)
can never contain one by chance.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

FOLDER_MARKER = "Smith_MRKFOLDERQ_1960-01-02_MRN4455667"
FILE_MARKER = "Jane_MRKFILEQ"
PATIENT_ID = "MRKPIDQ1"          # FHIR ids: letters, digits, '-', '.'
PATIENT_ID_2 = "MRKPIDQ2"
GHOST_ID = "MRKGHOSTQ"           # asked for with --patients, not on the server
ENCOUNTER_ID = "MRKENCQ"
PROCEDURE_ID = "MRKPROCQ"
IDENTIFIER = "MRKIDENTQ4455667"
NAME = "MRKNAMEQ"
DISPLAY = "MRKDISPQ"
LOCAL_SYSTEM = "http://hospital.example/MRKSYSQ"
LOCAL_CODE = "X-MRKLOCALQ"
SERVER_TEXT = "MRKSRVQ"
MARKERS = (FOLDER_MARKER, "MRKFOLDERQ", FILE_MARKER, "MRKFILEQ", PATIENT_ID, PATIENT_ID_2,
           GHOST_ID, ENCOUNTER_ID, PROCEDURE_ID, IDENTIFIER, NAME, DISPLAY, "MRKSYSQ",
           LOCAL_CODE, "MRKLOCALQ", SERVER_TEXT, "4455667")

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
ATC = "http://www.whocc.no/atc"


def _patient_resources(pid: str, n: int) -> list[dict]:
    sub = {"reference": f"Patient/{pid}"}
    enc = f"{ENCOUNTER_ID}{n}"
    lvl = {"system": SCT, "code": "82687006"}
    local = {"system": LOCAL_SYSTEM, "code": f"{LOCAL_CODE}{n}",
             "display": f"Core biopsy T10 - {NAME} MRN {IDENTIFIER} DOB 1960-01-02"}
    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1930-01-02",
         "identifier": [{"system": "http://hospital.example/mrn", "value": f"{IDENTIFIER}{n}"}],
         "name": [{"family": NAME, "given": ["Jane"]}]},
        {"resourceType": "Encounter", "id": enc, "status": "finished", "subject": sub,
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                   "code": "IMP"},
         "period": {"start": "2023-03-05T08:00:00+00:00", "end": "2023-03-07T12:00:00+00:00"}},
        {"resourceType": "Procedure", "id": f"{PROCEDURE_ID}{n}-bx", "status": "completed",
         "subject": sub, "encounter": {"reference": f"Encounter/{enc}"},
         "code": {"coding": [{"system": CPT, "code": "20225",
                              "display": f"Core biopsy T10 - {DISPLAY} {NAME}"}, local],
                  "text": f"biopsy of {NAME}"},
         "bodySite": [{"coding": [lvl]}], "performedDateTime": "2023-03-05T09:30:00+00:00"},
        {"resourceType": "Procedure", "id": f"{PROCEDURE_ID}{n}-stab", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": CPT, "code": "22840",
                                              "display": f"fixation {DISPLAY}"}]},
         "bodySite": [{"coding": [lvl]}],
         "performedPeriod": {"start": "2023-03-10T10:00:00Z", "end": "2023-03-10T13:00:00Z"}},
        {"resourceType": "Procedure", "id": f"{PROCEDURE_ID}{n}-local", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": LOCAL_SYSTEM, "code": f"{LOCAL_CODE}9{n}",
                                              "display": f"{DISPLAY} for {NAME}"}]},
         "performedDateTime": "2023-03-06"},
        {"resourceType": "DiagnosticReport", "id": f"{PROCEDURE_ID}{n}-path", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOINC, "code": "11529-5",
                                              "display": f"path {DISPLAY}"}]},
         "conclusionCode": [{"coding": [{"system": ICD10, "code": "C79.51"}]}],
         "issued": "2023-03-12T16:20:00+00:00"},
        {"resourceType": "MedicationRequest", "id": f"{PROCEDURE_ID}{n}-chemo",
         "status": "active", "intent": "order", "subject": sub,
         "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "L01XC03",
                                                   "display": f"drug {DISPLAY}"}]},
         "authoredOn": "2023-04-05T11:00:00+00:00"},
        {"resourceType": "Observation", "id": f"{PROCEDURE_ID}{n}-vas", "status": "final",
         "subject": sub, "code": {"coding": [{"system": LOINC, "code": "38214-3",
                                              "display": f"pain {DISPLAY}"}]},
         "valueInteger": 7, "effectiveDateTime": "2023-03-04T10:00:00+00:00"},
        {"resourceType": "Procedure", "id": f"{PROCEDURE_ID}{n}-bad", "status": "completed",
         "subject": sub, "code": {"coding": [{"system": CPT, "code": "22840"}]},
         "performedString": f"see chart of {NAME} {IDENTIFIER}"},
    ]


def server_resources() -> list[dict]:
    """What a server holds: two patients' records (no server messages: a server makes
    those itself)."""
    return _patient_resources(PATIENT_ID, 1) + _patient_resources(PATIENT_ID_2, 2)


def write_cohort(root: Path) -> Path:
    """The cohort as a folder named like a patient, holding a Synthea-like Bundle named
    after the patient, an NDJSON file with a broken line, a searchset with a server
    message and a Bulk Data error file. Returns the folder."""
    folder = root / FOLDER_MARKER
    sub = folder / f"{NAME}_records"
    sub.mkdir(parents=True)
    resources = _patient_resources(PATIENT_ID, 1)
    # conditional references by identifier: one resolves, one matches nobody
    resources[2]["subject"] = {"reference": "Patient?identifier=http://hospital.example/mrn|"
                                            f"{IDENTIFIER}1"}
    resources[4]["subject"] = {"reference": "Patient?identifier=http://hospital.example/mrn|"
                                            f"{IDENTIFIER}0&name={NAME}"}
    entries = [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    (folder / f"{FILE_MARKER}_{PATIENT_ID}.json").write_text(json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    lines = [json.dumps(r) for r in _patient_resources(PATIENT_ID_2, 2)]
    lines.insert(3, '{"resourceType": "Procedure", "id": "' + PROCEDURE_ID + '-broken", '
                    '"note": "' + NAME + '"')
    (sub / f"{FILE_MARKER}_{PATIENT_ID_2}.ndjson").write_text("\n".join(lines) + "\n")
    outcome = {"resourceType": "OperationOutcome", "id": f"{SERVER_TEXT}-oo", "issue": [
        {"severity": "warning", "code": "processing",
         "diagnostics": f"Patient {NAME} ({IDENTIFIER}, born 1960-01-02) {SERVER_TEXT}"}]}
    (sub / f"{FILE_MARKER}_search.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": outcome, "search": {"mode": "outcome"}}]}))
    return folder


def write_patients_file(path: Path) -> Path:
    path.write_text(f"{PATIENT_ID}\nPatient/{PATIENT_ID_2}\n{GHOST_ID}\n")
    return path


def output_texts(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`: its raw bytes, and for Parquet also every value as
    text (the raw bytes may be compressed)."""
    out: dict[str, bytes] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[str(path.relative_to(folder))] = data
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            values = [str(v) for column in table.columns for v in column.to_pylist()]
            out[f"{path.relative_to(folder)} (values)"] = "\n".join(
                [*table.column_names, *values]).encode()
    return out


_ANY_MARKER = re.compile(rb"mrk[a-z]{3,7}q")  # every marker is MRK<letters>Q
_BASE64 = re.compile(rb"base64,[a-z0-9+/=]+")


def marker_hits(texts: dict[str, bytes]) -> list[str]:
    """`name: marker` for every marker found, case-insensitive, and the context of any
    `MRK...Q` (a marker cut short)."""
    hits = []
    for name, data in texts.items():
        lowered = data.lower()
        for marker in MARKERS:
            if marker.lower().encode() in lowered:
                hits.append(f"{name}: {marker}")
        text = _BASE64.sub(b"", lowered)  # embedded figures: random letters
        found = None if name.endswith((".parquet", ".png")) else _ANY_MARKER.search(text)
        if found:
            at = found.start()
            hits.append(f"{name}: ...{text[max(0, at - 40):at + 40]!r}...")
    return hits


def scan(out: Path, *procs: subprocess.CompletedProcess[str]) -> list[str]:
    """Markers found in every output file of `out` and in the runs' stdout and stderr."""
    texts = output_texts(out)
    for i, proc in enumerate(procs):
        texts[f"stderr of run {i}"] = proc.stderr.encode()
        texts[f"stdout of run {i}"] = proc.stdout.encode()
    return marker_hits(texts)
