"""The extraction run: source items -> view rows -> records -> pathway -> `Extraction`.

Raw resources are flattened as soon as they are read, so only the (small) rows are kept
in memory, never the whole raw export. Every item read is accounted for: it is used, or
it is set aside with a reason in `events` or `issues` (`Accounting`). The one exception
is a Medication that gave a row: whether it is used depends on every order of the
dataset, which one extraction may not hold (a refresh recomputes patients one by one),
so it stays `pending` until `dataset.build_dataset` sees them all.

The result is immutable: per-patient inputs and results, issues, code counts and
counts. `dataset.py` turns one or several of them into the published tables.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fhir_spine.contained import contained_rows
from fhir_spine.errors import ConfigError
from fhir_spine.handlers import REGISTRY, view_rows
from fhir_spine.issues import Issue
from fhir_spine.normalise import CodeCount, Measurement, Normalised, age_notes, normalise
from fhir_spine.pathway.classify import reconstruct
from fhir_spine.pathway.model import PatientInput, PatientResult
from fhir_spine.settings import Mappings
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem
from fhir_spine.validate import Mode, validation_problem
from fhir_spine.views.runner import CompiledView, compile_view

log = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass(frozen=True)
class Accounting:
    """Resources read, and what became of them; `balanced` when nothing is lost."""

    read: int = 0
    used: int = 0
    set_aside: int = 0
    unaccounted: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return self.read == self.used + self.set_aside and not self.unaccounted


@dataclass(frozen=True)
class Extraction:
    """One extraction run's immutable result.

    `counts` leaves the Medications in `pending_medications` (id -> origin) undecided;
    `accounting` and `issues` decide them as if this extraction were the whole dataset
    (used when an order refers to them, else set aside as unreferenced), with the same
    rule `dataset.build_dataset` applies across extractions.
    """

    results: tuple[PatientResult, ...]
    inputs: Mapping[str, PatientInput]
    read_issues: tuple[Issue, ...]      # problems met reading (and validating) items
    normalise_issues: tuple[Issue, ...]  # the handlers' problems
    codes: tuple[CodeCount, ...]
    measurements: tuple[tuple[str, Measurement], ...]
    read_by_type: Mapping[str, int]
    counts: Accounting
    pending_medications: Mapping[str, str]
    referenced_medications: frozenset[str]

    @property
    def patients(self) -> frozenset[str]:
        return frozenset(self.inputs)

    @property
    def accounting(self) -> Accounting:
        used = len(self.pending_medications.keys() & self.referenced_medications)
        left = len(self.pending_medications) - used
        c = self.counts
        return Accounting(c.read, c.used + used, c.set_aside + left, c.unaccounted)

    @property
    def issues(self) -> list[Issue]:
        return [*self.read_issues, *self.normalise_issues,
                *unreferenced_medications(self.pending_medications,
                                          self.referenced_medications)]


def unreferenced_medications(pending: Mapping[str, str], referenced: Iterable[str]
                             ) -> list[Issue]:
    """The set-aside issue of every pending Medication no order refers to."""
    refs = set(referenced)
    return [Issue("info", "unreferenced-medication", "Medication not referenced by any order",
                  "", "Medication", mid, pending[mid], sets_aside=True)
            for mid in sorted(pending) if mid not in refs]


def extract(
    items: Iterable[SourceItem], mappings: Mappings, *, validation: Mode = "warn",
    progress: Callable[[int], None] | None = None,
) -> Extraction:
    views = {rtype: compile_view(view) for rtype, view in mappings.views.items()
             if rtype in REGISTRY}
    reader = _Reader(views, mappings.view_files, validation)
    for item in items:
        if progress is not None:
            progress(1)
        reader.read(item)

    # Rows are handled in id order, not reading order, so that what the pathway sees (and
    # the order of its decisions) depends on the resources, not on how a source or a
    # refresh's store happened to list them.
    normalised = normalise(
        {rtype: [row for rid in sorted(by_id) for row in by_id[rid]]
         for rtype, by_id in reader.rows.items()},
        mappings.concepts, mappings.settings, mappings.questionnaires)
    results = tuple(reconstruct(inp, mappings.settings) for inp in normalised.inputs.values())

    counts, pending = _account(reader, normalised, results)
    return Extraction(
        results, normalised.inputs, tuple(reader.issues),
        normalised.issues + age_notes(normalised, results), normalised.codes,
        normalised.measurements,
        MappingProxyType(dict(reader.read_by_type)), counts, MappingProxyType(pending),
        normalised.referenced_medications)


class _Reader:
    """Items -> view rows by type and id, with the problems met and the counts so far."""

    def __init__(self, views: dict[str, CompiledView], files: Mapping[str, str],
                 validation: Mode) -> None:
        self.views = views
        self.files = files
        self.validation = validation
        self.rows: dict[str, dict[str, list[Row]]] = {t: {} for t in views}
        self.read_by_type: Counter[str] = Counter()
        self.issues: list[Issue] = []
        self.count = 0          # items read
        self.aside = 0          # items set aside while reading

    def read(self, item: SourceItem) -> None:
        self.count += 1
        if isinstance(item, ReadProblem):
            self.issues.append(Issue(item.severity, item.code, item.message, "",
                                     item.resource_type, item.resource_id, item.origin,
                                     sets_aside=True))
            self.aside += 1
            return
        for note in item.notes:  # problems that leave the resource usable: a row each
            self.issues.append(Issue(note.severity, note.code, note.message, "",
                                     note.resource_type, note.resource_id, note.origin))
        self._resource(item)

    def _resource(self, item: RawResource) -> None:
        resource = item.resource
        rtype = str(resource.get("resourceType"))
        raw_id = resource.get("id")
        rid = raw_id if isinstance(raw_id, str) else ""
        self.read_by_type[rtype] += 1

        def set_aside(severity: str, code: str, message: str) -> None:
            self.issues.append(Issue(severity, code, message, "", rtype, rid,  # type: ignore[arg-type]
                                     item.origin, sets_aside=True))
            self.aside += 1

        view = self.views.get(rtype)
        if view is None:
            set_aside("info", "unsupported-type", f"{rtype} is not used by the pathway")
            return
        if not rid.strip():
            shown = "has no id" if raw_id in (None, "") else \
                f"has a non-string id ({type(raw_id).__name__})"
            set_aside("error", "no-id", f"{rtype} at {item.origin} {shown}")
            return
        if self.validation != "off":
            problem = validation_problem(resource)
            if problem is not None:
                if self.validation == "strict":
                    set_aside("error", "invalid-resource", problem)
                    return
                self.issues.append(Issue("warning", "invalid-resource", problem, "", rtype,
                                         rid, item.origin))
        try:
            rows = view_rows(REGISTRY[rtype], view, resource, self.files.get(rtype, ""))
        except ConfigError:
            raise  # the view's shape, not this resource: stop the run (exit 3)
        except Exception as exc:  # noqa: BLE001 - a view failing on odd data must not stop the run
            set_aside("error", "view-failed", f"flattening failed: {type(exc).__name__}: {exc}")
            return
        if not rows:
            set_aside("error", "view-no-row", f"{rtype} view gave no row")
            return
        last_updated = str((resource.get("meta") or {}).get("lastUpdated") or "")
        rows = [{**r, "_origin": item.origin, "_last_updated": last_updated} for r in rows]
        if resource.get("contained"):  # `#id` references resolve against these
            inner = contained_rows(resource, self.views)
            rows = [{**r, "_contained": inner} for r in rows]
        previous = self.rows[rtype].get(rid)
        if previous is not None:
            keep, drop = (rows, previous) if last_updated >= previous[0]["_last_updated"] \
                else (previous, rows)
            self.rows[rtype][rid] = keep
            self.issues.append(Issue(
                "warning", "duplicate-resource",
                f"{rtype}/{rid} read twice; kept the version from {keep[0]['_origin']}", "",
                rtype, rid, drop[0]["_origin"], sets_aside=True))
            self.aside += 1
            return
        self.rows[rtype][rid] = rows


def _account(reader: _Reader, normalised: Normalised, results: tuple[PatientResult, ...]
             ) -> tuple[Accounting, dict[str, str]]:
    """Give every kept resource exactly one disposition: used, set aside with a reason,
    or (a Medication with a row) pending until the dataset knows every order."""
    used: set[tuple[str, str]] = {("Patient", pid) for pid in normalised.inputs}
    aside: set[tuple[str, str]] = set()
    for result in results:
        for d in result.decisions:
            (used if d.used else aside).add(d.source.key)
    used.update(m.source.key for _, m in normalised.measurements)
    counted_issue_keys: set[tuple[str, str]] = set()
    for issue in (*reader.issues, *normalised.issues):
        if issue.sets_aside and issue.resource_id and issue.code != "duplicate-resource":
            counted_issue_keys.add((issue.resource_type, issue.resource_id))
    n_used, n_aside = 0, reader.aside
    pending: dict[str, str] = {}
    unaccounted: list[str] = []
    for rtype, by_id in reader.rows.items():
        for rid, rows in by_id.items():
            key = (rtype, rid)
            if key in used:
                n_used += 1
            elif key in aside or key in counted_issue_keys:
                n_aside += 1
            elif rtype == "Medication" and rid in normalised.medications:
                pending[rid] = str(rows[0]["_origin"])
            else:
                unaccounted.append(f"{rtype}/{rid}")
    counts = Accounting(reader.count, n_used, n_aside, unaccounted)
    return counts, pending
