"""The extraction run: source items -> view rows -> records -> pathway -> `Extraction`.

Raw resources are flattened as soon as they are read, so only the (small) rows are kept
in memory, never the whole raw export; with `--validation warn` the raw dicts of the
resources that may matter (prefilter.py) wait too, until the accounting knows which ones
the pathway uses: only those are validated (issue 16), then all are dropped. Every item
read is accounted for: it is used, or it is set aside with a reason in `events` or
`issues` (`Accounting`). The one exception is a Medication that gave a row: whether it
is used depends on every order of the dataset, which one extraction may not hold (a
refresh recomputes patients one by one), so it stays `pending` until
`dataset.build_dataset` sees them all.

The result is immutable: per-patient inputs and results, issues, code counts and
counts. `dataset.py` turns one or several of them into the published tables.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from fhir_spine import review, what_if
from fhir_spine.contained import contained_rows
from fhir_spine.errors import ConfigError
from fhir_spine.handlers import REGISTRY, view_rows
from fhir_spine.issues import Issue
from fhir_spine.normalise import CodeCount, Measurement, Normalised, age_notes, normalise
from fhir_spine.pathway.classify import reconstruct
from fhir_spine.pathway.model import PatientInput, PatientResult
from fhir_spine.prefilter import CODED_TYPES, Prefilter, accounting_view
from fhir_spine.settings import DEFAULT_MAPPINGS, Mappings
from fhir_spine.sources.export_artefacts import ExportArtefact
from fhir_spine.sources.files import (
    FileSource,
    FileUnit,
    RawResource,
    ReadProblem,
    SourceItem,
    iter_file,
)
from fhir_spine.validate import Mode, validation_problem
from fhir_spine.views.runner import CompiledView, compile_view

log = logging.getLogger(__name__)

Row = dict[str, Any]
# A raw resource waiting for its validation: the dict, or in a file part its JSON (see
# `_compact`).
_Raw = dict[str, Any] | bytes
# A kept resource: type, id, its view rows, and its raw resource while its validation
# waits for the accounting (`warn`), else None.
_Entry = tuple[str, str, list[Row], _Raw | None]


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
    # Resources set aside that need no attention (QUIET_REASONS): counted, not an
    # `issues` row each. reason -> resource type -> resources.
    set_aside_counted: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

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


# Set-aside reasons that need no one's attention: a type the pathway does not read, a
# code no concept maps (its code is in `codes`, unmapped first). Counted per reason and
# type in the manifest (`set_aside_counted`), never an `issues` row each: on a real
# export they are nearly every resource read.
QUIET_REASONS = frozenset({"unsupported-type", "unmapped-code"})


def is_quiet(issue: Issue) -> bool:
    return issue.sets_aside and issue.severity == "info" and issue.code in QUIET_REASONS


def count_quiet(counts: dict[str, Counter[str]], issues: Iterable[Issue]) -> list[Issue]:
    """The issues that need attention; the quiet ones are added to `counts`."""
    kept = []
    for issue in issues:
        if is_quiet(issue):
            counts.setdefault(issue.code, Counter())[issue.resource_type] += 1
        else:
            kept.append(issue)
    return kept


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
    reader = _new_reader(mappings, validation)
    for item in items:
        if progress is not None:
            progress(1)
        reader.read(item)
    return _finish(reader, mappings)


def extract_files(source: FileSource, mappings: Mappings, *, validation: Mode = "warn",
                  jobs: int = 1, progress: Callable[[int], None] | None = None) -> Extraction:
    """`extract` over a folder, its files read, pre-filtered and flattened in `jobs`
    processes (issue 16). The units are the folder's files, a large plain NDJSON file
    split into line-aligned byte ranges (`FileSource.units`), the same whatever `jobs`
    is; they are merged in file then byte order (duplicates decided then, as reading
    them in order would), so the same folder gives the same tables for any `jobs`, and
    the same as reading each file whole. Export artefacts are added to
    `source.export_artefacts`."""
    reader = _new_reader(mappings, validation)
    units = source.units()
    source.export_artefacts.clear()
    global _WORKER  # noqa: PLW0603 - inherited by the forked workers, never pickled
    _WORKER = (source.folder, mappings, validation)
    try:
        if jobs <= 1 or len(units) <= 1:
            parts: Iterable[_FilePart] = map(_read_file, units)
            _merge_all(reader, source, parts, progress)
        else:
            # ranges are big, even units: one at a time keeps both cores busy to the end;
            # whole files are often small, and four at a time save round trips
            chunksize = 1 if any(not unit.whole for unit in units) else 4
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(jobs, len(units))) as pool:
                _merge_all(reader, source, pool.imap(_read_file, units, chunksize=chunksize),
                           progress)
    finally:
        _WORKER = None
    return _finish(reader, mappings)


@dataclass
class _FilePart:
    """What one unit (a file or a range of one) gave: kept view rows in reading order
    (duplicates not yet decided), each with its raw resource when `warn` validates it
    once it is known to be used (else None), the problems, counts and export artefacts."""

    entries: list[_Entry]
    issues: list[Issue]
    quiet: dict[str, Counter[str]]
    read_by_type: Counter[str]
    count: int
    aside: int
    artefacts: list[ExportArtefact]


_WORKER: tuple[Path, Mappings, Mode] | None = None
_WORKER_READER: dict[tuple[int, Mode], tuple[Mappings, _Reader]] = {}


def _read_file(unit: FileUnit) -> _FilePart:
    assert _WORKER is not None
    folder, mappings, validation = _WORKER
    # views compiled once per process, for these mappings and this validation mode
    cached = _WORKER_READER.get((id(mappings), validation))
    if cached is None or cached[0] is not mappings:
        _WORKER_READER.clear()
        cached = (mappings, _new_reader(mappings, validation))
        _WORKER_READER[(id(mappings), validation)] = cached
    reader = cached[1]
    reader.reset(collect=True)
    artefacts: list[ExportArtefact] = []
    for item in iter_file(folder, unit, artefacts):
        reader.read(item)
    assert reader.entries is not None
    entries = [(rtype, rid, rows, _compact(raw)) for rtype, rid, rows, raw in reader.entries]
    return _FilePart(entries, reader.issues, reader.quiet, reader.read_by_type,
                     reader.count, reader.aside, artefacts)


def _compact(raw: _Raw | None) -> _Raw | None:
    """A raw resource as its JSON: a file part is pickled back from its worker, and the
    parent keeps these until the accounting, so bytes (about 5 x smaller than the dict's
    objects) keep both cheap. Exact: files are parsed by orjson, so their values are
    what orjson writes back; anything it cannot write stays a dict."""
    if isinstance(raw, dict):
        try:
            return orjson.dumps(raw)
        except (TypeError, orjson.JSONEncodeError):
            return raw
    return raw


def _merge_all(reader: _Reader, source: FileSource, parts: Iterable[_FilePart],
               progress: Callable[[int], None] | None) -> None:
    for part in parts:
        reader.issues.extend(part.issues)
        for reason, by_type in part.quiet.items():
            reader.quiet.setdefault(reason, Counter()).update(by_type)
        reader.read_by_type.update(part.read_by_type)
        reader.count += part.count
        reader.aside += part.aside
        source.export_artefacts.extend(part.artefacts)
        for rtype, rid, rows, raw in part.entries:
            reader.keep(rtype, rid, rows, raw)
        if progress is not None:
            progress(part.count)


def _new_reader(mappings: Mappings, validation: Mode) -> _Reader:
    views = {rtype: compile_view(view) for rtype, view in mappings.views.items()
             if rtype in REGISTRY}
    prefilter = Prefilter(mappings.concepts, mappings.lexicon or review.default_lexicon())
    return _Reader(views, mappings.view_files, validation, prefilter,
                   _accounting_views(mappings))


def _accounting_views(mappings: Mappings) -> dict[str, CompiledView]:
    """The reduced views for resources the prefilter rejects (prefilter.py): coded types
    whose view is the project's own, not a site's."""
    default = (DEFAULT_MAPPINGS / "views").resolve()
    out: dict[str, CompiledView] = {}
    for rtype in CODED_TYPES & set(mappings.views):
        path = mappings.view_files.get(rtype)
        if rtype not in REGISTRY or path is None or Path(path).resolve().parent != default:
            continue
        reduced = accounting_view(mappings.views[rtype])
        if reduced is not None:
            out[rtype] = compile_view(reduced)
    return out


def _finish(reader: _Reader, mappings: Mappings) -> Extraction:
    # Rows are handled in id order, not reading order, so that what the pathway sees (and
    # the order of its decisions) depends on the resources, not on how a source or a
    # refresh's store happened to list them.
    rows = {rtype: [row for rid in sorted(by_id) for row in by_id[rid]]
            for rtype, by_id in reader.rows.items()}
    normalised = normalise(rows, mappings.concepts, mappings.settings,
                           mappings.questionnaires)
    results = tuple(reconstruct(inp, mappings.settings) for inp in normalised.inputs.values())
    decider = mappings.concepts.decider  # codes a terminology server could not decide
    undecided = decider.take_issues() if decider is not None else []
    codes = what_if.annotate(normalised.codes, rows, results, mappings)

    counts, pending, used = _account(reader, normalised, results)
    reader.issues.extend(_validate_used(reader, used | {("Medication", m) for m in pending}))
    quiet = reader.quiet
    normalise_issues = count_quiet(quiet, [*normalised.issues, *undecided])
    return Extraction(
        results, normalised.inputs, tuple(reader.issues),
        (*normalise_issues, *age_notes(normalised, results)), codes,
        normalised.measurements,
        MappingProxyType(dict(reader.read_by_type)), counts, MappingProxyType(pending),
        normalised.referenced_medications,
        {reason: dict(sorted(by_type.items())) for reason, by_type in sorted(quiet.items())})


class _Reader:
    """Items -> view rows by type and id, with the problems met and the counts so far."""

    def __init__(self, views: dict[str, CompiledView], files: Mapping[str, str],
                 validation: Mode, prefilter: Prefilter,
                 accounting: Mapping[str, CompiledView] | None = None) -> None:
        self.views = views
        self.prefilter = prefilter
        self.accounting = dict(accounting or {})
        self.files = files
        self.validation = validation
        self.reset()

    def reset(self, *, collect: bool = False) -> None:
        """Empty; with `collect`, kept rows go to `entries` in reading order, duplicates
        undecided (a file part of `extract_files`, merged with `keep`)."""
        self.rows: dict[str, dict[str, list[Row]]] = {t: {} for t in self.views}
        # `warn`: the raw dict of each kept resource that may matter, validated in
        # `_finish` once the accounting knows it is used, then dropped. A side map, not a
        # row key, so nothing raw reaches the rows, the tables or what_if's reruns.
        self.unvalidated: dict[tuple[str, str], _Raw] = {}
        self.entries: list[_Entry] | None = [] if collect else None
        self.read_by_type: Counter[str] = Counter()
        self.issues: list[Issue] = []
        self.quiet: dict[str, Counter[str]] = {}  # reason -> type -> set aside, no row
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
        if view is None:  # counted, not a row (QUIET_REASONS)
            self.quiet.setdefault("unsupported-type", Counter())[rtype] += 1
            self.aside += 1
            return
        if not rid.strip():
            shown = "has no id" if raw_id in (None, "") else \
                f"has a non-string id ({type(raw_id).__name__})"
            set_aside("error", "no-id", f"{rtype} at {item.origin} {shown}")
            return
        # Validation where it pays: `strict` validates every resource of a type the
        # pathway reads, here, and sets the invalid ones aside; `warn` validates later,
        # only what the pathway uses (`_validate_used`), so it keeps the raw dict of what
        # can matter (prefilter.py). What cannot matter is flattened by its accounting
        # view only.
        can_matter = self.prefilter.may_matter(resource)
        raw: dict[str, Any] | None = None
        if not can_matter and self.validation != "strict" and rtype in self.accounting:
            view = self.accounting[rtype]
        elif self.validation == "strict":
            problem = validation_problem(resource)
            if problem is not None:
                set_aside("error", "invalid-resource", problem)
                return
        elif self.validation == "warn" and can_matter:
            raw = resource
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
        if resource.get("contained") and can_matter:  # `#id` references resolve against these
            inner = contained_rows(resource, self.views)
            rows = [{**r, "_contained": inner} for r in rows]
        if self.entries is not None:
            self.entries.append((rtype, rid, rows, raw))
            return
        self.keep(rtype, rid, rows, raw)

    def keep(self, rtype: str, rid: str, rows: list[Row], raw: _Raw | None = None) -> None:
        """Keep a resource's rows (and its raw dict, to validate if used); of two with one
        type and id, the newer `meta.lastUpdated` (on a tie the later read), the other an
        issues row."""
        previous = self.rows[rtype].get(rid)
        if previous is not None:
            newer = rows[0]["_last_updated"] >= previous[0]["_last_updated"]
            keep, drop = (rows, previous) if newer else (previous, rows)
            self.rows[rtype][rid] = keep
            if newer:
                self._unvalidated(rtype, rid, raw)
            self.issues.append(Issue(
                "warning", "duplicate-resource",
                f"{rtype}/{rid} read twice; kept the version from {keep[0]['_origin']}", "",
                rtype, rid, drop[0]["_origin"], sets_aside=True))
            self.aside += 1
            return
        self.rows[rtype][rid] = rows
        self._unvalidated(rtype, rid, raw)

    def _unvalidated(self, rtype: str, rid: str, raw: _Raw | None) -> None:
        if raw is None:
            self.unvalidated.pop((rtype, rid), None)
        else:
            self.unvalidated[(rtype, rid)] = raw


def _validate_used(reader: _Reader, used: set[tuple[str, str]]) -> list[Issue]:
    """`warn`: validate the kept resources in `used` (by type, then id: the order does not
    depend on how the source listed them), a warning row each invalid one, with the
    origin of the version kept; then drop every raw dict kept for it."""
    issues = []
    for key in sorted(reader.unvalidated.keys() & used):
        raw = reader.unvalidated[key]
        problem = validation_problem(orjson.loads(raw) if isinstance(raw, bytes) else raw)
        if problem is not None:
            rtype, rid = key
            issues.append(Issue("warning", "invalid-resource", problem, "", rtype, rid,
                                str(reader.rows[rtype][rid][0]["_origin"])))
    reader.unvalidated.clear()
    return issues


def _account(reader: _Reader, normalised: Normalised, results: tuple[PatientResult, ...]
             ) -> tuple[Accounting, dict[str, str], set[tuple[str, str]]]:
    """Give every kept resource exactly one disposition: used, set aside with a reason,
    or (a Medication with a row) pending until the dataset knows every order. Returns
    the counts, the pending Medications (id -> origin) and the kept resources used."""
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
    n_aside = reader.aside
    kept_used: set[tuple[str, str]] = set()
    pending: dict[str, str] = {}
    unaccounted: list[str] = []
    for rtype, by_id in reader.rows.items():
        for rid, rows in by_id.items():
            key = (rtype, rid)
            if key in used:
                kept_used.add(key)
            elif key in aside or key in counted_issue_keys:
                n_aside += 1
            elif rtype == "Medication" and rid in normalised.medications:
                pending[rid] = str(rows[0]["_origin"])
            else:
                unaccounted.append(f"{rtype}/{rid}")
    counts = Accounting(reader.count, len(kept_used), n_aside, unaccounted)
    return counts, pending, kept_used
