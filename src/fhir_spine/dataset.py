"""The one dataset builder: computed parts -> the contract's tables -> the manifest.

`extract` and `refresh` publish through the same three steps, so their datasets cannot
drift apart:

1. `part_of(extraction)`: what one computation contributes (table rows by the row rules
   of `tables.py`, code counts, resource counts). `extract` makes one part of the whole
   source; `refresh` keeps one part per patient (and a few for what belongs to no
   patient) and recomputes only the parts whose resources changed.
2. `build_dataset(parts)`: the tables in their canonical order, the Medications decided
   across all parts (used when any order refers to them, else an `unreferenced-medication`
   issue), and the accounting, which is a gate: a dataset whose `read != used + set
   aside`, or with a resource neither used nor set aside, is never published
   (`AccountingError`, exit 70, naming the count and the first resources concerned).
3. `manifest(...)`: the manifest of either command, with the same keys.
4. `deidentified(...)`: with `--pseudonymise`, the tables and the manifest by the rule
   every column and field declares (`schema.py`, `deid.Deidentifier`), and the
   mapping back to real origins for the state folder.

A part is plain data (`to_json` / `from_json`), so refresh keeps unchanged patients'
parts in its store and the published tables are those a fresh extract would write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from fhir_spine import __version__, schema
from fhir_spine.errors import ExitCode, SpineError
from fhir_spine.normalise import CodeCount
from fhir_spine.pipeline import Accounting, Extraction, unreferenced_medications
from fhir_spine.settings import Mappings
from fhir_spine.tables import Rows, Tables, issue_row, rows_of, to_tables

if TYPE_CHECKING:
    from fhir_spine.deid import DeidOptions

# Bump when the stored form of a part changes: refresh then recomputes every part.
PART_FORMAT = 3
_DATE_COLUMNS = {name: [c.name for c in cols if c.dtype == "date"]
                 for name, cols in schema.TABLES.items()}


class AccountingError(SpineError):
    """Resources were read that the run neither used nor set aside: a bug, never
    published."""

    exit_code = ExitCode.INTERNAL


@dataclass(frozen=True)
class Part:
    """What one computation contributes to a dataset.

    `pending_medications` (id -> origin) are Medications that gave a row; whether they
    are used depends on every part's `referenced_medications`, so `build_dataset`
    decides them. `counts` leaves them out.
    """

    rows: Rows
    codes: tuple[CodeCount, ...]
    counts: Accounting
    read_by_type: Mapping[str, int]
    pending_medications: Mapping[str, str] = field(default_factory=dict)
    referenced_medications: frozenset[str] = frozenset()
    # set aside without an issues row (pipeline.QUIET_REASONS): reason -> type -> count
    set_aside_counted: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "format": PART_FORMAT,
            "rows": {name: getattr(self.rows, name) for name in _ROW_TABLES},
            "codes": [{"key": list(c.key), "resources": c.resources,
                       "patients": sorted(c.patients), "displays": dict(c.displays),
                       "concept": c.concept,
                       "hints": {d: list(h) for d, h in c.hints.items()},
                       "changed": {k: sorted(v) for k, v in c.changed.items()}}
                      for c in self.codes],
            "counts": {"read": self.counts.read, "used": self.counts.used,
                       "set_aside": self.counts.set_aside,
                       "unaccounted": list(self.counts.unaccounted)},
            "read_by_type": dict(self.read_by_type),
            "pending_medications": dict(self.pending_medications),
            "referenced_medications": sorted(self.referenced_medications),
            "set_aside_counted": {k: dict(v) for k, v in self.set_aside_counted.items()},
        })

    @classmethod
    def from_json(cls, data: bytes) -> Part:
        raw = orjson.loads(data)
        if raw.get("format") != PART_FORMAT:
            raise ValueError(f"stored part has format {raw.get('format')!r}, "
                             f"not {PART_FORMAT}")
        tables = raw["rows"]
        for name, records in tables.items():
            for column in _DATE_COLUMNS.get(name, ()):
                for record in records:
                    value = record.get(column)
                    if isinstance(value, str):
                        record[column] = date.fromisoformat(value)
        c = raw["counts"]
        return cls(
            Rows(*(tables[name] for name in _ROW_TABLES)),
            tuple(CodeCount(tuple(e["key"]), int(e["resources"]),  # type: ignore[arg-type]
                            frozenset(e["patients"]), e["displays"], e["concept"],
                            {d: (h[0], h[1]) for d, h in e["hints"].items()},
                            {k: frozenset(v) for k, v in e["changed"].items()})
                  for e in raw["codes"]),
            Accounting(int(c["read"]), int(c["used"]), int(c["set_aside"]),
                       list(c["unaccounted"])),
            raw["read_by_type"], raw["pending_medications"],
            frozenset(raw["referenced_medications"]), raw.get("set_aside_counted", {}))


_ROW_TABLES = ("patients", "events", "observations", "issues")


def part_of(extraction: Extraction) -> Part:
    return Part(rows_of(extraction), extraction.codes, extraction.counts,
                dict(extraction.read_by_type), dict(extraction.pending_medications),
                extraction.referenced_medications, extraction.set_aside_counted)


@dataclass(frozen=True)
class Dataset:
    tables: Tables
    accounting: Accounting
    read_by_type: Mapping[str, int]
    set_aside_counted: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def build_dataset(parts: Iterable[Part]) -> Dataset:
    """Parts -> tables, with the Medications decided across parts; `AccountingError`
    unless every resource read is used or set aside."""
    parts = list(parts)
    pending: dict[str, str] = {}
    referenced: set[str] = set()
    read = used = set_aside = 0
    unaccounted: list[str] = []
    read_by_type: Counter[str] = Counter()
    counted: dict[str, Counter[str]] = {}
    for p in parts:
        for reason, by_type in p.set_aside_counted.items():
            counted.setdefault(reason, Counter()).update(by_type)
        pending.update(p.pending_medications)
        referenced |= p.referenced_medications
        read, used = read + p.counts.read, used + p.counts.used
        set_aside += p.counts.set_aside
        unaccounted += p.counts.unaccounted
        read_by_type.update(p.read_by_type)
    unreferenced = unreferenced_medications(pending, referenced)
    used += len(pending) - len(unreferenced)
    set_aside += len(unreferenced)
    medications = Rows([], [], [], [issue_row(i) for i in unreferenced])
    accounting = Accounting(read, used, set_aside, unaccounted)
    check_accounting(accounting)
    tables = to_tables([*(p.rows for p in parts), medications],
                       (c for p in parts for c in p.codes))
    return Dataset(tables, accounting, dict(sorted(read_by_type.items())),
                   {reason: dict(sorted(by_type.items()))
                    for reason, by_type in sorted(counted.items())})


def check_accounting(acc: Accounting) -> None:
    """The gate: nothing read may be lost without a trace (README, "Accounting")."""
    if acc.unaccounted:
        shown = ", ".join(acc.unaccounted[:5]) + (", ..." if len(acc.unaccounted) > 5 else "")
        raise AccountingError(
            f"accounting: {len(acc.unaccounted)} resources neither used nor set aside: "
            f"{shown}; nothing published (a bug: rerun with --debug and report it)")
    if not acc.balanced:
        raise AccountingError(
            f"accounting: read {acc.read} != used {acc.used} + set aside {acc.set_aside}; "
            "nothing published (a bug: rerun with --debug and report it)")


def manifest(dataset: Dataset, mappings: Mappings, *, validation: str,
             source: Mapping[str, Any], fhir_version: str | None, query: Mapping[str, Any],
             started: datetime, finished: datetime,
             refresh: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of `extract` and `refresh` alike (refresh adds its `refresh` block);
    `outputs.write_dataset` adds the rows per table."""
    severities = dataset.tables.issues["severity"].value_counts().to_dict()
    acc = dataset.accounting
    return {
        "schema_version": 1, "tool": "fhir-spine", "tool_version": __version__,
        "started": started.isoformat(), "finished": finished.isoformat(),
        "source": dict(source), "fhir_version": fhir_version or "4.0.1",
        "query": dict(query),
        **({"refresh": dict(refresh)} if refresh is not None else {}),
        "settings": {k: sorted(v) if isinstance(v, frozenset) else v
                     for k, v in vars(mappings.settings).items()},
        "resources_read": dict(sorted(dataset.read_by_type.items())),
        "accounting": {"read": acc.read, "used": acc.used, "set_aside": acc.set_aside,
                       "unaccounted": len(acc.unaccounted), "balanced": acc.balanced},
        "issues": {str(k): int(v) for k, v in severities.items()},
        # set aside with no issues row: nothing to look at (a type the pathway does not
        # read, a code no concept maps: see `codes`), reason -> resource type -> count
        "set_aside_counted": {k: dict(v) for k, v in dataset.set_aside_counted.items()},
        "mapping_files": [{"path": str(f.path), "sha256": f.sha256} for f in mappings.files],
        "validation": validation,
        **({"terminology": mappings.terminology} if mappings.terminology else {}),
        "warnings": _terminology_warnings(mappings.terminology),
    }


def _terminology_warnings(block: Mapping[str, Any] | None) -> list[str]:
    """The run warnings of the `terminology` block: the server not used at all, or codes
    it could not decide (`--terminology-optional`; each an issues row)."""
    if not block:
        return []
    out = [str(block["warning"])] if block.get("warning") else []
    if block.get("codes_failed"):
        out.append(f"terminology server {block.get('server')}: {block['codes_failed']} "
                   "code(s) could not be decided and count as not members "
                   "(--terminology-optional; see issues `terminology-undecided`)")
    return out


def deidentified(tables: Tables, meta: Mapping[str, Any], options: DeidOptions | None,
                 mappings: Mappings | None, *,
                 extra_ids: Mapping[str, Iterable[str]] | None = None,
                 ) -> tuple[Tables, dict[str, Any], dict[str, Any] | None]:
    """What `extract` and `refresh` publish: the tables and manifest as they are, or, with
    `options` (`--pseudonymise`), every column and manifest field by its declared
    de-identification rule, plus the mapping back (None without `options`).
    `extra_ids` are ids the run asked for that may be in no table (`--patients`)."""
    if options is None:
        return tables, dict(meta), None
    from fhir_spine.deid import Deidentifier

    deid = Deidentifier(options, mappings, extra_ids=extra_ids)
    out = deid.tables(tables)
    return out, deid.manifest(meta), deid.origin_map()


def issue_counts(tables: Tables) -> dict[str, int]:
    """Issues per severity: the exit status is 1 when there is an `error`."""
    return {str(k): int(v) for k, v in tables.issues["severity"].value_counts().items()}


__all__ = ["AccountingError", "Dataset", "Part", "build_dataset",
           "check_accounting", "deidentified", "issue_counts", "manifest", "part_of"]
