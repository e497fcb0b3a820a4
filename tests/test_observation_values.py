"""Issue 11, item 3: the forms real systems give a score in, one test per kind.

Each test builds the few resources it needs with `obs()`; values are read by
`fhir_spine.values` through the Observation handler.
"""

from __future__ import annotations

import pytest

from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource
from fhir_spine.values import from_element, parse_number_text, read_number

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
VAS = (LOINC, "72514-3")
ECOG = (LOINC, "89247-1")


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


def patient() -> dict:
    return {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01"}


def cc(system: str, code: str, **extra) -> dict:
    return {"coding": [{"system": system, "code": code, **extra}]}


def obs(rid: str, code: tuple[str, str] | None = VAS, when: str = "2024-03-01",
        **fields) -> dict:
    """An Observation; `code=None` gives an unmapped panel code (for component tests)."""
    system, value = code if code else (LOINC, "94085-8")
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
            "code": cc(system, value), **fields}


def component(code: tuple[str, str], **value) -> dict:
    return {"code": cc(*code), **value}


def run(mappings, *resources):
    items = [RawResource(r, f"test:{i}") for i, r in enumerate((patient(), *resources))]
    result = extract(items, mappings, validation="off")
    assert result.accounting.balanced, result.accounting
    return result


def measured(result) -> dict[tuple[str, str], float]:
    return {(m.source.resource_id, m.measure): m.value
            for m in result.inputs["p1"].measurements}


def issues(result) -> dict[tuple[str, str], tuple[str, str, bool]]:
    return {(i.resource_id, i.code): (i.severity, i.message, i.sets_aside)
            for i in result.issues}


# ------------------------------------------------------------------ components
def test_components_give_one_measure_each(mappings):
    """Pain inside a panel, SOSGOQ2.0 domains, SINS components, ECOG: one row per resource,
    one measurement per component whose code maps."""
    panel = obs("panel", code=None, component=[
        component(VAS, valueQuantity={"value": 5}),
        component((LOCAL, "sosgoq-pain"), valueQuantity={"value": 40}),
        component((LOCAL, "sosgoq-physical-function"), valueInteger=70),
        component((LOCAL, "sins-location"), valueInteger=3),
        component(ECOG, valueCodeableConcept=cc(LOINC, "LA9624-3")),
        component((LOINC, "8310-5"), valueQuantity={"value": 37}),  # temperature: not mapped
    ])
    r = run(mappings, panel)
    assert measured(r) == {("panel", "vas"): 5, ("panel", "sosgoq_pain"): 40,
                           ("panel", "sosgoq_physical"): 70, ("panel", "sins_location"): 3,
                           ("panel", "ecog"): 2}
    codes = {c.key: c.concept for c in r.codes}
    assert codes[("Observation", "Observation.component.code", LOINC, "72514-3")] == "vas"
    assert codes[("Observation", "Observation.component.code", LOINC, "8310-5")] is None
    assert r.accounting.used == 2  # the patient and the one Observation


def test_own_value_first_then_components_one_value_per_measure(mappings):
    o = obs("o", valueQuantity={"value": 3},
            component=[component(VAS, valueQuantity={"value": 8})])
    r = run(mappings, o)
    assert measured(r) == {("o", "vas"): 3}
    severity, message, aside = issues(r)[("o", "duplicate-measure")]
    assert severity == "info" and "8 ignored" in message and not aside


# ------------------------------------------------------ coded answers with a number
@pytest.mark.parametrize(("code", "value", "expected"), [
    (VAS, cc(LOINC, "LA6115-5", display="4"), 4),       # LOINC 0-10 answer list
    (VAS, cc(LOINC, "LA13942-0"), 10),
    (ECOG, cc(LOINC, "LA9626-8"), 4),                     # LOINC ECOG answer list
    (ECOG, cc(SCT, "422512005"), 1),                      # SNOMED ECOG grade
    (ECOG, cc(NCIT, "C105726"), 3),                       # NCI Thesaurus ECOG grade
    (VAS, cc("http://example.org/site-pain", "moderate", extension=[{
        "url": "http://hl7.org/fhir/StructureDefinition/ordinalValue",
        "valueDecimal": 5}]), 5),                         # ordinalValue extension
])
def test_coded_answers_with_a_numeric_meaning(mappings, code, value, expected):
    r = run(mappings, obs("o", code=code, valueCodeableConcept=value),
            obs("c", code=None, component=[component(code, valueCodeableConcept=value)]))
    measure = "vas" if code == VAS else "ecog"
    assert measured(r) == {("o", measure): expected, ("c", measure): expected}


# ------------------------------------------------------------------ valueString
@pytest.mark.parametrize(("text", "expected"), [("7", 7), (" 6.5 ", 6.5), ("6,5", 6.5),
                                                ("7/10", 7)])
def test_numeric_value_string(mappings, text, expected):
    assert measured(run(mappings, obs("o", valueString=text))) == {("o", "vas"): expected}


def test_value_string_fraction_needs_the_scale_top():
    assert parse_number_text("7/10", 10) == 7
    assert parse_number_text("7/100", 10) is None
    assert parse_number_text("seven", 10) is None


# ----------------------------------------------------------- dataAbsentReason
def test_data_absent_reason_is_skipped_with_a_row_naming_it(mappings):
    alone = obs("alone", dataAbsentReason=cc(DAR, "asked-declined"))
    with_component = obs("dar", dataAbsentReason=cc(DAR, "temp-unknown"),
                         component=[component(VAS, valueQuantity={"value": 6})])
    comp_dar = obs("cdar", code=None, component=[
        component(VAS, dataAbsentReason=cc(DAR, "not-performed"))])
    r = run(mappings, alone, with_component, comp_dar)
    assert measured(r) == {("dar", "vas"): 6}
    got = issues(r)
    assert got[("alone", "data-absent")][0] == "info"
    assert "asked-declined" in got[("alone", "data-absent")][1]
    assert got[("alone", "data-absent")][2]            # nothing usable: set aside
    assert "temp-unknown" in got[("dar", "data-absent")][1]
    assert not got[("dar", "data-absent")][2]          # the component value was used
    assert "component[0]" in got[("cdar", "data-absent")][1]
    assert "not-performed" in got[("cdar", "data-absent")][1]


# -------------------------------------------------- unreadable: say which form
@pytest.mark.parametrize(("fields", "form"), [
    ({"valueString": "severe"}, "valueString 'severe'"),
    ({"valueCodeableConcept": cc(SCT, "24484000")}, "valueCodeableConcept"),
    ({"valueRange": {"low": {"value": 4}, "high": {"value": 6}}}, "valueRange"),
    ({"valueRatio": {"numerator": {"value": 4}, "denominator": {"value": 10}}}, "valueRatio"),
    ({"valueBoolean": True}, "valueBoolean"),
    ({"valueQuantity": {"value": 4, "comparator": ">"}}, "comparator"),
    ({"valuePeriod": {"start": "2024-01-01"}}, "valuePeriod"),
])
def test_unreadable_value_is_a_warning_naming_the_form(mappings, fields, form):
    r = run(mappings, obs("o", **fields),
            obs("c", code=None, component=[component(VAS, **fields)]))
    assert measured(r) == {}
    for rid in ("o", "c"):
        severity, message, aside = issues(r)[(rid, "unreadable-value")]
        assert severity == "warning" and form in message and aside


def test_element_reader_and_row_reader_agree(mappings):
    """The same forms, read from a component element and from a view row, give the same."""
    concepts = mappings.concepts
    element = {"valueCodeableConcept": cc(LOINC, "LA10138-8")}
    assert read_number(from_element(element), concepts, 10).number == 6
    assert read_number(from_element({"valueInteger": 3}), concepts).number == 3
    assert read_number(from_element({}), concepts).form == ""


def test_time_points_are_per_measure_when_one_resource_gives_several(mappings):
    """A panel gives vas and sosgoq_pain; a later plain vas is the vas baseline: the
    panel's sosgoq_pain row is still the sosgoq_pain baseline, its vas row is not."""
    from fhir_spine.tables import build_tables

    cpt = "http://www.ama-assn.org/go/cpt"
    biopsy = {"resourceType": "Procedure", "id": "bx", "status": "completed",
              "subject": {"reference": "Patient/p1"}, "performedDateTime": "2024-03-04",
              "code": {"coding": [{"system": cpt, "code": "20225"}]},
              "bodySite": [{"coding": [{"system": SCT, "code": "11994002"}]}]}
    panel = obs("panel", code=None, when="2024-03-01", component=[
        component(VAS, valueInteger=5), component((LOCAL, "sosgoq-pain"), valueInteger=40)])
    later = obs("later", when="2024-03-03", valueInteger=6)
    rows = build_tables(run(mappings, biopsy, panel, later)).observations
    got = {(r.resource_id, r.measure): r.timepoint for r in rows.itertuples()}
    assert got[("panel", "sosgoq_pain")] == "baseline"
    assert got[("later", "vas")] == "baseline"
    assert got[("panel", "vas")] is None or str(got[("panel", "vas")]) == "<NA>"
