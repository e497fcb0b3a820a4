"""The server's side of an export (Bulk Data IG v2 async pattern): kick-off, polling the
status URL until the manifest comes, reading the manifest, and `DELETE`ing the job.

- kick-off `GET [base]/$export` | `Patient/$export` | `Group/ID/$export` with
  `Accept: application/fhir+json`, `Prefer: respond-async`, `_type`, `_since`,
  `_typeFilter`; expects 202 and `Content-Location`.
- polls the status URL, waiting what `Retry-After` says (exponential backoff when it
  says nothing), logging `X-Progress` when it changes; a 5xx whose OperationOutcome is
  `transient` is polled again, any other error fails the export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import requests

from fhir_spine.errors import AuthError, ServerError
from fhir_spine.redact import redact_url, scrub
from fhir_spine.sources.http import (
    FHIR_JSON,
    FhirClient,
    checked_link,
    checked_name,
    error_detail,
    one_line,
    parse_retry_after,
)

from .job import FileState
from .request import BulkRequest

log = logging.getLogger(__name__)

# Longest gap between two status polls when the server gives no Retry-After.
MAX_POLL_BACKOFF_S = 60.0


class Expired(Exception):  # noqa: N818 - a signal: the server forgot the job
    """The status URL or a file answers 404/410: start the export again."""


class ExportFailed(ServerError):
    """The server says the export failed: the job cannot be resumed."""


class PollTimeout(Exception):  # noqa: N818 - a signal: the caller says what to do
    """Not finished within the export timeout; the job can be resumed later."""


def kick_off(client: FhirClient, request: BulkRequest) -> tuple[str, str]:
    """Start the export; the kick-off URL and the (absolute) status URL."""
    url = client.url(request.path, request.params())
    shown = f"GET {redact_url(url)}"
    log.info("kick-off: %s", request.describe())
    response = client.request("GET", url, headers={
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
    return url, checked_link(_resolved(client, location), url, shown,
                             "Content-Location status URL")


def poll(client: FhirClient, status_url: str, *, timeout: float,
         sleep: Callable[[float], None], clock: Callable[[], float],
         on_poll: Callable[[], None]) -> dict[str, Any]:
    """Poll until the manifest comes (returned); `on_poll` is called after each answer.

    Raises `Expired` (404/410), `AuthError`, `ExportFailed` (any other error that is not
    transient) or `PollTimeout` (the next wait would pass `timeout` seconds)."""
    shown = f"GET {redact_url(status_url)}"
    deadline = clock() + timeout
    backoff = 1.0
    last_progress: str | None = None
    while True:
        response = client.request("GET", status_url, headers={
            "Accept": "application/json"}, raise_for_status=False)
        on_poll()
        status = response.status_code
        if status == 200:
            return client.json_of(response, shown)
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
            raise Expired(f"{shown}: {status}: the server no longer knows this export")
        elif status in (401, 403):
            raise AuthError(scrub(f"{shown}: {status} {error_detail(response)}".strip()))
        else:
            detail = error_detail(response)
            raise ExportFailed(scrub(f"{shown}: the export failed: {status}"
                                     + (f": {detail}" if detail else "")), status=status)
        if wait is None:
            wait = backoff
            backoff = min(backoff * 2, MAX_POLL_BACKOFF_S)
        if clock() + wait > deadline:
            raise PollTimeout()
        sleep(wait)


def manifest_files(client: FhirClient, manifest: dict[str, Any], shown: str
                   ) -> list[FileState]:
    """The files a complete-export manifest lists (`output`, `error`, `deleted`)."""
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
            if not isinstance(entry, dict) or "url" not in entry:
                raise ServerError(f"{shown}: manifest `{kind}` entry without a url")
            count = entry.get("count")
            files.append(FileState(kind, checked_name(entry.get("type"), shown,
                                                      f"manifest `{kind}` type"),
                                   checked_link(_resolved(client, entry["url"]),
                                                client.base_url + "/", shown,
                                                f"manifest `{kind}` url"),
                                   count if isinstance(count, int) else None))
    log.info("export complete (transactionTime %s): %d output, %d error, %d deleted "
             "file(s)", manifest.get("transactionTime"),
             sum(f.kind == "output" for f in files), sum(f.kind == "error" for f in files),
             sum(f.kind == "deleted" for f in files))
    return files


def delete_job(client: FhirClient, status_url: str) -> None:
    """`DELETE` the status URL: the server may free the files. Best effort: a server
    that does not support it (or already dropped the job) does not fail the run."""
    try:
        response = client.request("DELETE", status_url, raise_for_status=False,
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


def _is_transient(response: requests.Response) -> bool:
    try:
        body = orjson.loads(response.content or b"")
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" and any(
        isinstance(i, dict) and i.get("code") == "transient" for i in body.get("issue") or [])


def _resolved(client: FhirClient, link: object) -> object:
    """A server's link as `client.url` reads it (a relative one against the base URL);
    anything that is not a clean string is left for `checked_link` to refuse."""
    if isinstance(link, str) and link.strip() and not any(c.isspace() for c in link):
        try:
            return client.url(link)
        except ValueError:
            return link
    return link
