"""The refresh algorithm: pull what changed, merge it, recompute the touched patients,
publish atomically, then commit.

    lock (refresh/lock.py)                       -> exit 7 if another run holds it
    read state.json; open the raw store; BEGIN   (one SQLite transaction for the run)
    pull (refresh/scopes.py: one object per scope, REST, bulk or group)
      first run / --full: the whole scope (REST cohort pull, or $export without _since)
      else, since = watermark - overlap:
        REST  : <Type>?patient=<cohort>&_lastUpdated=gt<since>, Patient?_id=..., changed
                Medications by id, new candidates (index-procedure codes changed since),
                whose whole record is then pulled
        bulk  : $export with _since=<since> (resumable job folder), `deleted` files,
                Group membership changes, Medications by id (patient/group level)
      deletions: `_history?_since` where the server offers it; --full-reconcile checks
                 every stored id with `_id=...&_elements=id`
    merge by id and version into the store; note each change's patient (refresh/merge.py)
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

import contextlib
import logging
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fhir_spine.dataset import (
    PART_FORMAT,
    Dataset,
    Part,
    deidentified,
    issue_counts,
    manifest,
)
from fhir_spine.deid import DEID_MAP, drop_raw_layer, write_origin_map
from fhir_spine.fhir import optional_types_not_offered, parse_instant
from fhir_spine.outputs import publish, write_dataset
from fhir_spine.settings import Mappings
from fhir_spine.sources.capabilities import Capabilities, read_capabilities
from fhir_spine.sources.files import RawResource
from fhir_spine.sources.http import FhirClient

from .lock import RefreshLock
from .merge import Merge
from .pull import SearchPull, history_since
from .report import RefreshOptions, RefreshReport, checkpoint, event
from .scopes import Scope, scope_for
from .state import RefreshState, StateError, fingerprint, load_state, save_state
from .store import MEDS, RUN, STORE_FILE, UNLINKED, RawStore
from .units import UnitResolver, assemble, compute_run_unit, compute_units

__all__ = ["Refresh", "RefreshOptions", "RefreshReport", "checkpoint", "event"]

log = logging.getLogger(__name__)


class Refresh:
    """One refresh run of one dataset. `run()` does everything under the lock."""

    def __init__(self, client: FhirClient, mappings: Mappings, options: RefreshOptions,
                 *, sleep: Any = time.sleep) -> None:
        self.client = client
        self.mappings = mappings
        self.options = options
        self.resolver = UnitResolver(mappings)
        self.puller = SearchPull(client, options.rest)
        self.scope: Scope = scope_for(client, mappings, options, self.puller, sleep=sleep)

    def run(self) -> RefreshReport:
        started = time.monotonic()
        o = self.options
        with RefreshLock(o.state_dir) as lock:
            checkpoint("locked")
            state = load_state(o.state_dir)
            scope = self.scope.describe()
            if state is not None and not o.full:
                if state.server != self.client.base_url:
                    raise StateError(f"{o.state_dir} holds the state of {state.server}, not "
                                     f"{self.client.base_url}; use another --out, or --full "
                                     "to rebuild it from this server")
                if state.scope != scope:
                    raise StateError(f"{o.state_dir} was built with another scope ("
                                     f"{scope_difference(state.scope, scope)}); run once with "
                                     "--full to rebuild it")
            full = o.full or state is None
            report = RefreshReport(full=full, watermark_before=None if full else
                                   state.watermark if state else None,
                                   stale_lock=lock.previous_owner)
            event(f"refresh of {o.out} from {self.client.base_url}: "
                  f"{'full pull' if full else 'changes since ' + str(report.watermark_before)}",
                  "refresh.started", out=str(o.out), server=self.client.base_url,
                  full=full, watermark=report.watermark_before, scope=scope)
            store = RawStore.open(o.state_dir / STORE_FILE, full=full)
            merge = Merge(store, report, self.resolver)
            try:
                store.begin()
                if state is not None and not full:
                    # the store is the one state.json describes, before anything is
                    # pulled or recomputed from it (a deleted, emptied or truncated store
                    # would publish the few patients left): exit 9 otherwise
                    store.check_against(state)
                caps = read_capabilities(self.client)
                skipped = optional_types_not_offered(caps, self.scope.types)
                self.scope.types = tuple(t for t in self.scope.types if t not in skipped)
                if full:
                    store.clear()
                    watermark, source = self.scope.pull_full(merge, caps)
                else:
                    assert state is not None
                    since = parse_instant(state.watermark) - timedelta(seconds=o.overlap_s)
                    watermark, source = self.scope.pull_changes(merge, caps, since)
                    self._deletions(merge, caps, since)
                self._apply_scope(merge)
                report.watermark_after, report.watermark_source = watermark, source
                checkpoint("pulled")
                fp = fingerprint(self.mappings, o.validation)
                recompute_all = full or state is None or state.fingerprint != fp \
                    or store.get_meta("part_format") != PART_FORMAT
                dataset = self._recompute(merge, recompute_all)  # exit 70 unless it balances
                meta = self._manifest(dataset, report, caps, scope, started)
                tables, meta, origin_map = deidentified(
                    dataset.tables, meta, o.deid, self.mappings,
                    extra_ids={"Patient": list(o.patients or ())})
                checkpoint("computed")

                def build(folder: Path) -> None:
                    write_dataset(tables, meta, folder, csv=o.csv)
                    checkpoint("built")

                store.check_integrity()  # a corrupt page: exit 9, before the swap
                _remove_leftovers(o.out)
                publish(o.out, build)
                checkpoint("published")
                if origin_map is not None:
                    write_origin_map(o.state_dir / DEID_MAP, origin_map)
                run_number = (state.run if state is not None else 0) + 1
                store.set_meta("run", run_number)
                store.set_meta("watermark", watermark)
                store.set_meta("part_format", PART_FORMAT)
                store.record_counts()
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
                self.scope.finished()
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.Error):
                    store.rollback()
                raise StateError(f"raw store {o.state_dir / STORE_FILE}: {exc}; run with "
                                 "--full to rebuild it from the server") from None
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    store.rollback()
                raise
            finally:
                with contextlib.suppress(sqlite3.Error):
                    store.close()
            if o.deid is not None and o.bulk_level is not None:
                drop_raw_layer(o.bulk_dir or o.state_dir / "bulk", keep=o.keep_raw)
        report.tables = dataset.tables
        report.exit_issues = issue_counts(dataset.tables)
        return report

    # ------------------------------------------------------------------ deletions

    def _deletions(self, merge: Merge, caps: Capabilities, since: datetime) -> None:
        """Deletions (and updates that moved a resource out of scope) since `since`."""
        o = self.options
        report, store = merge.report, merge.store
        types = ("Patient",) + self.scope.types + ("Medication",)
        if o.history and caps.offers_history(types):
            latest, pages = history_since(self.client, since, types, caps.history_system,
                                          o.rest.page_size)
            report.history_pages = pages
            report.deletions_from("_history")
            for key, entry in sorted(latest.items()):
                if not store.has(key):
                    continue
                if entry.method == "DELETE":
                    merge.delete(key)
                elif entry.resource is not None:
                    merge.ingest([RawResource(entry.resource, entry.origin)])
        elif o.history:
            log.warning("the server offers no _history for %s: deleted resources are only "
                        "noticed with --full-reconcile", ", ".join(types))
        if o.full_reconcile:
            self._reconcile(merge)

    def _reconcile(self, merge: Merge) -> None:
        report, store = merge.report, merge.store
        gone = 0
        for rtype in sorted(store.counts_by_type()):
            ids = [k[1] for k in store.keys(rtype)]
            existing = self.puller.existing_ids(rtype, ids)
            report.reconciled_ids += len(ids)
            for rid in sorted(set(ids) - existing):
                merge.delete((rtype, rid))
                gone += 1
        report.deletions_from("id reconciliation")
        log.info("id reconciliation: %d stored ids checked, %d no longer on the server",
                 report.reconciled_ids, gone)

    def _apply_scope(self, merge: Merge) -> None:
        """Keep the store to what a full pull of the same scope would hold."""
        report, store = merge.report, merge.store
        allowed = self.scope.members(store)
        if allowed is not None:
            for unit in sorted(store.units() - allowed - {MEDS}):
                if unit != UNLINKED:
                    report.cohort_removed.append(unit)
                merge.drop_unit(unit)
            if report.cohort_removed:
                log.info("%d patient(s) left the cohort: %s", len(report.cohort_removed),
                         ", ".join(report.cohort_removed[:10]))
        if self.scope.medications_by_reference:
            referenced = store.referenced_medications()
            for _, mid in store.keys("Medication"):
                if mid not in referenced:
                    merge.delete(("Medication", mid))
            missing = sorted(referenced - {k[1] for k in store.keys("Medication")})
            if missing:
                merge.ingest(self.puller.by_id("Medication", missing, "medications"))
        for mid in merge.changed_meds:
            merge.touched |= store.units_referencing(mid)

    # ------------------------------------------------------------------ recompute

    def _recompute(self, merge: Merge, everything: bool) -> Dataset:
        report, store = merge.report, merge.store
        started = time.monotonic()
        present = store.units()
        stored_rows = store.unit_names() - {RUN}
        if everything:
            todo = present | stored_rows
        else:
            todo = (merge.touched | (stored_rows - present)) - {RUN}
        results = compute_units(sorted(todo), store, self.mappings, self.options.validation)
        for unit, result in results.items():
            if result is None:
                store.drop_unit_rows(unit)
            else:
                store.save_unit_rows(unit, result.to_json())
        store.save_unit_rows(RUN, compute_run_unit(merge.problems, self.mappings).to_json())
        report.problems = len(merge.problems)
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

    def _manifest(self, dataset: Dataset, report: RefreshReport, caps: Capabilities,
                  scope: dict[str, Any], started: float) -> dict[str, Any]:
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


def scope_difference(before: dict[str, Any], now: dict[str, Any], limit: int = 200) -> str:
    """The keys whose values differ, short: `bulk_level None -> 'system'`."""
    parts = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            old, new = before.get(key), now.get(key)
            if isinstance(old, list) and isinstance(new, list):
                added = [str(v) for v in new if v not in old]
                gone = [str(v) for v in old if v not in new]
                parts.append(f"{key}: " + ", ".join(
                    [f"+{v}" for v in added[:3]] + [f"-{v}" for v in gone[:3]]
                    + (["..."] if len(added) > 3 or len(gone) > 3 else [])))
            elif len(repr(old)) + len(repr(new)) > 60:
                parts.append(f"{key} changed")
            else:
                parts.append(f"{key} {old!r} -> {new!r}")
    text = "; ".join(parts) or "unknown difference"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _remove_leftovers(out: Path) -> None:
    """Staging folders a killed run left beside the dataset (`outputs.publish` builds in
    `.OUT.building-*` and, without renameat2, retires the old one to `.OUT.old-*`). Only
    a refresh holding the lock publishes here, so any such folder is an orphan."""
    for pattern in (f".{out.name}.building-*", f".{out.name}.old-*"):
        for leftover in out.parent.glob(pattern):
            if leftover.is_dir():
                log.info("removing %s, left by a killed run", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
