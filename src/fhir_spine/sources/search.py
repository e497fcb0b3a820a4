"""Searching a FHIR server: one search run to completion, page by page, recorded for the
manifest.

Paging follows `Bundle.link[next]` exactly as the server gives it (HAPI's `_getpages`,
others' `_offset`), guarding against loops and repeated pages. A server that stops
paging after a cap (and says so through `Bundle.total`, or reaches the configured cap)
gets the search again in `_lastUpdated` windows, halved until each is complete; the
query log says that it happened. Every search is recorded (without secrets).

Used by the REST cohort pull (`rest.py`), the Bulk export's Medication fetch and the
refresh's change searches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_spine.errors import IncompletePull, ServerError
from fhir_spine.fhir import EPOCH, instant, parse_instant
from fhir_spine.redact import redact_params, redact_url
from fhir_spine.sources.files import (
    RawResource,
    ReadProblem,
    SourceItem,
    too_deep,
    too_deep_problem,
)
from fhir_spine.sources.http import FhirClient, checked_link, outcome_text

log = logging.getLogger(__name__)

MAX_EMPTY_PAGES = 3
# Ids per `_id=` search, packed by length to keep URLs well under the 8 KB that common
# proxies accept.
MAX_ID_CHARS = 4000


@dataclass(frozen=True)
class RestOptions:
    """How a server is searched: page size, patients per search, searches at once."""

    page_size: int = 200
    batch_size: int = 50
    workers: int = 2
    # A server may stop giving `next` links after this many results without saying so
    # through `total`; reaching it triggers `_lastUpdated` windows. None: trust paging.
    cap: int | None = 10_000
    min_window_s: int = 1
    # Pages one search may take (`--max-pages`); it also stops when its matches pass
    # the `total` the server announced by more than a page (or 10 %).
    max_pages: int = 10_000


@dataclass
class SearchRecord:
    """One search as the manifest shows it."""

    resource_type: str
    params: list[tuple[str, str]]
    purpose: str
    url: str = ""
    pages: int = 0
    matches: int = 0
    includes: int = 0
    problems: int = 0
    total: int | None = None
    window: tuple[str, str] | None = None
    split: bool = False
    outcomes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resource_type": self.resource_type, "params": redact_params(self.params),
            "purpose": self.purpose, "url": self.url, "pages": self.pages,
            "matches": self.matches, "includes": self.includes,
        }
        if self.total is not None:
            out["total"] = self.total
        if self.problems:
            out["problems"] = self.problems
        if self.window is not None:
            out["window"] = {"_lastUpdated_ge": self.window[0], "_lastUpdated_lt": self.window[1]}
        if self.split:
            out["split_into_windows"] = True
        if self.outcomes:
            out["server_messages"] = self.outcomes
        return out


class QueryLog:
    """Every search made, in the order made; safe to append to from worker threads."""

    def __init__(self) -> None:
        self._records: list[SearchRecord] = []
        self._lock = threading.Lock()

    def add(self, record: SearchRecord) -> SearchRecord:
        with self._lock:
            self._records.append(record)
        return record

    @property
    def records(self) -> list[SearchRecord]:
        with self._lock:
            return list(self._records)

    def as_list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records]

class Searcher:
    """Runs one search to completion, page by page, with loop and cap protection."""

    def __init__(self, client: FhirClient, options: RestOptions, query_log: QueryLog,
                 stop: threading.Event | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client
        self.options = options
        self.log = query_log
        self.stop = stop or threading.Event()
        self._now = now
        self._warned_origin = False

    def search(self, resource_type: str, params: Sequence[tuple[str, str]], purpose: str,
               window: tuple[datetime, datetime] | None = None) -> Iterator[SourceItem]:
        """Every match (and `_include`d resource) of `resource_type?params`."""
        query = list(params) + [("_count", str(self.options.page_size))]
        if window is not None:
            query += [("_lastUpdated", "ge" + _whole(window[0])),
                      ("_lastUpdated", "lt" + _whole(window[1]))]
        record = self.log.add(SearchRecord(
            resource_type, list(params), purpose,
            window=(_whole(window[0]), _whole(window[1])) if window else None))
        first_url = self.client.url(resource_type, query)
        record.url = redact_url(first_url)
        url: str | None = first_url
        visited: set[str] = set()
        pages_seen: dict[tuple[str, ...], str] = {}
        empty_run = 0
        while url is not None:
            if self.stop.is_set():
                return
            visited.add(url)
            bundle = self.client.fetch_json(url)
            shown = redact_url(url)
            self._check_bundle(bundle, shown)
            record.pages += 1
            if record.total is None and isinstance(bundle.get("total"), int):
                record.total = bundle["total"]
            items, ids = self._entries(bundle, shown, resource_type, record)
            self._check_bounds(record, shown)
            if ids:
                key = tuple(ids)
                if key in pages_seen:
                    raise ServerError(f"GET {shown}: the server returned the same page as "
                                      f"{pages_seen[key]} again; its paging is broken")
                pages_seen[key] = shown
                empty_run = 0
            yield from items
            url = self._next_url(bundle, url, shown)
            if url is not None and record.pages >= self.options.max_pages:
                raise ServerError(f"GET {shown}: {record.pages} pages in one search and "
                                  f"still a next link (--max-pages {self.options.max_pages}); "
                                  "stopping")
            if url is not None:
                if url in visited:
                    raise ServerError(f"GET {shown}: paging loop: the next link "
                                      f"{redact_url(url)} was already followed")
                if not ids:
                    empty_run += 1
                    if empty_run >= MAX_EMPTY_PAGES:
                        raise ServerError(f"GET {shown}: {empty_run} empty pages in a row that "
                                          "still have a next link; stopping")
        if self._truncated(record):
            record.split = True
            yield from self._split(resource_type, params, purpose, record, window)

    # ------------------------------------------------------------------ paging

    @staticmethod
    def _check_bundle(bundle: dict[str, Any], shown: str) -> None:
        rtype = bundle.get("resourceType")
        if rtype == "OperationOutcome":
            raise ServerError(f"GET {shown}: {outcome_text(bundle) or 'OperationOutcome'}")
        if rtype != "Bundle":
            raise ServerError(f"GET {shown}: expected a search Bundle, got {rtype!r}")
        if bundle.get("type") not in (None, "searchset"):
            log.warning("GET %s: Bundle.type is %r, not searchset", shown, bundle.get("type"))
        if not isinstance(bundle.get("entry", []), list):
            raise ServerError(f"GET {shown}: Bundle.entry is not a list")

    def _check_bounds(self, record: SearchRecord, shown: str) -> None:
        """A server whose `next` links never end cannot keep us paging: more matches
        than its own `total` (plus a page or 10 % of slack), or `--max-pages`, stop."""
        if record.total is not None:
            margin = max(self.options.page_size, record.total // 10)
            if record.matches > record.total + margin:
                raise ServerError(f"GET {shown}: {record.matches} matches after "
                                  f"{record.pages} pages, but the server announced total "
                                  f"{record.total}; its paging does not end, stopping")

    def _next_url(self, bundle: dict[str, Any], current: str, shown: str) -> str | None:
        links = bundle.get("link") or []
        if not isinstance(links, list):
            raise ServerError(f"GET {shown}: Bundle.link is not a list")
        nexts = [link for link in links if isinstance(link, dict)
                 and link.get("relation") == "next"]
        if not nexts:
            return None
        absolute = checked_link(nexts[0].get("url"), current, f"GET {shown}", "next link")
        if not self.client.same_origin(absolute) and not self._warned_origin:
            self._warned_origin = True
            log.warning("the server's next links point to %s, not to %s: check the server's "
                        "configured base address", redact_url(absolute).split("?")[0],
                        redact_url(self.client.base_url))
        return absolute

    def _entries(self, bundle: dict[str, Any], shown: str, resource_type: str,
                 record: SearchRecord) -> tuple[list[SourceItem], list[str]]:
        items: list[SourceItem] = []
        ids: list[str] = []
        for index, entry in enumerate(bundle.get("entry") or []):
            where = f"{shown}#entry[{index}]"
            resource = entry.get("resource") if isinstance(entry, dict) else None
            mode = ((entry.get("search") or {}).get("mode") if isinstance(entry, dict)
                    else None) or "match"
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"),
                                                                str):
                record.problems += 1
                items.append(ReadProblem(where, "not-a-resource",
                                         f"{where}: search entry without a resource"))
                continue
            rtype, rid = resource["resourceType"], str(resource.get("id") or "")
            if mode == "outcome" or rtype == "OperationOutcome":
                text = outcome_text(resource)
                record.outcomes.append(text)
                log.warning("GET %s: server message: %s", shown, text)
                continue
            if mode == "include":
                record.includes += 1
            else:
                record.matches += 1
                ids.append(f"{rtype}/{rid}")
                if rtype != resource_type:
                    # A match of another type does not answer the query: the real results
                    # are missing, so stop rather than publish a dataset without them.
                    raise ServerError(f"GET {shown}: searched {resource_type}, the server "
                                      f"returned a {rtype} as a match; its answer cannot "
                                      "be trusted")
            items.append(too_deep_problem(resource, where) if too_deep(resource)
                         else RawResource(resource, where))
        return items, ids

    # ---------------------------------------------------------- cap windows

    def _truncated(self, record: SearchRecord) -> bool:
        if record.total is not None:
            return record.matches < record.total
        return self.options.cap is not None and record.matches >= self.options.cap

    def _split(self, resource_type: str, params: Sequence[tuple[str, str]], purpose: str,
               record: SearchRecord,
               window: tuple[datetime, datetime] | None) -> Iterator[SourceItem]:
        low, high = window if window is not None else self._range(resource_type, params)
        span = (high - low).total_seconds()
        what = f"{resource_type}?{'&'.join(f'{k}={v}' for k, v in redact_params(params))}"
        if span <= self.options.min_window_s:
            raise IncompletePull(
                f"{what}: the server gives only {record.matches} of "
                f"{record.total if record.total is not None else 'more'} results even for "
                f"_lastUpdated {_whole(low)} .. {_whole(high)}; "
                "lower --batch-size or raise the server's paging limit")
        middle = low + timedelta(seconds=int(span // 2))
        log.warning("%s: the server stopped after %d of %s results; searching again in "
                    "_lastUpdated windows %s .. %s .. %s", what, record.matches,
                    record.total if record.total is not None else "(cap reached)",
                    _whole(low), _whole(middle), _whole(high))
        yield from self.search(resource_type, params, purpose, (low, middle))
        yield from self.search(resource_type, params, purpose, (middle, high))

    def _range(self, resource_type: str, params: Sequence[tuple[str, str]]
               ) -> tuple[datetime, datetime]:
        """From the oldest `_lastUpdated` (asked with `_sort`, else 1970) to just after now."""
        high = self._now().replace(microsecond=0) + timedelta(seconds=1)
        low = EPOCH
        try:
            bundle = self.client.fetch_json(resource_type, params=list(params) + [
                ("_sort", "_lastUpdated"), ("_count", "1"), ("_elements", "id,meta")])
            entries = bundle.get("entry") or []
            stamp = ((entries[0].get("resource") or {}).get("meta") or {}).get("lastUpdated") \
                if entries else None
            if isinstance(stamp, str):
                low = max(EPOCH, parse_instant(stamp).astimezone(UTC).replace(microsecond=0))
        except (ServerError, ValueError, AttributeError, TypeError) as exc:
            log.info("could not ask for the oldest %s (%s); windows start at 1970",
                     resource_type, exc)
        return low, max(high, low + timedelta(seconds=1))


def _whole(moment: datetime) -> str:
    """A `_lastUpdated` bound: an instant in whole seconds."""
    return instant(moment, millis=False)


def pack_ids(ids: Sequence[str], limit: int = MAX_ID_CHARS) -> list[list[str]]:
    """Ids in batches whose comma-joined length stays under `limit` characters."""
    batches: list[list[str]] = []
    current: list[str] = []
    length = 0
    for value in ids:
        if current and length + len(value) + 1 > limit:
            batches.append(current)
            current, length = [], 0
        current.append(value)
        length += len(value) + 1
    if current:
        batches.append(current)
    return batches
