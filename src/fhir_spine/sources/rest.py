"""Pull a cohort from a FHIR server by REST search and yield it like the file source does.

A hospital server holds far more than the cohort, so the pull is two-step: find the
candidate patients server-side from the index-procedure codes of the mappings
(`Procedure?code=...`), then fetch only those patients' resources of the types the views
use, a batch of patients per search (`patient=a,b,c`). Medications referenced by orders
come last, by id. Every search is recorded (without secrets) for the manifest, so a
dataset says exactly which queries made it.

Paging follows `Bundle.link[next]` exactly as the server gives it (HAPI's `_getpages`,
others' `_offset`), guarding against loops and repeated pages. A server that stops
paging after a cap (and says so through `Bundle.total`, or reaches the configured cap)
gets the search again in `_lastUpdated` windows, halved until each is complete; the
query log says that it happened.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from fhir_spine.errors import ConfigError, IncompletePull, ServerError, UsageError
from fhir_spine.redact import redact_params, redact_url
from fhir_spine.settings import Mappings
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem
from fhir_spine.sources.http import FhirClient, client_from_args, outcome_text

log = logging.getLogger(__name__)

INDEX_CONCEPT = "vertebral-biopsy"
# Types fetched by id rather than by patient: the patient itself and the medications
# that orders point to.
BY_ID_TYPES = ("Patient", "Medication")
MEDICATION_USERS = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")
# Types read when the server offers them; a server without them still has what the pathway
# needs (MedicationStatement: mCODE STU1 therapy records, besides orders and administrations).
OPTIONAL_TYPES = ("MedicationStatement",)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INSTANT = "%Y-%m-%dT%H:%M:%SZ"
MAX_EMPTY_PAGES = 3
# Keep each search URL well under the 8 KB that common proxies accept.
MAX_CODES_PER_SEARCH = 20


@dataclass(frozen=True)
class RestOptions:
    page_size: int = 200
    batch_size: int = 50
    workers: int = 2
    # A server may stop giving `next` links after this many results without saying so
    # through `total`; reaching it triggers `_lastUpdated` windows. None: trust paging.
    cap: int | None = 10_000
    min_window_s: int = 1
    index_concept: str = INDEX_CONCEPT


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


@dataclass(frozen=True)
class _Task:
    resource_type: str
    params: tuple[tuple[str, str], ...]
    purpose: str
    label: str


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
            query += [("_lastUpdated", "ge" + window[0].strftime(INSTANT)),
                      ("_lastUpdated", "lt" + window[1].strftime(INSTANT))]
        record = self.log.add(SearchRecord(
            resource_type, list(params), purpose,
            window=(window[0].strftime(INSTANT), window[1].strftime(INSTANT)) if window else None))
        url: str | None = self.client.url(resource_type, query)
        record.url = redact_url(url)
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
            if ids:
                key = tuple(ids)
                if key in pages_seen:
                    raise ServerError(f"GET {shown}: the server returned the same page as "
                                      f"{pages_seen[key]} again; its paging is broken")
                pages_seen[key] = shown
                empty_run = 0
            yield from items
            url = self._next_url(bundle, url, shown)
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

    def _next_url(self, bundle: dict[str, Any], current: str, shown: str) -> str | None:
        links = bundle.get("link") or []
        if not isinstance(links, list):
            raise ServerError(f"GET {shown}: Bundle.link is not a list")
        nexts = [link for link in links if isinstance(link, dict)
                 and link.get("relation") == "next"]
        if not nexts:
            return None
        target = nexts[0].get("url")
        if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
            raise ServerError(f"GET {shown}: broken next link {target!r}")
        absolute = urljoin(current, target)  # an absolute link is kept exactly as given
        if not absolute.startswith(("http://", "https://")):
            raise ServerError(f"GET {shown}: next link {redact_url(target)!r} is not an "
                              "http(s) URL")
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
            items.append(RawResource(resource, where))
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
                f"_lastUpdated {low.strftime(INSTANT)} .. {high.strftime(INSTANT)}; "
                "lower --batch-size or raise the server's paging limit")
        middle = low + timedelta(seconds=int(span // 2))
        log.warning("%s: the server stopped after %d of %s results; searching again in "
                    "_lastUpdated windows %s .. %s .. %s", what, record.matches,
                    record.total if record.total is not None else "(cap reached)",
                    low.strftime(INSTANT), middle.strftime(INSTANT), high.strftime(INSTANT))
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
                parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                low = max(EPOCH, parsed.astimezone(UTC).replace(microsecond=0))
        except (ServerError, ValueError, AttributeError, TypeError) as exc:
            log.info("could not ask for the oldest %s (%s); windows start at 1970",
                     resource_type, exc)
        return low, max(high, low + timedelta(seconds=1))


# ---------------------------------------------------------------- cohort pull

def index_code_tokens(mappings: Mappings, concept: str = INDEX_CONCEPT) -> list[str]:
    """`system|code` search tokens for every code of the index concept.

    Codes that count only with a qualifier (`requires: vertebral-body-site`) are searched
    too: the server cannot check the qualifier, the pathway does. Prefix and range
    entries become `system|`, all codes of the system, for the same reason.
    """
    element = mappings.concepts.element_of.get(concept)
    if element is None:
        raise ConfigError(f"concepts: the index concept {concept!r} is not defined")
    tokens: list[str] = []
    for entry in mappings.concepts.entries.get(element, []):
        if entry.concept != concept:
            continue
        token = f"{entry.system}|{entry.code}" if entry.code is not None else f"{entry.system}|"
        if entry.code is None:
            log.info("index concept %s has a prefix/range entry for %s: searching every "
                     "code of that system", concept, entry.system)
        if token not in tokens:
            tokens.append(token)
    if not tokens:
        raise ConfigError(f"concepts: the index concept {concept!r} has no codes")
    return tokens


def read_patient_list(path: Path) -> list[str]:
    """Patient ids, one a line (`123` or `Patient/123`); `#` starts a comment."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"--patients {path}: cannot read it ({exc.strerror})") from None
    ids: list[str] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        pid = text.removeprefix("Patient/")
        if "/" in pid or "," in pid or " " in pid:
            raise UsageError(f"--patients {path}:{number}: {text!r} is not a patient id")
        if pid not in ids:
            ids.append(pid)
    if not ids:
        raise UsageError(f"--patients {path}: no patient ids in it")
    return ids


def reference_id(reference: Any, resource_type: str) -> str | None:
    """The logical id in a `Type/id` or absolute reference to `resource_type`."""
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")):
        return None
    parts = reference.split("?")[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


class RestSource:
    """The cohort pull: candidates -> per-patient searches -> medications.

    `items()` streams source items; `info` (source, FHIR version, query log, request
    counts) is filled while they are consumed and is complete when the stream ends.
    Each resource is yielded once even when two searches return it.
    """

    def __init__(self, client: FhirClient, mappings: Mappings, *,
                 options: RestOptions | None = None, patients: Sequence[str] | None = None,
                 patients_file: Path | None = None) -> None:
        self.client = client
        self.mappings = mappings
        self.options = options or RestOptions()
        self.patients = list(patients) if patients is not None else None
        self.query_log = QueryLog()
        self._stop = threading.Event()
        self.searcher = Searcher(client, self.options, self.query_log, self._stop)
        self.types = tuple(t for t in sorted(mappings.views) if t not in BY_ID_TYPES)
        self._seen: set[tuple[str, str]] = set()
        self._declared: set[str] = set()
        self.duplicates = 0
        self.resources = 0
        self.query: dict[str, Any] = {
            "kind": "rest-search",
            "cohort": ("patient-list" if self.patients is not None
                       else f"index procedure codes ({self.options.index_concept})"),
            "resource_types": list(BY_ID_TYPES[:1] + self.types + BY_ID_TYPES[1:]),
            "page_size": self.options.page_size, "batch_size": self.options.batch_size,
            "workers": self.options.workers, "cap": self.options.cap,
            "complete": False,
        }
        if patients_file is not None:
            self.query["patients_file"] = str(patients_file)
        self.info: dict[str, Any] = {
            "source": {"kind": "server", "location": redact_url(client.base_url),
                       "auth": client.auth.kind},
            "fhir_version": "",
            "query": self.query,
        }

    def items(self) -> Iterator[SourceItem]:
        try:
            self.info["fhir_version"] = self._fhir_version()
            self.types = tuple(t for t in self.types
                               if t not in OPTIONAL_TYPES or t in self._declared)
            ids = self.patients if self.patients is not None else self._candidates()
            self.query["patients"] = len(ids)
            log.info("cohort: %d patients; fetching %s in batches of %d with %d workers",
                     len(ids), ", ".join(("Patient",) + self.types), self.options.batch_size,
                     self.options.workers)
            tasks = [_Task("Patient", (("_id", ",".join(b)),), "patients", _span(b, ids))
                     for b in _batches(ids, self.options.batch_size)]
            tasks += [_Task(t, (("patient", ",".join(b)),), "patient-resources",
                            _span(b, ids))
                      for t in self.types for b in _batches(ids, self.options.batch_size)]
            medications: set[str] = set()
            for item in self._fetch(tasks):
                if isinstance(item, RawResource) and \
                        item.resource.get("resourceType") in MEDICATION_USERS:
                    mid = reference_id((item.resource.get("medicationReference") or {})
                                       .get("reference"), "Medication")
                    if mid:
                        medications.add(mid)
                yield item
            wanted = sorted(m for m in medications if ("Medication", m) not in self._seen)
            med_tasks = [_Task("Medication", (("_id", ",".join(b)),), "medications",
                               _span(b, wanted))
                         for b in _batches(wanted, self.options.batch_size)]
            yield from self._fetch(med_tasks)
            self._note_missing("Patient", ids)
            self._note_missing("Medication", wanted)
            self.query["complete"] = True
        finally:
            self._stop.set()
            self._finish()

    # ------------------------------------------------------------- phases

    def _fhir_version(self) -> str:
        metadata = self.client.fetch_json("metadata")
        version = str(metadata.get("fhirVersion") or "")
        if metadata.get("resourceType") != "CapabilityStatement":
            raise ServerError(f"GET {redact_url(self.client.url('metadata'))}: not a "
                              "CapabilityStatement; is this a FHIR base URL?")
        if version and not version.startswith("4.0"):
            raise ServerError(f"{redact_url(self.client.base_url)} speaks FHIR {version}; "
                              "fhir-spine reads R4 (4.0.x)")
        self._declared = {str(r.get("type")) for rest in metadata.get("rest") or []
                          if isinstance(rest, dict) for r in rest.get("resource") or []
                          if isinstance(r, dict)}
        return version

    def _candidates(self) -> list[str]:
        tokens = index_code_tokens(self.mappings, self.options.index_concept)
        self.query["index_codes"] = tokens
        found: set[str] = set()
        for chunk in _batches(tokens, MAX_CODES_PER_SEARCH):
            params = [("code", ",".join(chunk)), ("_elements", "subject")]
            for item in self.searcher.search("Procedure", params, "candidates"):
                if isinstance(item, RawResource):
                    pid = reference_id((item.resource.get("subject") or {}).get("reference"),
                                       "Patient")
                    if pid:
                        found.add(pid)
        if found:
            log.info("cohort: %d candidate patients with an index procedure code", len(found))
        else:
            log.warning("cohort: no Procedure on the server has an index procedure code (%s); "
                        "are the site's codes in the mappings (see the codes table of a file "
                        "extraction, and `fhir-spine check`)?", self.options.index_concept)
        return sorted(found)

    def _fetch(self, tasks: Sequence[_Task]) -> Iterator[SourceItem]:
        """Run searches on a small pool; yield results in task order, each resource once.

        At most 2 x workers results wait in memory; a failure stops the other workers
        at their next page."""
        done_by_type: dict[str, int] = {}
        remaining = {t.resource_type: 0 for t in tasks}
        for t in tasks:
            remaining[t.resource_type] += 1
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.workers),
                                  thread_name_prefix="fhir-spine-search")
        pending: deque[tuple[_Task, Future[list[SourceItem]]]] = deque()
        try:
            queue = iter(tasks)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < 2 * max(1, self.options.workers):
                    task = next(queue, None)
                    if task is None:
                        exhausted = True
                        break
                    pending.append((task, pool.submit(self._run, task)))
                if not pending:
                    break
                task, future = pending.popleft()
                items = future.result()
                for item in items:
                    if isinstance(item, RawResource):
                        key = (str(item.resource.get("resourceType")),
                               str(item.resource.get("id") or ""))
                        if key[1] and key in self._seen:
                            self.duplicates += 1
                            continue
                        self._seen.add(key)
                        self.resources += 1
                    yield item
                rtype = task.resource_type
                done_by_type[rtype] = done_by_type.get(rtype, 0) + len(items)
                remaining[rtype] -= 1
                if remaining[rtype] == 0:
                    log.info("%s: %d resources", rtype, done_by_type[rtype])
        finally:
            if pending:  # stopped early (an error, or the consumer closed the stream)
                self._stop.set()
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, task: _Task) -> list[SourceItem]:
        items = list(self.searcher.search(task.resource_type, task.params, task.purpose))
        log.debug("%s for %s: %d items", task.resource_type, task.label, len(items))
        return items

    def _note_missing(self, resource_type: str, wanted: Iterable[str]) -> None:
        missing = sorted(i for i in wanted if (resource_type, i) not in self._seen)
        if missing:
            log.warning("%d %s resource(s) referenced but not returned by the server: %s",
                        len(missing), resource_type, ", ".join(missing[:10]))
            self.query.setdefault("not_found", {})[resource_type] = missing

    def _finish(self) -> None:
        records = self.query_log.records
        self.query["searches"] = [r.as_dict() for r in records]
        self.query["windowed"] = any(r.split for r in records)
        self.query["resources"] = self.resources
        self.query["includes"] = sum(r.includes for r in records)
        self.query["duplicates_skipped"] = self.duplicates
        self.query["requests"] = self.client.stats.as_dict()


def _batches(values: Sequence[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [list(values[i:i + size]) for i in range(0, len(values), size)]


def _span(batch: Sequence[str], ids: Sequence[str]) -> str:
    return f"{len(batch)} of {len(ids)} ids starting {batch[0]}" if batch else "none"


# ------------------------------------------------------------------- command line

def server_source(args: argparse.Namespace, mappings: Mappings | None = None
                  ) -> tuple[Iterator[SourceItem], dict[str, Any]]:
    """Items from `--server` and the manifest's `source` / `fhir_version` / `query` info.

    The info dict is filled while the items are consumed: read it after the stream ends.
    """
    for name in ("workers", "batch_size", "page_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if mappings is None:
        from fhir_spine.settings import load_mappings

        mappings = load_mappings(getattr(args, "mappings", None))
    patients = read_patient_list(args.patients) if args.patients is not None else None
    options = RestOptions(page_size=args.page_size, batch_size=args.batch_size,
                          workers=args.workers, cap=args.search_cap or None)
    client = client_from_args(args, workers=args.workers)
    source = RestSource(client, mappings, options=options, patients=patients,
                        patients_file=args.patients)

    def items() -> Iterator[SourceItem]:
        try:
            yield from source.items()
        finally:
            client.close()

    return items(), source.info
