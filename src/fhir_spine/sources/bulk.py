"""FHIR Bulk Data Access (IG v2) `$export` client: kick-off, poll, download, verify, clean up.

A REST search pull costs one request per page per patient batch per type; a server's
`$export` hands over whole NDJSON files instead, and `_since` makes a nightly refresh
cost only what changed. The export is asynchronous and can take hours on a hospital
server, so everything the client learns is written to a job folder as it goes:

    <job>/job.json   request, status URL, the server's manifest, every file's state
    <job>/files/     the output NDJSON (.ndjson or .ndjson.gz): the raw layer of the run
    <job>/errors/    the `error` files (OperationOutcome NDJSON)
    <job>/deleted/   the `deleted` files (Bundles of DELETE entries, with `_since`)

A run that is killed while the server exports, or half-way through the downloads,
starts again from `job.json`: it polls the saved status URL and downloads only the
files not yet complete, instead of kicking off a new export. `files/` is read with the
ordinary file source (`sources.files.iter_folder`), so an export goes through exactly
the same reading, validation and accounting as a folder of NDJSON.

What the client does per the IG:
- kick-off `GET [base]/$export` | `Patient/$export` | `Group/ID/$export` with
  `Accept: application/fhir+json`, `Prefer: respond-async`, `_type`, `_since`,
  `_typeFilter`; expects 202 and `Content-Location`.
- polls the status URL, waiting what `Retry-After` says (exponential backoff when it
  says nothing), logging `X-Progress` when it changes; a 5xx whose OperationOutcome is
  `transient` is polled again, any other error fails the export.
- downloads each `output`, `error` and `deleted` file with
  `Accept: application/fhir+ndjson`, streaming to disk, gzip or not; sends the access
  token only when the manifest says `requiresAccessToken` (and only to the server's own
  origin); checks the line count against `count` when the server gives one.
- `DELETE`s the job on the server once every file is on disk.

Error-file OperationOutcomes with severity error/fatal become `ReadProblem` items (one
`issues` row each: data the server could not export); warnings and information are
logged and listed in the manifest (`query.server_messages`), since they do not mean
data is missing.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import requests

from fhir_spine.errors import AuthError, IncompletePull, ServerError, UsageError
from fhir_spine.fhir import Key, medication_id, reference_key
from fhir_spine.redact import redact_url, scrub
from fhir_spine.sources.files import (
    RawResource,
    ReadProblem,
    SourceItem,
    iter_folder,
    iter_ndjson_file,
)
from fhir_spine.sources.http import (
    FHIR_JSON,
    FhirClient,
    error_detail,
    one_line,
    outcome_text,
    parse_retry_after,
)
from fhir_spine.sources.search import QueryLog, RestOptions, Searcher, pack_ids

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
JOB_FILE = "job.json"
JOB_FORMAT = 1
LEVELS = ("system", "patient", "group")
# Longest gap between two status polls when the server gives no Retry-After.
MAX_POLL_BACKOFF_S = 60.0


# ------------------------------------------------------------------ request

@dataclass(frozen=True)
class BulkRequest:
    """One `$export` kick-off: which level, which types, changed since when."""

    level: str = "system"
    group_id: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    type_filters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise UsageError(f"--bulk: unknown level {self.level!r}; use system, patient or "
                             "group:ID")
        if (self.level == "group") != bool(self.group_id):
            raise UsageError("--bulk group:ID needs a Group id (and only group takes one)")

    @property
    def path(self) -> str:
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        return f"Group/{self.group_id}/$export"

    def params(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.types:
            out.append(("_type", ",".join(self.types)))
        if self.since:
            out.append(("_since", self.since))
        out += [("_typeFilter", f) for f in self.type_filters]
        return out

    def describe(self) -> str:
        what = self.level if self.level != "group" else f"group {self.group_id}"
        since = f", changed since {self.since}" if self.since else ""
        return f"{what} level export of {', '.join(self.types) or 'all types'}{since}"

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "group_id": self.group_id, "types": list(self.types),
                "since": self.since, "type_filters": list(self.type_filters)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BulkRequest:
        return cls(str(raw.get("level", "system")), raw.get("group_id"),
                   tuple(raw.get("types") or ()), raw.get("since"),
                   tuple(raw.get("type_filters") or ()))


def parse_level(text: str) -> tuple[str, str | None]:
    """`system`, `patient` or `group:ID` -> (level, group id)."""
    value = text.strip()
    if value in ("system", "patient"):
        return value, None
    if value.startswith("group:") and value[6:].strip():
        gid = value[6:].strip().removeprefix("Group/")
        if "/" in gid or "?" in gid or " " in gid:
            raise UsageError(f"--bulk {text!r}: {gid!r} is not a Group id")
        return "group", gid
    raise UsageError(f"--bulk {text!r}: expected system, patient or group:ID")


# ------------------------------------------------------------------ job state

@dataclass
class FileState:
    """One file of the manifest and how far its download got."""

    kind: str            # output | error | deleted
    type: str
    url: str
    count: int | None
    name: str = ""       # path under the job folder once complete
    lines: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    done: bool = False


@dataclass
class JobState:
    """`job.json`: everything needed to resume an export after the process died."""

    server: str
    request: dict[str, Any]
    kickoff_url: str = ""
    status_url: str = ""
    kicked_off: str = ""
    state: str = "new"   # new | exporting | downloading | complete | failed
    manifest: dict[str, Any] | None = None
    files: list[FileState] = field(default_factory=list)
    job_deleted: bool = False
    medications_fetched: bool = False
    consumed: bool = False
    polls: int = 0
    finished: str = ""
    format: int = JOB_FORMAT

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> JobState:
        raw = orjson.loads(data)
        files = [FileState(**f) for f in raw.pop("files", [])]
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known, files=files)


@dataclass
class BulkResult:
    """A finished export on disk: where the NDJSON is and what the server said."""

    job_dir: Path
    request: BulkRequest
    transaction_time: str
    requires_token: bool
    problems: list[ReadProblem]
    messages: list[str]
    deleted: list[tuple[str, str]]
    resumed: bool
    files: list[FileState]
    polls: int
    seconds: float

    @property
    def files_dir(self) -> Path:
        return self.job_dir / "files"

    def items(self) -> Iterator[SourceItem]:
        """Error-file problems first, then every resource of `files/` (file source)."""
        yield from self.problems
        if self.files_dir.is_dir():
            yield from iter_folder(self.files_dir)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "bulk-export", "level": self.request.level,
            "group_id": self.request.group_id, "types": list(self.request.types),
            "since": self.request.since, "type_filters": list(self.request.type_filters),
            "transaction_time": self.transaction_time,
            "requires_access_token": self.requires_token,
            "resumed": self.resumed, "polls": self.polls,
            "export_seconds": round(self.seconds, 3),
            "files": [{"kind": f.kind, "type": f.type, "url": redact_url(f.url),
                       "name": f.name, "count": f.count, "lines": f.lines, "bytes": f.bytes,
                       "sha256": f.sha256} for f in self.files],
            "deleted_resources": len(self.deleted),
            "raw_layer": str(self.files_dir),
            **({"server_messages": self.messages} if self.messages else {}),
        }


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so that a reader (or the next run after a kill -9) sees the old
    content or the new, never half: temp file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ------------------------------------------------------------------ the exporter

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

    # ------------------------------------------------------------- job file

    def load_job(self) -> JobState | None:
        path = self.job_dir / JOB_FILE
        if not path.is_file():
            return None
        try:
            job = JobState.from_json(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            log.warning("bulk job file %s is unreadable (%s); starting a new export", path, exc)
            return None
        return job

    def save(self) -> None:
        assert self.job is not None
        write_atomic(self.job_dir / JOB_FILE, self.job.to_json())

    def mark_consumed(self) -> None:
        """The caller has used the files (dataset published): the next run exports anew."""
        if self.job is not None:
            self.job.consumed = True
            self.save()

    def _fresh(self, request: BulkRequest) -> JobState:
        for sub in ("files", "errors", "deleted"):
            shutil.rmtree(self.job_dir / sub, ignore_errors=True)
        self.job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.job = JobState(server=self.client.base_url, request=request.as_dict())
        self.save()
        return self.job

    # ------------------------------------------------------------- run

    def run(self, request: BulkRequest) -> BulkResult:
        """Kick off (or resume), poll, download and verify; DELETE the server's job."""
        started = self._clock()
        self.job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        previous = self.load_job()
        resumed = False
        if previous is not None and not previous.consumed and previous.state != "failed" \
                and previous.server == self.client.base_url \
                and previous.request == request.as_dict():
            self.job = previous
            resumed = previous.state != "new"
            if resumed:
                log.info("resuming the %s export started %s (%s; %d of %d files on disk)",
                         request.level, previous.kicked_off, previous.state,
                         sum(f.done for f in previous.files), len(previous.files))
        else:
            if previous is not None and not previous.consumed and previous.status_url \
                    and not previous.job_deleted:
                log.info("discarding an unfinished export for a different request")
                self._delete_on_server(previous.status_url)
            self._fresh(request)
        assert self.job is not None
        for attempt in (1, 2):
            try:
                if self.job.state in ("new",):
                    self._kick_off(request)
                if self.job.state == "exporting":
                    self._poll()
                if self.job.state == "downloading":
                    self._download_all()
                break
            except _Expired as exc:
                if attempt == 2:
                    raise ServerError(str(exc)) from None
                log.warning("%s; starting the export again", exc)
                self._fresh(request)
                resumed = False
        if self.job.state == "downloading":
            self.job.state = "complete"
            self.job.finished = datetime.now(UTC).isoformat()
            self.save()
        if not self.job.job_deleted and self.job.status_url:
            self._delete_on_server(self.job.status_url)
            self.job.job_deleted = True
            self.save()
        return self._result(request, resumed, self._clock() - started)

    # ------------------------------------------------------------- phases

    def _kick_off(self, request: BulkRequest) -> None:
        assert self.job is not None
        url = self.client.url(request.path, request.params())
        shown = f"GET {redact_url(url)}"
        log.info("kick-off: %s", request.describe())
        response = self.client.request("GET", url, headers={
            "Accept": FHIR_JSON, "Prefer": "respond-async"})
        if response.status_code != 202:
            detail = error_detail(response)
            raise ServerError(f"{shown}: expected 202 Accepted for an async $export, got "
                              f"{response.status_code}" + (f": {detail}" if detail else "")
                              + "; does the server support Bulk Data export at this level?",
                              status=response.status_code)
        location = response.headers.get("Content-Location", "").strip()
        if not location:
            raise ServerError(f"{shown}: 202 without a Content-Location status URL")
        self.job.kickoff_url = url
        self.job.status_url = self.client.url(location)
        self.job.kicked_off = datetime.now(UTC).isoformat()
        self.job.state = "exporting"
        self.save()

    def _poll(self) -> None:
        assert self.job is not None
        status_url = self.job.status_url
        shown = f"GET {redact_url(status_url)}"
        deadline = self._clock() + self.timeout
        backoff = 1.0
        last_progress: str | None = None
        while True:
            response = self.client.request("GET", status_url, headers={
                "Accept": "application/json"}, raise_for_status=False)
            self.job.polls += 1
            status = response.status_code
            if status == 200:
                manifest = self.client.json_of(response, shown)
                self._accept_manifest(manifest, shown)
                return
            wait: float | None = None
            if status == 202:
                progress = response.headers.get("X-Progress", "").strip()
                if progress and progress != last_progress:
                    log.info("export in progress: %s", one_line(progress, 200))
                    last_progress = progress
                wait = parse_retry_after(response.headers.get("Retry-After"))
            elif status >= 500 and _is_transient(response):
                log.warning("%s: %d with a transient OperationOutcome (%s); polling again",
                            shown, status, error_detail(response))
                wait = parse_retry_after(response.headers.get("Retry-After"))
            elif status in (404, 410):
                raise _Expired(f"{shown}: {status}: the server no longer knows this export")
            elif status in (401, 403):
                raise AuthError(scrub(f"{shown}: {status} {error_detail(response)}".strip()))
            else:
                self.job.state = "failed"
                self.save()
                detail = error_detail(response)
                raise ServerError(scrub(f"{shown}: the export failed: {status}"
                                        + (f": {detail}" if detail else "")), status=status)
            if wait is None:
                wait = backoff
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_S)
            if self._clock() + wait > deadline:
                self.save()
                raise IncompletePull(
                    f"the {self.job.request.get('level')} export is not finished after "
                    f"{self.timeout:g} s (--export-timeout); run the same command again to "
                    f"resume it from {self.job_dir / JOB_FILE}")
            self._sleep(wait)

    def _accept_manifest(self, manifest: dict[str, Any], shown: str) -> None:
        assert self.job is not None
        if not isinstance(manifest.get("output"), list):
            raise ServerError(f"{shown}: the export manifest has no `output` list")
        if not manifest.get("transactionTime"):
            raise ServerError(f"{shown}: the export manifest has no transactionTime")
        files: list[FileState] = []
        for kind in ("output", "error", "deleted"):
            entries = manifest.get(kind) or []
            if not isinstance(entries, list):
                raise ServerError(f"{shown}: manifest `{kind}` is not a list")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise ServerError(f"{shown}: manifest `{kind}` entry without a url")
                count = entry.get("count")
                files.append(FileState(kind, str(entry.get("type") or ""),
                                       self.client.url(entry["url"]),
                                       count if isinstance(count, int) else None))
        self.job.manifest = manifest
        self.job.files = files
        self.job.state = "downloading"
        self.save()
        log.info("export complete (transactionTime %s): %d output, %d error, %d deleted "
                 "file(s)", manifest.get("transactionTime"),
                 sum(f.kind == "output" for f in files), sum(f.kind == "error" for f in files),
                 sum(f.kind == "deleted" for f in files))

    def _download_all(self) -> None:
        assert self.job is not None and self.job.manifest is not None
        token = bool(self.job.manifest.get("requiresAccessToken"))
        folders = {"output": "files", "error": "errors", "deleted": "deleted"}
        for index, item in enumerate(self.job.files):
            if item.done and item.name and (self.job_dir / item.name).is_file() \
                    and (self.job_dir / item.name).stat().st_size == item.bytes:
                continue
            folder = self.job_dir / folders.get(item.kind, "files")
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            stem = f"{index:04d}.{_safe(item.type or item.kind)}"
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
            item.name = str(path.relative_to(self.job_dir))
            item.lines, item.bytes, item.sha256, item.done = lines, size, digest, True
            self.save()
            log.info("downloaded %s %s: %d lines, %d bytes", item.kind, item.type, lines, size)

    def _download(self, url: str, folder: Path, stem: str,
                  authenticated: bool) -> tuple[Path, int, str]:
        """One file to `folder/stem.ndjson[.gz]`, streamed and retried like every request
        (`FhirClient.download`); its size and sha256."""
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
                raise _Expired(f"{exc} (the export's files are gone)") from None
            raise
        final = folder / f"{stem}.ndjson{'.gz' if got.gzip else ''}"
        os.replace(got.path, final)
        return final, got.size, got.sha256

    def _delete_on_server(self, status_url: str) -> None:
        """`DELETE` the status URL: the server may free the files. Best effort: a server
        that does not support it (or already dropped the job) does not fail the run."""
        try:
            response = self.client.request("DELETE", status_url, raise_for_status=False,
                                           headers={"Accept": FHIR_JSON})
        except ServerError as exc:
            log.warning("could not delete the export job on the server: %s", exc)
            return
        if response.status_code in (200, 202, 204):
            log.info("deleted the export job on the server (%d)", response.status_code)
        elif response.status_code in (404, 410):
            # HAPI 8.8 answers 404 for a completed job ("already cancelled or has
            # completed. Nothing to do."): it keeps the files until its own expiry.
            log.info("export job not deletable on the server (%d: %s)", response.status_code,
                     error_detail(response) or "gone")
        else:
            log.warning("DELETE %s answered %d; the server keeps the export files",
                        redact_url(status_url), response.status_code)

    # ------------------------------------------------------------- result

    def _result(self, request: BulkRequest, resumed: bool, seconds: float) -> BulkResult:
        assert self.job is not None and self.job.manifest is not None
        problems: list[ReadProblem] = []
        messages: list[str] = []
        deleted: list[tuple[str, str]] = []
        for item in self.job.files:
            path = self.job_dir / item.name
            if item.kind == "error":
                p, m = read_error_file(path, item.name)
                problems += p
                messages += m
            elif item.kind == "deleted":
                deleted += read_deleted_file(path, item.name)
        for message in messages:
            log.warning("export: server message: %s", message)
        return BulkResult(self.job_dir, request, str(self.job.manifest["transactionTime"]),
                          bool(self.job.manifest.get("requiresAccessToken")), problems,
                          messages, deleted, resumed, list(self.job.files), self.job.polls,
                          seconds)

    # ------------------------------------------------------------- medications

    def fetch_medications(self, options: RestOptions | None = None,
                          query_log: QueryLog | None = None) -> int:
        """Patient and Group exports carry no Medication (not in the Patient compartment):
        fetch the ones the orders reference by `_id`, into `files/Medication.by-id.ndjson`
        so they are part of the raw layer. Done once per job (recorded in job.json)."""
        assert self.job is not None
        if self.job.medications_fetched:
            return 0
        files = self.job_dir / "files"
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
        self.job.medications_fetched = True
        self.save()
        return len(lines)


class _Expired(Exception):  # noqa: N818 - internal signal: the server forgot the job
    pass


# ------------------------------------------------------------------ helpers

def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "file"


def count_lines(path: Path) -> int:
    """Non-blank lines (resources) of an NDJSON file, gzip or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _is_transient(response: requests.Response) -> bool:
    try:
        body = orjson.loads(response.content or b"")
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" and any(
        isinstance(i, dict) and i.get("code") == "transient" for i in body.get("issue") or [])


def read_error_file(path: Path, name: str) -> tuple[list[ReadProblem], list[str]]:
    """An `error` file: error/fatal issues -> ReadProblems; warnings -> messages."""
    problems: list[ReadProblem] = []
    messages: list[str] = []
    for item in iter_ndjson_file(path, name):
        if isinstance(item, ReadProblem):
            problems.append(item)
            continue
        resource = item.resource
        if resource.get("resourceType") != "OperationOutcome":
            problems.append(ReadProblem(item.origin, "bulk-export-error",
                                        f"{item.origin}: error file holds a "
                                        f"{resource.get('resourceType')}, not an "
                                        "OperationOutcome"))
            continue
        for issue in resource.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            text = outcome_text({"resourceType": "OperationOutcome", "issue": [issue]})
            if issue.get("severity") in ("error", "fatal"):
                problems.append(ReadProblem(item.origin, "bulk-export-error",
                                            f"the server could not export: {text}"))
            else:
                messages.append(text)
    return problems, messages


def read_deleted_file(path: Path, name: str) -> list[Key]:
    """A `deleted` file (Bulk v2 with `_since`): Bundles of `DELETE Type/id` entries."""
    keys: list[Key] = []
    for item in iter_ndjson_file(path, name, unpack=False):
        if not isinstance(item, RawResource):
            log.warning("deleted file: %s", item.message)
            continue
        for entry in item.resource.get("entry") or []:
            request = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(request, dict) or request.get("method") != "DELETE":
                continue
            key = reference_key(str(request.get("url") or ""))
            if key is not None:
                keys.append(key)
    return keys
