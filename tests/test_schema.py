from pathlib import Path

from fhir_spine import schema

ROOT = Path(__file__).resolve().parents[1]


def test_committed_codebook_is_generated_from_schema():
    committed = (ROOT / "docs" / "codebook.md").read_text()
    assert committed == schema.codebook_markdown(), (
        "docs/codebook.md is stale: run `python -m fhir_spine.schema > docs/codebook.md`")


def test_contract_columns_are_present():
    # DATA-CONTRACT.md schema version 1: these names may never be renamed or dropped.
    required = {
        "patients": ["patient_id", "included", "exclusion_reasons", "strategy",
                     "strategy_basis", "age_at_biopsy", "sex", "index_biopsy_date",
                     "stabilization_date", "diagnosis_available_date", "therapy_start_date",
                     "therapy_modalities", "days_biopsy_to_therapy",
                     "days_biopsy_to_stabilization", "days_stabilization_to_therapy",
                     "fixation_levels", "sins_total", "ecog", "asa", "metastatic_outside_index",
                     "involved_vertebrae", "tumour_group", "vas_baseline", "vas_at_diagnosis",
                     "sosgoq_total_baseline", "sosgoq_total_at_diagnosis", "ae_repeat_biopsy",
                     "ae_revision", "ae_unplanned_fixation", "ae_pain_readmission"],
        "events": ["patient_id", "event_type", "start", "end", "encounter_id",
                   "resource_type", "resource_id", "code_system", "code", "display", "status",
                   "used", "note"],
        "observations": ["patient_id", "measure", "value", "effective", "timepoint",
                         "resource_type", "resource_id"],
        "issues": ["severity", "patient_id", "resource_type", "resource_id", "code", "message"],
        "codes": ["resource_type", "element", "system", "code", "display", "resources",
                  "patients", "concept"],
    }
    for table, names in required.items():
        have = [c.name for c in schema.TABLES[table]]
        assert not set(names) - set(have), table
    for domain in ("pain", "physical", "mental", "social"):
        for tp in ("baseline", "at_diagnosis"):
            assert f"sosgoq_{domain}_{tp}" in [c.name for c in schema.PATIENTS]
