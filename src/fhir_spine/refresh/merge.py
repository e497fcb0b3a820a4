"""Merging what a refresh pulled into the raw store, and noting what it touched.

Whatever the scope pulls (searches, an export, `_history`) goes through `Merge.ingest`
and `Merge.delete`; they count each change for the report and collect the units
(patients) to recompute and the Medications that changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_spine.fhir import Key, parse_instant
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem

from .report import RefreshReport
from .store import Change, RawStore
from .units import UnitResolver

log = logging.getLogger(__name__)


@dataclass
class Merge:
    store: RawStore
    report: RefreshReport
    resolver: UnitResolver
    problems: list[ReadProblem] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    changed_meds: set[str] = field(default_factory=set)
    newest_seen: datetime | None = None

    def ingest(self, items: Iterable[SourceItem]) -> None:
        report = self.report
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
            change = self.store.upsert(resource, item.origin, unit, medication)
            if change is None:
                report.unchanged += 1
            else:
                self.note(change)

    def older_than(self, items: Iterable[SourceItem], since: datetime
                   ) -> Iterator[SourceItem]:
        """Pass items through, counting resources an export returned although they were
        last updated before `_since` (a server that ignores the parameter)."""
        for item in items:
            if isinstance(item, RawResource):
                stamp = (item.resource.get("meta") or {}).get("lastUpdated")
                try:
                    if isinstance(stamp, str) and parse_instant(stamp) < since:
                        self.report.older_than_since += 1
                except ValueError:
                    pass
            yield item

    def delete(self, key: Key) -> None:
        change = self.store.delete(key)
        if change is not None:
            self.note(change)

    def drop_unit(self, unit: str) -> None:
        for change in self.store.delete_unit(unit):
            self.note(change)

    def note(self, change: Change) -> None:
        report = self.report
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


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(isinstance(t, dict) and t.get("code") == "SUBSETTED"
               for t in (resource.get("meta") or {}).get("tag") or [])
