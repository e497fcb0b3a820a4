"""Files a Bulk Data client leaves beside the NDJSON: provenance, not FHIR data.

A folder copied from a Bulk Data export often holds more than resources:

- the SMART bulk-data-client's `log.ndjson` (rotated copies gzip), one JSON object per
  line `{exportId, timestamp, eventId, eventDetail}` with events `kickoff`,
  `status_progress`, `status_complete` / `manifest_complete` (carrying the export's
  `transactionTime`), `status_error`, `download_request`, `download_complete`,
  `download_error`, `export_complete`;
- the export manifest the client saved (`manifest.json`: `transactionTime`, `request`,
  `output`, `error`), as the Bulk Data IG returns it from the status endpoint.

Neither is a resource, so neither is an error nor a resource read. Both are recognised
by their shape, not their name (clients let the user pick the file name), and what they
say about the export (above all its `transactionTime`: the data is complete up to that
instant) goes into the run's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_spine.redact import redact_url

# Events the bulk-data-client writes when something went wrong.
ERROR_EVENTS = frozenset({"status_error", "download_error"})


def is_log_event(value: Any) -> bool:
    """A line of a Bulk Data client log (never a FHIR resource: it has no resourceType)."""
    return (isinstance(value, dict) and "resourceType" not in value
            and isinstance(value.get("eventId"), str) and "exportId" in value)


def is_export_manifest(value: Any) -> bool:
    """A saved Bulk Data export manifest (the status endpoint's completion body)."""
    return (isinstance(value, dict) and "resourceType" not in value
            and isinstance(value.get("transactionTime"), str)
            and isinstance(value.get("output"), list))


@dataclass
class ExportArtefact:
    """One recognised artefact file and what it tells about the export."""

    kind: str                     # "client-log" or "export-manifest"
    file: str
    transaction_times: list[str] = field(default_factory=list)
    export_ids: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)   # kick-off URLs, redacted
    events: int = 0
    complete: bool = False        # export_complete seen / a manifest is a finished export
    errors: list[str] = field(default_factory=list)

    def add_event(self, event: dict[str, Any]) -> None:
        """Take in one log line."""
        self.events += 1
        event_id = str(event.get("eventId"))
        detail = event.get("eventDetail")
        detail = detail if isinstance(detail, dict) else {}
        _add_unique(self.export_ids, event.get("exportId"))
        _add_unique(self.transaction_times, detail.get("transactionTime"))
        if event_id == "kickoff":
            url = detail.get("exportUrl")
            if isinstance(url, str):
                _add_unique(self.requests, redact_url(url))
            if detail.get("errorCode"):
                self.errors.append(f"kickoff failed with HTTP {detail.get('errorCode')}")
        elif event_id == "export_complete":
            self.complete = True
        elif event_id in ERROR_EVENTS:
            where = detail.get("fileUrl")
            code = detail.get("code")
            self.errors.append(event_id + (f" HTTP {code}" if code else "")
                               + (f" for {redact_url(where)}" if isinstance(where, str)
                                  else ""))

    @classmethod
    def from_manifest(cls, file: str, manifest: dict[str, Any]) -> ExportArtefact:
        art = cls("export-manifest", file, complete=True)
        _add_unique(art.transaction_times, manifest.get("transactionTime"))
        request = manifest.get("request")
        if isinstance(request, str):
            art.requests.append(redact_url(request))
        for item in manifest.get("error") or []:
            if isinstance(item, dict) and isinstance(item.get("url"), str):
                art.errors.append(f"error file {redact_url(item['url'])}")
        return art

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file,
                "transaction_times": self.transaction_times, "export_ids": self.export_ids,
                "requests": self.requests, "events": self.events, "complete": self.complete,
                "errors": self.errors[:20], "error_count": len(self.errors)}


def transaction_time(artefacts: list[ExportArtefact]) -> str | None:
    """The instant the folder's data is complete up to: the earliest `transactionTime`
    any artefact names (with several exports in one folder, the oldest one bounds it)."""
    times = {t for a in artefacts for t in a.transaction_times}
    return min(times, key=_instant_key) if times else None


def _instant_key(text: str) -> tuple[int, float | str]:
    """Order instants by the moment they name (offsets differ), unparseable ones last."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return (1, text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (0, when.timestamp())


def _add_unique(values: list[str], value: Any) -> None:
    if isinstance(value, str) and value and value not in values:
        values.append(value)
