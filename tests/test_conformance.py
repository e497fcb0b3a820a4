"""profiles/ holds the conformance resources conformance.py generates from concepts.yaml:
the two must agree, and what is generated must be R4 and say what concepts.yaml says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.structuredefinition import StructureDefinition
from fhir.resources.R4B.valueset import ValueSet

from fhir_spine import conformance, valuesets

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "profiles"
MODELS = {"CodeSystem": CodeSystem, "ValueSet": ValueSet,
          "StructureDefinition": StructureDefinition}


def _doc() -> dict:
    return yaml.safe_load(valuesets.DEFAULT_CONCEPTS.read_text(encoding="utf-8"))


def _committed() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8"))
            for pattern in ("CodeSystem-*.json", "ValueSet-*.json", "StructureDefinition-*.json")
            for p in FOLDER.glob(pattern)}


def test_committed_files_equal_the_generator():
    expected = {conformance.file_name(r): r for r in conformance.resources()}
    committed = _committed()
    assert sorted(committed) == sorted(expected), (
        "profiles/ is stale: run `python -m fhir_spine.conformance profiles`")
    for name, resource in expected.items():
        assert committed[name] == resource, f"{name} differs from concepts.yaml: regenerate it"


def test_every_resource_loads_as_r4():
    for name, resource in _committed().items():
        assert MODELS[resource["resourceType"]].model_validate(resource) is not None, name


def test_code_system_holds_every_local_code_with_its_meaning():
    doc = _doc()
    cs = conformance.code_system(doc)
    local = {str(c["code"]): spec["meaning"] for spec in doc["concepts"].values()
             for c in spec.get("codes") or [] if c.get("system") == "local" and "code" in c}
    assert {c["code"] for c in cs["concept"]} == set(local)
    sins = next(c for c in cs["concept"] if c["code"] == "sins-total")
    assert sins["definition"].startswith("Spinal Instability Neoplastic Score total 0-18")
    assert "display" not in sins  # senders' displays differ: no warning on each
    assert cs["url"] == doc["systems"]["local"] == conformance.LOCAL_SYSTEM
    assert cs["count"] == len(cs["concept"])


def test_profiles_are_differential_constraints_on_core_r4():
    for p in conformance.PROFILES:
        sd = conformance.structure_definition(p, _doc())
        assert sd["url"] == conformance.SD_BASE + p.id
        assert sd["derivation"] == "constraint" and sd["fhirVersion"] == "4.0.1"
        assert sd["baseDefinition"] == conformance.CORE + p.type
        assert "snapshot" not in sd
        assert all(e["path"].split(".")[0] == p.type for e in sd["differential"]["element"])


def _elements(profile_id: str) -> dict[str, dict]:
    p = next(p for p in conformance.PROFILES if p.id == profile_id)
    sd = conformance.structure_definition(p, _doc())
    return {e["id"]: e for e in sd["differential"]["element"]}


def test_sins_ranges_and_component_slices_come_from_the_meanings():
    el = _elements("spine-sins")
    human = [c["human"] for c in el["Observation"]["constraint"]]
    assert any("sins_total: the value is 0-18" in h for h in human)
    assert el["Observation.component"]["slicing"]["rules"] == "closed"
    slices = [e for e in el.values() if e.get("sliceName")]
    assert [s["sliceName"] for s in slices] == list(conformance.SINS_COMPONENTS)
    assert "$this <= 2" in el["Observation.component:sins_bone_lesion"]["constraint"][0][
        "expression"]
    assert "$this <= 4" in el["Observation.component:sins_alignment"]["constraint"][0][
        "expression"]
    assert el["Observation.component:sins_location.code"]["patternCodeableConcept"] == {
        "coding": [{"system": conformance.LOCAL_SYSTEM, "code": "sins-location"}]}


def test_local_code_sets_are_required_bindings():
    assert _elements("spine-sins")["Observation.code"]["binding"]["strength"] == "required"
    assert _elements("spine-sosgoq")["Observation.code"]["binding"]["strength"] == "required"
    assert _elements("spine-pain-score")["Observation.code"]["binding"]["strength"] == \
        "extensible"


def test_procedures_bind_code_and_require_a_vertebral_body_site():
    for pid, vs in (("spine-vertebral-biopsy", "vertebral-biopsy"),
                    ("spine-stabilization", "stabilization")):
        el = _elements(pid)
        # CPT / SNOMED / ICD-10-PCS codes: extensible (a server without them cannot check)
        assert el["Procedure.code"]["binding"] == {
            "strength": "extensible", "valueSet": valuesets.CANONICAL + vs}
        assert el["Procedure.bodySite"]["binding"]["strength"] == "required"
        assert el["Procedure.bodySite"]["min"] == 1
        assert el["Procedure.bodySite"]["binding"]["valueSet"].endswith("/vertebral-body-site")


def test_vertebral_body_site_is_every_level_concept():
    doc = _doc()
    group = next(g for g in conformance.GROUPS if g.name == "vertebral-body-site")
    vs = conformance.group_value_set(group, doc)
    levels = [n for n, s in doc["concepts"].items() if s["element"] == "body-site"]
    assert [i["valueSet"][0] for i in vs["compose"]["include"]] == [
        valuesets.CANONICAL + n for n in levels]
    assert len(levels) >= 25


def test_a_score_concept_without_a_range_is_refused():
    with pytest.raises(ValueError, match="states no range"):
        conformance.value_range("sins_total", "Spinal Instability Neoplastic Score")


def test_all_resources_put_the_code_system_first_and_profiles_last():
    res = conformance.all_resources()
    assert res[0]["resourceType"] == "CodeSystem"
    assert [r["resourceType"] for r in res[-len(conformance.PROFILES):]] == [
        "StructureDefinition"] * len(conformance.PROFILES)
    assert len({(r["resourceType"], r["id"]) for r in res}) == len(res)
