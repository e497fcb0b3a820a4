"""Bulk Data `$export` client: kick-off, polling, downloads, error files, resume.

`FakeExport` is a Bulk Data server behind `responses` (nothing leaves the machine): a
kick-off endpoint, a status URL answering a scripted sequence (202 + Retry-After /
X-Progress, then the manifest), file URLs and DELETE. Sleeping is recorded, not done.
The real servers are exercised in tests/integration/test_bulk.py.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses

from fhir_spine.auth import BearerAuth
from fhir_spine.errors import AuthError, IncompletePull, ServerError, UsageError
from fhir_spine.fhir import export_types
from fhir_spine.sources.bulk import (
    BulkExporter,
    BulkRequest,
    JobState,
    count_lines,
    parse_level,
)
from fhir_spine.sources.files import RawResource, ReadProblem
from fhir_spine.sources.http import FhirClient, HttpSettings
from fhir_spine.sources.search import pack_ids

BASE = "https://ehr.example.org/fhir"
STATUS = f"{BASE}/bulkstatus/job-1"
TOKEN = "secret-token-0123456789"  # noqa: S105 - a test value


def ndjson(*resources: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in resources)


def patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "meta": {"lastUpdated":
                                                           "2025-01-01T00:00:00Z"}}


def procedure(rid: str, pid: str) -> dict:
    return {"resourceType": "Procedure", "id": rid, "status": "completed",
            "subject": {"reference": f"Patient/{pid}"}}


class FakeExport:
    """A scripted Bulk Data server."""

    def __init__(self, files: dict[str, tuple[bytes, dict]], *, polls: list[tuple] = (),
                 manifest: dict | None = None, requires_token: bool = False) -> None:
        self.files = files
        self.polls = list(polls)  # (status, headers, body) before the manifest
        self.requires_token = requires_token
        self.kickoffs: list[responses.PreparedRequest] = []
        self.status_calls = 0
        self.file_calls: list[tuple[str, dict]] = []
        self.interrupt: str | None = None  # a file whose download "kills the process"
        self.deletes = 0
        self.manifest = manifest or {
            "transactionTime": "2025-06-01T12:00:00.000Z",
            "request": f"{BASE}/$export",
            "requiresAccessToken": requires_token,
            "output": [{"type": name.split(".")[0], "url": f"{BASE}/files/{name}",
                        **({"count": meta["count"]} if "count" in meta else {})}
                       for name, (_, meta) in files.items() if meta.get("kind", "output")
                       == "output"],
            "error": [{"type": "OperationOutcome", "url": f"{BASE}/files/{name}"}
                      for name, (_, meta) in files.items() if meta.get("kind") == "error"],
        }

    def install(self, rsps: responses.RequestsMock) -> None:
        rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/(Patient/|Group/"
                                                    r"[^/]+/)?\$export.*"), self.kickoff)
        rsps.add_callback(responses.GET, STATUS, self.status)
        rsps.add_callback(responses.DELETE, STATUS, self.delete)
        rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/files/.*"), self.file)

    def kickoff(self, request):
        self.kickoffs.append(request)
        return 202, {"Content-Location": STATUS}, ""

    def status(self, request):
        self.status_calls += 1
        if self.polls:
            status, headers, body = self.polls.pop(0)
            return status, headers, body
        return 200, {"Content-Type": "application/json"}, json.dumps(self.manifest)

    def delete(self, request):
        self.deletes += 1
        return 202, {}, ""

    def file(self, request):
        name = urlsplit(request.url).path.rsplit("/", 1)[-1]
        if name == self.interrupt:
            raise KeyboardInterrupt
        self.file_calls.append((name, dict(request.headers)))
        body, meta = self.files[name]
        if meta.get("fail"):
            meta["fail"] -= 1
            return 503, {"Retry-After": "2"}, ""
        return 200, meta.get("headers", {"Content-Type": "application/fhir+ndjson"}), body


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def exporter(tmp_path: Path, clock: Clock, *, auth=None, timeout: float = 3600.0
             ) -> BulkExporter:
    client = FhirClient(BASE, auth=auth, sleep=clock.sleep, clock=clock,
                        settings=HttpSettings(retry_time=60))
    return BulkExporter(client, tmp_path / "job", timeout=timeout, sleep=clock.sleep,
                        clock=clock)


REQUEST = BulkRequest("system", types=("Patient", "Procedure"))


# ----------------------------------------------------------------- kick-off

@responses.activate
def test_kickoff_headers_and_parameters(tmp_path):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})})
    fake.install(responses.mock)
    request = BulkRequest("group", "g1", ("Patient", "Procedure"),
                          since="2025-05-01T00:00:00.000Z",
                          type_filters=("Procedure?status=completed",))
    exporter(tmp_path, Clock()).run(request)
    sent = fake.kickoffs[0]
    assert urlsplit(sent.url).path == "/fhir/Group/g1/$export"
    assert parse_qsl(urlsplit(sent.url).query) == [
        ("_type", "Patient,Procedure"), ("_since", "2025-05-01T00:00:00.000Z"),
        ("_typeFilter", "Procedure?status=completed")]
    assert sent.headers["Prefer"] == "respond-async"
    assert sent.headers["Accept"] == "application/fhir+json"


@responses.activate
def test_kickoff_refused_names_the_server_reason(tmp_path):
    responses.add(responses.GET, f"{BASE}/Patient/$export", status=400, json={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code":
                                                       "processing", "diagnostics":
                                                       "HAPI-0512: Medication invalid"}]})
    with pytest.raises(ServerError, match="HAPI-0512"):
        exporter(tmp_path, Clock()).run(BulkRequest("patient", types=("Medication",)))


@responses.activate
def test_kickoff_without_content_location_is_an_error(tmp_path):
    responses.add(responses.GET, f"{BASE}/$export", status=202)
    with pytest.raises(ServerError, match="Content-Location"):
        exporter(tmp_path, Clock()).run(REQUEST)


# ----------------------------------------------------------------- polling

@responses.activate
def test_polling_honours_retry_after_and_logs_progress_changes(tmp_path, caplog):
    polls = [(202, {"Retry-After": "3", "X-Progress": "collecting"}, ""),
             (202, {"Retry-After": "7", "X-Progress": "collecting"}, ""),
             (202, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT", "X-Progress": "50%"}, ""),
             (202, {"X-Progress": "writing"}, ""),
             (202, {"X-Progress": "writing"}, "")]
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})}, polls=polls)
    fake.install(responses.mock)
    clock = Clock()
    caplog.set_level(logging.INFO, "fhir_spine.sources.bulk")
    with pytest.raises(IncompletePull, match="resume"):
        # the HTTP-date Retry-After is far in the future: more than the timeout allows
        exporter(tmp_path, clock, timeout=100).run(REQUEST)
    assert clock.sleeps == [3.0, 7.0]
    progress = [r.getMessage() for r in caplog.records if "in progress" in r.getMessage()]
    assert progress == ["export in progress: collecting", "export in progress: 50%"]
    # the next run resumes the same export: no second kick-off, polling goes on
    fake.polls = [(202, {"X-Progress": "writing"}, ""), (202, {}, "")]
    clock2 = Clock()
    result = exporter(tmp_path, clock2).run(REQUEST)
    assert len(fake.kickoffs) == 1
    assert result.resumed is True
    assert clock2.sleeps == [1.0, 2.0]  # exponential backoff without Retry-After
    assert fake.deletes == 1


@responses.activate
def test_transient_server_error_while_polling_is_polled_again(tmp_path):
    transient = json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "transient", "diagnostics": "busy"}]})
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})},
                      polls=[(500, {"Retry-After": "4"}, transient)])
    fake.install(responses.mock)
    clock = Clock()
    exporter(tmp_path, clock).run(REQUEST)
    assert clock.sleeps == [4.0]


@responses.activate
def test_failed_export_is_reported_and_not_resumed(tmp_path):
    failed = json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "exception", "diagnostics": "disk full"}]})
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})},
                      polls=[(500, {}, failed)])
    fake.install(responses.mock)
    with pytest.raises(ServerError, match="export failed: 500: error: disk full"):
        exporter(tmp_path, Clock()).run(REQUEST)
    exporter(tmp_path, Clock()).run(REQUEST)
    assert len(fake.kickoffs) == 2  # a failed job starts over


@responses.activate
def test_expired_status_url_on_resume_starts_a_new_export(tmp_path):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})},
                      polls=[(202, {"Retry-After": "5000"}, "")])
    fake.install(responses.mock)
    with pytest.raises(IncompletePull):
        exporter(tmp_path, Clock(), timeout=10).run(REQUEST)
    fake.polls = [(404, {}, "")]
    result = exporter(tmp_path, Clock()).run(REQUEST)
    assert len(fake.kickoffs) == 2 and result.resumed is False


# ----------------------------------------------------------------- downloads

@responses.activate
def test_downloads_plain_and_gzip_files_and_reads_them_with_the_file_source(tmp_path):
    zipped = gzip.compress(ndjson(procedure("x1", "p1"), procedure("x2", "p2")))
    fake = FakeExport({
        "Patient.ndjson": (ndjson(patient("p1"), patient("p2")), {"count": 2}),
        "Procedure.ndjson": (zipped, {"count": 2, "headers": {
            "Content-Type": "application/gzip"}}),
        # gzip as Content-Encoding: undone in transit, stored plain
        "Observation.ndjson": (gzip.compress(ndjson({"resourceType": "Observation",
                                                     "id": "o1"})),
                               {"headers": {"Content-Type": "application/fhir+ndjson",
                                            "Content-Encoding": "gzip"}}),
    })
    fake.install(responses.mock)
    result = exporter(tmp_path, Clock()).run(REQUEST)
    names = sorted(p.name for p in result.files_dir.iterdir())
    assert names == ["0000.Patient.ndjson", "0001.Procedure.ndjson.gz",
                     "0002.Observation.ndjson"]
    ids = sorted(i.resource["id"] for i in result.items() if isinstance(i, RawResource))
    assert ids == ["o1", "p1", "p2", "x1", "x2"]
    assert count_lines(result.files_dir / "0001.Procedure.ndjson.gz") == 2
    assert all(headers["Accept"] == "application/fhir+ndjson"
               for _, headers in fake.file_calls)
    assert fake.deletes == 1
    summary = result.summary()
    assert summary["transaction_time"] == "2025-06-01T12:00:00.000Z"
    assert [f["lines"] for f in summary["files"]] == [2, 2, 1]
    assert all(f["sha256"] for f in summary["files"])
    job = JobState.from_json((tmp_path / "job" / "job.json").read_bytes())
    assert job.state == "complete" and job.job_deleted


@responses.activate
def test_line_count_mismatch_is_downloaded_again_then_incomplete(tmp_path):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {"count": 3})})
    fake.install(responses.mock)
    with pytest.raises(IncompletePull, match="1 lines, the manifest says 3"):
        exporter(tmp_path, Clock()).run(REQUEST)
    assert len(fake.file_calls) == 2


@responses.activate
def test_file_download_retries_503_with_retry_after(tmp_path):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {"fail": 2})})
    fake.install(responses.mock)
    clock = Clock()
    result = exporter(tmp_path, clock).run(REQUEST)
    assert clock.sleeps == [2.0, 2.0]
    assert len(fake.file_calls) == 3
    assert [i.resource["id"] for i in result.items()] == ["p1"]


@pytest.mark.parametrize("requires", [True, False])
@responses.activate
def test_token_sent_to_files_only_when_required(tmp_path, requires):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})}, requires_token=requires)
    fake.install(responses.mock)
    exporter(tmp_path, Clock(), auth=BearerAuth(TOKEN)).run(REQUEST)
    assert fake.kickoffs[0].headers["Authorization"] == f"Bearer {TOKEN}"
    sent = fake.file_calls[0][1].get("Authorization")
    assert sent == (f"Bearer {TOKEN}" if requires else None)


@responses.activate
def test_token_never_sent_to_another_host(tmp_path):
    fake = FakeExport({}, requires_token=True)
    fake.manifest["output"] = [{"type": "Patient", "url": "https://files.elsewhere.example/"
                                "p.ndjson"}]
    fake.install(responses.mock)
    with pytest.raises(ServerError, match="refusing to send the access token"):
        exporter(tmp_path, Clock(), auth=BearerAuth(TOKEN)).run(REQUEST)


@responses.activate
def test_forbidden_file_is_an_auth_error(tmp_path):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})})
    fake.install(responses.mock)
    responses.replace(responses.GET, re.compile(re.escape(BASE) + r"/files/.*"), status=403)
    with pytest.raises(AuthError):
        exporter(tmp_path, Clock()).run(REQUEST)


# ----------------------------------------------------------------- error files

@responses.activate
def test_error_file_outcomes_become_issues_warnings_messages(tmp_path):
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics":
         "Observation/o9 could not be serialised"},
        {"severity": "warning", "code": "not-supported", "diagnostics":
         "Ignored unsupported parameters: ['_elements']"}]}
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {}),
                       "errors.ndjson": (ndjson(outcome), {"kind": "error"})})
    fake.install(responses.mock)
    result = exporter(tmp_path, Clock()).run(REQUEST)
    problems = [i for i in result.items() if isinstance(i, ReadProblem)]
    assert len(problems) == 1
    assert problems[0].code == "bulk-export-error"
    assert "Observation/o9 could not be serialised" in problems[0].message
    assert problems[0].origin.startswith("errors/0001.")
    assert result.messages == ["warning: Ignored unsupported parameters: ['_elements']"]
    assert result.summary()["server_messages"] == result.messages
    # error files are not part of the raw layer of resources
    assert sorted(p.name for p in result.files_dir.iterdir()) == ["0000.Patient.ndjson"]


@responses.activate
def test_deleted_files_list_deleted_resources(tmp_path):
    deleted = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Procedure/x9"}},
        {"request": {"method": "DELETE", "url": f"{BASE}/Observation/o3/_history/2"}}]}
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})})
    fake.files["del.ndjson"] = (ndjson(deleted), {"kind": "deleted"})
    fake.manifest["deleted"] = [{"type": "Bundle", "url": f"{BASE}/files/del.ndjson"}]
    fake.install(responses.mock)
    result = exporter(tmp_path, Clock()).run(
        BulkRequest("system", types=("Patient",), since="2025-01-01T00:00:00.000Z"))
    assert result.deleted == [("Procedure", "x9"), ("Observation", "o3")]
    assert not any(isinstance(i, RawResource) and i.resource["resourceType"] == "Bundle"
                   for i in result.items())


# ----------------------------------------------------------------- resume

@responses.activate
def test_interrupted_downloads_resume_with_the_missing_files_only(tmp_path):
    files = {"Patient.ndjson": (ndjson(patient("p1")), {}),
             "Procedure.ndjson": (ndjson(procedure("x1", "p1")), {})}
    fake = FakeExport(files)
    fake.install(responses.mock)
    fake.interrupt = "Procedure.ndjson"  # the process dies downloading the second file
    with pytest.raises(KeyboardInterrupt):
        exporter(tmp_path, Clock()).run(REQUEST)
    job = JobState.from_json((tmp_path / "job" / "job.json").read_bytes())
    assert job.state == "downloading" and [f.done for f in job.files] == [True, False]

    fake.interrupt = None
    fake.file_calls.clear()
    status_calls = fake.status_calls
    result = exporter(tmp_path, Clock()).run(REQUEST)
    assert result.resumed is True
    assert len(fake.kickoffs) == 1 and fake.status_calls == status_calls  # no new export
    assert [name for name, _ in fake.file_calls] == ["Procedure.ndjson"]
    assert sorted(i.resource["id"] for i in result.items()) == ["p1", "x1"]


@responses.activate
def test_consumed_or_different_jobs_start_a_new_export(tmp_path):
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {})})
    fake.install(responses.mock)
    first = exporter(tmp_path, Clock())
    first.run(REQUEST)
    # finished but not consumed (the caller died before publishing): reused as is
    again = exporter(tmp_path, Clock())
    again.run(REQUEST)
    assert len(fake.kickoffs) == 1
    again.mark_consumed()
    exporter(tmp_path, Clock()).run(REQUEST)
    assert len(fake.kickoffs) == 2
    exporter(tmp_path, Clock()).run(BulkRequest("system", types=("Patient",)))
    assert len(fake.kickoffs) == 3


# ----------------------------------------------------------------- medications

@responses.activate
def test_patient_level_fetches_referenced_medications_by_id(tmp_path):
    order = {"resourceType": "MedicationRequest", "id": "mr1", "subject": {
        "reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/m1"}}
    fake = FakeExport({"Patient.ndjson": (ndjson(patient("p1")), {}),
                       "MedicationRequest.ndjson": (ndjson(order), {})})
    fake.install(responses.mock)
    responses.add(responses.GET, re.compile(re.escape(BASE) + r"/Medication\?.*"), json={
        "resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
            {"resource": {"resourceType": "Medication", "id": "m1"},
             "search": {"mode": "match"}}]})
    job = exporter(tmp_path, Clock())
    result = job.run(BulkRequest("patient", types=("Patient", "MedicationRequest")))
    assert job.fetch_medications() == 1
    assert job.fetch_medications() == 0  # once per job
    kinds = sorted(i.resource["resourceType"] for i in result.items())
    assert kinds == ["Medication", "MedicationRequest", "Patient"]
    medication_calls = [c for c in responses.calls if "/Medication?" in c.request.url]
    assert len(medication_calls) == 1 and "_id=m1" in medication_calls[0].request.url


# ----------------------------------------------------------------- small parts

def test_parse_level():
    assert parse_level("system") == ("system", None)
    assert parse_level("patient") == ("patient", None)
    assert parse_level("group:cohort-7") == ("group", "cohort-7")
    assert parse_level("group:Group/abc") == ("group", "abc")
    for bad in ("group:", "everything", "group:a/b"):
        with pytest.raises(UsageError):
            parse_level(bad)
    with pytest.raises(UsageError):
        BulkRequest("group")


def test_export_types_leave_medication_to_system_level():
    from fhir_spine.settings import load_mappings

    mappings = load_mappings()
    assert "Medication" in export_types(mappings, "system")
    assert "Medication" not in export_types(mappings, "patient")
    assert export_types(mappings, "group")[0] == "Patient"


def test_pack_ids_keeps_urls_short():
    ids = [f"id-{i:05d}" for i in range(2000)]
    batches = pack_ids(ids, 1000)
    assert [i for b in batches for i in b] == ids
    assert all(len(",".join(b)) <= 1000 for b in batches)
