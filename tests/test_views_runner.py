"""Unit tests of the ViewDefinition runner: fast path vs fhirpathpy, keys, errors."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_spine.settings import DEFAULT_MAPPINGS
from fhir_spine.views import (
    ViewDefinitionError,
    ViewEvaluationError,
    compile_view,
    load_view,
    parse_view,
    reference_key,
    run_view,
)
from fhir_spine.views.conformance import load_cases, run_case
from fhir_spine.views.fhirpath import CompiledPath, FhirPathError, compile_path, parse_fhirpath

REPO = Path(__file__).resolve().parents[1]
SUITE_DIR = Path(os.environ.get("SOF_TESTS_DIR") or REPO.parent / "shared" / "sof-tests")
PROJECT_VIEWS = sorted((DEFAULT_MAPPINGS / "views").glob("*.json"))

# ----------------------------------------------------------------- fast path equivalence

EDGE_RESOURCES: list[dict[str, Any]] = [
    {
        "resourceType": "Procedure",
        "id": "p1",
        "status": "completed",
        "_status": {"extension": [{"url": "http://example.org/x", "valueString": "note"}]},
        "meta": {"lastUpdated": "2024-01-02T03:04:05Z"},
        "subject": {"reference": "Patient/pt1", "display": "Pat"},
        "code": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "1", "display": "One"},
                {
                    "system": "http://loinc.org",
                    "code": "2",
                    "_display": {"extension": [{"url": "http://example.org/absent"}]},
                },
                {"code": "3"},
            ],
            "text": "procedure",
        },
        "performedPeriod": {"start": "2024-01-01", "end": "2024-01-03"},
        "partOf": [
            {"reference": "Procedure/p0"},
            {"reference": "urn:uuid:" + "a" * 8 + "-1111-2222-3333-" + "b" * 12},
        ],
        "bodySite": [{"coding": [{"system": "s", "code": "L1"}]}, {"text": "no coding"}],
        "contained": [{"resourceType": "Practitioner", "id": "c1", "name": [{"family": "Doc"}]}],
        "extension": [{"url": "http://example.org/e", "valueCode": "x"}],
    },
    {
        "resourceType": "Procedure",
        "id": "p2",
        "subject": {"reference": "https://fhir.example.org/base/Patient/pt2/_history/7"},
        "performedDateTime": "2024-02-01T10:00:00+01:00",
        "encounter": {"reference": "Encounter/e1"},
    },
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "subject": {"reference": "Group/g1"},
        "valueQuantity": {"value": 37.5, "unit": "Cel", "code": "Cel"},
        "effectiveInstant": "2024-03-01T00:00:00Z",
        "component": [
            {"code": {"text": "a"}, "valueInteger": 3},
            {"code": {"text": "b"}, "valueString": "x", "_valueString": {"id": "v"}},
            {"code": {"text": "c"}, "valueCodeableConcept": {"coding": [{"code": "y"}]}},
        ],
        "hasMember": [{"reference": "Observation/o2"}, {"reference": "#contained"}],
    },
    {
        "resourceType": "Observation",
        "id": "o2",
        "valueCodeableConcept": {"coding": [{"system": "sys", "code": "pos", "display": "+"}]},
        "effectivePeriod": {"start": "2024-03-02"},
        "dataAbsentReason": {"coding": [{"code": "unknown"}]},
    },
    {
        "resourceType": "Patient",
        "id": "pt1",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://example.org/time", "valueTime": "10:00"}]},
        "name": [{"family": "F", "given": ["A", "B"], "_given": [None, {"id": "g"}]}],
        "deceasedDateTime": "2020-01-01",
    },
    {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "intent": "order",
        "medicationReference": {"reference": "Medication/m1"},
        "dosageInstruction": [
            {"timing": {"repeat": {"boundsPeriod": {"start": "2024-01-05"}}}},
            {"timing": {"repeat": {"boundsDuration": {"value": 5}}}},
        ],
    },
]

EXTRA_PATHS = [
    "id",
    "status",
    "code.coding",
    "code.coding.code",
    "code.coding.display",
    "code.coding.first().code",
    "code.text",
    "subject.reference",
    "subject.getReferenceKey()",
    "subject.getReferenceKey(Patient)",
    "subject.getReferenceKey('Patient')",
    "partOf.getReferenceKey(Procedure)",
    "contained.id",
    "contained.name.family",
    "extension.url",
    "extension.value.ofType(code)",
    "birthDate",
    "name.given",
    "name.given.first()",
    "performed.ofType(Period).start",
    "performed.ofType(dateTime)",
    "performed.ofType(FHIR.dateTime)",
    "value.ofType(Quantity)",
    "value.ofType(Quantity).value",
    "component.value.ofType(integer)",
    "component.value.ofType(string)",
    "component.value.ofType(CodeableConcept).coding.code",
    "component.code.text",
    "effective.ofType(dateTime)",
    "dosageInstruction.timing.repeat.bounds.ofType(Period).start",
    "code.coding.select(system & '|' & code & '|' & display)",
    "code.coding.select(code & '-' & system)",
    "getResourceKey()",
    "'literal'",
    "{}",
    "$this",
]


def _project_paths() -> list[str]:
    paths = []
    for file in PROJECT_VIEWS:
        paths.extend(c.path for c in load_view(file).columns)
    return paths


ALL_PATHS = sorted(set(EXTRA_PATHS) | set(_project_paths()))


def _same(fast: list[Any], slow: list[Any]) -> bool:
    return fast == slow and [type(v) for v in fast] == [type(v) for v in slow]


@pytest.mark.parametrize("expression", ALL_PATHS)
def test_fast_path_matches_fhirpathpy_on_edge_resources(expression: str) -> None:
    compiled = compile_path(expression)
    assert compiled.has_fast_path, f"{expression} should be fast-path eligible"
    for resource in EDGE_RESOURCES:
        before = copy.deepcopy(resource)
        fast = compiled.fast_values(resource)
        slow = compiled.interpreted_values(resource)
        assert fast is not None
        assert _same(fast, slow), f"{expression} on {resource['id']}: fast {fast} != {slow}"
        assert resource == before, "evaluation must not modify the resource"


@pytest.mark.parametrize("expression", ["value.ofType(integer)", "code.text", "value", "$this"])
def test_fast_path_matches_on_typed_foci(expression: str) -> None:
    """Inside a forEach the focus is a typed node; choice resolution must still agree."""
    obs = EDGE_RESOURCES[2]
    compiled = compile_path(expression)
    for node in compile_path("component").nodes(obs):
        fast = compiled.fast_values(node)
        slow = compiled.interpreted_values(node)
        if fast is not None:
            assert _same(fast, slow), f"{expression}: {fast} != {slow}"


def test_fast_path_matches_fhirpathpy_across_the_conformance_suite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run the whole suite with every column/where evaluated both ways."""
    if not SUITE_DIR.is_dir():
        pytest.fail(f"conformance suite missing at {SUITE_DIR}")
    seen = {"fast": 0, "interpreted": 0}
    mismatches: list[str] = []

    def both(self: CompiledPath, focus: Any, variables: Any = None) -> list[Any]:
        slow = self.interpreted_values(focus, variables)
        fast = self.fast_values(focus)
        if fast is None:
            seen["interpreted"] += 1
        else:
            seen["fast"] += 1
            if not _same(fast, slow):
                mismatches.append(f"{self.expression}: {fast!r} != {slow!r}")
        return slow

    monkeypatch.setattr(CompiledPath, "values", both)
    results = [run_case(case) for case in load_cases(SUITE_DIR) if case.shareable]
    assert all(r.passed for r in results)
    assert not mismatches, mismatches[:5]
    assert seen["fast"] > 300, seen


def test_fast_path_on_and_off_give_identical_rows() -> None:
    for file in PROJECT_VIEWS:
        fast = compile_view(load_view(file))
        slow = compile_view(load_view(file), fast_path=False)
        for resource in EDGE_RESOURCES:
            assert fast.rows(resource) == slow.rows(resource), file.name


def test_not_every_expression_is_fast() -> None:
    for expression in [
        "name.where(use = 'official').family",
        "Patient.name",
        "name.given.length",
        "%resource.id",
        "code.coding.select(code)",
        "name.exists()",
    ]:
        assert not compile_path(expression).has_fast_path, expression


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("bad", ["@@", "a..b", "name.where(", "1 +", "a b", "", "  ", "name)"])
def test_invalid_fhirpath_is_rejected(bad: str) -> None:
    with pytest.raises(FhirPathError):
        parse_fhirpath(bad)


def test_compile_path_is_cached() -> None:
    assert compile_path("name.family") is compile_path("name.family")


# ---------------------------------------------------------------------- reference keys


@pytest.mark.parametrize(
    ("reference", "wanted", "key"),
    [
        ("Patient/1", None, "1"),
        ("Patient/1", "Patient", "1"),
        ("Patient/1", "Group", None),
        ("Patient/1/_history/2", None, "1"),
        ("http://host/fhir/Patient/1", "Patient", "1"),
        ("https://host:8443/r4/Patient/abc-1.2/_history/9", None, "abc-1.2"),
        (
            "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
            None,
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ),
        (
            "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
            "Patient",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ),
        (" Patient/1 ", None, "1"),
        ("#p1", None, None),
        ("Patient?identifier=x|1", None, None),
        ("http://host/fhir/Patient/1?x=y", None, None),
        ("urn:oid:1.2.3", None, None),
        ("urn:uuid:not-a-uuid", None, None),
        ("patient/1", None, None),
        ("Patient/", None, None),
        ("", None, None),
    ],
)
def test_reference_key_forms(reference: str, wanted: str | None, key: str | None) -> None:
    assert reference_key({"reference": reference}, wanted) == key
    assert reference_key(reference, wanted) == key


def test_reference_key_uses_reference_type_for_uuid_references() -> None:
    ref = {"reference": "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e", "type": "Group"}
    assert reference_key(ref, "Patient") is None
    assert reference_key(ref, "Group") == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert reference_key({"identifier": {"value": "1"}}) is None
    assert reference_key({"reference": 5}) is None


def test_reference_and_resource_keys_join() -> None:
    patient = {"resourceType": "Patient", "id": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    view = compile_view(
        {
            "resource": "Observation",
            "select": [{"column": [{"name": "p", "path": "subject.getReferenceKey(Patient)"}]}],
        }
    )
    pview = compile_view(
        {"resource": "Patient", "select": [{"column": [{"name": "k", "path": "getResourceKey()"}]}]}
    )
    key = pview.rows(patient)[0]["k"]
    for ref in [
        f"Patient/{patient['id']}",
        f"Patient/{patient['id']}/_history/3",
        f"http://x/fhir/Patient/{patient['id']}",
        f"urn:uuid:{patient['id']}",
    ]:
        obs = {"resourceType": "Observation", "id": "o", "subject": {"reference": ref}}
        assert view.rows(obs) == [{"p": key}], ref


# ------------------------------------------------------------------ runner behaviour


def _view(*columns: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "t", "resource": "Patient", "select": [{"column": list(columns)}], **extra}


def test_compiled_view_metadata_and_column_order() -> None:
    view = compile_view(
        {
            "name": "ordering",
            "resource": "Patient",
            "select": [
                {
                    "column": [{"name": "b", "path": "id", "type": "id"}],
                    "select": [{"forEach": "name", "column": [{"name": "a", "path": "family"}]}],
                    "unionAll": [
                        {"column": [{"name": "z", "path": "'1'"}]},
                        {"column": [{"name": "z", "path": "'2'"}]},
                    ],
                },
                {"column": [{"name": "c", "path": "gender", "type": "code"}]},
            ],
        }
    )
    assert view.resource_type == "Patient"
    assert view.name == "ordering"
    assert [c.name for c in view.columns] == ["b", "a", "z", "c"]
    assert view.columns[0].type == "id" and view.columns[1].type is None
    rows = view.rows({"resourceType": "Patient", "id": "x", "name": [{"family": "F"}]})
    assert [list(r) for r in rows] == [["b", "a", "z", "c"]] * 2
    assert {r["z"] for r in rows} == {"1", "2"}


def test_run_view_streams_and_skips_other_types() -> None:
    seen: list[str] = []

    def source() -> Iterator[dict[str, Any]]:
        for rid in ("a", "b"):
            seen.append(rid)
            yield {"resourceType": "Patient", "id": rid}
        yield {"resourceType": "Observation", "id": "o"}

    rows = run_view(_view({"name": "id", "path": "id"}), source())
    assert seen == []
    assert next(rows) == {"id": "a"}
    assert seen == ["a"]
    assert list(rows) == [{"id": "b"}]


def test_row_index_and_this() -> None:
    view = compile_view(
        {
            "resource": "Patient",
            "select": [
                {
                    "forEachOrNull": "name.given",
                    "column": [
                        {"name": "i", "path": "%rowIndex"},
                        {"name": "g", "path": "$this"},
                    ],
                }
            ],
        }
    )
    pt = {"resourceType": "Patient", "id": "p", "name": [{"given": ["A", "B"]}]}
    assert view.rows(pt) == [{"i": 0, "g": "A"}, {"i": 1, "g": "B"}]
    assert view.rows({"resourceType": "Patient", "id": "q"}) == [{"i": 0, "g": None}]


def test_constants_and_join() -> None:
    view = compile_view(
        _view(
            {"name": "joined", "path": "name.given.join(%sep)"},
            {"name": "old", "path": "birthDate < %cutoff", "type": "boolean"},
            constant=[
                {"name": "sep", "valueString": "+"},
                {"name": "cutoff", "valueDate": "1980-01-01"},
            ],
        )
    )
    assert view.rows(
        {"resourceType": "Patient", "name": [{"given": ["a", "b"]}], "birthDate": "1970"}
    ) == [{"joined": "a+b", "old": True}]
    assert view.rows({"resourceType": "Patient"}) == [{"joined": "", "old": None}]


def test_where_filters_and_must_be_boolean() -> None:
    view = compile_view(_view({"name": "id", "path": "id"}, where=[{"path": "gender = 'male'"}]))
    assert view.rows({"resourceType": "Patient", "id": "m", "gender": "male"}) == [{"id": "m"}]
    assert view.rows({"resourceType": "Patient", "id": "f", "gender": "female"}) == []
    assert view.rows({"resourceType": "Patient", "id": "u"}) == []
    bad = compile_view(_view({"name": "id", "path": "id"}, where=[{"path": "gender"}]))
    with pytest.raises(ViewEvaluationError) as err:
        bad.rows({"resourceType": "Patient", "id": "m", "gender": "male"})
    message = str(err.value)
    assert "Patient/m" in message and "boolean" in message and "'t'" in message
    assert "\n" not in message


def test_multiple_values_in_a_non_collection_column_is_an_error() -> None:
    view = compile_view(_view({"name": "family", "path": "name.family"}))
    pt = {"resourceType": "Patient", "id": "x", "name": [{"family": "A"}, {"family": "B"}]}
    with pytest.raises(
        ViewEvaluationError, match=r"on Patient/x: column 'family' .* gave 2 values"
    ):
        view.rows(pt)


def test_primitive_extensions_do_not_count_as_values() -> None:
    view = compile_view(
        _view(
            {"name": "birth", "path": "birthDate"},
            {"name": "gender", "path": "gender"},
            {
                "name": "label",
                "path": "name.select(family & '|' & given.first())",
                "collection": True,
            },
        )
    )
    pt = {
        "resourceType": "Patient",
        "birthDate": "1970",
        "_birthDate": {"extension": [{"url": "u", "valueString": "x"}]},
        "_gender": {
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason"}]
        },
        "name": [{"_family": {"extension": [{"url": "u"}]}, "given": ["G"]}],
    }
    for fast in (True, False):
        rows = compile_view(view, fast_path=fast).rows(pt)
        assert rows == [{"birth": "1970", "gender": None, "label": ["|G"]}]


def test_evaluation_failures_are_wrapped_with_context() -> None:
    view = compile_view(
        _view({"name": "x", "path": "name.select(family & given)", "collection": True})
    )
    pt = {"resourceType": "Patient", "id": "p9", "name": [{"family": "F", "given": ["a", "b"]}]}
    with pytest.raises(ViewEvaluationError, match=r"^ViewDefinition 't' on Patient/p9: path"):
        view.rows(pt)


# ------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("view", "fragment"),
    [
        ({}, "'resource'"),
        ({"resource": "Patinet", "select": [{}]}, "not a FHIR R4 resource type"),
        ({"name": "bad name", "resource": "Patient", "select": [{}]}, "name 'bad name'"),
        ({"resource": "Patient"}, "'select'"),
        (_view({"name": "1x", "path": "id"}), "name '1x'"),
        (_view({"name": "a-b", "path": "id"}), "name 'a-b'"),
        (_view({"name": "id", "path": "id"}, {"name": "id", "path": "gender"}), "more than once"),
        (_view({"name": "id", "path": "@@"}), "not valid FHIRPath"),
        (_view({"name": "id", "path": 3}), "non-empty FHIRPath string"),
        (_view({"name": "id", "path": "id", "collection": "yes"}), "collection must be"),
        (_view({"name": "id", "path": "id", "colection": True}), "unknown element 'colection'"),
        (_view({"name": "id", "path": "name.where(use = %nope)"}), "undefined constant %nope"),
        ({"resource": "Patient", "select": [{"forEach": 1}]}, "forEach"),
        (
            {"resource": "Patient", "select": [{"forEach": "name", "forEachOrNull": "name"}]},
            "only one of",
        ),
        ({"resource": "Patient", "select": [{"repeat": "item"}]}, "repeat"),
        (_view({"name": "id", "path": "id"}, constant=[{"name": "c"}]), "exactly one value[x]"),
        (
            _view({"name": "id", "path": "id"}, constant=[{"name": "c", "valueInteger": "1"}]),
            "not a valid integer",
        ),
        (
            _view(
                {"name": "id", "path": "id"}, constant=[{"name": "c", "valueDate": "01/02/2020"}]
            ),
            "not a valid date",
        ),
        (
            _view({"name": "id", "path": "id"}, constant=[{"name": "rowIndex", "valueInteger": 1}]),
            "already defined",
        ),
        (_view({"name": "id", "path": "id"}, where=[{"path": "a..b"}]), "where[0].path"),
        (
            {
                "resource": "Patient",
                "select": [
                    {
                        "unionAll": [
                            {"column": [{"name": "a", "path": "id"}]},
                            {"column": [{"name": "b", "path": "id"}]},
                        ]
                    }
                ],
            },
            "differ from unionAll[0]",
        ),
    ],
)
def test_definition_errors_name_the_view_and_problem(view: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ViewDefinitionError) as err:
        parse_view(view)
    message = str(err.value)
    assert fragment in message
    assert message.startswith("ViewDefinition '")
    assert "\n" not in message


def test_error_message_uses_view_name() -> None:
    with pytest.raises(ViewDefinitionError, match=r"^ViewDefinition 'my_view': column name 'id'"):
        parse_view(
            _view({"name": "id", "path": "id"}, {"name": "id", "path": "id"}) | {"name": "my_view"}
        )
    with pytest.raises(ViewDefinitionError, match=r"^ViewDefinition '<unnamed Patient view>'"):
        parse_view({"resource": "Patient", "select": [{"column": [{"name": "x y", "path": "id"}]}]})


def test_load_view_reports_unreadable_files(tmp_path: Path) -> None:
    broken = tmp_path / "Broken.json"
    broken.write_text("{not json")
    with pytest.raises(ViewDefinitionError, match="Broken.json"):
        load_view(broken)


def test_compiled_views_equal_interpreted_on_the_demo_cohort() -> None:
    """Issue 16: every project view, compiled (plain Python over the dicts, fhirpathpy
    only as a fallback) and fully interpreted, gives identical rows on every resource of
    the demo cohort."""
    from fhir_spine.settings import DEMO_COHORT, load_mappings
    from fhir_spine.sources.files import RawResource, iter_folder

    mappings = load_mappings(None, {})
    fast = {t: compile_view(v) for t, v in mappings.views.items()}
    slow = {t: compile_view(v, fast_path=False) for t, v in mappings.views.items()}
    seen = 0
    for item in iter_folder(DEMO_COHORT):
        if not isinstance(item, RawResource):
            continue
        rtype = item.resource.get("resourceType")
        if rtype in fast:
            assert fast[rtype].rows(item.resource) == slow[rtype].rows(item.resource), rtype
            seen += 1
    assert seen > 1000
