import gzip
import json

import pytest

from fhir_spine.errors import UsageError
from fhir_spine.sources.files import (
    FileSource,
    FileUnit,
    RawResource,
    ReadProblem,
    file_units,
    iter_file,
    iter_folder,
)


def _write_ndjson(path, resources, *, gz=False):
    text = "\n".join(json.dumps(r) for r in resources) + "\n"
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def test_ndjson_plain_and_gzip_and_numbered_files(tmp_path):
    _write_ndjson(tmp_path / "Procedure.ndjson", [{"resourceType": "Procedure", "id": "a"}])
    _write_ndjson(tmp_path / "Observation.000.ndjson",
                  [{"resourceType": "Observation", "id": "o1"}])
    _write_ndjson(tmp_path / "Observation.001.ndjson.gz",
                  [{"resourceType": "Observation", "id": "o2"}], gz=True)
    items = list(iter_folder(tmp_path))
    assert [i.resource["id"] for i in items] == ["o1", "o2", "a"]
    assert items[0].origin == "Observation.000.ndjson:1"


def test_malformed_line_is_a_problem_and_reading_goes_on(tmp_path):
    (tmp_path / "Patient.ndjson").write_text(
        '{"resourceType":"Patient","id":"1"}\n{not json\n\n{"resourceType":"Patient","id":"2"}\n'
        '[1,2]\n')
    items = list(iter_folder(tmp_path))
    kinds = [(type(i).__name__, getattr(i, "code", None)) for i in items]
    assert kinds == [("RawResource", None), ("ReadProblem", "malformed-json"),
                     ("RawResource", None), ("ReadProblem", "not-a-resource")]
    assert items[1].origin == "Patient.ndjson:2"


def test_bundle_urn_uuid_references_resolve_to_type_and_id(tmp_path):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Procedure", "id": "bx",
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "PUT", "url": "Procedure/bx"}},
    ]}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    items = list(iter_folder(tmp_path))
    patient, procedure = (i.resource for i in items)
    assert patient["id"] == "11111111-1111-1111-1111-111111111111"
    assert procedure["subject"]["reference"] == "Patient/11111111-1111-1111-1111-111111111111"


def test_single_resource_json_and_non_fhir_files_ignored(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"resourceType": "Patient", "id": "x"}))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "ground-truth.csv").write_text("a,b\n")
    items = list(iter_folder(tmp_path))
    assert len(items) == 1 and isinstance(items[0], RawResource)


def test_truncated_gzip_is_reported_not_raised(tmp_path):
    path = tmp_path / "Patient.ndjson.gz"
    _write_ndjson(path, [{"resourceType": "Patient", "id": str(i)} for i in range(2000)], gz=True)
    path.write_bytes(path.read_bytes()[:200])
    items = list(iter_folder(tmp_path))
    assert isinstance(items[-1], ReadProblem) and items[-1].code == "unreadable-file"


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        list(iter_folder(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        list(iter_folder(tmp_path / "file"))


def _ranged_file(path):
    """A file that a 64-byte range size splits many times: a line longer than a range,
    blank lines, a malformed line and a Bundle line, some of them right at a boundary."""
    obs = [json.dumps({"resourceType": "Observation", "id": f"o{i}"}) for i in range(12)]
    long = json.dumps({"resourceType": "Observation", "id": "long", "note": "x" * 300})
    bundle = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p9", "resource": {"resourceType": "Patient", "id": "p9"}},
        {"resource": {"resourceType": "Observation", "id": "ob",
                      "subject": {"reference": "urn:uuid:p9"}}}]})
    lines = [obs[0], "", obs[1], long, "{not json", obs[2], "", "", bundle, *obs[3:],
             "", '{"truncated": ']
    path.write_text("\n".join(lines))  # no newline at the end either
    return path


def _shape(items):
    return [(type(i).__name__, i.origin, getattr(i, "resource", None),
             getattr(i, "message", None)) for i in items]


@pytest.mark.parametrize("range_bytes", [1, 40, 64, 100, 333])
def test_ranges_read_in_order_equal_the_file_read_whole(tmp_path, range_bytes):
    path = _ranged_file(tmp_path / "Observation.ndjson")
    units = file_units(path, range_bytes)
    assert len(units) > 2
    assert units[0].start == 0 and units[-1].end is None
    for before, after in zip(units, units[1:], strict=False):
        assert before.end == after.start  # contiguous, nothing skipped or read twice
        assert path.read_bytes()[after.start - 1:after.start] == b"\n"
    ranged = [item for unit in units for item in iter_file(tmp_path, unit, [])]
    whole = list(iter_file(tmp_path, path, []))
    assert _shape(ranged) == _shape(whole)
    origins = [i.origin for i in whole]
    assert "Observation.ndjson:5" in origins  # the malformed line, its own number
    assert "Observation.ndjson:9#entry[1]" in origins  # a Bundle line unpacked
    assert origins[-1] == "Observation.ndjson:20"


def test_what_is_not_plain_ndjson_or_is_small_stays_one_unit(tmp_path):
    path = _ranged_file(tmp_path / "Observation.ndjson")
    (tmp_path / "Observation.ndjson.gz").write_bytes(gzip.compress(path.read_bytes()))
    (tmp_path / "b.json").write_bytes(path.read_bytes())
    for name in ("Observation.ndjson.gz", "b.json"):
        assert file_units(tmp_path / name, 16) == [FileUnit(tmp_path / name)]
    assert file_units(path, path.stat().st_size) == [FileUnit(path)]
    (tmp_path / "gone.ndjson").symlink_to(tmp_path / "nowhere.ndjson")
    assert file_units(tmp_path / "gone.ndjson", 16) == [FileUnit(tmp_path / "gone.ndjson")]


def test_a_client_log_is_never_split_and_is_seen_once(tmp_path):
    event = {"eventId": "export_complete", "kickoffUrl": "https://x/$export",
             "exportId": "1", "timestamp": "2024-01-01T00:00:00Z",
             "eventDetail": {"transactionTime": "2024-01-01T00:00:00Z"}}
    (tmp_path / "log.ndjson").write_text("{bad\n" + "\n".join([json.dumps(event)] * 20))
    assert file_units(tmp_path / "log.ndjson", 16) == [FileUnit(tmp_path / "log.ndjson")]
    source = FileSource(tmp_path, range_bytes=16)
    assert len(source.units()) == 1


def test_a_range_of_a_file_that_shrank_says_so(tmp_path):
    path = _ranged_file(tmp_path / "Observation.ndjson")
    units = file_units(path, 64)
    path.write_bytes(path.read_bytes()[:units[1].start + 3])
    items = list(iter_file(tmp_path, units[1], []))
    assert items[-1].code == "unreadable-file"
    assert "changed while it was read" in items[-1].message
