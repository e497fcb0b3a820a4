"""Pull a cohort from a FHIR server by REST search and yield it like the file source does.

A hospital server holds far more than the cohort, so the pull is two-step: find the
candidate patients server-side from the index-procedure codes of the mappings
(`Procedure?code=...`), then fetch only those patients' resources of the types the views
use, a batch of patients per search (`patient=a,b,c`). Medications referenced by orders
come last, by id. Every search is recorded (without secrets) for the manifest, so a
dataset says exactly which queries made it; paging, loop guards and cap windows are
`search.py`'s.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_spine.errors import ConfigError, UsageError
from fhir_spine.fhir import (
    BY_ID_TYPES,
    medication_id,
    optional_types_not_offered,
    patient_types,
    reference_id,
)
from fhir_spine.redact import redact_url
from fhir_spine.settings import Mappings
from fhir_spine.sources.capabilities import Capabilities, read_capabilities
from fhir_spine.sources.files import RawResource, SourceItem
from fhir_spine.sources.http import FhirClient
from fhir_spine.sources.search import QueryLog, RestOptions, Searcher

log = logging.getLogger(__name__)

INDEX_CONCEPT = "vertebral-biopsy"
# Keep each search URL well under the 8 KB that common proxies accept.
MAX_CODES_PER_SEARCH = 20


@dataclass(frozen=True)
class _Task:
    resource_type: str
    params: tuple[tuple[str, str], ...]
    purpose: str
    label: str



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
        self.types = patient_types(mappings)
        self._seen: set[tuple[str, str]] = set()
        self.duplicates = 0
        self.resources = 0
        self.query: dict[str, Any] = {
            "kind": "rest-search",
            "cohort": ("patient-list" if self.patients is not None
                       else f"index procedure codes ({INDEX_CONCEPT})"),
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
            caps = read_capabilities(self.client)
            self.info["fhir_version"] = caps.fhir_version
            self._skip_types_not_offered(caps)
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
                if isinstance(item, RawResource) and (mid := medication_id(item.resource)):
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

    def _skip_types_not_offered(self, caps: Capabilities) -> None:
        dropped = optional_types_not_offered(caps, self.types)
        if dropped:
            log.warning("the server does not offer %s (not in its CapabilityStatement with a "
                        "patient search): not pulled", ", ".join(dropped))
            self.types = tuple(t for t in self.types if t not in dropped)
            self.query["resource_types"] = list(BY_ID_TYPES[:1] + self.types + BY_ID_TYPES[1:])
            self.query["types_not_offered"] = list(dropped)

    def _candidates(self) -> list[str]:
        tokens = index_code_tokens(self.mappings)
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
                        "extraction, and `fhir-spine check`)?", INDEX_CONCEPT)
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
