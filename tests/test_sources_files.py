import gzip
import json

import pytest

from fhir_spine.errors import UsageError
from fhir_spine.sources.files import RawResource, ReadProblem, iter_folder


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
