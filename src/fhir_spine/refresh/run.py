"""The refresh algorithm: pull what changed, merge it, recompute the touched patients,
publish atomically, then commit.

    lock (refresh/lock.py)                       -> exit 7 if another run holds it
    read state.json; open the raw store; BEGIN   (one SQLite transaction for the run)
    pull
      first run / --full: the whole scope (REST cohort pull, or $export without _since)
      else, since = watermark - overlap:
        REST  : <Type>?patient=<cohort>&_lastUpdated=gt<since>, Patient?_id=..., changed
                Medications by id, new candidates (index-procedure codes changed since),
                whose whole record is then pulled
        bulk  : $export with _since=<since> (resumable job folder), `deleted` files,
                Group membership changes, Medications by id (patient/group level)
      deletions: `_history?_since` where the server offers it; --full-reconcile checks
                 every stored id with `_id=...&_elements=id`
    merge by id and version into the store; note each change's patient (unit)
    scope: REST drops patients without an index procedure any more, group drops
           non-members; Medications no order references are dropped
    recompute the touched units (refresh/units.py); the others' rows are carried over
    assemble the dataset from every unit's rows; publish (outputs.publish: built beside
    the target, swapped in with one rename; the previous dataset stays until then)
    COMMIT the store; write state.json (watermark); mark the export job consumed

Killed (kill -9) anywhere before the publish swap: the old dataset is untouched and the
store's transaction rolls back. Killed after the swap but before COMMIT: the dataset is
new, the store and state old; the next run pulls the same changes again and publishes
the same result. Killed after COMMIT but before state.json: the next run re-reads
changes the store already has, which merge as "unchanged". So every run either leaves
the previous complete state or a new complete one, and the next run finishes the job.

`FHIR_SPINE_PAUSE_AT=<checkpoint>[,...]` (with `FHIR_SPINE_PAUSE_SECONDS`, default 30)
makes a run stop for a while at a named checkpoint and say so on stderr: the kill tests
use it to SIGKILL a refresh at exact points. Checkpoints: locked, exported, pulled,
computed, built (dataset written beside the target, not swapped in), published,
committed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fhir_spine.dataset import PART_FORMAT, Dataset, Part, issue_counts, manifest
from fhir_spine.errors import ServerError
from fhir_spine.fhir import (
    BY_ID_TYPES,
    export_types,
    instant,
    optional_types_not_offered,
    parse_instant,
)
from fhir_spine.outputs import publish, write_dataset
from fhir_spine.settings import Mappings
from fhir_spine.sources.bulk import BulkExporter, BulkRequest, BulkResult
from fhir_spine.sources.capabilities import Capabilities, read_capabilities
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem
from fhir_spine.sources.http import FhirClient
from fhir_spine.sources.rest import RestSource, index_code_tokens
from fhir_spine.sources.search import RestOptions
from fhir_spine.tables import Tables
from fhir_spine.validate import Mode

from .lock import RefreshLock
from .pull import SearchPull, history_since, matches_index
from .state import RefreshState, StateError, fingerprint, load_state, save_state
from .store import MEDS, RUN, STORE_FILE, UNLINKED, Change, RawStore
from .units import UnitResolver, assemble, compute_run_unit, compute_units

log = logging.getLogger(__name__)

PAUSE_ENV = "FHIR_SPINE_PAUSE_AT"
PAUSE_SECONDS_ENV = "FHIR_SPINE_PAUSE_SECONDS"


def checkpoint(name: str) -> None:
    """A named point of the run (see the module docstring); a test may pause here."""
    log.debug("checkpoint %s", name, extra={"fields": {"event": "refresh.checkpoint",
                                                        "checkpoint": name}})
    wanted = {p.strip() for p in os.environ.get(PAUSE_ENV, "").split(",") if p.strip()}
    if name in wanted:
        seconds = float(os.environ.get(PAUSE_SECONDS_ENV, "30"))
        print(f"fhir-spine: paused at checkpoint {name} (pid {os.getpid()})", file=sys.stderr,
              flush=True)
        time.sleep(seconds)


def event(message: str, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """A log line that is also one JSON event (`--log-format json`) for schedulers."""
    log.log(level, message, extra={"fields": {"event": name, **fields}})


@dataclass
class RefreshOptions:
    out: Path
    state_dir: Path
    bulk_level: str | None = None        # None: REST search
    group_id: str | None = None
    type_filters: tuple[str, ...] = ()
    patients: tuple[str, ...] | None = None
    patients_file: str | None = None
    overlap_s: float = 60.0
    history: bool = True
    full_reconcile: bool = False
    full: bool = False
    validation: Mode = "warn"
    csv: bool = True
    export_timeout: float = 6 * 3600.0
    bulk_dir: Path | None = None
    rest: RestOptions = field(default_factory=RestOptions)


@dataclass
class RefreshReport:
    """What one run did: for stdout, the manifest and the JSON log."""

    full: bool
    watermark_before: str | None
    watermark_after: str = ""
    watermark_source: str = ""
    fetched: int = 0
    fetched_by_type: Counter[str] = field(default_factory=Counter)
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    older_than_since: int = 0
    reconciled_ids: int = 0
    history_pages: int = 0
    history: str = "not used"
    patients_touched: int = 0
    units_recomputed: int = 0
    units_carried_over: int = 0
    cohort_added: list[str] = field(default_factory=list)
    cohort_removed: list[str] = field(default_factory=list)
    problems: int = 0
    requests: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    recompute_seconds: float = 0.0
    export: dict[str, Any] | None = None
    searches: list[dict[str, Any]] = field(default_factory=list)
    stale_lock: dict[str, Any] | None = None
    tables: Tables | None = None
    exit_issues: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "full": self.full, "watermark_before": self.watermark_before,
            "watermark_after": self.watermark_after,
            "watermark_source": self.watermark_source,
            "resources_fetched": self.fetched,
            "resources_fetched_by_type": dict(sorted(self.fetched_by_type.items())),
            "added": self.added, "updated": self.updated, "deleted": self.deleted,
            "unchanged": self.unchanged, "reconciled_ids": self.reconciled_ids,
            **({"export_ignored_since": self.older_than_since}
               if self.older_than_since else {}),
            "deletions_from": self.history, "history_pages": self.history_pages,
            "patients_touched": self.patients_touched,
            "units_recomputed": self.units_recomputed,
            "units_carried_over": self.units_carried_over,
            "cohort_added": len(self.cohort_added), "cohort_removed": len(self.cohort_removed),
            "read_problems": self.problems, "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "recompute_seconds": round(self.recompute_seconds, 3),
            **({"export": self.export} if self.export else {}),
            **({"previous_run_killed": self.stale_lock} if self.stale_lock else {}),
        }


class Refresh:
    """One refresh run of one dataset. `run()` does everything under the lock."""

    def __init__(self, client: FhirClient, mappings: Mappings, options: RefreshOptions,
                 *, sleep: Any = time.sleep) -> None:
        self.client = client
        self.mappings = mappings
        self.options = options
        self.resolver = UnitResolver(mappings)
        self.types = tuple(t for t in sorted(mappings.views) if t not in BY_ID_TYPES)
        self.puller = SearchPull(client, options.rest)
        self.problems: list[ReadProblem] = []
        self.touched: set[str] = set()
        self.changed_meds: set[str] = set()
        self.newest_seen: datetime | None = None
        self.exporter: BulkExporter | None = None
        self._sleep = sleep
        self.store: RawStore | None = None
        self.report: RefreshReport | None = None

    # ------------------------------------------------------------------ scope

    def scope(self) -> dict[str, Any]:
        o = self.options
        if o.bulk_level is not None:
            return {"mode": "bulk", "level": o.bulk_level, "group_id": o.group_id,
                    "type_filters": list(o.type_filters)}
        if o.patients is not None:
            digest = hashlib.sha256("\n".join(sorted(o.patients)).encode()).hexdigest()
            return {"mode": "rest", "cohort": "patient-list", "patients_sha256": digest}
        return {"mode": "rest", "cohort": "index-procedure-codes",
                "index_codes": index_code_tokens(self.mappings)}

    # ------------------------------------------------------------------ run

    def run(self) -> RefreshReport:
        started = time.monotonic()
        o = self.options
        with RefreshLock(o.state_dir) as lock:
            checkpoint("locked")
            state = load_state(o.state_dir)
            scope = self.scope()
            if state is not None and not o.full:
                if state.server != self.client.base_url:
                    raise StateError(f"{o.state_dir} holds the state of {state.server}, not "
                                     f"{self.client.base_url}; use another --out, or --full "
                                     "to rebuild it from this server")
                if state.scope != scope:
                    raise StateError(f"{o.state_dir} was built with {state.scope}, this run "
                                     f"asks for {scope}; run once with --full to rebuild")
            full = o.full or state is None
            report = RefreshReport(full=full, watermark_before=None if full else
                                   state.watermark if state else None,
                                   stale_lock=lock.previous_owner)
            self.report = report
            event(f"refresh of {o.out} from {self.client.base_url}: "
                  f"{'full pull' if full else 'changes since ' + str(report.watermark_before)}",
                  "refresh.started", out=str(o.out), server=self.client.base_url,
                  full=full, watermark=report.watermark_before, scope=scope)
            store = RawStore(o.state_dir / STORE_FILE)
            self.store = store
            try:
                store.begin()
                caps = read_capabilities(self.client)
                skipped = optional_types_not_offered(caps, self.types)
                self.types = tuple(t for t in self.types if t not in skipped)
                if full:
                    store.clear()
                    watermark, source = self._pull_full(caps)
                else:
                    assert state is not None
                    since = parse_instant(state.watermark) - timedelta(seconds=o.overlap_s)
                    watermark, source = self._pull_changes(caps, since)
                self._apply_scope()
                report.watermark_after, report.watermark_source = watermark, source
                checkpoint("pulled")
                fp = fingerprint(self.mappings, o.validation)
                recompute_all = full or state is None or state.fingerprint != fp \
                    or store.get_meta("part_format") != PART_FORMAT
                dataset = self._recompute(recompute_all)  # exit 70 unless it balances
                meta = self._manifest(dataset, caps, scope, started)
                checkpoint("computed")

                def build(folder: Path) -> None:
                    write_dataset(dataset.tables, meta, folder, csv=o.csv)
                    checkpoint("built")

                _remove_leftovers(o.out)
                publish(o.out, build)
                checkpoint("published")
                run_number = (state.run if state is not None else 0) + 1
                store.set_meta("run", run_number)
                store.set_meta("watermark", watermark)
                store.set_meta("part_format", PART_FORMAT)
                store.commit()
                checkpoint("committed")
                report.seconds = time.monotonic() - started
                report.requests = self.client.stats.as_dict()
                save_state(o.state_dir, RefreshState(
                    server=self.client.base_url, scope=scope, watermark=watermark,
                    watermark_source=source, fingerprint=fp, run=run_number,
                    last_run={"finished": datetime.now(UTC).isoformat(timespec="seconds"),
                              **{k: v for k, v in report.as_dict().items()
                                 if k not in ("requests", "export")},
                              "requests": report.requests.get("requests")}))
                if self.exporter is not None:
                    self.exporter.mark_consumed()
            except BaseException:
                store.rollback()
                raise
            finally:
                store.close()
        report.tables = dataset.tables
        report.exit_issues = issue_counts(dataset.tables)
        return report

    # ------------------------------------------------------------------ pulls

    def _pull_full(self, caps: Capabilities) -> tuple[str, str]:
        o = self.options
        if o.bulk_level is None:
            source = RestSource(self.client, self.mappings, options=o.rest,
                                patients=list(o.patients) if o.patients is not None else None)
            self._ingest(source.items())
            self._report().searches = source.info["query"].get("searches", [])
            return self._rest_watermark(caps)
        if o.bulk_level == "group":
            assert o.group_id is not None
            self._set_members(self.puller.group_members(o.group_id))
        result = self._export(None)
        self._ingest(result.items())
        return _norm_instant(result.transaction_time), "transactionTime"

    def _pull_changes(self, caps: Capabilities, since: datetime) -> tuple[str, str]:
        o = self.options
        store = self._store()
        report = self._report()
        if o.bulk_level is None:
            cohort = list(o.patients) if o.patients is not None else store.patient_units()
            self._ingest(self.puller.changed_for_patients(cohort, self.types, since))
            meds = [k[1] for k in store.keys("Medication")]
            self._ingest(self.puller.changed_by_id("Medication", meds, since))
            if o.patients is None:
                tokens = index_code_tokens(self.mappings)
                new = sorted(self.puller.new_candidates(tokens, since) - set(cohort))
                if new:
                    report.cohort_added = new
                    log.info("%d new candidate patient(s) since the last run: pulling their "
                             "whole record", len(new))
                    self._ingest(RestSource(self.client, self.mappings, options=o.rest,
                                            patients=new).items())
            watermark = self._rest_watermark(caps)
        else:
            added: list[str] = []
            if o.bulk_level == "group":
                assert o.group_id is not None
                members = self.puller.group_members(o.group_id)
                before = set(store.get_meta("group_members", []))
                added = sorted(set(members) - before)
                self._set_members(members)
            result = self._export(since)
            self._ingest(self._older_than(result.items(), since))
            if report.older_than_since:
                log.warning("the %s level export returned %d resource(s) last updated "
                            "before _since=%s (HAPI 8.8.0 ignores _since at patient level); "
                            "they merge as unchanged, at the cost of the download",
                            o.bulk_level, report.older_than_since, instant(since))
            for key in result.deleted:
                self._delete(key)
            if result.deleted:
                report.history = "export deleted files"
            if o.bulk_level != "system":
                meds = [k[1] for k in store.keys("Medication")]
                self._ingest(self.puller.changed_by_id("Medication", meds, since))
            if added:
                report.cohort_added = added
                log.info("%d patient(s) joined Group/%s: pulling their whole record",
                         len(added), o.group_id)
                self._ingest(RestSource(self.client, self.mappings, options=o.rest,
                                        patients=added).items())
            watermark = (_norm_instant(result.transaction_time), "transactionTime")
        self._deletions(caps, since)
        return watermark

    def _export(self, since: datetime | None) -> BulkResult:
        o = self.options
        assert o.bulk_level is not None
        request = BulkRequest(o.bulk_level, o.group_id,
                              export_types(self.mappings, o.bulk_level),
                              since=instant(since) if since is not None else None,
                              type_filters=o.type_filters)
        self.exporter = BulkExporter(self.client, o.bulk_dir or o.state_dir / "bulk",
                                     timeout=o.export_timeout, sleep=self._sleep)
        result = self.exporter.run(request)
        if o.bulk_level != "system":
            self.exporter.fetch_medications(self.options.rest, self.puller.query_log)
        self._report().export = result.summary()
        checkpoint("exported")
        return result

    def _deletions(self, caps: Capabilities, since: datetime) -> None:
        """Deletions (and updates that moved a resource out of scope) since `since`."""
        o = self.options
        report = self._report()
        store = self._store()
        types = ("Patient",) + self.types + ("Medication",)
        if o.history and caps.offers_history(types):
            latest, pages = history_since(self.client, since, types, caps.history_system,
                                          o.rest.page_size)
            report.history_pages = pages
            report.history = ("_history" if report.history == "not used"
                              else report.history + " + _history")
            for key, entry in sorted(latest.items()):
                if not store.has(key):
                    continue
                if entry.method == "DELETE":
                    self._delete(key)
                elif entry.resource is not None:
                    self._ingest([RawResource(entry.resource, entry.origin)])
        elif o.history:
            log.warning("the server offers no _history for %s: deleted resources are only "
                        "noticed with --full-reconcile", ", ".join(types))
        if o.full_reconcile:
            self._reconcile()

    def _reconcile(self) -> None:
        store = self._store()
        report = self._report()
        gone = 0
        for rtype in sorted(store.counts_by_type()):
            ids = [k[1] for k in store.keys(rtype)]
            existing = self.puller.existing_ids(rtype, ids)
            report.reconciled_ids += len(ids)
            for rid in sorted(set(ids) - existing):
                self._delete((rtype, rid))
                gone += 1
        report.history = ("id reconciliation" if report.history == "not used"
                          else report.history + " + id reconciliation")
        log.info("id reconciliation: %d stored ids checked, %d no longer on the server",
                 report.reconciled_ids, gone)

    def _rest_watermark(self, caps: Capabilities) -> tuple[str, str]:
        """The server's clock when this run started (the `Date` of its first answer):
        anything changed later is asked for next time. Without a `Date` header, the
        newest `meta.lastUpdated` seen."""
        if caps.server_time is not None:
            return instant(caps.server_time), "server-date"
        if self.newest_seen is not None:
            return instant(self.newest_seen), "newest-lastUpdated"
        return instant(datetime.now(UTC)), "client-clock"

    def _set_members(self, members: list[str]) -> None:
        self._store().set_meta("group_members", members)

    # ------------------------------------------------------------------ merge

    def _ingest(self, items: Iterable[SourceItem]) -> None:
        store = self._store()
        report = self._report()
        for item in items:
            if isinstance(item, ReadProblem):
                self.problems.append(item)
                continue
            resource = item.resource
            rtype = str(resource.get("resourceType"))
            if not resource.get("id"):
                self.problems.append(ReadProblem(item.origin, "no-id",
                                                 f"{rtype} at {item.origin} has no id", rtype))
                continue
            if _subsetted(resource):
                log.warning("%s/%s arrived SUBSETTED (partial); not stored", rtype,
                            resource["id"])
                continue
            report.fetched += 1
            report.fetched_by_type[rtype] += 1
            stamp = (resource.get("meta") or {}).get("lastUpdated")
            if isinstance(stamp, str):
                try:
                    when = parse_instant(stamp)
                    if self.newest_seen is None or when > self.newest_seen:
                        self.newest_seen = when
                except ValueError:
                    pass
            unit, medication = self.resolver.unit_of(resource)
            change = store.upsert(resource, item.origin, unit, medication)
            if change is None:
                report.unchanged += 1
            else:
                self._note(change)

    def _older_than(self, items: Iterable[SourceItem], since: datetime
                    ) -> Iterable[SourceItem]:
        """Pass items through, counting resources an export returned although they were
        last updated before `_since` (a server that ignores the parameter)."""
        report = self._report()
        for item in items:
            if isinstance(item, RawResource):
                stamp = (item.resource.get("meta") or {}).get("lastUpdated")
                try:
                    if isinstance(stamp, str) and parse_instant(stamp) < since:
                        report.older_than_since += 1
                except ValueError:
                    pass
            yield item

    def _delete(self, key: tuple[str, str]) -> None:
        change = self._store().delete(key)
        if change is not None:
            self._note(change)

    def _note(self, change: Change) -> None:
        report = self._report()
        if change.kind == "added":
            report.added += 1
        elif change.kind == "updated":
            report.updated += 1
        else:
            report.deleted += 1
        for unit in (change.old_unit, change.new_unit):
            if unit:
                self.touched.add(unit)
        if change.key[0] == "Medication":
            self.changed_meds.add(change.key[1])

    def _apply_scope(self) -> None:
        """Keep the store to what a full pull of the same scope would hold."""
        o = self.options
        store = self._store()
        report = self._report()
        allowed: set[str] | None = None
        if o.bulk_level is None and o.patients is None:
            tokens = index_code_tokens(self.mappings)
            allowed = {unit for unit, proc in store.procedures() if matches_index(proc, tokens)}
        elif o.bulk_level is None and o.patients is not None:
            allowed = set(o.patients)
        elif o.bulk_level == "group":
            allowed = set(store.get_meta("group_members", []))
        if allowed is not None:
            for unit in sorted(store.units() - allowed - {MEDS}):
                if unit != UNLINKED:
                    report.cohort_removed.append(unit)
                for change in store.delete_unit(unit):
                    self._note(change)
            if report.cohort_removed:
                log.info("%d patient(s) left the cohort: %s", len(report.cohort_removed),
                         ", ".join(report.cohort_removed[:10]))
        if o.bulk_level != "system":
            # A REST or patient-compartment pull fetches Medications by reference only.
            referenced = store.referenced_medications()
            for _, mid in store.keys("Medication"):
                if mid not in referenced:
                    self._delete(("Medication", mid))
            missing = sorted(referenced - {k[1] for k in store.keys("Medication")})
            if missing:
                self._ingest(self.puller.by_id("Medication", missing, "medications"))
        for mid in self.changed_meds:
            self.touched |= store.units_referencing(mid)

    # ------------------------------------------------------------------ recompute

    def _recompute(self, everything: bool) -> Dataset:
        store = self._store()
        report = self._report()
        started = time.monotonic()
        present = store.units()
        stored_rows = store.unit_names() - {RUN}
        if everything:
            todo = present | stored_rows
        else:
            todo = (self.touched | (stored_rows - present)) - {RUN}
        results = compute_units(sorted(todo), store, self.mappings, self.options.validation)
        for unit, result in results.items():
            if result is None:
                store.drop_unit_rows(unit)
            else:
                store.save_unit_rows(unit, result.to_json())
        store.save_unit_rows(RUN, compute_run_unit(self.problems, self.mappings).to_json())
        report.problems = len(self.problems)
        report.patients_touched = sum(1 for u in todo if not u.startswith("#"))
        report.units_recomputed = len(todo)
        all_units = store.unit_names()
        report.units_carried_over = len(all_units - todo - {RUN})
        try:
            parts = [Part.from_json(body) for _, body in store.unit_rows()]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"the store's per-patient rows are unreadable ({exc}); run "
                             "with --full to rebuild them") from None
        assembled = assemble(parts)
        report.recompute_seconds = time.monotonic() - started
        event(f"pulled {report.fetched} resources ({report.added} added, {report.updated} "
              f"updated, {report.deleted} deleted, {report.unchanged} unchanged); "
              f"recomputed {report.patients_touched} patient(s), carried over "
              f"{report.units_carried_over} unit(s)", "refresh.merged",
              fetched=report.fetched, added=report.added, updated=report.updated,
              deleted=report.deleted, unchanged=report.unchanged,
              patients_touched=report.patients_touched,
              units_carried_over=report.units_carried_over)
        return assembled

    def _manifest(self, dataset: Dataset, caps: Capabilities, scope: dict[str, Any],
                  started: float) -> dict[str, Any]:
        report = self._report()
        report.requests = self.client.stats.as_dict()
        report.seconds = time.monotonic() - started
        query: dict[str, Any] = {"kind": "refresh", "scope": scope,
                                 "requests": self.client.stats.as_dict()}
        searches = report.searches + self.puller.query_log.as_list()
        if searches:
            query["searches"] = searches
        now = datetime.now(UTC)
        return manifest(
            dataset, self.mappings, validation=self.options.validation,
            source={"kind": "server", "location": self.client.base_url,
                    "auth": self.client.auth.kind},
            fhir_version=caps.fhir_version, query=query,
            started=now - timedelta(seconds=time.monotonic() - started), finished=now,
            refresh=report.as_dict())

    # ------------------------------------------------------------------ helpers

    def _store(self) -> RawStore:
        assert self.store is not None
        return self.store

    def _report(self) -> RefreshReport:
        assert self.report is not None
        return self.report


def _remove_leftovers(out: Path) -> None:
    """Staging folders a killed run left beside the dataset (`outputs.publish` builds in
    `.OUT.building-*` and, without renameat2, retires the old one to `.OUT.old-*`). Only
    a refresh holding the lock publishes here, so any such folder is an orphan."""
    for pattern in (f".{out.name}.building-*", f".{out.name}.old-*"):
        for leftover in out.parent.glob(pattern):
            if leftover.is_dir():
                log.info("removing %s, left by a killed run", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(isinstance(t, dict) and t.get("code") == "SUBSETTED"
               for t in (resource.get("meta") or {}).get("tag") or [])


def _norm_instant(text: str) -> str:
    try:
        return instant(parse_instant(text))
    except ValueError:
        raise ServerError(f"the export's transactionTime {text!r} is not an instant") from None
