"""The dataset builder: parts -> tables -> manifest, and accounting as a gate.

The tables must not depend on how the work was split into parts (one part for a whole
extraction, one per patient for a refresh): that is what lets `refresh` recompute a few
patients and publish what a fresh `extract` would. And a run whose accounting does not
balance must never publish (exit 70, naming the count and the first resources).
"""

from __future__ import annotations

import pandas as pd
import pytest

from fhir_spine.cli.main import main
from fhir_spine.dataset import AccountingError, Part, build_dataset, part_of
from fhir_spine.errors import ExitCode
from fhir_spine.normalise import Normaliser
from fhir_spine.pipeline import Accounting, extract
from fhir_spine.refresh.store import RawStore
from fhir_spine.refresh.units import UnitResolver, compute_units
from fhir_spine.settings import DEMO_COHORT, load_mappings
from fhir_spine.sources.files import RawResource, iter_folder
from fhir_spine.tables import Rows


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


@pytest.fixture(scope="module")
def demo_items():
    return list(iter_folder(DEMO_COHORT))


def test_tables_do_not_depend_on_the_split_into_parts(tmp_path, mappings, demo_items):
    """One part for the whole demo, or one per patient (through JSON, as refresh stores
    them): the same tables, row by row, in the same order, and the same counts."""
    whole = build_dataset([part_of(extract(demo_items, mappings))])
    store = RawStore(tmp_path / "store.sqlite")
    store.begin()
    resolver = UnitResolver(mappings)
    for item in demo_items:
        assert isinstance(item, RawResource)
        store.upsert(item.resource, item.origin, *resolver.unit_of(item.resource))
    parts = compute_units(sorted(store.units()), store, mappings, "warn")
    assert len(parts) > 50
    split = build_dataset(Part.from_json(p.to_json()) for p in reversed(parts.values())
                          if p is not None)
    for name, frame in whole.tables.items():
        pd.testing.assert_frame_equal(getattr(split.tables, name), frame, obj=name)
    assert split.accounting == whole.accounting and split.accounting.balanced
    assert split.read_by_type == whole.read_by_type
    store.rollback()


def _part(read: int, used: int, set_aside: int, unaccounted: list[str] | None = None
          ) -> Part:
    return Part(Rows([], [], [], []), (), Accounting(read, used, set_aside,
                                                     unaccounted or []), {"Procedure": read})


def test_unaccounted_resources_stop_the_build():
    missing = [f"Procedure/p{i}" for i in range(7)]
    with pytest.raises(AccountingError) as info:
        build_dataset([_part(10, 3, 0, missing)])
    assert info.value.exit_code == ExitCode.INTERNAL == 70
    message = str(info.value)
    assert message.startswith("accounting: 7 resources neither used nor set aside: "
                              "Procedure/p0, Procedure/p1, Procedure/p2, Procedure/p3, "
                              "Procedure/p4, ...")
    assert "\n" not in message


def test_counts_that_do_not_add_up_stop_the_build():
    with pytest.raises(AccountingError, match=r"read 10 != used 3 \+ set aside 6"):
        build_dataset([_part(5, 3, 2), _part(5, 0, 4)])


def test_medications_are_decided_across_parts():
    """A Medication read in one part and ordered in another is used; one nobody orders
    is set aside with an issue."""
    meds = Part(Rows([], [], [], []), (), Accounting(2, 0, 0), {"Medication": 2},
                {"m1": "Medication.ndjson:1", "m2": "Medication.ndjson:2"})
    order = Part(Rows([], [], [], []), (), Accounting(1, 1, 0), {"MedicationRequest": 1},
                 referenced_medications=frozenset({"m1"}))
    dataset = build_dataset([order, meds])
    assert dataset.accounting == Accounting(3, 2, 1)
    [issue] = dataset.tables.issues.to_dict("records")
    assert (issue["code"], issue["resource_id"], issue["origin"]) == \
        ("unreferenced-medication", "m2", "Medication.ndjson:2")


def test_extract_with_unbalanced_accounting_exits_70_and_publishes_nothing(
        tmp_path, monkeypatch, capsys):
    """An Encounter handler that drops its rows (a bug) must not publish a dataset."""
    monkeypatch.setattr(Normaliser, "encounter", lambda self, row: None)
    out = tmp_path / "out"
    status = main(["--quiet", "extract", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == ExitCode.INTERNAL, err
    [line] = err.strip().splitlines()
    assert line.startswith("fhir-spine: error: accounting: ")
    assert "resources neither used nor set aside: Encounter/" in line
    assert not out.exists()
