"""The REST clients the benchmark compares, each fetching the same searches.

A workload is the list of searches fhir-spine's cohort pull made (`RestSource`'s query
log: candidates, patients, each patient type, medications), as (type, params) with the
page size as `_count`. Every client returns the set of (resourceType, id) it received;
the benchmark checks the sets have the same size before it shows any time.

- `bare_loop`: the floor. One `requests.Session`, `orjson`, follow `next`; nothing else.
- `fhir_spine`: the project's REST source as `extract --server` builds it (its own
  workload: it makes the searches itself), consumed to the end, no pathway.
- `fhir_pyrate`: FHIR-PYrate 0.2.6 `Pirate.steal_bundles`, one search at a time. It turns
  any search with `_id` into a read (`Patient/<value>`), so a batched `_id=a,b,c` cannot
  be sent; it reads those resources one id at a time, the way the library allows.
- `fhiry`: fhiry 5.2.2 `Fhirsearch.search` (a DataFrame per search, one new connection
  per request, as the library does).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
import requests

Workload = list[tuple[str, list[tuple[str, str]]]]
Ids = set[tuple[str, str]]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The peers' progress bars and summaries, kept off the benchmark's table (still
    formatted, so their cost is still counted)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FHIR-PYrate's "no sorting defined, adding _sort"
        yield


def workload_from(query_log: Sequence[Any], page_size: int) -> Workload:
    """(type, params + `_count`) of each search a `RestSource` made, in order."""
    return [(r.resource_type, [*r.params, ("_count", str(page_size))]) for r in query_log
            if r.window is None]


def _entry_ids(bundle: dict[str, Any], ids: Ids) -> None:
    for entry in bundle.get("entry") or ():
        res = entry.get("resource") or {}
        if res.get("resourceType") and res.get("id"):
            ids.add((res["resourceType"], res["id"]))


def bare_loop(base: str, work: Workload) -> Ids:
    ids: Ids = set()
    with requests.Session() as session:
        session.headers["Accept"] = "application/fhir+json"
        for rtype, params in work:
            url: str | None = f"{base}/{rtype}?{urlencode(params)}"
            while url:
                response = session.get(url, timeout=600)
                response.raise_for_status()
                bundle = orjson.loads(response.content)
                _entry_ids(bundle, ids)
                url = next((link["url"] for link in bundle.get("link") or ()
                            if link.get("relation") == "next"), None)
    return ids


@functools.cache
def default_mappings() -> Any:
    """Loaded once: `extract` reads its mappings before the pull, which is what is timed."""
    from fhir_spine.settings import load_mappings

    return load_mappings(None)


def fhir_spine(base: str, work: Workload) -> Ids:
    """`extract --server`'s source (default options) run to the end; `work` unused: the
    source makes its own searches, which is what the workload was recorded from."""
    from fhir_spine.sources.files import RawResource

    source = fhir_spine_source(base, default_mappings())
    ids: Ids = set()
    for item in source.items():
        if isinstance(item, RawResource):
            res = item.resource
            ids.add((str(res.get("resourceType")), str(res.get("id"))))
    return ids


def fhir_spine_source(base: str, mappings: Any) -> Any:
    """A `RestSource` built as `cli/server_options.server_source` builds it by default."""
    from fhir_spine.sources.http import FhirClient, HttpSettings
    from fhir_spine.sources.rest import RestSource
    from fhir_spine.sources.search import RestOptions

    options = RestOptions()
    client = FhirClient(base, settings=HttpSettings(pool_size=max(10, options.workers * 2)))
    return RestSource(client, mappings, options=options)


def fhir_pyrate(base: str, work: Workload) -> Ids:
    from fhir_pyrate import Pirate

    ids: Ids = set()
    pirate = Pirate(base_url=base, auth=None, num_processes=1)
    with _quiet():
        for rtype, params in work:
            query = dict(params)
            if "_id" in query:
                searches = [{"_id": i} for i in query.pop("_id").split(",")]
            else:
                searches = [query]
            for search in searches:
                for bundle in pirate.steal_bundles(rtype, request_params=search):
                    for entry in bundle.entry or ():
                        res = entry.resource
                        if res is not None and res.id:
                            ids.add((res.resourceType, res.id))
    pirate.close()
    return ids


def fhiry(base: str, work: Workload) -> Ids:
    from fhiry.fhirsearch import Fhirsearch

    ids: Ids = set()
    client = Fhirsearch(fhir_base_url=base)
    for rtype, params in work:
        query = dict(params)
        client.page_size = int(query["_count"])
        with _quiet():
            df = client.search(resource_type=rtype, search_parameters=query)
        if df.empty:
            continue
        id_col = "id" if "id" in df.columns else "resource.id"
        type_col = "resourceType" if "resourceType" in df.columns else "resource.resourceType"
        types = df[type_col] if type_col in df.columns else [rtype] * len(df)
        ids.update(zip(map(str, types), map(str, df[id_col]), strict=True))
    return ids


CLIENTS: dict[str, Callable[[str, Workload], Ids]] = {
    "bare loop (floor)": bare_loop,
    "fhir-spine": fhir_spine,
    "FHIR-PYrate 0.2.6": fhir_pyrate,
    "fhiry 5.2.2": fhiry,
}


def check_counts(counts: dict[str, int | None]) -> str | None:
    """None when every client that ran got the same distinct count, else the reason.

    `None` counts are clients that could not run (they are reported on their own).
    """
    ran = {name: n for name, n in counts.items() if n is not None}
    if len(set(ran.values())) <= 1:
        return None
    shown = ", ".join(f"{name} {n}" for name, n in ran.items())
    return f"clients fetched different numbers of distinct resources: {shown}"
