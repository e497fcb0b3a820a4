"""refresh/scopes.py: each scope describes itself and applies its membership rule
without a server (the pulls themselves are exercised by tests/integration)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import responses

from fhir_spine.refresh.merge import Merge
from fhir_spine.refresh.pull import SearchPull
from fhir_spine.refresh.report import RefreshOptions, RefreshReport
from fhir_spine.refresh.scopes import BulkScope, GroupScope, RestScope, scope_for
from fhir_spine.refresh.store import RawStore
from fhir_spine.refresh.units import UnitResolver
from fhir_spine.settings import load_mappings
from fhir_spine.sources.http import FhirClient
from fhir_spine.sources.rest import index_code_tokens

BASE = "https://ehr.example.org/fhir"


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


def _scope(mappings, tmp_path: Path, **options):
    client = FhirClient(BASE)
    opts = RefreshOptions(out=tmp_path / "out", state_dir=tmp_path / "state", **options)
    return scope_for(client, mappings, opts, SearchPull(client, opts.rest),
                     sleep=lambda _s: None)


def test_options_choose_the_scope_and_its_description(mappings, tmp_path):
    rest = _scope(mappings, tmp_path)
    assert type(rest) is RestScope and rest.medications_by_reference
    assert rest.describe() == {"mode": "rest", "cohort": "index-procedure-codes",
                               "index_codes": index_code_tokens(mappings)}
    listed = _scope(mappings, tmp_path, patients=("p2", "p1"))
    digest = hashlib.sha256(b"p1\np2").hexdigest()
    assert listed.describe() == {"mode": "rest", "cohort": "patient-list",
                                 "patients_sha256": digest}
    system = _scope(mappings, tmp_path, bulk_level="system", type_filters=("Observation?x=y",))
    assert type(system) is BulkScope and not system.medications_by_reference
    assert system.describe() == {"mode": "bulk", "level": "system", "group_id": None,
                                 "type_filters": ["Observation?x=y"]}
    assert _scope(mappings, tmp_path, bulk_level="patient").medications_by_reference
    group = _scope(mappings, tmp_path, bulk_level="group", group_id="g1")
    assert type(group) is GroupScope and group.medications_by_reference
    assert "Medication" not in rest.types and "Condition" in rest.types


def test_membership_rules(mappings, tmp_path):
    store = RawStore(tmp_path / "store.sqlite")
    try:
        store.begin()
        assert _scope(mappings, tmp_path, patients=("p1",)).members(store) == {"p1"}
        assert _scope(mappings, tmp_path).members(store) == set()  # no index procedure
        assert _scope(mappings, tmp_path, bulk_level="patient").members(store) is None
        store.set_meta("group_members", ["p1", "p3"])
        group = _scope(mappings, tmp_path, bulk_level="group", group_id="g1")
        assert group.members(store) == {"p1", "p3"}
    finally:
        store.close()


@responses.activate
def test_group_scope_records_members_and_returns_joiners(mappings, tmp_path):
    responses.get(f"{BASE}/Group/g1", json={
        "resourceType": "Group", "type": "person", "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}},
                   {"entity": {"reference": "Patient/p2"}},
                   {"entity": {"reference": "Patient/p9"}, "inactive": True}]})
    store = RawStore(tmp_path / "store.sqlite")
    try:
        store.begin()
        store.set_meta("group_members", ["p1", "p3"])
        merge = Merge(store, RefreshReport(full=False, watermark_before=None),
                      UnitResolver(mappings))
        group = _scope(mappings, tmp_path, bulk_level="group", group_id="g1")
        assert group._update_members(merge) == ["p2"]
        assert group.members(store) == {"p1", "p2"}
    finally:
        store.close()
