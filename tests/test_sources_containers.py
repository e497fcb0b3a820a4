"""The file source reads containers, references and export artefacts the way real exports
send them (issue 11, items 6 and 7): Bundles inside Bundles, conditional references in a
transaction, gzip JSON Bundles, a Bulk Data client's log and saved manifest beside the
NDJSON, and a searchset's OperationOutcome entry. One test per kind, each from the small
builders below, never a copy of a shared case."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_spine.cli.main import main
from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import FileSource, RawResource, ReadProblem, iter_folder

MRN = "urn:example:mrn"


# ------------------------------------------------------------------------ builders
def patient(pid: str | None, mrn: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "gender": "female",
                                "birthDate": "1961-05-02", **extra}
    if pid is not None:
        resource["id"] = pid
    if mrn is not None:
        resource["identifier"] = [{"system": MRN, "value": mrn}]
    return resource


def procedure(rid: str, subject: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": rid, "status": "completed",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20225"}]},
            "subject": {"reference": subject}, "performedDateTime": "2024-03-04T09:00:00Z",
            **extra}


def entry(resource: dict[str, Any], full_url: str | None = None, *, method: str | None = None,
          mode: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resource": resource}
    if full_url:
        out["fullUrl"] = full_url
    if method:
        out["request"] = {"method": method, "url": resource["resourceType"]}
    if mode:
        out["search"] = {"mode": mode}
    return out


def bundle(kind: str, *entries: dict[str, Any], bid: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "entry": list(entries)}
    if bid:
        out["id"] = bid
    return out


def outcome(*issues: tuple[str | None, str]) -> dict[str, Any]:
    """An OperationOutcome; each issue is (severity or None, diagnostics)."""
    return {"resourceType": "OperationOutcome", "issue": [
        {"code": "informational", "diagnostics": text, **({"severity": sev} if sev else {})}
        for sev, text in issues]}


def log_event(event_id: str, export_id: str = "exp-1", **detail: Any) -> dict[str, Any]:
    """One line of the SMART bulk-data-client log (`{exportId, timestamp, eventId,
    eventDetail}`)."""
    return {"exportId": export_id, "timestamp": "2024-08-06T14:12:57.779-04:00",
            "eventId": event_id, "eventDetail": detail}


def write_json(path: Path, value: Any, *, gz: bool = False) -> Path:
    data = json.dumps(value).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_ndjson(path: Path, values: list[Any], *, gz: bool = False) -> Path:
    data = b"".join(json.dumps(v).encode() + b"\n" for v in values)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def resources(items: list[Any]) -> dict[str, RawResource]:
    return {f"{i.resource['resourceType']}/{i.resource.get('id')}": i
            for i in items if isinstance(i, RawResource)}


def run_pipeline(items: list[Any]):
    extraction = extract(items, load_mappings(None, {}), validation="off")
    acc = extraction.accounting
    assert acc.balanced and acc.read == len(items) == acc.used + acc.set_aside
    return extraction


# ------------------------------------------------- Bundles inside Bundles (item 6)
def test_a_document_inside_a_collection_is_unpacked_with_its_own_references(tmp_path):
    doc = bundle("document",
                 entry({"resourceType": "Composition", "id": "comp", "status": "final",
                        "subject": {"reference": "urn:uuid:p-doc"}}, "urn:uuid:comp"),
                 entry(patient(None), "urn:uuid:p-doc"),
                 entry(procedure("bx", "urn:uuid:p-doc"), "urn:uuid:bx"), bid="doc")
    write_json(tmp_path / "collection.json",
               bundle("collection", entry(doc), entry(patient("outer"), "urn:uuid:outer")))
    items = list(iter_folder(tmp_path))
    got = resources(items)
    assert sorted(got) == ["Composition/comp", "Patient/outer", "Patient/p-doc",
                           "Procedure/bx"]
    assert got["Procedure/bx"].resource["subject"]["reference"] == "Patient/p-doc"
    assert got["Procedure/bx"].origin == "collection.json#entry[0].entry[2]"
    assert not any(isinstance(i, ReadProblem) for i in items)
    extraction = run_pipeline(items)
    assert {"p-doc", "outer"} <= set(extraction.patients)


def test_a_nested_bundle_resolves_references_to_the_enclosing_bundle_too(tmp_path):
    inner = bundle("document", entry(procedure("bx", "urn:uuid:p1"), "urn:uuid:bx"))
    write_json(tmp_path / "b.json",
               bundle("collection", entry(patient("p1"), "urn:uuid:p1"), entry(inner)))
    got = resources(list(iter_folder(tmp_path)))
    assert got["Procedure/bx"].resource["subject"]["reference"] == "Patient/p1"


def test_bundles_nested_too_deep_are_a_problem_not_a_crash(tmp_path):
    value = bundle("collection", entry(patient("deep")))
    for _ in range(30):
        value = bundle("collection", entry(value))
    write_json(tmp_path / "deep.json", value)
    items = list(iter_folder(tmp_path))
    assert [(type(i).__name__, getattr(i, "code", "")) for i in items] == [
        ("ReadProblem", "bundle-too-deep")]
    run_pipeline(items)


# ------------------------------------------------- conditional references (item 6)
def test_conditional_references_resolve_to_the_one_matching_entry(tmp_path):
    by_mrn = f"Patient?identifier={MRN}|42"
    encounter = {"resourceType": "Encounter", "id": "enc", "status": "finished",
                 "identifier": [{"system": "urn:example:visit", "value": "v7"}],
                 "subject": {"reference": by_mrn}}
    write_json(tmp_path / "tx.json", bundle(
        "transaction",
        entry(patient("p42", "42", name=[{"family": "Ågren", "given": ["Ines"]}]),
              method="POST"),
        entry(patient("p43", "43"), method="POST"),
        entry(encounter, method="POST"),
        entry(procedure("bx", by_mrn, encounter={"reference": "Encounter?identifier=v7"},
                        performer=[{"actor": {"reference": "Patient?_id=p43"}}],
                        recorder={"reference": "Patient?family=ågr&birthdate=1961-05-02"
                                  "&given=in"}),
              method="POST")))
    items = list(iter_folder(tmp_path))
    got = resources(items)
    bx = got["Procedure/bx"]
    assert bx.resource["subject"]["reference"] == "Patient/p42"
    assert bx.resource["encounter"]["reference"] == "Encounter/enc"
    assert bx.resource["performer"][0]["actor"]["reference"] == "Patient/p43"
    assert bx.resource["recorder"]["reference"] == "Patient/p42"
    assert got["Encounter/enc"].resource["subject"]["reference"] == "Patient/p42"
    assert all(not i.notes for i in got.values())
    extraction = run_pipeline(items)
    assert not [i for i in extraction.issues if i.code.startswith("conditional")]


def test_unresolvable_conditional_references_are_issues_rows_never_dropped(tmp_path):
    write_json(tmp_path / "tx.json", bundle(
        "transaction",
        entry(patient("a", "dup"), method="POST"),
        entry(patient("b", "dup"), method="POST"),
        entry(procedure("none", f"Patient?identifier={MRN}|404"), method="POST"),
        entry(procedure("several", f"Patient?identifier={MRN}|dup"), method="POST"),
        entry(procedure("odd", "Patient?address-city=Oslo"), method="POST"),
        entry(procedure("none-again", f"Patient?identifier={MRN}|404"), method="POST")))
    items = list(iter_folder(tmp_path))
    got = resources(items)
    for rid in ("none", "several", "odd", "none-again"):  # still read, reference as sent
        assert got[f"Procedure/{rid}"].resource["subject"]["reference"].startswith("Patient?")
    extraction = run_pipeline(items)
    rows = {i.resource_id: i for i in extraction.issues if i.code.startswith("conditional")}
    assert set(rows) == {"none", "several", "odd"}  # one row per reference per Bundle
    assert (rows["none"].severity, rows["none"].code) == (
        "warning", "conditional-reference-unresolved")
    assert f"Patient?identifier={MRN}|404" in rows["none"].message
    assert (rows["several"].severity, rows["several"].code) == (
        "error", "conditional-reference-ambiguous")
    assert "2 Patient entries match (a, b)" in rows["several"].message
    assert rows["odd"].severity == "warning" and "address-city" in rows["odd"].message
    assert all(not r.sets_aside and r.origin.startswith("tx.json#entry[") for r in rows.values())


# --------------------------------------------------- gzip JSON Bundles (item 6)
def test_json_gz_bundles_read_like_ndjson_gz(tmp_path):
    tx = bundle("transaction", entry(patient(None), "urn:uuid:p9", method="POST"),
                entry(procedure("bx", "urn:uuid:p9"), method="POST"))
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    write_json(plain / "b.json", tx)
    write_json(packed / "b.JSON.GZ", tx, gz=True)
    as_plain = [(i.resource, i.origin.replace("b.json", "")) for i in iter_folder(plain)]
    as_packed = [(i.resource, i.origin.replace("b.JSON.GZ", "")) for i in iter_folder(packed)]
    assert as_plain == as_packed and len(as_packed) == 2
    (packed / "b.JSON.GZ").write_bytes((packed / "b.JSON.GZ").read_bytes()[:30])
    [problem] = list(iter_folder(packed))
    assert isinstance(problem, ReadProblem) and problem.code == "unreadable-file"


# ------------------------------------------------ Bulk Data client log (item 7)
def test_a_bulk_data_client_log_is_an_export_artefact_recognised_by_shape(tmp_path):
    write_ndjson(tmp_path / "Patient.000.ndjson", [patient("p1")])
    write_ndjson(tmp_path / "export-run.ndjson", [  # any name: the shape decides
        log_event("kickoff", exportUrl="https://user:pw@ehr.example/fhir/$export"),
        log_event("status_complete", transactionTime="2024-08-06T18:12:57Z"),
        log_event("download_error", fileUrl="https://ehr.example/f/2.ndjson", code=503),
        patient("in-log"),
        log_event("export_complete", files=1)])
    write_ndjson(tmp_path / "log1.ndjson.gz", [  # a rotated, gzipped older log
        log_event("manifest_complete", "exp-0", transactionTime="2024-08-06T16:00:00-04:00")],
        gz=True)
    source = FileSource(tmp_path)
    items = list(source)
    assert sorted(resources(items)) == ["Patient/in-log", "Patient/p1"]  # only resources
    run_pipeline(items)
    logs = {a.file: a for a in source.export_artefacts}
    assert set(logs) == {"export-run.ndjson", "log1.ndjson.gz"}
    run = logs["export-run.ndjson"]
    assert (run.kind, run.events, run.complete) == ("client-log", 4, True)
    assert run.requests == ["https://ehr.example/fhir/$export"]  # no credentials kept
    assert run.errors == ["download_error HTTP 503 for https://ehr.example/f/2.ndjson"]
    assert source.transaction_time == "2024-08-06T18:12:57Z"  # before 16:00-04:00 = 20:00Z
    info = source.query_info()
    assert info["transaction_time"] == "2024-08-06T18:12:57Z"
    assert len(info["export_artefacts"]) == 2


def test_an_unfinished_export_log_is_recognised_and_warned_about(tmp_path, caplog):
    write_ndjson(tmp_path / "log.ndjson", [log_event("kickoff", exportUrl="https://e/$export")])
    source = FileSource(tmp_path)
    assert list(source) == []
    [artefact] = source.export_artefacts
    assert not artefact.complete and source.transaction_time is None
    assert "no export_complete event" in caplog.text


def test_a_log_shaped_line_inside_a_resource_file_is_still_not_a_resource(tmp_path):
    write_ndjson(tmp_path / "Patient.ndjson", [patient("p1"), log_event("kickoff")])
    items = list(FileSource(tmp_path))
    assert [getattr(i, "code", "resource") for i in items] == ["resource", "not-a-resource"]


def test_a_saved_export_manifest_is_an_export_artefact(tmp_path):
    write_ndjson(tmp_path / "1.Patient.ndjson", [patient("p1")])
    write_json(tmp_path / "manifest.json", {
        "transactionTime": "2024-08-06T18:12:57Z", "request": "https://ehr.example/$export",
        "requiresAccessToken": True, "error": [],
        "output": [{"type": "Patient", "url": "https://ehr.example/f/1.Patient.ndjson"}]})
    source = FileSource(tmp_path)
    items = list(source)
    assert len(items) == 1 and isinstance(items[0], RawResource)
    [artefact] = source.export_artefacts
    assert (artefact.kind, artefact.complete) == ("export-manifest", True)
    assert source.transaction_time == "2024-08-06T18:12:57Z"


def test_a_plain_folder_has_no_export_information(tmp_path):
    write_ndjson(tmp_path / "Patient.ndjson", [patient("p1")])
    source = FileSource(tmp_path)
    list(source)
    assert source.query_info() == {} and source.transaction_time is None


# ----------------------------------------- searchset OperationOutcome (item 7)
@pytest.mark.parametrize(("severity", "expected"), [
    ("warning", "warning"), ("information", "info"), ("error", "error"), ("fatal", "error"),
    (None, "error")])
def test_a_search_outcome_entry_is_an_issue_at_its_own_severity(tmp_path, severity, expected):
    page = bundle("searchset", entry(patient("p1"), mode="match"),
                  entry(outcome((severity, "Too many results: capped")), mode="outcome"))
    write_json(tmp_path / "page.json", page)
    items = list(iter_folder(tmp_path))
    extraction = run_pipeline(items)
    [row] = [i for i in extraction.issues if i.code == "operation-outcome"]
    assert (row.severity, row.resource_type, row.origin) == (
        expected, "OperationOutcome", "page.json#entry[1]")
    assert "Too many results: capped" in row.message


def test_a_search_outcome_reports_its_worst_issue_and_every_text(tmp_path):
    oo = outcome(("information", "paged"), ("warning", "ServiceRequest not searched"))
    oo["issue"][1] = {"severity": "warning", "code": "not-found",
                      "details": {"text": "ServiceRequest not searched"}}
    write_json(tmp_path / "page.json", bundle("searchset", entry(oo)))  # no search.mode
    [problem] = list(iter_folder(tmp_path))
    assert isinstance(problem, ReadProblem) and problem.severity == "warning"
    assert "information: paged; warning: ServiceRequest not searched" in problem.message


def test_a_bulk_error_file_beside_the_output_is_issues_rows_at_their_severity(tmp_path):
    write_ndjson(tmp_path / "Patient.ndjson", [patient("p1")])
    (tmp_path / "error").mkdir()
    write_ndjson(tmp_path / "error" / "OperationOutcome.ndjson", [
        outcome(("error", "Observation/o9 could not be exported")),
        outcome(("information", "exported with _elements"))], gz=False)
    items = list(iter_folder(tmp_path))
    extraction = run_pipeline(items)
    rows = [(i.severity, i.origin) for i in extraction.issues if i.code == "operation-outcome"]
    assert rows == [("error", "error/OperationOutcome.ndjson:1"),
                    ("info", "error/OperationOutcome.ndjson:2")]
    assert any("Observation/o9 could not be exported" in i.message for i in extraction.issues)


def test_an_operation_outcome_outside_a_search_stays_an_ordinary_resource(tmp_path):
    write_json(tmp_path / "c.json", bundle("collection", entry(outcome(("error", "x")))))
    [item] = list(iter_folder(tmp_path))
    assert isinstance(item, RawResource)


# ------------------------------------------------------- end to end, the CLI
def test_extract_of_an_export_folder_with_artefacts_exits_0_and_records_them(tmp_path):
    source = tmp_path / "export"
    source.mkdir()
    write_ndjson(source / "Patient.000.ndjson", [patient("p1")])
    write_ndjson(source / "log.ndjson", [
        log_event("status_complete", transactionTime="2024-08-06T18:12:57Z"),
        log_event("export_complete")])
    write_json(source / "page.json", bundle(
        "searchset", entry(outcome(("warning", "capped at 1000")), mode="outcome")))
    out = tmp_path / "out"
    assert main(["extract", "--quiet", "--source", str(source), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query"]["transaction_time"] == "2024-08-06T18:12:57Z"
    assert manifest["query"]["export_artefacts"][0]["file"] == "log.ndjson"
    assert manifest["accounting"]["balanced"] and manifest["accounting"]["read"] == 2
    with (out / "issues.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["code"] == "operation-outcome"]
    assert [(r["severity"], "capped at 1000" in r["message"]) for r in rows] == [
        ("warning", True)]

