"""`BulkExporter`: runs one export to completion in a job folder, resuming what an
earlier run left: kick-off and polling (`status.py`), downloads, verification, the
result, and the Medications a patient-compartment export cannot carry.

Downloads go through `FhirClient.download` (streamed to disk, retried like every other
request) with `Accept: application/fhir+ndjson`; the access token is sent only when the
manifest says `requiresAccessToken`, and only to the server's own origin; the line count
is checked against the manifest's `count` when the server gives one.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from fhir_spine.errors import IncompletePull, ServerError
from fhir_spine.fhir import medication_id
from fhir_spine.redact import redact_url, scrub
from fhir_spine.sources.files import RawResource, ReadProblem, iter_folder
from fhir_spine.sources.http import FhirClient, check_gzip_file
from fhir_spine.sources.search import QueryLog, RestOptions, Searcher, pack_ids

from .job import (
    FOLDERS,
    JOB_FILE,
    BulkResult,
    JobState,
    load_job,
    record_file,
    save_job,
    write_atomic,
)
from .request import BulkRequest
from .server_files import count_lines, file_stem, read_deleted_file, read_error_file
from .status import Expired, ExportFailed, PollTimeout, delete_job, kick_off, manifest_files, poll

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"


class BulkExporter:
    """Runs one export to completion in a job folder, resuming what an earlier run left.

    `sleep` and `clock` are injectable so polling can be tested without waiting.
    """

    def __init__(self, client: FhirClient, job_dir: Path, *, timeout: float = 6 * 3600.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.job_dir = job_dir
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self.job: JobState | None = None

    def save(self) -> None:
        assert self.job is not None
        save_job(self.job_dir, self.job)

    def mark_consumed(self) -> None:
        """The caller has used the files (dataset published): the next run exports anew."""
        if self.job is not None:
            self.job.consumed = True
            self.save()

    # ------------------------------------------------------------- run

    def run(self, request: BulkRequest) -> BulkResult:
        """Kick off (or resume), poll, download and verify; DELETE the server's job."""
        started = self._clock()
        self.job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        resumed = self._resume_or_start(request)
        job = self._job()
        for attempt in (1, 2):
            try:
                if job.state == "new":
                    job.kickoff_url, job.status_url = kick_off(self.client, request)
                    job.kicked_off = datetime.now(UTC).isoformat()
                    job.state = "exporting"
                    self.save()
                if job.state == "exporting":
                    self._poll()
                if job.state == "downloading":
                    try:
                        self._download_all()
                    except BaseException:
                        self.save()  # job.json whole again (it is, with files.log, anyway)
                        raise
                break
            except Expired as exc:
                if attempt == 2:
                    raise ServerError(str(exc)) from None
                log.warning("%s; starting the export again", exc)
                job = self._fresh(request)
                resumed = False
        if job.state == "downloading":
            job.state = "complete"
            job.finished = datetime.now(UTC).isoformat()
            self.save()
        if not job.job_deleted and job.status_url:
            delete_job(self.client, job.status_url)
            job.job_deleted = True
            self.save()
        return self._result(request, resumed, self._clock() - started)

    def _resume_or_start(self, request: BulkRequest) -> bool:
        """Take up the saved job when it is this request's and unfinished; whether an
        export was already under way."""
        previous = load_job(self.job_dir)
        if previous is not None and not previous.consumed and previous.state != "failed" \
                and previous.server == self.client.base_url \
                and previous.request == request.as_dict():
            self.job = previous
            if previous.state != "new":
                log.info("resuming the %s export started %s (%s; %d of %d files on disk)",
                         request.level, previous.kicked_off, previous.state,
                         sum(f.done for f in previous.files), len(previous.files))
            return previous.state != "new"
        if previous is not None and not previous.consumed and previous.status_url \
                and not previous.job_deleted:
            log.info("discarding an unfinished export for a different request")
            delete_job(self.client, previous.status_url)
        self._fresh(request)
        return False

    def _fresh(self, request: BulkRequest) -> JobState:
        for sub in FOLDERS.values():
            shutil.rmtree(self.job_dir / sub, ignore_errors=True)
        self.job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.job = JobState(server=self.client.base_url, request=request.as_dict())
        self.save()
        return self.job

    def _job(self) -> JobState:
        assert self.job is not None
        return self.job

    # ------------------------------------------------------------- phases

    def _poll(self) -> None:
        job = self._job()

        def polled() -> None:
            job.polls += 1

        try:
            manifest = poll(self.client, job.status_url, timeout=self.timeout,
                            sleep=self._sleep, clock=self._clock, on_poll=polled)
        except ExportFailed:
            job.state = "failed"
            self.save()
            raise
        except PollTimeout:
            self.save()
            raise IncompletePull(
                f"the {job.request.get('level')} export is not finished after "
                f"{self.timeout:g} s (--export-timeout); run the same command again to "
                f"resume it from {self.job_dir / JOB_FILE}") from None
        job.files = manifest_files(self.client, manifest, f"GET {redact_url(job.status_url)}")
        job.manifest = manifest
        job.state = "downloading"
        self.save()

    def _download_all(self) -> None:
        job = self._job()
        assert job.manifest is not None
        token = bool(job.manifest.get("requiresAccessToken"))
        for index, item in enumerate(job.files):
            if item.done and item.name and (self.job_dir / item.name).is_file() \
                    and (self.job_dir / item.name).stat().st_size == item.bytes:
                continue
            folder = self.job_dir / FOLDERS.get(item.kind, "files")
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            stem = file_stem(index, item.type or item.kind)
            for attempt in (1, 2):
                path, size, digest = self._download(item.url, folder, stem, token)
                lines = count_lines(path)
                if item.count is None or lines == item.count:
                    break
                path.unlink()
                message = (f"{redact_url(item.url)}: {lines} lines, the manifest says "
                           f"{item.count}")
                if attempt == 2:
                    raise IncompletePull(message + " (twice); the export is incomplete")
                log.warning("%s; downloading it again", message)
            if item.kind == "error":  # the server's messages may quote the token
                size, digest = scrub_file(path)
            item.name = str(path.relative_to(self.job_dir))
            item.lines, item.bytes, item.sha256, item.done = lines, size, digest, True
            record_file(self.job_dir, job, index)
            log.info("downloaded %s %s: %d lines, %d bytes", item.kind, item.type, lines, size)

    def _download(self, url: str, folder: Path, stem: str,
                  authenticated: bool) -> tuple[Path, int, str]:
        """One file to `folder/stem.ndjson[.gz]`; its size and sha256."""
        client = self.client
        if authenticated and client.auth.kind != "none" and not client.same_origin(url):
            raise ServerError(f"{redact_url(url)} is not on the server "
                              f"{redact_url(client.base_url)}; refusing to send the access "
                              "token to another host")
        try:
            got = client.download(url, folder / f".{stem}.part", accept=NDJSON,
                                  authenticated=authenticated)
        except ServerError as exc:
            if exc.status in (404, 410):
                raise Expired(f"{exc} (the export's files are gone)") from None
            raise
        if got.gzip:  # a bomb is stopped before anything reads it
            try:
                check_gzip_file(got.path, client.settings, url)
            except BaseException:
                got.path.unlink(missing_ok=True)
                raise
        final = folder / f"{stem}.ndjson{'.gz' if got.gzip else ''}"
        os.replace(got.path, final)
        return final, got.size, got.sha256

    # ------------------------------------------------------------- result

    def _result(self, request: BulkRequest, resumed: bool, seconds: float) -> BulkResult:
        job = self._job()
        assert job.manifest is not None
        problems: list[ReadProblem] = []
        messages: list[str] = []
        deleted: list[tuple[str, str]] = []
        for item in job.files:
            path = self.job_dir / item.name
            if item.kind == "error":
                p, m = read_error_file(path, item.name)
                problems += p
                messages += m
            elif item.kind == "deleted":
                deleted += read_deleted_file(path, item.name)
        for message in messages:
            log.warning("export: server message: %s", message)
        return BulkResult(self.job_dir, request, str(job.manifest["transactionTime"]),
                          bool(job.manifest.get("requiresAccessToken")), problems,
                          messages, deleted, resumed, list(job.files), job.polls, seconds)

    # ------------------------------------------------------------- medications

    def fetch_medications(self, options: RestOptions | None = None,
                          query_log: QueryLog | None = None) -> int:
        """Patient and Group exports carry no Medication (not in the Patient compartment):
        fetch the ones the orders reference by `_id`, into `files/Medication.by-id.ndjson`
        so they are part of the raw layer. Done once per job (recorded in job.json)."""
        job = self._job()
        if job.medications_fetched:
            return 0
        files = self.job_dir / FOLDERS["output"]
        have: set[str] = set()
        wanted: set[str] = set()
        for item in iter_folder(files) if files.is_dir() else iter(()):
            if not isinstance(item, RawResource):
                continue
            if item.resource.get("resourceType") == "Medication":
                have.add(str(item.resource.get("id") or ""))
            elif mid := medication_id(item.resource):
                wanted.add(mid)
        missing = sorted(wanted - have)
        lines: list[bytes] = []
        if missing:
            searcher = Searcher(self.client, options or RestOptions(), query_log or QueryLog())
            for batch in pack_ids(missing):
                for got in searcher.search("Medication", [("_id", ",".join(batch))],
                                           "medications"):
                    if isinstance(got, RawResource):
                        lines.append(orjson.dumps(got.resource))
            log.info("fetched %d of %d referenced Medication(s) by id", len(lines),
                     len(missing))
        if lines:
            files.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(files / "Medication.by-id.ndjson", b"\n".join(lines) + b"\n")
        job.medications_fetched = True
        self.save()
        return len(lines)


def scrub_file(path: Path) -> tuple[int, str]:
    """An `error` file (OperationOutcomes, not data) rewritten line by line through the
    secret scrubber, so the job folder holds no token a server echoed; its new size and
    SHA-256."""
    opener = gzip.open if path.name.endswith(".gz") else open
    tmp = path.with_name(f".{path.name}.scrub")
    digest = hashlib.sha256()
    with opener(path, "rb") as src, opener(tmp, "wb") as dst:
        for line in src:
            text = line.decode("utf-8", "replace")
            dst.write(scrub(text).encode("utf-8"))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()
