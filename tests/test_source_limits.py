"""The file source against hostile folders (issue 15): deep nesting, unopenable entries."""

from __future__ import annotations

import json
from pathlib import Path

from fhir_spine.sources.files import MAX_JSON_DEPTH, RawResource, ReadProblem, iter_folder, too_deep


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def test_too_deep_counts_levels():
    assert not too_deep(nested(MAX_JSON_DEPTH))
    assert too_deep(nested(MAX_JSON_DEPTH + 1))
    assert too_deep({"a": [[[[1]]]]}, limit=4) and not too_deep({"a": [[[1]]]}, limit=4)


def test_a_1000_deep_line_and_bundle_entry_are_one_row_each(tmp_path: Path):
    deep = '{"x":' * 1000 + "1" + "}" * 1000
    (tmp_path / "Procedure.ndjson").write_text(
        '{"resourceType": "Procedure", "id": "a", "note": ' + deep + "}\n"
        '{"resourceType": "Procedure", "id": "b"}\n')
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "text": "DEEP"}},
        {"resource": {"resourceType": "Patient", "id": "q"}}]}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle).replace('"DEEP"', deep))
    items = list(iter_folder(tmp_path))
    problems = [i for i in items if isinstance(i, ReadProblem)]
    assert sorted((p.code, p.resource_type, p.resource_id) for p in problems) == [
        ("too-deep", "Patient", "p"), ("too-deep", "Procedure", "a")]
    assert sorted(i.resource["id"] for i in items if isinstance(i, RawResource)) == ["b", "q"]


def test_unopenable_entries_are_rows(tmp_path: Path):
    (tmp_path / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p"}\n')
    (tmp_path / "dangling.ndjson").symlink_to(tmp_path / "missing")
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    (tmp_path / "folder.ndjson").mkdir()  # a folder named like a file: not an entry
    problems = [i for i in iter_folder(tmp_path) if isinstance(i, ReadProblem)]
    assert sorted((p.origin, p.code) for p in problems) == [
        ("dangling.ndjson", "unreadable-file"), ("loop.json", "unreadable-file")]
