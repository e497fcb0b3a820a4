"""What a refresh asks the server, apart from the export itself: changes since the
watermark by REST search, deletions from `_history`, id reconciliation, and group
membership. (What the server offers is `sources/capabilities.py`'s.)

Every function here only reads from the server and returns what it found; merging into
the raw store is refresh/run.py's job, so the order of effects stays in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

from fhir_spine.errors import ServerError
from fhir_spine.fhir import Key, instant, parse_instant, reference_id, reference_key
from fhir_spine.redact import redact_url
from fhir_spine.sources.files import RawResource, SourceItem
from fhir_spine.sources.http import FhirClient
from fhir_spine.sources.search import QueryLog, RestOptions, Searcher, pack_ids

log = logging.getLogger(__name__)

MAX_HISTORY_PAGES = 10_000


@dataclass
class SearchPull:
    """REST searches for changes; counts for the manifest."""

    client: FhirClient
    options: RestOptions
    query_log: QueryLog = field(default_factory=QueryLog)

    def __post_init__(self) -> None:
        self.searcher = Searcher(self.client, self.options, self.query_log)

    def search(self, resource_type: str, params: list[tuple[str, str]], purpose: str
               ) -> Iterator[SourceItem]:
        return self.searcher.search(resource_type, params, purpose)

    def changed_for_patients(self, patients: Sequence[str], types: Sequence[str],
                             since: datetime) -> Iterator[SourceItem]:
        """`Patient?_id=...` and `<Type>?patient=...` with `_lastUpdated=gt<since>`."""
        gt = ("_lastUpdated", "gt" + instant(since))
        for batch in pack_ids(sorted(patients)):
            yield from self.search("Patient", [("_id", ",".join(batch)), gt], "changes")
            for rtype in types:
                yield from self.search(rtype, [("patient", ",".join(batch)), gt], "changes")

    def changed_by_id(self, resource_type: str, ids: Sequence[str], since: datetime
                      ) -> Iterator[SourceItem]:
        gt = ("_lastUpdated", "gt" + instant(since))
        for batch in pack_ids(sorted(ids)):
            yield from self.search(resource_type, [("_id", ",".join(batch)), gt], "changes")

    def by_id(self, resource_type: str, ids: Sequence[str], purpose: str
              ) -> Iterator[SourceItem]:
        for batch in pack_ids(sorted(ids)):
            yield from self.search(resource_type, [("_id", ",".join(batch))], purpose)

    def new_candidates(self, tokens: Sequence[str], since: datetime) -> set[str]:
        """Patients with an index procedure created or changed since `since`."""
        found: set[str] = set()
        gt = ("_lastUpdated", "gt" + instant(since))
        for chunk in pack_ids(list(tokens), 1500):
            for item in self.search("Procedure", [("code", ",".join(chunk)), gt,
                                                  ("_elements", "subject")], "candidates"):
                if isinstance(item, RawResource):
                    pid = reference_id((item.resource.get("subject") or {}).get("reference"),
                                       "Patient")
                    if pid:
                        found.add(pid)
        return found

    def existing_ids(self, resource_type: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the server still has (`_id=...&_elements=id`)."""
        found: set[str] = set()
        for batch in pack_ids(sorted(ids)):
            for item in self.search(resource_type, [("_id", ",".join(batch)),
                                                    ("_elements", "id")], "reconcile"):
                if isinstance(item, RawResource):
                    found.add(str(item.resource.get("id") or ""))
        return found

    def group_members(self, group_id: str) -> list[str]:
        group = self.client.fetch_json(f"Group/{group_id}")
        if group.get("resourceType") != "Group":
            raise ServerError(f"GET Group/{group_id}: not a Group")
        members: set[str] = set()
        for member in group.get("member") or []:
            if not isinstance(member, dict) or member.get("inactive") is True:
                continue
            pid = reference_id((member.get("entity") or {}).get("reference"), "Patient")
            if pid:
                members.add(pid)
        return sorted(members)


@dataclass
class HistoryEntry:
    method: str                       # DELETE, PUT, POST, PATCH
    resource: dict[str, Any] | None
    origin: str


def history_since(client: FhirClient, since: datetime, types: Sequence[str],
                  system: bool, page_size: int) -> tuple[dict[Key, HistoryEntry], int]:
    """The newest history entry per resource changed since `since`; pages read.

    `[base]/_history` when the server offers it, else `[Type]/_history` per type. The
    history Bundle lists newest first, so the first entry seen for a key is its current
    state: a DELETE there means the resource is gone now. Entries older than `since` are
    ignored even if the server returns them (sekmet's next links drop `_since`), and
    paging stops at a page holding only such entries.
    """
    latest: dict[Key, HistoryEntry] = {}
    pages = 0
    paths = ["_history"] if system else [f"{t}/_history" for t in types]
    wanted = set(types)
    for path in paths:
        url: str | None = client.url(path, [("_since", instant(since)),
                                            ("_count", str(page_size))])
        visited: set[str] = set()
        while url is not None and pages < MAX_HISTORY_PAGES:
            visited.add(url)
            bundle = client.fetch_json(url)
            pages += 1
            shown = redact_url(url)
            if bundle.get("resourceType") != "Bundle":
                raise ServerError(f"GET {shown}: expected a history Bundle, got "
                                  f"{bundle.get('resourceType')!r}")
            entries = bundle.get("entry") or []
            fresh = 0
            for index, entry in enumerate(entries):
                if not isinstance(entry, dict):
                    continue
                when = _entry_time(entry)
                if when is not None and when < since:
                    continue
                fresh += 1
                key = _history_key(entry)
                if key is None or key[0] not in wanted:
                    continue
                if key in latest:
                    continue
                request = entry.get("request") or {}
                method = str(request.get("method") or ("PUT" if entry.get("resource") else
                                                        "DELETE")).upper()
                resource = entry.get("resource") if isinstance(entry.get("resource"),
                                                               dict) else None
                latest[key] = HistoryEntry(method, resource, f"{shown}#entry[{index}]")
            if entries and not fresh:
                break
            url = _next(bundle, url)
            if url is not None and url in visited:
                raise ServerError(f"GET {shown}: history paging loop")
    return latest, pages


def _history_key(entry: dict[str, Any]) -> Key | None:
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") and resource.get("id"):
        return str(resource["resourceType"]), str(resource["id"])
    for candidate in ((entry.get("request") or {}).get("url"), entry.get("fullUrl")):
        key = reference_key(candidate)
        if key is not None:
            return key
    return None


def _entry_time(entry: dict[str, Any]) -> datetime | None:
    stamp = (entry.get("response") or {}).get("lastModified")
    if not stamp and isinstance(entry.get("resource"), dict):
        stamp = (entry["resource"].get("meta") or {}).get("lastUpdated")
    if not isinstance(stamp, str):
        return None
    try:
        return parse_instant(stamp)
    except ValueError:
        return None


def _next(bundle: dict[str, Any], current: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return urljoin(current, str(link["url"]))
    return None


def matches_index(resource: dict[str, Any], tokens: Sequence[str]) -> bool:
    """Does a Procedure carry one of the index codes, as the server's `code=` search
    matches them (`system|code` exactly, or `system|` for every code of a system)?"""
    wanted = set(tokens)
    for coding in ((resource.get("code") or {}).get("coding") or []):
        if not isinstance(coding, dict):
            continue
        system, code = str(coding.get("system") or ""), str(coding.get("code") or "")
        if f"{system}|{code}" in wanted or f"{system}|" in wanted:
            return True
    return False
