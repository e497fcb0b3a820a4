"""The job folder of an export: `job.json` (everything needed to resume after the process
died) and the finished result the caller reads.

    <job>/job.json   request, status URL, the server's manifest, every file's state
    <job>/files.log  one line per file downloaded since job.json was last written
                     (append-only: saving after each file costs O(1), not O(files))
    <job>/files/     the output NDJSON (.ndjson or .ndjson.gz): the raw layer of the run
    <job>/errors/    the `error` files (OperationOutcome NDJSON)
    <job>/deleted/   the `deleted` files (Bundles of DELETE entries, with `_since`)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fhir_spine.redact import redact_url
from fhir_spine.sources.files import ReadProblem, SourceItem, iter_folder

from .request import BulkRequest

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
FILES_LOG = "files.log"
JOB_FORMAT = 1
# Where each kind of manifest file is downloaded to, under the job folder.
FOLDERS = {"output": "files", "error": "errors", "deleted": "deleted"}


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


def load_job(job_dir: Path) -> JobState | None:
    """The saved job, or None when there is none or it is unreadable; the files
    downloaded since it was written (`files.log`) are applied to it."""
    path = job_dir / JOB_FILE
    if not path.is_file():
        return None
    try:
        job = JobState.from_json(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        log.warning("bulk job file %s is unreadable (%s); starting a new export", path, exc)
        return None
    _replay_files_log(job_dir, job)
    return job


def save_job(job_dir: Path, job: JobState) -> None:
    """The whole state (at a phase change): job.json, then the files log emptied (its
    lines are in job.json now; a line left by a kill in between is applied again, to the
    same values, and only to the job with the same status URL)."""
    write_atomic(job_dir / JOB_FILE, job.to_json())
    with contextlib.suppress(FileNotFoundError):
        (job_dir / FILES_LOG).unlink()


def record_file(job_dir: Path, job: JobState, index: int) -> None:
    """One finished download, appended to `files.log` and synced: O(1) per file."""
    line = orjson.dumps({"status_url": job.status_url, "index": index,
                         **asdict(job.files[index])}) + b"\n"
    fd = os.open(job_dir / FILES_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _replay_files_log(job_dir: Path, job: JobState) -> None:
    try:
        data = (job_dir / FILES_LOG).read_bytes()
    except OSError:
        return
    for raw in data.splitlines():
        try:
            entry = orjson.loads(raw)
            index = entry.pop("index")
            if entry.pop("status_url") != job.status_url \
                    or not 0 <= index < len(job.files):
                continue
            done = FileState(**entry)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a line cut short by a kill: that file is downloaded again
        if (done.kind, done.url) == (job.files[index].kind, job.files[index].url):
            job.files[index] = done


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
        return self.job_dir / FOLDERS["output"]

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
