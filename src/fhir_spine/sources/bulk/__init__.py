"""FHIR Bulk Data Access (IG v2) `$export` client: kick-off, poll, download, verify, clean up.

A REST search pull costs one request per page per patient batch per type; a server's
`$export` hands over whole NDJSON files instead, and `_since` makes a nightly refresh
cost only what changed. The export is asynchronous and can take hours on a hospital
server, so everything the client learns is written to a job folder as it goes (`job.py`).
A run that is killed while the server exports, or half-way through the downloads,
starts again from `job.json`: it polls the saved status URL and downloads only the
files not yet complete, instead of kicking off a new export. `files/` is read with the
ordinary file source (`sources.files.iter_folder`), so an export goes through exactly
the same reading, validation and accounting as a folder of NDJSON.

    request.py       what to export: level, types, `_since`, `_typeFilter`
    status.py        the server's side: kick-off, status polling, manifest, DELETE
    exporter.py      one export to completion: resume, downloads, result, Medications
    job.py           the job folder: job.json, the finished result
    server_files.py  line counts, `error` and `deleted` files
"""

from .exporter import BulkExporter
from .job import BulkResult, FileState, JobState, write_atomic
from .request import BulkRequest, parse_level
from .server_files import count_lines

__all__ = ["BulkExporter", "BulkRequest", "BulkResult", "FileState", "JobState",
           "count_lines", "parse_level", "write_atomic"]
