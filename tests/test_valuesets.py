"""Concepts are FHIR ValueSets: profiles/valuesets/ is generated from concepts.yaml and the
two must agree (one source of truth), both ways."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fhir_spine import __version__, valuesets
from fhir_spine.concepts import Coding, build_concept_map

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "profiles" / "valuesets"
SCT = "http://snomed.info/sct"


def _doc() -> dict:
    return yaml.safe_load(valuesets.DEFAULT_CONCEPTS.read_text(encoding="utf-8"))


def test_committed_value_sets_equal_the_concept_map():
    expected = {f"ValueSet-{vs['id']}.json": vs for vs in valuesets.value_sets(_doc(), __version__)}
    committed = {p.name: json.loads(p.read_text(encoding="utf-8"))
                 for p in FOLDER.glob("ValueSet-*.json")}
    assert sorted(committed) == sorted(expected), (
        "profiles/valuesets/ is stale: run `python -m fhir_spine.valuesets profiles/valuesets`")
    for name, vs in expected.items():
        assert committed[name] == vs, f"{name} differs from concepts.yaml: regenerate it"


def test_value_sets_round_trip_to_the_same_concept_map():
    doc = _doc()
    original = build_concept_map([doc])
    back = build_concept_map([valuesets.concept_documents(valuesets.load(FOLDER))])
    assert back.entries == original.entries
    assert back.element_of == original.element_of
    assert back.meanings == original.meanings


def test_every_concept_has_a_canonical_url_and_element():
    sets = valuesets.load(FOLDER)
    assert len({vs["url"] for vs in sets}) == len(sets) == len(_doc()["concepts"])
    for vs in sets:
        assert vs["url"] == valuesets.CANONICAL + vs["title"]
        assert vs["compose"]["include"], vs["id"]
        for inc in vs["compose"]["include"]:
            assert ("concept" in inc) != ("filter" in inc)  # R4 vsd-3 and one kind per include


def test_secondary_malignancy_is_intensional():
    vs = next(v for v in valuesets.load(FOLDER) if v["title"] == "secondary-malignancy")
    filters = [f for inc in vs["compose"]["include"] for f in inc.get("filter", [])
               if inc["system"] == SCT]
    assert filters == [{"property": "concept", "op": "is-a", "value": "128462008"}]


def test_a_code_in_two_concepts_of_different_roles():
    sets = {vs["title"]: vs for vs in valuesets.load(FOLDER)}

    def codes(title):
        includes = sets[title]["compose"]["include"]
        return {c["code"] for inc in includes for c in inc.get("concept", [])}

    assert "703423002" in codes("radiotherapy") & codes("systemic-therapy-procedure")


def test_ranges_become_category_regexes():
    assert valuesets.range_categories("C77", "C79") == ["C77", "C78", "C79"]
    assert len(valuesets.range_categories("C00", "C80")) == 81


def test_is_a_offline_and_with_descendants():
    cmap = build_concept_map([_doc()])
    parent = Coding(SCT, "128462008")
    child = Coding(SCT, "1234567008")
    assert cmap.lookup("finding", parent).concept == "secondary-malignancy"
    assert cmap.lookup("finding", child) is None
    assert cmap.intensional() == [("secondary-malignancy", SCT, "128462008"),
                                  ("tumour-other", SCT, "363346000")]
    assert cmap.add_descendants("secondary-malignancy", SCT, "128462008",
                                ["128462008", "94222008", "1234567008"]) == 1
    assert cmap.lookup("finding", child).concept == "secondary-malignancy"


def test_codes_and_patterns_of_an_element():
    cmap = build_concept_map([_doc()])
    findings = cmap.codes("finding")
    assert (SCT, "128462008") in findings and (SCT, "94222008") in findings
    assert cmap.codes("procedure", "radiotherapy") >= {(SCT, "703423002")}
    assert ("http://hl7.org/fhir/sid/icd-10-cm", "range", "C77-C79") in cmap.patterns("finding")


def test_value_sets_are_valid_fhir_models():
    from fhir_spine.validate import validation_problem

    for vs in valuesets.load(FOLDER):
        assert validation_problem(vs) is None, vs["id"]
