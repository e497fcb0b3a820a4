"""Issue 11, item 5: pathology reports as real systems send them, one test per kind.

Builders: `report()` makes a DiagnosticReport; `patient_with()` adds the few pathway
resources around it (biopsy, fixation, therapy) so the diagnosis can be placed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fhir_spine.histology_text import read_conclusion
from fhir_spine.pathway.classify import reconstruct
from fhir_spine.pipeline import extract
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource
from fhir_spine.tables import build_tables
from pathway_builders import complete_patient, condition, report

LOINC = "http://loinc.org"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"
L4 = {"coding": [{"system": SCT, "code": "11994002"}]}


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


def dr(rid: str = "dr", code: tuple[str, str] | None = (LOINC, "11529-5"),
       category: tuple[str, str] | None = None, **fields) -> dict:
    res = {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
           "subject": {"reference": "Patient/p1"}, "issued": "2024-03-11T12:00:00Z", **fields}
    if code:
        res["code"] = {"coding": [{"system": code[0], "code": code[1]}]}
    if category:
        res["category"] = [{"coding": [{"system": category[0], "code": category[1]}]}]
    return res


def patient_with(*resources: dict) -> list[dict]:
    def proc(rid: str, code: str, when: str, sites: list) -> dict:
        return {"resourceType": "Procedure", "id": rid, "status": "completed",
                "subject": {"reference": "Patient/p1"}, "performedDateTime": when,
                "code": {"coding": [{"system": CPT, "code": code}]}, "bodySite": sites}
    return [{"resourceType": "Patient", "id": "p1", "birthDate": "1961-05-02"},
            proc("bx", "20225", "2024-03-04T09:00:00Z", [L4]),
            proc("fix", "22842", "2024-03-04T10:30:00Z", [L4]), *resources]


def run(mappings, *resources):
    items = [RawResource(r, f"test:{i}") for i, r in enumerate(patient_with(*resources))]
    result = extract(items, mappings, validation="off")
    assert result.accounting.balanced, result.accounting
    return result


def only_report(result):
    [r] = result.inputs["p1"].reports
    return r


def issue_rows(result, rid: str = "dr") -> dict[str, tuple[str, str]]:
    return {i.code: (i.severity, i.message) for i in result.issues if i.resource_id == rid}


# ------------------------------------------------------------------ recognition
@pytest.mark.parametrize(("code", "category"), [
    ((LOINC, "11526-1"), (LOINC, "LP7839-6")),   # US Core pathology note
    ((LOINC, "11529-5"), None), ((LOINC, "22637-3"), None), ((LOINC, "60568-3"), None),
    ((LOINC, "60570-9"), None),
    ((LOINC, "34117-2"), (LOINC, "LP7839-6")),   # any code, US Core pathology category
    (None, (V2, "SP")), (None, (V2, "PAT")), (None, (V2, "CP")),
])
def test_pathology_reports_recognised_by_code_or_category(mappings, code, category):
    coded = {"conclusionCode": [{"coding": [{"system": ICD, "code": "C79.51"}]}]}
    r = run(mappings, dr(code=code, category=category, **coded))
    assert only_report(r).finding == "secondary-malignancy"
    assert r.results[0].diagnosis_available_date.isoformat() == "2024-03-11"


def test_other_reports_are_set_aside_as_unmapped(mappings):
    r = run(mappings, dr(code=(LOINC, "24323-8"), category=(V2, "LAB")))
    assert r.inputs["p1"].reports == []
    assert "unmapped-code" in issue_rows(r)


# ----------------------------------------------------------------- the basis
def test_conclusion_code_is_the_coded_basis_and_wins_over_text(mappings):
    r = run(mappings, dr(conclusion="No evidence of malignancy.",
                         conclusionCode=[{"coding": [{"system": ICD, "code": "C90.00"}]}]))
    assert (only_report(r).finding, only_report(r).basis) == ("tumour-haematological", "coded")
    assert r.results[0].histology_basis == "coded"


@pytest.mark.parametrize(("text", "finding"), [
    ("L4 core biopsy: metastatic carcinoma consistent with breast primary.",
     "secondary-malignancy"),
    ("Plasma cell neoplasm, kappa restricted.", "tumour-haematological"),
    ("Chordoma.", "tumour-primary-bone"),
    ("Negative for malignancy. Reactive bone.", "histology-non-neoplastic"),
    ("No evidence of metastatic tumour; trabecular bone with fibrosis.",
     "histology-non-neoplastic"),
    ("Malignancy not identified.", "histology-non-neoplastic"),
    ("Non-neoplastic bone.", "histology-non-neoplastic"),
    ("Crushed material, insufficient for diagnosis; no tumour cells seen.",
     "histology-insufficient"),
    ("Insufficient for immunohistochemistry; metastatic adenocarcinoma.",
     "secondary-malignancy"),
    ("No lymphoma. However, metastatic carcinoma is present.", "secondary-malignancy"),
])
def test_narrative_conclusion_read_by_the_text_rule_with_negations(mappings, text, finding):
    r = run(mappings, dr(conclusion=text))
    got = only_report(r)
    assert (got.finding, got.basis) == (finding, "narrative")
    assert issue_rows(r)["narrative-conclusion"][0] == "info"


@pytest.mark.parametrize("text", ["Suspicious for carcinoma.", "Fibrous tissue only."])
def test_a_conclusion_no_rule_reads_is_a_warning_row(mappings, text):
    r = run(mappings, dr(conclusion=text))
    assert only_report(r).finding is None
    severity, message = issue_rows(r)["narrative-conclusion-unread"]
    assert severity == "warning" and "narrative only" in message
    assert text not in message  # report text stays out of the issues table
    assert "histology-unconfirmed" in r.results[0].exclusion_reasons


def test_the_text_rule_is_site_configurable(tmp_path):
    (tmp_path / "settings.yaml").write_text(
        "narrative_histology:\n  tumour-haematological: [myelom]\n"
        "  histology-non-neoplastic: [osteomyelit]\n"
        "narrative_negations: [keine]\n")
    site = load_mappings(tmp_path)
    assert read_conclusion("Plasmazellmyelom.", site.settings.text_rules).concept is None
    assert read_conclusion("Multiples Myelom", site.settings.text_rules).concept == \
        "tumour-haematological"
    assert read_conclusion("keine Myelom", site.settings.text_rules).concept == \
        "histology-non-neoplastic"
    off = replace(site.settings, narrative_histology={})
    assert read_conclusion("metastatic carcinoma", off.text_rules).concept is None


def test_condition_basis_when_no_conclusion_can_be_read():
    """A report that dates the diagnosis but says nothing readable, and a neoplasm
    Condition at the index level: the histology basis is `condition`."""
    inp = complete_patient()
    inp.reports = [replace(report("2023-03-10", None), conclusion_text=True)]
    result = reconstruct(inp, load_mappings().settings)
    assert result.included and result.histology_basis == "condition"
    assert str(result.diagnosis_available_date) == "2023-03-10"
    # without a supporting Condition the histology stays unconfirmed
    inp.conditions = [condition("tumour-solid-metastasis", (), "2020-01-01")]
    result = reconstruct(inp, load_mappings().settings)
    assert result.histology_basis is None
    assert "histology-unconfirmed" in result.exclusion_reasons


def test_histology_basis_is_a_patients_column(mappings):
    r = run(mappings, dr(conclusion="Metastatic carcinoma."))
    patients = build_tables(r).patients
    assert patients.loc[0, "histology_basis"] == "narrative"
