"""The handler registry and the site-view checks it makes possible.

A site view (`--mappings DIR/views/<Type>.json`) that the handlers cannot read is a
configuration error: exit status 3, one line naming the file and the column, before any
resource is read, and nothing published. Before the registry, a FHIRPath error exited 70,
a renamed `performed_datetime` silently shrank the cohort, a MedicationStatement view
published an unbalanced dataset with exit 0, and a view giving several rows per resource
kept the first one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_spine.cli.main import main
from fhir_spine.errors import ConfigError, ExitCode
from fhir_spine.handlers import HANDLERS, REGISTRY, in_order, view_rows
from fhir_spine.normalise import Normaliser
from fhir_spine.refresh.units import UnitResolver
from fhir_spine.settings import DEFAULT_MAPPINGS, DEMO_COHORT, load_mappings
from fhir_spine.views import compile_view

VIEWS = DEFAULT_MAPPINGS / "views"


def default_view(rtype: str) -> dict[str, Any]:
    return json.loads((VIEWS / f"{rtype}.json").read_text())


def column(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for s in view["select"] for c in s["column"] if c["name"] == name)


def site(tmp_path: Path, rtype: str, view: dict[str, Any]) -> Path:
    folder = tmp_path / "site"
    (folder / "views").mkdir(parents=True, exist_ok=True)
    (folder / "views" / f"{rtype}.json").write_text(json.dumps(view, indent=2))
    return folder


def extract_with(tmp_path: Path, mappings: Path, capsys: pytest.CaptureFixture[str],
                 source: Path = DEMO_COHORT) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    status = main(["--quiet", "extract", "--source", str(source), "--out", str(out),
                   "--mappings", str(mappings)])
    return status, capsys.readouterr().err, out


def assert_config_error(status: int, err: str, out: Path, *needles: str) -> None:
    assert status == ExitCode.CONFIG, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fhir-spine: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists(), "nothing may be published"


# ------------------------------------------------------------------ the registry

def test_every_handler_is_a_normaliser_method_and_orders_are_unique() -> None:
    for entry in HANDLERS:
        assert callable(getattr(Normaliser, entry.handler, None)), entry
        assert {c.name for c in entry.required}.isdisjoint(c.name for c in entry.optional)
    assert len({h.order for h in HANDLERS}) == len(HANDLERS)
    assert [h.resource_type for h in in_order(["Observation", "Basic", "Patient"])] == \
        ["Patient", "Observation"]


def test_default_views_satisfy_the_registry() -> None:
    mappings = load_mappings()
    assert sorted(mappings.views) == sorted(REGISTRY)
    for rtype, path in mappings.view_files.items():
        assert Path(path) == VIEWS / f"{rtype}.json"


# ------------------------------------------------------------------ site views: exit 3

def test_site_view_fhirpath_error_is_a_configuration_error(tmp_path, capsys) -> None:
    view = default_view("Procedure")
    column(view, "status")["path"] = "status.where("
    folder = site(tmp_path, "Procedure", view)
    status, err, out = extract_with(tmp_path, folder, capsys)
    assert_config_error(status, err, out, str(folder / "views" / "Procedure.json"),
                        "'status'", "not valid FHIRPath")


def test_site_view_renaming_a_required_column_is_a_configuration_error(tmp_path, capsys
                                                                       ) -> None:
    """The cohort of the demo dropped from 65 to 56 included, silently, with exit 0."""
    view = default_view("Procedure")
    column(view, "performed_datetime")["name"] = "performed_date_time"
    folder = site(tmp_path, "Procedure", view)
    status, err, out = extract_with(tmp_path, folder, capsys)
    assert_config_error(status, err, out, str(folder / "views" / "Procedure.json"),
                        "'performed_datetime' is missing")


@pytest.mark.parametrize(("name", "change", "shown"), [
    ("performed_datetime", {"type": "boolean"}, "is boolean"),
    ("codings", {"collection": False}, "is string;"),
    ("patient_ref", {"collection": True}, "is string, collection: true"),
])
def test_site_view_with_a_wrong_column_type_is_a_configuration_error(
        tmp_path, capsys, name, change, shown) -> None:
    view = default_view("Procedure")
    column(view, name).update(change)
    folder = site(tmp_path, "Procedure", view)
    status, err, out = extract_with(tmp_path, folder, capsys)
    assert_config_error(status, err, out, "Procedure.json", f"column {name!r} {shown}")


def test_site_view_column_without_a_type_is_a_configuration_error(tmp_path, capsys) -> None:
    view = default_view("Observation")
    del column(view, "value_quantity")["type"]
    folder = site(tmp_path, "Observation", view)
    status, err, out = extract_with(tmp_path, folder, capsys)
    assert_config_error(status, err, out, "Observation.json", "'value_quantity' declares no type")


def test_site_view_for_a_type_without_a_handler_is_a_configuration_error(tmp_path, capsys
                                                                         ) -> None:
    """It used to publish a dataset whose manifest said "balanced": false, exit 0.
    (MedicationStatement has a handler now; MedicationDispense has none.)"""
    view = default_view("MedicationRequest")
    view.update(resource="MedicationDispense", name="medication_dispense")
    for c in view["select"][0]["column"]:
        c["path"] = c["path"].replace("authoredOn", "whenHandedOver").replace(
            "'MedicationRequest'", "'MedicationDispense'")
    view["select"][0]["column"] = [c for c in view["select"][0]["column"]
                                   if c["name"] not in ("intent", "bounds_period_start",
                                                        "encounter_ref", "category_codings")]
    folder = site(tmp_path, "MedicationDispense", view)
    status, err, out = extract_with(tmp_path, folder, capsys)
    assert_config_error(status, err, out, "MedicationDispense.json",
                        "no handler reads MedicationDispense")


def test_site_medication_statement_view_must_give_the_handler_its_dates(tmp_path, capsys
                                                                      ) -> None:
    """A site MedicationStatement view that maps `effective[x]` to another column name is
    stopped at load, naming the column the handler reads."""
    view = default_view("MedicationStatement")
    for c in view["select"][0]["column"]:
        if c["name"] == "effective_datetime":
            c["name"] = "authored_on"
    folder = site(tmp_path, "MedicationStatement", view)
    status, err, out = extract_with(tmp_path, folder, capsys)
    assert_config_error(status, err, out, "MedicationStatement.json", "effective_datetime")


def test_an_extra_optional_column_may_be_left_out_and_other_columns_added(tmp_path) -> None:
    view = default_view("Procedure")
    cols = view["select"][0]["column"]
    view["select"][0]["column"] = [c for c in cols if c["name"] != "performed_string"] + [
        {"name": "site_local_flag", "path": "status = 'completed'", "type": "boolean"}]
    mappings = load_mappings(site(tmp_path, "Procedure", view))
    assert mappings.view_files["Procedure"].endswith("site/views/Procedure.json")


def test_configuration_error_is_one_line_from_the_command(tmp_path) -> None:
    view = default_view("Condition")
    column(view, "onset_datetime")["path"] = "onset.ofType(dateTime"
    folder = site(tmp_path, "Condition", view)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", "extract",
                           "--out", str(out), "--mappings", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(folder / "views" / "Condition.json") in proc.stderr
    assert "'onset_datetime'" in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ several rows

def _observation_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Patient.ndjson").write_text(json.dumps(
        {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}) + "\n")
    (src / "Observation.ndjson").write_text(json.dumps(
        {"resourceType": "Observation", "id": "o1", "status": "final",
         "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2023-01-01",
         "code": {"coding": [{"system": "http://loinc.org", "code": "38208-5"},
                             {"system": "http://loinc.org", "code": "72514-3"}]},
         "valueInteger": 4}) + "\n")
    return src


def _iterating_observation_view() -> dict[str, Any]:
    view = default_view("Observation")
    cols = view["select"][0]["column"]
    codings = column(view, "codings")
    view["select"] = [{"column": [c for c in cols if c is not codings]},
                      {"forEach": "code.coding",
                       "column": [{**codings, "path": "system & '|' & code & '|' & display",
                                   "collection": True}]}]
    return view


def test_a_view_giving_several_rows_for_a_one_row_handler_stops_the_run(tmp_path, capsys
                                                                        ) -> None:
    folder = site(tmp_path, "Observation", _iterating_observation_view())
    status, err, out = extract_with(tmp_path, folder, capsys, _observation_source(tmp_path))
    assert_config_error(status, err, out, str(folder / "views" / "Observation.json"),
                        "select[1].forEach 'code.coding' gave 2 rows for Observation/o1",
                        "takes one row per resource")


def test_refresh_resolves_units_with_the_same_rule(tmp_path) -> None:
    mappings = load_mappings(site(tmp_path, "Observation", _iterating_observation_view()))
    resolver = UnitResolver(mappings)
    one = json.loads((_observation_source(tmp_path) / "Observation.ndjson").read_text())
    with pytest.raises(ConfigError, match="gave 2 rows for Observation/o1"):
        resolver.unit_of(one)
    one["code"]["coding"] = one["code"]["coding"][:1]
    assert resolver.unit_of(one) == ("p1", None)


def test_a_many_rows_handler_gets_every_row() -> None:
    from dataclasses import replace

    view = compile_view(_iterating_observation_view())
    resource = {"resourceType": "Observation", "id": "o1", "code": {"coding": [
        {"system": "a", "code": "1"}, {"system": "b", "code": "2"}]}}
    many = replace(REGISTRY["Observation"], rows="many")
    assert [r["codings"] for r in view_rows(many, view, resource)] == [["a|1|"], ["b|2|"]]
    with pytest.raises(ConfigError):
        view_rows(REGISTRY["Observation"], view, resource, "Observation.json")
