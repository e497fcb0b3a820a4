"""The raw store: the current version of every resource in scope, and per-patient rows.

SQLite (stdlib `sqlite3`): one file, transactions, no server, and it survives kill -9
(an uncommitted transaction is rolled back when the file is next opened). Two tables
matter:

- `resources`: one row per (type, id), the current version only, with the unit it
  belongs to (the patient id the pathway files it under; `#medications` for
  Medication, `#unlinked` for resources without a usable patient reference), the
  referenced Medication id, `versionId`, `meta.lastUpdated`, a SHA-256 of the
  canonical JSON, where it came from, and the JSON itself.
- `units`: per unit, the rows it contributes to `patients`, `events`, `observations`,
  `issues`, its code tally and its accounting (refresh/units.py). Unchanged patients'
  rows are carried over from here into the next dataset, never re-read from the
  published Parquet.

A refresh runs in one transaction that is committed only after the new dataset is
published (refresh/run.py), so the store never runs ahead of the dataset.

Merging by id and version: an incoming resource replaces the stored one unless it is the
same (equal content hash) or older (earlier `meta.lastUpdated`, or at the same instant a
lower numeric `versionId`). Only a real replacement counts as a change, which is what
makes re-reading an overlap window, or a whole interrupted run, harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from fhir_spine.refresh.state import RefreshState, StateError

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
MEDS = "#medications"
UNLINKED = "#unlinked"
RUN = "#run"
SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, unit TEXT NOT NULL, medication TEXT,
    version TEXT, last_updated TEXT, hash TEXT NOT NULL, origin TEXT, body BLOB NOT NULL,
    PRIMARY KEY (type, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resources_unit ON resources (unit);
CREATE INDEX IF NOT EXISTS resources_medication ON resources (medication);
CREATE TABLE IF NOT EXISTS units (unit TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

Key = tuple[str, str]


@dataclass(frozen=True)
class Change:
    key: Key
    kind: str                 # added | updated | deleted
    old_unit: str | None
    new_unit: str | None


def content_hash(resource: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def is_older(incoming: tuple[str | None, str | None], stored: tuple[str | None, str | None]
             ) -> bool:
    """(versionId, lastUpdated) of an incoming copy older than the stored one?"""
    new_time, old_time = _instant(incoming[1]), _instant(stored[1])
    if new_time is not None and old_time is not None:
        try:
            if new_time != old_time:
                return new_time < old_time
        except TypeError:  # naive vs aware: compare as text
            if incoming[1] != stored[1]:
                return str(incoming[1]) < str(stored[1])
    if incoming[0] and stored[0] and incoming[0].isdigit() and stored[0].isdigit():
        return int(incoming[0]) < int(stored[0])
    return False


class RawStore:
    """The SQLite raw store of one dataset. Use `begin()` ... `commit()` around a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():  # health data: owner-only, like the published files
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self.db.execute("SELECT count(*) FROM resources").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"raw store {path} is unusable ({exc}); run with --full to "
                             "rebuild it from the server") from None

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ transactions

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def clear(self) -> None:
        """Empty the store (a full pull rebuilds it), inside the current transaction."""
        self.db.execute("DELETE FROM resources")
        self.db.execute("DELETE FROM units")

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (key, orjson.dumps(value).decode()))

    # ------------------------------------------------------------ resources

    def upsert(self, resource: dict[str, Any], origin: str, unit: str,
               medication: str | None) -> Change | None:
        """Store `resource` if it is new or newer than the stored copy; the change or None."""
        key = (str(resource["resourceType"]), str(resource["id"]))
        meta = m if isinstance(m := resource.get("meta"), dict) else {}
        version = str(meta.get("versionId")) if meta.get("versionId") is not None else None
        updated = str(meta.get("lastUpdated")) if meta.get("lastUpdated") else None
        digest = content_hash(resource)
        old = self.db.execute("SELECT unit, medication, version, last_updated, hash FROM "
                              "resources WHERE type = ? AND id = ?", key).fetchone()
        if old is not None:
            if old[4] == digest:
                return None
            if is_older((version, updated), (old[2], old[3])):
                log.debug("%s/%s: kept the stored version %s (%s); got older %s (%s)", *key,
                          old[2], old[3], version, updated)
                return None
        self.db.execute(
            "INSERT OR REPLACE INTO resources (type, id, unit, medication, version, "
            "last_updated, hash, origin, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, unit, medication, version, updated, digest, origin, orjson.dumps(resource)))
        if old is None:
            return Change(key, "added", None, unit)
        return Change(key, "updated", old[0], unit)

    def delete(self, key: Key) -> Change | None:
        old = self.db.execute("SELECT unit FROM resources WHERE type = ? AND id = ?",
                              key).fetchone()
        if old is None:
            return None
        self.db.execute("DELETE FROM resources WHERE type = ? AND id = ?", key)
        return Change(key, "deleted", old[0], None)

    def delete_unit(self, unit: str) -> list[Change]:
        keys = [tuple(r) for r in self.db.execute(
            "SELECT type, id FROM resources WHERE unit = ?", (unit,))]
        changes = [c for k in keys if (c := self.delete(k)) is not None]  # type: ignore[arg-type]
        self.drop_unit_rows(unit)
        return changes

    def has(self, key: Key) -> bool:
        return self.db.execute("SELECT 1 FROM resources WHERE type = ? AND id = ?",
                               key).fetchone() is not None

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM resources").fetchone()[0])

    def counts_by_type(self) -> dict[str, int]:
        return {t: n for t, n in self.db.execute(
            "SELECT type, count(*) FROM resources GROUP BY type ORDER BY type")}

    def keys(self, resource_type: str | None = None) -> list[Key]:
        if resource_type is None:
            rows = self.db.execute("SELECT type, id FROM resources ORDER BY type, id")
        else:
            rows = self.db.execute("SELECT type, id FROM resources WHERE type = ? ORDER BY id",
                                   (resource_type,))
        return [(str(t), str(i)) for t, i in rows]

    def units(self) -> set[str]:
        return {str(u) for (u,) in self.db.execute("SELECT DISTINCT unit FROM resources")}

    def patient_units(self) -> list[str]:
        return sorted(u for u in self.units() if not u.startswith("#"))

    def resources_of(self, unit: str) -> Iterator[tuple[dict[str, Any], str]]:
        for body, origin in self.db.execute(
                "SELECT body, origin FROM resources WHERE unit = ? ORDER BY type, id", (unit,)):
            yield orjson.loads(body), str(origin or "")

    def medications_of(self, unit: str) -> list[str]:
        return [str(m) for (m,) in self.db.execute(
            "SELECT DISTINCT medication FROM resources WHERE unit = ? AND medication IS NOT "
            "NULL ORDER BY medication", (unit,))]

    def resources_by_id(self, resource_type: str, ids: Iterable[str]
                        ) -> Iterator[tuple[dict[str, Any], str]]:
        for rid in sorted(set(ids)):
            row = self.db.execute("SELECT body, origin FROM resources WHERE type = ? AND "
                                  "id = ?", (resource_type, rid)).fetchone()
            if row is not None:
                yield orjson.loads(row[0]), str(row[1] or "")

    def units_referencing(self, medication: str) -> set[str]:
        return {str(u) for (u,) in self.db.execute(
            "SELECT DISTINCT unit FROM resources WHERE medication = ?", (medication,))}

    def referenced_medications(self) -> set[str]:
        return {str(m) for (m,) in self.db.execute(
            "SELECT DISTINCT medication FROM resources WHERE medication IS NOT NULL")}

    def procedures(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for unit, body in self.db.execute(
                "SELECT unit, body FROM resources WHERE type = 'Procedure'"):
            yield str(unit), orjson.loads(body)

    # ------------------------------------------------------------ unit rows

    def save_unit_rows(self, unit: str, body: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO units (unit, body) VALUES (?, ?)", (unit, body))

    def drop_unit_rows(self, unit: str) -> None:
        self.db.execute("DELETE FROM units WHERE unit = ?", (unit,))

    def unit_rows(self) -> Iterator[tuple[str, bytes]]:
        for unit, body in self.db.execute("SELECT unit, body FROM units ORDER BY unit"):
            yield str(unit), bytes(body)

    def unit_names(self) -> set[str]:
        return {str(u) for (u,) in self.db.execute("SELECT unit FROM units")}

    # ------------------------------------------------------------ integrity

    def actual_counts(self) -> dict[str, int]:
        return {"resources": self.count(),
                "units": int(self.db.execute("SELECT count(*) FROM units").fetchone()[0])}

    def record_counts(self) -> None:
        """What the store holds, saved with the run number and watermark before COMMIT,
        so the next run can tell an emptied or truncated store from a real one."""
        self.set_meta("counts", self.actual_counts())

    def check_against(self, state: RefreshState) -> None:
        """Before an incremental run recomputes anything: the store is the one `state`
        describes (run number, watermark, counts), else `StateError` (exit 9). A store
        one run ahead of state.json is a run killed between COMMIT and writing the
        state: taken as it is, as the refresh design says."""
        hint = "; nothing published: run with --full to rebuild it from the server"
        run = self.get_meta("run")
        if not isinstance(run, int) or isinstance(run, bool):
            raise StateError(f"raw store {self.path} has no run record but state.json "
                             f"names run {state.run}: the store was deleted, emptied or "
                             f"replaced{hint}")
        if run not in (state.run, state.run + 1):
            raise StateError(f"raw store {self.path} is at run {run}, state.json at run "
                             f"{state.run}: they do not belong together{hint}")
        if run == state.run and self.get_meta("watermark") != state.watermark:
            raise StateError(f"raw store {self.path} has watermark "
                             f"{self.get_meta('watermark')!r}, state.json {state.watermark!r}"
                             f"{hint}")
        counts = self.get_meta("counts")
        if counts is not None and counts != self.actual_counts():
            raise StateError(f"raw store {self.path} holds {self.actual_counts()}, but its "
                             f"last run left {counts}: rows were deleted or a table "
                             f"lost{hint}")

    def healthy(self) -> bool:
        try:
            return [str(r[0]) for r in self.db.execute("PRAGMA quick_check")] == ["ok"]
        except sqlite3.DatabaseError:
            return False

    @classmethod
    def open(cls, path: Path, *, full: bool) -> RawStore:
        """The store at `path`. For a full pull (`--full`), a store that cannot be opened
        or fails the page check is removed and started anew: the pull rebuilds it."""
        if not full:
            return cls(path)
        try:
            store = cls(path)
            if store.healthy():
                return store
            store.close()
        except StateError:
            pass
        log.warning("raw store %s is damaged; --full starts it anew", path)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                path.with_name(path.name + suffix).unlink()
        return cls(path)

    def check_integrity(self) -> None:
        """SQLite's own page check, before anything is published: a corrupt store is
        exit 9, never a dataset built from half of it."""
        try:
            rows = [str(r[0]) for r in self.db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        if rows != ["ok"]:
            raise StateError(f"raw store {self.path} is damaged ({'; '.join(rows[:3])}); "
                             "nothing published: run with --full to rebuild it from the "
                             "server")
