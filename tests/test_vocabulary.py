"""The pathway's vocabulary is defined once and everything that names a code uses it."""

from dataclasses import fields

from fhir_spine import schema
from fhir_spine.pathway import vocabulary as v
from fhir_spine.pathway.model import PatientResult
from fhir_spine.report import tables as report_tables
from fhir_spine.synth import targets, truth


def test_every_code_has_its_label_and_scale():
    assert tuple(v.EXCLUSION_LABELS) == v.EXCLUSION_REASONS
    assert tuple(v.TUMOUR_GROUP_LABELS) == v.TUMOUR_GROUPS
    assert tuple(v.STRATEGY_LABELS) == v.STRATEGIES
    assert tuple(v.ADVERSE_EVENT_LABELS) == v.ADVERSE_EVENTS
    assert set(v.PRO_LABELS) == set(v.PRO_SCALES) == set(v.PRO_MEASURES)
    assert set(v.MEASURE_RANGES) == set(v.MEASURES)
    assert len(set(v.MEASURES)) == len(v.MEASURES)
    assert set(v.TUMOUR_FINDINGS.values()) == set(v.TUMOUR_GROUPS)


def test_the_pathway_result_has_a_field_for_every_baseline_measure_and_adverse_event():
    names = {f.name for f in fields(PatientResult)}
    assert set(v.BASELINE_MEASURES) <= names
    assert set(v.ADVERSE_EVENTS) <= names


def test_schema_allowed_values_come_from_the_vocabulary():
    patients = {c.name: c for c in schema.PATIENTS}
    assert patients["exclusion_reasons"].allowed.split("; ") == list(v.EXCLUSION_REASONS)
    assert patients["tumour_group"].allowed.split(", ") == list(v.TUMOUR_GROUPS)
    assert patients["strategy"].allowed.split(", ") == list(v.STRATEGIES)
    for measure in v.PRO_MEASURES:
        assert {f"{measure}_baseline", f"{measure}_at_diagnosis"} <= set(patients)
    assert set(v.ADVERSE_EVENTS) <= set(patients)
    observations = {c.name: c for c in schema.OBSERVATIONS}
    assert observations["measure"].allowed.split(", ") == list(v.MEASURES)
    assert observations["timepoint"].allowed.split(", ") == list(v.TIMEPOINTS)


def test_report_and_synth_name_the_same_codes():
    assert [m for m, _, _ in report_tables.PRO_MEASURES] == list(v.PRO_MEASURES)
    assert [ae for ae, _ in report_tables.ADVERSE_EVENTS] == list(v.ADVERSE_EVENTS)
    assert set(report_tables.EXCLUSION_LABELS) == set(v.EXCLUSION_REASONS)
    assert list(report_tables.TUMOUR_LABELS) == list(v.TUMOUR_GROUPS)
    generated = tuple(r for r in v.EXCLUSION_REASONS if r not in v.DATE_EXCLUSION_REASONS)
    assert targets.EXCLUSION_REASONS == generated
    assert sorted(targets.EXTRA_EXCLUSION_ORDER) == sorted(generated)
    assert set(targets.TUMOUR_GROUP_COUNTS) == set(v.TUMOUR_GROUPS)
    assert set(v.ADVERSE_EVENTS) <= set(truth.COLUMNS)
