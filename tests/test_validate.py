"""Validation where it pays (issue 16): `warn` validates only the resources the pathway
uses, once the accounting knows them; `strict` validates every resource of a type the
pathway reads while reading and sets the invalid ones aside."""

from __future__ import annotations

import json

import pytest

from fhir_spine.dataset import build_dataset, part_of
from fhir_spine.pipeline import extract, extract_files
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import FileSource, RawResource, iter_folder
from fhir_spine.validate import validation_problem

CPT = "http://www.ama-assn.org/go/cpt"
MAPPINGS = load_mappings(None, {})

PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01",
           "gender": "female", "active": "maybe"}  # invalid: not a boolean
BIOPSY = {"resourceType": "Procedure", "id": "bx", "status": "completed",
          "subject": {"reference": "Patient/p1"},
          "code": {"coding": [{"system": CPT, "code": "20225"}]},
          "performedDateTime": "2023-03-01T10:00:00Z", "note": "x"}  # invalid: not a list
# invalid too, and set aside: a biopsy not done (an unused event), one of a patient not
# screened, one with a code no concept maps
SECOND = {**BIOPSY, "id": "bx2", "status": "not-done"}
GHOST = {**BIOPSY, "id": "ghost", "subject": {"reference": "Patient/nobody"}}
UNMAPPED = {**BIOPSY, "id": "zz", "code": {"coding": [{"system": "http://x.example",
                                                       "code": "ZZ"}]}}
RESOURCES = [PATIENT, BIOPSY, SECOND, GHOST, UNMAPPED]


def _items():
    return [RawResource(r, f"in.ndjson:{n}") for n, r in enumerate(RESOURCES, start=1)]


def _invalid_rows(extraction):
    return sorted((i.severity, i.resource_type, i.resource_id, i.message, i.origin,
                   i.sets_aside) for i in extraction.issues if i.code == "invalid-resource")


def test_fixture_resources_are_all_invalid():
    assert all(validation_problem(r) is not None for r in RESOURCES)


def test_warn_flags_exactly_the_resources_used():
    extraction = extract(_items(), MAPPINGS, validation="warn")
    used = {d.source.key for r in extraction.results for d in r.decisions if d.used}
    assert ("Procedure", "bx") in used and ("Procedure", "bx2") not in used
    assert extraction.patients == {"p1"}
    assert _invalid_rows(extraction) == [
        ("warning", "Patient", "p1", validation_problem(PATIENT), "in.ndjson:1", False),
        ("warning", "Procedure", "bx", validation_problem(BIOPSY), "in.ndjson:2", False)]
    # the unused ones are set aside as before, for their own reasons
    codes = {(i.resource_id, i.code) for i in extraction.issues if i.sets_aside}
    assert ("ghost", "missing-patient") in codes
    assert extraction.set_aside_counted["unmapped-code"] == {"Procedure": 1}
    assert extraction.accounting.balanced


def test_strict_sets_every_invalid_resource_aside_while_reading():
    extraction = extract(_items(), MAPPINGS, validation="strict")
    assert _invalid_rows(extraction) == [
        ("error", str(r["resourceType"]), str(r["id"]), validation_problem(r),
         f"in.ndjson:{n}", True)
        for n, r in sorted(enumerate(RESOURCES, start=1),
                           key=lambda p: (p[1]["resourceType"], p[1]["id"]))]
    assert not extraction.patients and extraction.accounting.used == 0
    assert extraction.accounting.balanced


def test_off_validates_nothing():
    assert _invalid_rows(extract(_items(), MAPPINGS, validation="off")) == []


def test_of_a_resource_read_twice_the_version_kept_is_validated():
    valid = {k: v for k, v in BIOPSY.items() if k != "note"}
    newer = {**BIOPSY, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    older = {**valid, "meta": {"lastUpdated": "2023-01-01T00:00:00Z"}}
    for first, second, flagged in ((newer, older, ["a"]), (older, newer, ["b"]),
                                   (valid, BIOPSY, ["b"]), (BIOPSY, valid, [])):
        items = [RawResource(PATIENT, "p"), RawResource(first, "a"),
                 RawResource(second, "b")]
        rows = _invalid_rows(extract(items, MAPPINGS, validation="warn"))
        assert [o for _, t, _, _, o, _ in rows if t == "Procedure"] == flagged


@pytest.mark.parametrize("validation", ["warn", "strict"])
def test_file_parts_give_the_same_rows_whatever_the_jobs(tmp_path, validation):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_text("".join(json.dumps(r) + "\n" for r in RESOURCES))
    late = {**BIOPSY, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    (src / "b.ndjson").write_text(json.dumps(late) + "\n")
    one = extract(iter_folder(src), MAPPINGS, validation=validation)  # type: ignore[arg-type]
    want = _invalid_rows(one)
    assert want
    tables = build_dataset([part_of(one)]).tables
    for jobs in (1, 2):
        par = extract_files(FileSource(src), MAPPINGS, validation=validation,  # type: ignore[arg-type]
                            jobs=jobs)
        assert _invalid_rows(par) == want
        assert build_dataset([part_of(par)]).tables.issues.equals(tables.issues)
    if validation == "warn":  # the later, kept biopsy is the one flagged
        assert [o for _, t, _, _, o, _ in want if t == "Procedure"] == ["b.ndjson:1"]
