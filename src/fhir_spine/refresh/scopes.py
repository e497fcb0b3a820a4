"""What a refresh covers, as one object per kind of pull, chosen once from the options.

    RestScope   REST searches: the patients with an index-procedure code, or exactly the
                ids of `--patients`
    BulkScope   `$export` at system or patient level
    GroupScope  `$export` of a Group: the Group's members, joiners pulled whole

Each scope says what it is (for `state.json` and the manifest: a run may only continue
a state built with the same scope), pulls everything, pulls the changes since a
watermark and returns the new watermark, and says which patients belong in the store
(`members`, None: whoever the pull brought). Deletions from `_history` and id
reconciliation are the same for every scope and stay in run.py, as does the order of
effects.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fhir_spine.errors import ServerError
from fhir_spine.fhir import BY_ID_TYPES, export_types, instant, parse_instant
from fhir_spine.settings import Mappings
from fhir_spine.sources.bulk import BulkExporter, BulkRequest, BulkResult
from fhir_spine.sources.capabilities import Capabilities
from fhir_spine.sources.http import FhirClient
from fhir_spine.sources.rest import RestSource, index_code_tokens

from .merge import Merge
from .pull import SearchPull, matches_index
from .report import RefreshOptions, checkpoint
from .store import RawStore

log = logging.getLogger(__name__)

Watermark = tuple[str, str]   # (instant, where it came from)


class Scope:
    """The base: what every scope shares. Subclasses fill in the pulls."""

    #: A REST or patient-compartment pull fetches Medications by reference only, so the
    #: store keeps just the referenced ones; a system export holds them all.
    medications_by_reference = True

    def __init__(self, client: FhirClient, mappings: Mappings, options: RefreshOptions,
                 puller: SearchPull) -> None:
        self.client = client
        self.mappings = mappings
        self.options = options
        self.puller = puller
        #: the types searched per patient (Medication is fetched by id)
        self.types = tuple(t for t in sorted(mappings.views) if t not in BY_ID_TYPES)

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def pull_full(self, merge: Merge, caps: Capabilities) -> Watermark:
        raise NotImplementedError

    def pull_changes(self, merge: Merge, caps: Capabilities, since: datetime) -> Watermark:
        raise NotImplementedError

    def members(self, store: RawStore) -> set[str] | None:
        """The patients a full pull of this scope would hold now; None: no rule."""
        return None

    def finished(self) -> None:
        """The run committed: release what the pull kept for a resumed run."""

    def _pull_whole_records(self, merge: Merge, patients: list[str]) -> None:
        merge.ingest(RestSource(self.client, self.mappings, options=self.options.rest,
                                patients=patients).items())


class RestScope(Scope):
    def __init__(self, client: FhirClient, mappings: Mappings, options: RefreshOptions,
                 puller: SearchPull) -> None:
        super().__init__(client, mappings, options, puller)
        self.patients = list(options.patients) if options.patients is not None else None

    def describe(self) -> dict[str, Any]:
        if self.patients is not None:
            digest = hashlib.sha256("\n".join(sorted(self.patients)).encode()).hexdigest()
            return {"mode": "rest", "cohort": "patient-list", "patients_sha256": digest}
        return {"mode": "rest", "cohort": "index-procedure-codes",
                "index_codes": index_code_tokens(self.mappings)}

    def pull_full(self, merge: Merge, caps: Capabilities) -> Watermark:
        source = RestSource(self.client, self.mappings, options=self.options.rest,
                            patients=self.patients)
        merge.ingest(source.items())
        merge.report.searches = source.info["query"].get("searches", [])
        return self._watermark(merge, caps)

    def pull_changes(self, merge: Merge, caps: Capabilities, since: datetime) -> Watermark:
        store = merge.store
        cohort = self.patients if self.patients is not None else store.patient_units()
        merge.ingest(self.puller.changed_for_patients(cohort, self.types, since))
        meds = [k[1] for k in store.keys("Medication")]
        merge.ingest(self.puller.changed_by_id("Medication", meds, since))
        if self.patients is None:
            tokens = index_code_tokens(self.mappings)
            new = sorted(self.puller.new_candidates(tokens, since) - set(cohort))
            if new:
                merge.report.cohort_added = new
                log.info("%d new candidate patient(s) since the last run: pulling their "
                         "whole record", len(new))
                self._pull_whole_records(merge, new)
        return self._watermark(merge, caps)

    def members(self, store: RawStore) -> set[str] | None:
        if self.patients is not None:
            return set(self.patients)
        tokens = index_code_tokens(self.mappings)
        return {unit for unit, proc in store.procedures() if matches_index(proc, tokens)}

    @staticmethod
    def _watermark(merge: Merge, caps: Capabilities) -> Watermark:
        """The server's clock when this run started (the `Date` of its first answer):
        anything changed later is asked for next time. Without a `Date` header, the
        newest `meta.lastUpdated` seen."""
        if caps.server_time is not None:
            return instant(caps.server_time), "server-date"
        if merge.newest_seen is not None:
            return instant(merge.newest_seen), "newest-lastUpdated"
        return instant(datetime.now(UTC)), "client-clock"


class BulkScope(Scope):
    """`$export` at system or patient level; `_since` for the changes."""

    def __init__(self, client: FhirClient, mappings: Mappings, options: RefreshOptions,
                 puller: SearchPull, *, sleep: Callable[[float], Any]) -> None:
        super().__init__(client, mappings, options, puller)
        assert options.bulk_level is not None
        self.level = options.bulk_level
        self.medications_by_reference = self.level != "system"
        self.exporter = BulkExporter(client, options.bulk_dir or options.state_dir / "bulk",
                                     timeout=options.export_timeout, sleep=sleep)

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"mode": "bulk", "level": self.level, "group_id": o.group_id,
                "type_filters": list(o.type_filters)}

    def pull_full(self, merge: Merge, caps: Capabilities) -> Watermark:
        self._update_members(merge)
        result = self._export(merge, None)
        merge.ingest(result.items())
        return _transaction_time(result)

    def pull_changes(self, merge: Merge, caps: Capabilities, since: datetime) -> Watermark:
        report = merge.report
        joined = self._update_members(merge)
        result = self._export(merge, since)
        merge.ingest(merge.older_than(result.items(), since))
        if report.older_than_since:
            log.warning("the %s level export returned %d resource(s) last updated "
                        "before _since=%s (HAPI 8.8.0 ignores _since at patient level); "
                        "they merge as unchanged, at the cost of the download",
                        self.level, report.older_than_since, instant(since))
        for key in result.deleted:
            merge.delete(key)
        if result.deleted:
            report.deletions_from("export deleted files")
        if self.medications_by_reference:
            meds = [k[1] for k in merge.store.keys("Medication")]
            merge.ingest(self.puller.changed_by_id("Medication", meds, since))
        if joined:
            report.cohort_added = joined
            log.info("%d patient(s) joined Group/%s: pulling their whole record",
                     len(joined), self.options.group_id)
            self._pull_whole_records(merge, joined)
        return _transaction_time(result)

    def finished(self) -> None:
        self.exporter.mark_consumed()

    def _update_members(self, merge: Merge) -> list[str]:
        """Record the scope's current members; those new since the last run."""
        return []

    def _export(self, merge: Merge, since: datetime | None) -> BulkResult:
        o = self.options
        request = BulkRequest(self.level, o.group_id, export_types(self.mappings, self.level),
                              since=instant(since) if since is not None else None,
                              type_filters=o.type_filters)
        result = self.exporter.run(request)
        if self.medications_by_reference:
            self.exporter.fetch_medications(o.rest, self.puller.query_log)
        merge.report.export = result.summary()
        checkpoint("exported")
        return result


class GroupScope(BulkScope):
    """`Group/ID/$export`: the store holds exactly the Group's active members; a patient
    who joined since the last run is pulled whole (an export `_since` would only bring
    what changed)."""

    MEMBERS = "group_members"

    def members(self, store: RawStore) -> set[str] | None:
        return set(store.get_meta(self.MEMBERS, []))

    def _update_members(self, merge: Merge) -> list[str]:
        assert self.options.group_id is not None
        members = self.puller.group_members(self.options.group_id)
        before = set(merge.store.get_meta(self.MEMBERS, []))
        merge.store.set_meta(self.MEMBERS, members)
        return sorted(set(members) - before)


def scope_for(client: FhirClient, mappings: Mappings, options: RefreshOptions,
              puller: SearchPull, *, sleep: Callable[[float], Any]) -> Scope:
    if options.bulk_level is None:
        return RestScope(client, mappings, options, puller)
    if options.bulk_level == "group":
        return GroupScope(client, mappings, options, puller, sleep=sleep)
    return BulkScope(client, mappings, options, puller, sleep=sleep)


def _transaction_time(result: BulkResult) -> Watermark:
    try:
        return instant(parse_instant(result.transaction_time)), "transactionTime"
    except ValueError:
        raise ServerError(f"the export's transactionTime {result.transaction_time!r} is "
                          "not an instant") from None

