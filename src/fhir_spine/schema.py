"""The output data contract (DATA-CONTRACT.md, schema version 1) as data.

Tables are built from these column lists and the codebook is generated from them, so the
two cannot drift apart. Add columns freely; renaming or dropping one needs a new
SCHEMA_VERSION.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_spine.pathway.vocabulary import (
    ADVERSE_EVENTS,
    EXCLUSION_REASONS,
    MEASURE_RANGES,
    MEASURES,
    PRO_LABELS,
    PRO_MEASURES,
    PRO_SCALES,
    SOSGOQ_DOMAINS,
    STRATEGIES,
    TIMEPOINTS,
    TUMOUR_GROUPS,
    AdverseEvent,
    Measure,
    ProMeasure,
)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str       # string, bool, int, float, date
    meaning: str
    allowed: str = ""


def _pro(measure: ProMeasure) -> list[Column]:
    label = PRO_LABELS[measure] + (" domain" if measure in SOSGOQ_DOMAINS else "")
    scale = PRO_SCALES[measure]
    return [
        Column(f"{measure}_baseline", "float", f"{label}: last value on/before the index "
               "biopsy (within the look-back window)", scale),
        Column(f"{measure}_at_diagnosis", "float", f"{label}: value nearest the diagnosis "
               "date, after the biopsy (within the window)", scale),
    ]


def _range(measure: Measure) -> str:
    low, high = MEASURE_RANGES[measure]
    return f"{low}-{high}"


_ADVERSE_EVENT_MEANINGS: dict[AdverseEvent, str] = {
    "ae_repeat_biopsy": "repeat biopsies (later session, before therapy)",
    "ae_revision": "revisions of the instrumentation at the index level",
    "ae_unplanned_fixation": "staged stabilization done as urgent/emergency",
    "ae_pain_readmission": "acute pain-related admissions before therapy",
}


PATIENTS = [
    Column("patient_id", "string", "Patient logical id (or pseudonym)"),
    Column("included", "bool", "in the analytic cohort", "true, false"),
    Column("exclusion_reasons", "string", "`;`-joined exclusion reason codes, empty when "
           "included (`*-date-unusable`: the record exists but its date cannot be placed "
           "on a day)", "; ".join(EXCLUSION_REASONS)),
    Column("strategy", "string", "single-stage or staged; empty when not classifiable",
           ", ".join(STRATEGIES)),
    Column("strategy_basis", "string", "evidence that decided the strategy",
           "same-encounter, part-of, time-window, separate-session"),
    Column("age_at_biopsy", "int", "age in whole years at the index biopsy; from a "
           "year or year-month birthDate the lower bound when the dates leave it open (an "
           "info row `partial-birth-date` says which)"),
    Column("sex", "string", "Patient.gender", "female, male, other, unknown"),
    Column("index_biopsy_date", "date", "first completed percutaneous vertebral biopsy"),
    Column("stabilization_date", "date", "pathway stabilization (pedicle screw-rod fixation)"),
    Column("diagnosis_available_date", "date", "first conclusive pathology report issued"),
    Column("histology_basis", "string", "what the biopsy histology was read from: the "
           "report's conclusionCode, its narrative conclusion (site text rule), or a neoplasm "
           "Condition when no conclusion could be read", "coded, narrative, condition"),
    Column("therapy_start_date", "date", "definitive therapy start: the first systemic "
           "therapy, radiotherapy or oncologic surgery after the index biopsy that started "
           "(a course in progress or stopped early did); a drug starts at its first "
           "administration, else the order's planned start (boundsPeriod.start), else "
           "authoredOn; a MedicationStatement at effective[x]"),
    Column("therapy_modalities", "string", "`;`-joined modalities starting within the first "
           "therapy window", "systemic; radiotherapy; surgery"),
    Column("days_biopsy_to_therapy", "int", "primary outcome: days index biopsy -> "
           "definitive therapy"),
    Column("days_biopsy_to_stabilization", "int", "days biopsy -> stabilization (0 for "
           "single-stage)"),
    Column("days_stabilization_to_therapy", "int", "days stabilization -> therapy"),
    Column("fixation_levels", "int", "instrumented levels, index level included"),
    Column("sins_total", "int", "Spinal Instability Neoplastic Score at baseline",
           _range("sins_total")),
    Column("sins_category", "string", "SINS category", "stable (0-6), indeterminate (7-12), "
           "unstable (13-18)"),
    Column("ecog", "int", "ECOG performance status at baseline", _range("ecog")),
    Column("ecog_group", "string", "ECOG grouped as in the study", "0-2, 3-4, 5"),
    Column("asa", "int", "ASA physical status class at baseline", _range("asa")),
    Column("metastatic_outside_index", "bool", "secondary malignancy outside the index "
           "lesion by the diagnosis", "true, false"),
    Column("involved_vertebrae", "int", "distinct vertebral levels of the index lesion"),
    Column("involved_vertebrae_group", "string", "involved vertebrae grouped", "1, 2-3, 4+"),
    Column("tumour_group", "string", "primary tumour group, empty if unknown",
           ", ".join(TUMOUR_GROUPS)),
    *(column for measure in PRO_MEASURES for column in _pro(measure)),
    *(Column(ae, "int", _ADVERSE_EVENT_MEANINGS[ae]) for ae in ADVERSE_EVENTS),
]

EVENTS = [
    Column("patient_id", "string", "Patient logical id (or pseudonym)"),
    Column("event_type", "string", "what the record is on the pathway",
           "biopsy, repeat-biopsy, stabilization, pathology-report, therapy-systemic, "
           "therapy-radiotherapy, therapy-surgery, revision, decompression, readmission, "
           "encounter, condition, bone-modifying-agent, steroid, supportive-drug"),
    Column("concept", "string", "the concept its code mapped to (mappings/concepts.yaml)"),
    Column("start", "string", "start: instant with offset in the site zone, or date as given"),
    Column("end", "string", "end, when a period"),
    Column("encounter_id", "string", "Encounter logical id"),
    Column("resource_type", "string", "FHIR resource type"),
    Column("resource_id", "string", "FHIR logical id"),
    Column("code_system", "string", "system of the coding that mapped"),
    Column("code", "string", "code that mapped"),
    Column("display", "string", "display of that coding"),
    Column("status", "string", "resource status"),
    Column("used", "bool", "used by the pathway", "true, false"),
    Column("note", "string", "what it was used as, or why it was not"),
]

OBSERVATIONS = [
    Column("patient_id", "string", "Patient logical id (or pseudonym)"),
    Column("measure", "string", "measure name", ", ".join(MEASURES)),
    Column("value", "float", "numeric value (coded answers converted)"),
    Column("effective", "string", "effective time: instant in the site zone, or date"),
    Column("effective_date", "date", "calendar date of `effective` in the site zone"),
    Column("timepoint", "string", "time point this value fills, if any",
           ", ".join(TIMEPOINTS)),
    Column("resource_type", "string", "FHIR resource type"),
    Column("resource_id", "string", "FHIR logical id"),
]

ISSUES = [
    Column("severity", "string", "how bad", "error, warning, info"),
    Column("patient_id", "string", "Patient logical id, when known"),
    Column("resource_type", "string", "FHIR resource type, when known"),
    Column("resource_id", "string", "FHIR logical id, when known"),
    Column("code", "string", "problem code, e.g. malformed-json, missing-patient, "
           "unparseable-date, partial-date, no-date, partial-birth-date, unmapped-code, "
           "unresolved-medication, invalid-resource"),
    Column("message", "string", "one-line description"),
    Column("origin", "string", "where it was read: file:line, bundle entry or URL"),
    Column("set_aside", "bool", "the resource was not used because of this", "true, false"),
]

CODES = [
    Column("resource_type", "string", "FHIR resource type"),
    Column("element", "string", "element holding the code, e.g. Procedure.code"),
    Column("system", "string", "code system URL"),
    Column("code", "string", "code"),
    Column("display", "string", "first display seen"),
    Column("resources", "int", "resources carrying this code"),
    Column("patients", "int", "patients with such a resource"),
    Column("concept", "string", "pathway concept it mapped to (`;`-joined when the code is "
           "listed under several); empty when unmapped"),
]

TABLES: dict[str, list[Column]] = {
    "patients": PATIENTS,
    "events": EVENTS,
    "observations": OBSERVATIONS,
    "issues": ISSUES,
    "codes": CODES,
}


def codebook_rows() -> list[dict[str, str]]:
    return [
        {"table": table, "name": c.name, "type": c.dtype, "meaning": c.meaning,
         "allowed_values": c.allowed}
        for table, columns in TABLES.items() for c in columns
    ]


def codebook_markdown() -> str:
    lines = [f"# Codebook (output schema version {SCHEMA_VERSION})", "",
             "Generated from `src/fhir_spine/schema.py` by "
             "`python -m fhir_spine.schema > docs/codebook.md`; every output folder carries "
             "the same content as `codebook.csv`.", ""]
    for table, columns in TABLES.items():
        lines += [f"## {table}", "", "| column | type | meaning | allowed values |",
                  "|---|---|---|---|"]
        lines += [f"| {c.name} | {c.dtype} | {c.meaning} | {c.allowed} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(codebook_markdown(), end="")
