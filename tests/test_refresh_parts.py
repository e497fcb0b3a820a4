"""The parts of `fhir-spine refresh` that need no server: lock, raw store, per-patient
recomputation and assembly, `_history` reading, state file.

The whole algorithm runs against real servers in tests/integration/test_refresh.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import responses

from fhir_spine.dataset import Part
from fhir_spine.errors import ExitCode
from fhir_spine.pipeline import extract
from fhir_spine.refresh.lock import LockHeld, RefreshLock, process_start_ticks
from fhir_spine.refresh.pull import history_since, matches_index
from fhir_spine.refresh.state import (
    RefreshState,
    StateError,
    load_state,
    save_state,
    state_dir_for,
)
from fhir_spine.refresh.store import MEDS, UNLINKED, RawStore, is_older
from fhir_spine.refresh.units import UnitResolver, assemble, compute_units
from fhir_spine.settings import DEMO_COHORT, load_mappings
from fhir_spine.sources.files import RawResource, iter_folder
from fhir_spine.sources.http import FhirClient
from fhir_spine.tables import build_tables

BASE = "https://ehr.example.org/fhir"


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


# ------------------------------------------------------------------ lock

def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    with RefreshLock(tmp_path) as held:
        assert held.previous_owner is None
        with pytest.raises(LockHeld) as info:
            RefreshLock(tmp_path).acquire()
        assert info.value.exit_code == ExitCode.LOCK_HELD
        assert f"another refresh is running (pid {os.getpid()} on" in str(info.value)
        record = json.loads((tmp_path / "refresh.lock").read_text())
        assert record["process_start"] == process_start_ticks(os.getpid())
    assert (tmp_path / "refresh.lock").read_text() == ""  # clean release: no record
    with RefreshLock(tmp_path) as again:
        assert again.previous_owner is None


def test_lock_of_a_killed_process_is_free_and_reported_stale(tmp_path):
    """A process that holds the lock and dies by SIGKILL leaves its owner record but no
    lock: the next run gets the lock at once and knows the previous run died."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'src')!r})
        from pathlib import Path
        from fhir_spine.refresh.lock import RefreshLock
        RefreshLock(Path({str(tmp_path)!r})).acquire()
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9
    dead_pid = int(proc.stdout.strip())
    with RefreshLock(tmp_path) as lock:
        assert lock.previous_owner is not None and lock.previous_owner["pid"] == dead_pid


def test_lock_held_by_another_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'src')!r})
        from pathlib import Path
        from fhir_spine.refresh.lock import RefreshLock
        with RefreshLock(Path({str(tmp_path)!r})):
            print("locked", flush=True)
            time.sleep(30)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {holder.pid} on"):
            RefreshLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RefreshLock(tmp_path) as lock:  # free once its holder is gone
        assert lock.previous_owner["pid"] == holder.pid


# ------------------------------------------------------------------ state

def test_state_dir_is_beside_the_dataset_and_state_is_written_whole(tmp_path):
    assert state_dir_for(tmp_path / "out") == tmp_path / "out.state"
    assert load_state(tmp_path) is None
    state = RefreshState(server=BASE, scope={"mode": "rest"}, watermark="2025-01-01T00:00:00"
                         ".000Z", watermark_source="server-date", fingerprint="x", run=3)
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError) as info:
        load_state(tmp_path)
    assert info.value.exit_code == ExitCode.STATE and "--full" in str(info.value)


# ------------------------------------------------------------------ store

def resource(rtype: str, rid: str, version: str | None, updated: str | None, **fields):
    meta = {k: v for k, v in (("versionId", version), ("lastUpdated", updated)) if v}
    return {"resourceType": rtype, "id": rid, **({"meta": meta} if meta else {}), **fields}


def test_store_merges_by_id_and_version(tmp_path):
    store = RawStore(tmp_path / "store.sqlite")
    assert oct((tmp_path / "store.sqlite").stat().st_mode & 0o777) == "0o600"
    store.begin()
    v1 = resource("Procedure", "x", "1", "2025-01-01T10:00:00Z", status="completed")
    assert store.upsert(v1, "a", "p1", None).kind == "added"
    assert store.upsert(v1, "b", "p1", None) is None  # the same version again
    v2 = resource("Procedure", "x", "2", "2025-01-02T10:00:00+00:00", status="completed",
                  subject={"reference": "Patient/p2"})
    change = store.upsert(v2, "c", "p2", None)
    assert (change.kind, change.old_unit, change.new_unit) == ("updated", "p1", "p2")
    older = resource("Procedure", "x", "1", "2025-01-01T10:00:00Z", status="stopped")
    assert store.upsert(older, "d", "p1", None) is None  # an older copy never wins
    # same instant: the higher versionId wins
    same_time = resource("Procedure", "x", "3", "2025-01-02T10:00:00Z", status="done")
    assert store.upsert(same_time, "e", "p2", None).kind == "updated"
    assert list(store.resources_of("p2"))[0][0]["status"] == "done"
    store.upsert(resource("MedicationRequest", "m", "1", "2025-01-01T00:00:00Z"), "f", "p2",
                 "med1")
    assert store.units_referencing("med1") == {"p2"}
    assert store.delete(("Procedure", "x")).old_unit == "p2"
    assert store.delete(("Procedure", "x")) is None
    store.commit()
    store.close()


def test_uncommitted_work_is_rolled_back(tmp_path):
    store = RawStore(tmp_path / "store.sqlite")
    store.begin()
    store.upsert(resource("Patient", "p1", "1", None), "a", "p1", None)
    store.close()  # like a kill: never committed
    assert RawStore(tmp_path / "store.sqlite").count() == 0


def test_is_older():
    assert is_older(("1", "2025-01-01T00:00:00Z"), ("2", "2025-01-02T00:00:00Z"))
    assert not is_older(("3", "2025-01-03T00:00:00Z"), ("2", "2025-01-02T00:00:00Z"))
    assert is_older(("1", "2025-01-01T00:00:00Z"), ("2", "2025-01-01T00:00:00+00:00"))
    assert not is_older((None, None), ("2", "2025-01-01T00:00:00Z"))  # cannot tell: take it


def test_units_follow_the_views(mappings):
    resolver = UnitResolver(mappings)
    assert resolver.unit_of({"resourceType": "Patient", "id": "p1"}) == ("p1", None)
    assert resolver.unit_of({"resourceType": "Medication", "id": "m"}) == (MEDS, None)
    assert resolver.unit_of({"resourceType": "Basic", "id": "b"}) == (UNLINKED, None)
    order = {"resourceType": "MedicationRequest", "id": "o", "status": "active",
             "intent": "order", "subject": {"reference": f"{BASE}/Patient/p9"},
             "medicationReference": {"reference": "Medication/m1"}}
    assert resolver.unit_of(order) == ("p9", "m1")
    assert resolver.unit_of({"resourceType": "Observation", "id": "o2"})[0] == UNLINKED


def test_matches_index():
    proc = {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "86273004"}]}}
    assert matches_index(proc, ["http://snomed.info/sct|86273004"])
    assert matches_index(proc, ["http://snomed.info/sct|"])
    assert not matches_index(proc, ["http://snomed.info/sct|1"])


# ------------------------------------------------------------------ recompute

def _demo_subset(count: int) -> list[RawResource]:
    items = [i for i in iter_folder(DEMO_COHORT) if isinstance(i, RawResource)]
    patients = sorted(i.resource["id"] for i in items if i.resource["resourceType"] ==
                      "Patient")[:count]
    keep = {f"Patient/{p}" for p in patients}
    return [i for i in items if i.resource["resourceType"] == "Medication"
            or (i.resource["resourceType"] == "Patient" and i.resource["id"] in patients)
            or ((i.resource.get("subject") or {}).get("reference") in keep)]


def _norm(df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=[c for c in ("origin",) if c in df.columns]).astype(str)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_assembled_units_equal_a_full_extraction_and_recompute_only_changes(tmp_path,
                                                                           mappings):
    items = _demo_subset(12)
    store = RawStore(tmp_path / "store.sqlite")
    store.begin()
    resolver = UnitResolver(mappings)
    for item in items:
        store.upsert(item.resource, item.origin, *resolver.unit_of(item.resource))
    results = compute_units(sorted(store.units()), store, mappings, "warn")
    for unit, result in results.items():
        store.save_unit_rows(unit, result.to_json())
    assembled = assemble(Part.from_json(b) for _, b in store.unit_rows())
    full = extract(items, mappings)
    tables = build_tables(full)
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(_norm(getattr(assembled.tables, name)), _norm(frame),
                                      obj=name)
    assert assembled.accounting.read == full.accounting.read
    assert assembled.accounting.used == full.accounting.used
    assert assembled.accounting.set_aside == full.accounting.set_aside
    assert dict(assembled.read_by_type) == dict(full.read_by_type)
    # patients and events come out in the order of a full extraction
    assert list(assembled.tables.patients["patient_id"]) == \
        list(tables.patients["patient_id"])

    # one patient loses a procedure: recompute that unit only, carry the rest over
    victim = next(i.resource for i in items if i.resource["resourceType"] == "Procedure")
    unit = resolver.unit_of(victim)[0]
    store.delete(("Procedure", victim["id"]))
    store.save_unit_rows(unit, compute_units([unit], store, mappings, "warn")[unit].to_json())
    after = assemble(Part.from_json(b) for _, b in store.unit_rows())
    reduced = [i for i in items if i.resource is not victim]
    want = build_tables(extract(reduced, mappings))
    for name, frame in want.items():
        pd.testing.assert_frame_equal(_norm(getattr(after.tables, name)), _norm(frame),
                                      obj=f"after delete {name}")
    store.rollback()


# ------------------------------------------------------------------ _history

def _history(entries: list[dict], next_url: str | None = None) -> dict:
    bundle: dict = {"resourceType": "Bundle", "type": "history", "entry": entries,
                    "link": [{"relation": "self", "url": f"{BASE}/_history"}]}
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    return bundle


@responses.activate
def test_history_newest_entry_wins_and_old_pages_are_ignored():
    since = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    page1 = _history([
        # HAPI: a DELETE entry has no lastModified
        {"fullUrl": f"{BASE}/Procedure/gone", "request": {"method": "DELETE",
                                                          "url": "Procedure/gone/_history/3"}},
        {"fullUrl": f"{BASE}/Procedure/back", "resource": resource(
            "Procedure", "back", "3", "2025-06-01T12:05:00Z"),
         "request": {"method": "PUT", "url": "Procedure/back"}},
        {"fullUrl": f"{BASE}/Procedure/back", "request": {"method": "DELETE",
                                                          "url": "Procedure/back"},
         "response": {"lastModified": "2025-06-01T12:04:00Z"}},
        {"resource": resource("Basic", "b", "1", "2025-06-01T12:03:00Z"),
         "request": {"method": "POST", "url": "Basic"}},
    ], f"{BASE}/_history?_count=4&_offset=4")  # sekmet drops _since from next links
    page2 = _history([
        {"resource": resource("Procedure", "old", "1", "2025-05-01T00:00:00Z"),
         "request": {"method": "PUT", "url": "Procedure/old"}}],
        f"{BASE}/_history?_count=4&_offset=8")
    responses.add(responses.GET, f"{BASE}/_history", json=page1,
                  match=[responses.matchers.query_param_matcher(
                      {"_since": "2025-06-01T12:00:00.000Z", "_count": "4"})])
    responses.add(responses.GET, f"{BASE}/_history?_count=4&_offset=4", json=page2)
    latest, pages = history_since(FhirClient(BASE), since, ["Procedure", "Patient"],
                                  system=True, page_size=4)
    assert pages == 2  # page 2 holds only older entries: paging stops there
    assert latest[("Procedure", "gone")].method == "DELETE"
    assert latest[("Procedure", "back")].method == "PUT"  # re-created after the delete
    assert ("Basic", "b") not in latest and ("Procedure", "old") not in latest
