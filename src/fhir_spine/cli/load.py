"""`fhir-spine load --server URL [DIR]`: seed a (test) FHIR server with a cohort folder.

Integration engineers need a server holding known data to try `extract --server`
against; this puts the demo cohort (or any folder the file source reads) there in one
command. Resources go up as transaction Bundles of `PUT Type/id`, so loading twice
leaves the server as loading once. Servers that enforce referential integrity (HAPI)
reject a reference to something not yet stored, so resources are ordered so that what
is referenced is sent first (in an earlier bundle or the same one). The same servers
reject absolute references to another base ("external references"); an absolute
reference to a resource of the folder itself is the data's own server spelled out, so it
is loaded as the relative `Type/id` it means, unless `--keep-references`.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.cli.server_options import add_http_options
from fhir_spine.errors import ExitCode, ServerError, UsageError
from fhir_spine.progress import counter
from fhir_spine.redact import redact_url
from fhir_spine.settings import DEMO_COHORT
from fhir_spine.sources.files import RawResource, check_folder, iter_folder

if TYPE_CHECKING:
    from fhir_spine.sources.http import FhirClient

log = logging.getLogger(__name__)

# Tie-break order among resources with no reference between them: the usual direction
# of references in clinical data, so bundles rarely need a forward reference.
TYPE_RANK = {t: i for i, t in enumerate((
    "Organization", "Location", "Practitioner", "PractitionerRole", "Patient", "Group",
    "Medication", "Encounter", "Condition", "Procedure", "Specimen", "Observation",
    "DiagnosticReport", "MedicationRequest", "MedicationAdministration",
    "MedicationStatement",
))}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "load", help="upload a cohort folder to a FHIR server as transaction bundles",
        description="Upload every resource of a folder (default: the bundled demo cohort) "
        "to a FHIR server as transaction Bundles of PUT Type/id: idempotent, so it can be "
        "run again. For seeding test servers.",
    )
    p.add_argument("folder", nargs="?", type=Path,
                   help="folder of FHIR NDJSON / JSON files (default: the demo cohort)")
    p.add_argument("--server", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    p.add_argument("--batch-size", type=int, default=500,
                   help="entries per transaction bundle (default 500)")
    p.add_argument("--allow-remote", action="store_true",
                   help="load into a server that is not on this machine (default: only "
                   "127.0.0.1 / localhost; load overwrites resources with the same ids)")
    p.add_argument("--keep-references", action="store_true",
                   help="send absolute references to resources of the folder as they are "
                   "(default: as relative Type/id, which servers without external "
                   "references accept)")
    add_http_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    check_loopback(args.server, args.allow_remote)
    folder = check_folder(args.folder if args.folder is not None else DEMO_COHORT)
    resources, skipped = read_resources(folder)
    if not args.keep_references:
        rewritten = relativise_references(resources)
        if rewritten:
            log.info("%d absolute references to resources of %s sent as relative Type/id",
                     rewritten, folder)
    from fhir_spine.cli.server_options import client_from_args

    client = client_from_args(args)
    started = time.monotonic()
    try:
        existing = count_existing(client, resources)
        # logged (a warning when there is something to overwrite), before any write
        log.log(logging.WARNING if existing else logging.INFO,
                "%s already holds %d of the %d resources (same type and id); loading "
                "overwrites them", redact_url(client.base_url), existing, len(resources))
        with counter("resources loaded", quiet=getattr(args, "quiet", False)) as tick:
            statuses, bundles = load(client, resources, args.batch_size, progress=tick)
    finally:
        client.close()
    by_type = Counter(str(r["resourceType"]) for r in resources)
    seconds = time.monotonic() - started
    from fhir_spine.summary import note

    note(read=len(resources) + skipped, loaded=len(resources), overwritten=existing,
         set_aside=skipped, statuses=dict(sorted(statuses.items())), bundles=bundles)
    print(f"loaded {len(resources)} resources from {folder} into "
          f"{redact_url(client.base_url)} in {bundles} transaction bundle"
          f"{'s' if bundles != 1 else ''} ({seconds:.1f} s): "
          + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    print("  " + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())))
    if skipped:
        print(f"skipped {skipped} item(s) that could not be loaded (see the log)")
        return int(ExitCode.DATA_ISSUES)
    return int(ExitCode.OK)


def check_loopback(server: str, allow_remote: bool, why: str = "") -> None:
    """`load` writes (and overwrites) resources: only into a server on this machine,
    which is what a test server is, unless `--allow-remote`. `why` words the refusal
    for another command that writes to a server (`validate`)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(server.strip()).hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        reason = why or ("`load` overwrites resources and is meant for test servers")
        raise UsageError(f"--server {redact_url(server)} is not on this machine; {reason}: "
                         "pass --allow-remote if this is one")


def count_existing(client: FhirClient, resources: list[dict[str, Any]],
                   batch: int = 100) -> int:
    """How many of these Type/ids the server holds already (what loading overwrites)."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for r in resources:
        by_type[str(r["resourceType"])].append(str(r["id"]))
    found = 0
    for rtype, ids in sorted(by_type.items()):
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            bundle = client.fetch_json(rtype, params=[
                ("_id", ",".join(chunk)), ("_elements", "id"), ("_count", str(len(chunk)))])
            found += sum(1 for e in bundle.get("entry") or []
                         if (e.get("search") or {}).get("mode", "match") == "match"
                         and (e.get("resource") or {}).get("id") in chunk)
    return found


def read_resources(folder: Path) -> tuple[list[dict[str, Any]], int]:
    """Resources of the folder, one per Type/id (the newest `meta.lastUpdated` wins)."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    skipped = 0
    for item in iter_folder(folder):
        if not isinstance(item, RawResource):
            log.warning("not loaded: %s", item.message)
            skipped += 1
            continue
        resource = item.resource
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            log.warning("not loaded: %s at %s has no id, so it cannot be PUT idempotently",
                        resource.get("resourceType"), item.origin)
            skipped += 1
            continue
        key = (str(resource["resourceType"]), rid)
        previous = by_key.get(key)
        if previous is not None:
            log.warning("%s/%s appears twice; loading the newer copy", *key)
            if _last_updated(previous) > _last_updated(resource):
                continue
        by_key[key] = resource
    return list(by_key.values()), skipped


def _last_updated(resource: dict[str, Any]) -> str:
    return str((resource.get("meta") or {}).get("lastUpdated") or "")


_ABSOLUTE = re.compile(r"^https?://[^?#]+?/([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[^/]+)?$")


def relativise_references(resources: list[dict[str, Any]]) -> int:
    """Rewrite, in place, absolute references whose `Type/id` is one of `resources`."""
    known = {f"{r['resourceType']}/{r['id']}" for r in resources}
    count = 0

    def walk(value: Any) -> Any:
        nonlocal count
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "reference" and isinstance(item, str):
                    m = _ABSOLUTE.match(item)
                    if m and f"{m.group(1)}/{m.group(2)}" in known:
                        value[key] = f"{m.group(1)}/{m.group(2)}{m.group(3) or ''}"
                        count += 1
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        return value

    for resource in resources:
        walk(resource)
    return count


def references(value: Any) -> Iterator[str]:
    """Every `reference` string inside a resource."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def _key_of(reference: str) -> str:
    """`Type/id` of a relative, versioned or absolute reference."""
    m = _ABSOLUTE.match(reference)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    return reference.split("/_history/", 1)[0]


def dependency_order(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Referenced resources before the resources that reference them (Kahn's algorithm,
    ties by type rank then input order). A reference cycle, which a transaction resolves
    anyway, is broken in input order."""
    keys = [f"{r['resourceType']}/{r['id']}" for r in resources]
    index = {k: i for i, k in enumerate(keys)}
    needs: list[set[int]] = []
    users: dict[int, list[int]] = defaultdict(list)
    for i, resource in enumerate(resources):
        deps = {index[k] for k in map(_key_of, references(resource))
                if k in index and index[k] != i}
        needs.append(deps)
        for d in deps:
            users[d].append(i)

    def rank(i: int) -> tuple[int, int]:
        return TYPE_RANK.get(str(resources[i]["resourceType"]), len(TYPE_RANK)), i

    ready = [rank(i) for i in range(len(resources)) if not needs[i]]
    heapq.heapify(ready)
    order: list[int] = []
    placed = [False] * len(resources)
    while len(order) < len(resources):
        if not ready:  # a cycle: take the first unplaced resource
            i = next(j for j in range(len(resources)) if not placed[j])
            log.info("reference cycle through %s; relying on transaction semantics", keys[i])
            needs[i].clear()
            heapq.heappush(ready, rank(i))
        _, i = heapq.heappop(ready)
        if placed[i]:
            continue
        placed[i] = True
        order.append(i)
        for u in users[i]:
            needs[u].discard(i)
            if not needs[u] and not placed[u]:
                heapq.heappush(ready, rank(u))
    return [resources[i] for i in order]


def transaction_bundle(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{
            "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        } for r in resources],
    }


def load(client: FhirClient, resources: list[dict[str, Any]], batch_size: int,
         progress: Any = None) -> tuple[Counter[str], int]:
    """PUT everything in dependency order; counts of entry response statuses, bundles."""
    ordered = dependency_order(resources)
    statuses: Counter[str] = Counter()
    bundles = 0
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        reply = client.transaction(transaction_bundle(chunk, client.base_url))
        bundles += 1
        if reply.get("resourceType") != "Bundle":
            raise ServerError(f"transaction {bundles}: the server answered with a "
                              f"{reply.get('resourceType')!r}, not a Bundle")
        entries = reply.get("entry") or []
        if len(entries) != len(chunk):
            log.warning("transaction %d: sent %d entries, the reply has %d", bundles,
                        len(chunk), len(entries))
        for entry in entries:
            status = str(((entry or {}).get("response") or {}).get("status") or "?")
            code = status.split(" ", 1)[0]
            statuses[{"201": "created", "200": "updated or unchanged"}.get(code, status)] += 1
        log.info("transaction %d: %d resources (%d of %d)", bundles, len(chunk),
                 start + len(chunk), len(ordered))
        if progress is not None:
            progress(len(chunk))
    return statuses, bundles
