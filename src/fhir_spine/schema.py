"""The output data contract (DATA-CONTRACT.md, schema version 1) as data.

Tables are built from these column lists and the codebook is generated from them, so the
two cannot drift apart. Add columns freely; renaming or dropping one needs a new
SCHEMA_VERSION.

Every column, every manifest field and every codebook column also declares its
de-identification rule (`deid`, one of `DEID_RULES`): what `--pseudonymise` publishes in
its place. `deid.Deidentifier` applies them, for `extract` and `refresh` alike; a
column without a rule is refused there (and by a test), a manifest field without one is
not published.
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


# What --pseudonymise publishes for a value, by rule (shown in the codebook).
DEID_RULES: dict[str, str] = {
    "keep": "published as is: computed by the tool, a count, a closed vocabulary or the "
            "tool's own configuration",
    "pseudonym": "keyed HMAC-SHA256 pseudonym `<type prefix>-<20 hex>` of the id",
    "date-shift": "moved by the patient's keyed offset (--date-shift-days; unchanged "
                  "without it); partial dates dropped",
    "age": "whole years, kept; with --top-code-ages every age over 89 becomes 90 "
           "(\"90 or older\")",
    "provenance": "file path, file name, URL with its query, or line/entry position: a "
                  "keyed `src-<20 hex>` pseudonym; the mapping back is written beside the "
                  "state (OUT.state/deid-map.json, owner-only), never in the dataset",
    "scrub": "text written by the tool: ids -> pseudonyms, file names and URLs -> "
             "provenance pseudonyms, quoted values -> [redacted], dates -> [date], any "
             "source code or display -> [redacted]; text written by a server "
             "(OperationOutcome) is withheld",
    "vocabulary": "kept when a value of the closed FHIR vocabulary (resource type names, "
                  "status codes), otherwise [other]",
    "code": "kept when the mappings name the code or its system is a standard terminology "
            "(SNOMED CT, LOINC, CPT, ICD, ATC, RxNorm, HL7, the project CodeSystem); a local "
            "code otherwise becomes a keyed `code-<20 hex>` pseudonym",
    "code-system": "kept when a standard terminology or a system the mappings name; "
                   "otherwise a keyed `urn:fhir-spine:system:<20 hex>` pseudonym",
    "display": "the standard display the mappings know (the concept's meaning) for a "
               "mapped code; dropped otherwise (source text is never published)",
    "withhold": "text written by a server: replaced by the number of messages",
    "ids": "list of ids (or search parameter values carrying ids): each id pseudonymised",
    "drop": "not published",
}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str       # string, bool, int, float, date
    meaning: str
    allowed: str = ""
    deid: str = ""   # one of DEID_RULES: what --pseudonymise publishes


def _pro(measure: ProMeasure) -> list[Column]:
    label = PRO_LABELS[measure] + (" domain" if measure in SOSGOQ_DOMAINS else "")
    scale = PRO_SCALES[measure]
    return [
        Column(f"{measure}_baseline", "float", f"{label}: last value on/before the index "
               "biopsy (within the look-back window)", scale, deid="keep"),
        Column(f"{measure}_at_diagnosis", "float", f"{label}: value nearest the diagnosis "
               "date, after the biopsy (within the window)", scale, deid="keep"),
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
    Column("patient_id", "string", "Patient logical id (or pseudonym)", deid="pseudonym"),
    Column("included", "bool", "in the analytic cohort; excluded patients keep their "
           "strategy, dates and intervals, so filter on this column before analysing",
           "true, false", deid="keep"),
    Column("exclusion_reasons", "string", "`;`-joined exclusion reason codes, empty when "
           "included (`*-date-unusable`: the record exists but its date cannot be placed "
           "on a day)", "; ".join(EXCLUSION_REASONS), deid="keep"),
    Column("strategy", "string", "single-stage or staged; empty when not classifiable "
           "(also filled for excluded patients: see `included`)",
           ", ".join(STRATEGIES), deid="keep"),
    Column("strategy_basis", "string", "evidence that decided the strategy",
           "same-encounter, part-of, time-window, separate-session", deid="keep"),
    Column("age_at_biopsy", "int", "age in whole years at the index biopsy; from a "
           "year or year-month birthDate the lower bound when the dates leave it open (an "
           "info row `partial-birth-date` says which)", deid="age"),
    Column("sex", "string", "Patient.gender", "female, male, other, unknown", deid="keep"),
    Column("index_biopsy_date", "date", "first completed percutaneous vertebral biopsy",
           deid="date-shift"),
    Column("stabilization_date", "date", "pathway stabilization (pedicle screw-rod fixation)",
           deid="date-shift"),
    Column("diagnosis_available_date", "date", "first conclusive pathology report issued",
           deid="date-shift"),
    Column("histology_basis", "string", "what the biopsy histology was read from: the "
           "report's conclusionCode, its narrative conclusion (site text rule), or a neoplasm "
           "Condition when no conclusion could be read", "coded, narrative, condition",
           deid="keep"),
    Column("therapy_start_date", "date", "definitive therapy start: the first systemic "
           "therapy, radiotherapy or oncologic surgery after the index biopsy that started "
           "(a course in progress or stopped early did); a drug starts at its first "
           "administration, else the order's planned start (boundsPeriod.start), else "
           "authoredOn; a MedicationStatement at effective[x]", deid="date-shift"),
    Column("therapy_modalities", "string", "`;`-joined modalities starting within the first "
           "therapy window", "systemic; radiotherapy; surgery", deid="keep"),
    Column("days_biopsy_to_therapy", "int", "primary outcome: days index biopsy -> "
           "definitive therapy", deid="keep"),
    Column("days_biopsy_to_stabilization", "int", "days biopsy -> stabilization (0 for "
           "single-stage)", deid="keep"),
    Column("days_stabilization_to_therapy", "int", "days stabilization -> therapy", deid="keep"),
    Column("fixation_levels", "int", "instrumented levels, index level included", deid="keep"),
    Column("sins_total", "int", "Spinal Instability Neoplastic Score at baseline",
           _range("sins_total"), deid="keep"),
    Column("sins_category", "string", "SINS category", "stable (0-6), indeterminate (7-12), "
           "unstable (13-18)", deid="keep"),
    Column("ecog", "int", "ECOG performance status at baseline", _range("ecog"), deid="keep"),
    Column("ecog_group", "string", "ECOG grouped as in the study", "0-2, 3-4, 5", deid="keep"),
    Column("asa", "int", "ASA physical status class at baseline", _range("asa"), deid="keep"),
    Column("metastatic_outside_index", "bool", "secondary malignancy outside the index "
           "lesion by the diagnosis", "true, false", deid="keep"),
    Column("involved_vertebrae", "int", "distinct vertebral levels of the index lesion",
           deid="keep"),
    Column("involved_vertebrae_group", "string", "involved vertebrae grouped", "1, 2-3, 4+",
           deid="keep"),
    Column("tumour_group", "string", "primary tumour group, empty if unknown",
           ", ".join(TUMOUR_GROUPS), deid="keep"),
    *(column for measure in PRO_MEASURES for column in _pro(measure)),
    *(Column(ae, "int", _ADVERSE_EVENT_MEANINGS[ae], deid="keep") for ae in ADVERSE_EVENTS),
]

EVENTS = [
    Column("patient_id", "string", "Patient logical id (or pseudonym)", deid="pseudonym"),
    Column("event_type", "string", "what the record is on the pathway",
           "biopsy, repeat-biopsy, stabilization, pathology-report, therapy-systemic, "
           "therapy-radiotherapy, therapy-surgery, revision, decompression, readmission, "
           "encounter, condition, bone-modifying-agent, steroid, supportive-drug", deid="keep"),
    Column("concept", "string", "the concept its code mapped to (mappings/concepts.yaml)",
           deid="keep"),
    Column("start", "string", "start: instant with offset in the site zone, or date as given",
           deid="date-shift"),
    Column("end", "string", "end, when a period", deid="date-shift"),
    Column("encounter_id", "string", "Encounter logical id", deid="pseudonym"),
    Column("resource_type", "string", "FHIR resource type", deid="vocabulary"),
    Column("resource_id", "string", "FHIR logical id", deid="pseudonym"),
    Column("code_system", "string", "system of the coding that mapped", deid="code-system"),
    Column("code", "string", "code that mapped", deid="code"),
    Column("display", "string", "display of that coding", deid="display"),
    Column("status", "string", "resource status", deid="vocabulary"),
    Column("used", "bool", "used by the pathway", "true, false", deid="keep"),
    Column("note", "string", "what it was used as, or why it was not", deid="scrub"),
]

OBSERVATIONS = [
    Column("patient_id", "string", "Patient logical id (or pseudonym)", deid="pseudonym"),
    Column("measure", "string", "measure name (karnofsky, mCODE LOINC 89243-0 0-100, is "
           "recorded here only and never converted to ECOG: PATHWAY.md defines no such "
           "rule)", ", ".join(MEASURES), deid="keep"),
    Column("value", "float", "numeric value (coded answers converted)", deid="keep"),
    Column("effective", "string", "effective time: instant in the site zone, or date",
           deid="date-shift"),
    Column("effective_date", "date", "calendar date of `effective` in the site zone",
           deid="date-shift"),
    Column("timepoint", "string", "time point this value fills, if any",
           ", ".join(TIMEPOINTS), deid="keep"),
    Column("resource_type", "string", "FHIR resource type", deid="vocabulary"),
    Column("resource_id", "string", "FHIR logical id", deid="pseudonym"),
]

ISSUES = [
    Column("severity", "string", "how bad", "error, warning, info", deid="keep"),
    Column("patient_id", "string", "Patient logical id, when known", deid="pseudonym"),
    Column("resource_type", "string", "FHIR resource type, when known", deid="vocabulary"),
    Column("resource_id", "string", "FHIR logical id, when known", deid="pseudonym"),
    Column("code", "string", "problem code, e.g. malformed-json, missing-patient, "
           "unparseable-date, partial-date, no-date, partial-birth-date, "
           "unresolved-medication, invalid-resource (--validation warn: a resource the "
           "pathway uses; strict: any, set aside); one row per thing a person should "
           "look at. Resources set aside that need no attention (unsupported-type: a type "
           "the pathway does not read; unmapped-code: a code no concept maps) have no "
           "row: they are counted per reason and type in manifest.json "
           "set_aside_counted, their codes in `codes`", deid="keep"),
    Column("message", "string", "one-line description", deid="scrub"),
    Column("origin", "string", "where it was read: file:line, bundle entry or URL",
           deid="provenance"),
    Column("set_aside", "bool", "the resource was not used because of this", "true, false",
           deid="keep"),
]

CODES = [
    Column("resource_type", "string", "FHIR resource type", deid="vocabulary"),
    Column("element", "string", "element holding the code, e.g. Procedure.code", deid="keep"),
    Column("system", "string", "code system URL", deid="code-system"),
    Column("code", "string", "code", deid="code"),
    Column("display", "string", "first display seen", deid="display"),
    Column("resources", "int", "resources carrying this code", deid="keep"),
    Column("patients", "int", "patients with such a resource", deid="keep"),
    Column("concept", "string", "pathway concept it mapped to (`;`-joined when the code is "
           "listed under several); empty when unmapped", deid="keep"),
    Column("suggested_concept", "string", "for an unmapped code: the concept its display "
           "suggests (mappings/lexicon.yaml, or a site's lexicon.yaml: drug names, "
           "radiotherapy, biopsy, pedicle screw, ...); empty when mapped or nothing "
           "matched", deid="keep"),
    Column("suggestion_rule", "string", "the lexicon rule that made the suggestion",
           deid="keep"),
    Column("patients_affected", "int", "screened patients whose classification (included, "
           "exclusion reasons, strategy) changes when the pathway is rerun with this code "
           "mapped to the suggested concept (exact: what_if.py reruns the patients who carry "
           "it; `patients` is the upper bound); 0 without a suggestion", deid="keep"),
]

TABLES: dict[str, list[Column]] = {
    "patients": PATIENTS,
    "events": EVENTS,
    "observations": OBSERVATIONS,
    "issues": ISSUES,
    "codes": CODES,
}


CODEBOOK = [
    Column("table", "string", "table (or `manifest.json`) the row describes", deid="keep"),
    Column("name", "string", "column name (manifest: field path, `[]` a list item, `*` any "
           "key)", deid="keep"),
    Column("type", "string", "string, bool, int, float, date (manifest: also object, list)",
           deid="keep"),
    Column("meaning", "string", "what it holds", deid="keep"),
    Column("allowed_values", "string", "allowed values, when a closed set", deid="keep"),
    Column("deid", "string", "de-identification rule under --pseudonymise",
           ", ".join(DEID_RULES), deid="keep"),
]


def _searches(root: str) -> list[Column]:
    """The fields of the search records (`sources/search.py` `SearchRecord.as_dict`)."""
    at = f"{root}.searches[]"
    return [
        Column(f"{at}.resource_type", "string", "type searched", deid="vocabulary"),
        Column(f"{at}.params", "list", "search parameters as sent (secrets redacted)",
               deid="ids"),
        Column(f"{at}.purpose", "string", "why the search was made", deid="keep"),
        Column(f"{at}.url", "string", "first request URL", deid="provenance"),
        *(Column(f"{at}.{n}", "int", "pages, matches, included resources, total, problems",
                 deid="keep") for n in ("pages", "matches", "includes", "total", "problems")),
        Column(f"{at}.window", "object", "_lastUpdated window of a split search",
               deid="keep"),
        Column(f"{at}.split_into_windows", "bool", "split into _lastUpdated windows",
               deid="keep"),
        Column(f"{at}.server_messages", "list", "OperationOutcome texts of the search",
               deid="withhold"),
    ]


def _export(root: str) -> list[Column]:
    """The fields of a Bulk Data export summary (`sources/bulk/job.py` `summary`)."""
    return [
        *(Column(f"{root}.{n}", "string", "export request and progress: level, types, "
                 "_since, transactionTime, token, resumed, polls, seconds, complete",
                 deid="keep")
          for n in ("kind", "level", "types", "since", "transaction_time",
                    "requires_access_token", "resumed", "polls", "export_seconds",
                    "complete", "deleted_resources")),
        Column(f"{root}.group_id", "string", "Group exported", deid="pseudonym"),
        Column(f"{root}.type_filters", "list", "_typeFilter queries as sent", deid="scrub"),
        Column(f"{root}.files[].url", "string", "file URL on the server", deid="provenance"),
        Column(f"{root}.files[].name", "string", "file name on disk", deid="provenance"),
        *(Column(f"{root}.files[].{n}", "string", "file kind, type, counts, size, SHA-256",
                 deid="keep")
          for n in ("kind", "type", "count", "lines", "bytes", "sha256")),
        Column(f"{root}.raw_layer", "string", "folder of the downloaded NDJSON (identified "
               "data)", deid="provenance"),
        Column(f"{root}.server_messages", "list", "the export's error-file texts",
               deid="withhold"),
        Column(f"{root}.requests", "object", "HTTP requests by status and method",
               deid="keep"),
        *_searches(root),
    ]


# Every field of manifest.json (`dataset.manifest`, the sources' `query` blocks, refresh's
# report). A path is dotted, `[]` is a list item, `*` any key; a rule covers the subtree.
MANIFEST = [
    *(Column(n, "string", "format and tool versions, run times", deid="keep")
      for n in ("schema_version", "tool", "tool_version", "started", "finished",
                "fhir_version", "validation")),
    Column("source.kind", "string", "files or server", deid="keep"),
    Column("source.location", "string", "input folder, or server base URL without "
           "credentials", deid="provenance"),
    Column("source.auth", "string", "authentication kind", deid="keep"),
    Column("query.kind", "string", "how the source was read", deid="keep"),
    Column("query.complete", "bool", "the pull finished", deid="keep"),
    Column("query.transaction_time", "string", "instant the data is complete up to",
           deid="keep"),
    Column("query.export_artefacts[].file", "string", "export client log or manifest file",
           deid="provenance"),
    Column("query.export_artefacts[].requests", "list", "kick-off URLs", deid="provenance"),
    Column("query.export_artefacts[].errors", "list", "error events of the export log",
           deid="withhold"),
    *(Column(f"query.export_artefacts[].{n}", "string", "artefact kind, export ids, "
             "transactionTimes, counts", deid="keep")
      for n in ("kind", "transaction_times", "export_ids", "events", "complete",
                "error_count")),
    *(Column(f"query.{n}", "string", "how the cohort was searched: cohort kind, types, "
             "page size, batch size, workers, search cap", deid="keep")
      for n in ("cohort", "resource_types", "page_size", "batch_size", "workers", "cap")),
    Column("query.patients_file", "string", "the --patients file", deid="provenance"),
    Column("query.patients", "int", "patients asked for", deid="keep"),
    Column("query.index_codes", "list", "index-procedure code tokens searched (mappings)",
           deid="keep"),
    Column("query.not_found.*", "list", "ids referenced or asked for but not returned",
           deid="ids"),
    *(Column(f"query.{n}", "int", "search totals", deid="keep")
      for n in ("windowed", "resources", "includes", "duplicates_skipped")),
    Column("query.scope", "object", "refresh scope: mode, level, cohort, index codes",
           deid="keep"),
    Column("query.types_not_offered", "list", "optional resource types the server does not "
           "offer for patient searches, so not pulled", deid="vocabulary"),
    Column("query.scope.group_id", "string", "Group refreshed", deid="pseudonym"),
    Column("query.scope.type_filters", "list", "_typeFilter queries", deid="scrub"),
    Column("query.scope.patients_sha256", "string", "unkeyed hash of the --patients ids",
           deid="drop"),
    *_export("query"),
    Column("refresh", "object", "refresh counts, watermarks, timings", deid="keep"),
    Column("refresh.export", "object", "the refresh's export summary (fields not listed "
           "here are not published)", deid="drop"),
    *_export("refresh.export"),
    Column("refresh.previous_run_killed", "object", "a run that did not finish (pid, host, "
           "start)", deid="keep"),
    Column("refresh.previous_run_killed.command", "string", "its command line (paths)",
           deid="provenance"),
    Column("settings", "object", "pathway settings in force", deid="keep"),
    Column("resources_read", "object", "resources read per type", deid="keep"),
    Column("accounting", "object", "read = used + set aside", deid="keep"),
    Column("issues", "object", "issues per severity", deid="keep"),
    Column("set_aside_counted", "object", "resources set aside needing no attention, "
           "counted instead of an issues row each: reason (unsupported-type, "
           "unmapped-code) -> resource type -> count", deid="keep"),
    Column("rows", "object", "rows per table", deid="keep"),
    Column("mapping_files[].path", "string", "mapping file (defaults by package name, site "
           "files by path)", deid="provenance"),
    Column("mapping_files[].sha256", "string", "SHA-256 of the file", deid="keep"),
    Column("terminology", "object", "--terminology: server used, max_expansion, code system "
           "versions (system -> versions), codes_added; per-code decisions of incomplete "
           "expansions: codes_decided = codes_member + codes_not_member (of these "
           "codes_unknown to the server and codes_failed), requests, operations (answers "
           "per operation)", deid="keep"),
    Column("terminology.server", "string", "terminology server base URL", deid="provenance"),
    Column("terminology.warning", "string", "why the server was not used", deid="scrub"),
    Column("terminology.expansions[]", "object", "per is-a entry: concept, system, is-a, "
           "codes listed, added", deid="keep"),
    Column("terminology.expansions[].incomplete", "string", "why the expansion was "
           "incomplete (total above the codes returned, cap reached, refused with the "
           "server's reason); null when complete", deid="scrub"),
    Column("warnings", "list", "run warnings", deid="scrub"),
    Column("pseudonymisation", "object", "method, key id (never the key), rules applied",
           deid="keep"),
]


MANIFEST = list({c.name: c for c in MANIFEST[::-1]}.values())[::-1]  # once each: the first


def deid_rule(path: tuple[str, ...]) -> str | None:
    """The rule of a manifest field (`path`: keys, `[]` for a list item): the most specific
    declared pattern that is a prefix of it; None when none is."""
    best: tuple[int, str] | None = None
    for c in MANIFEST:
        pattern = _pattern(c.name)
        if len(pattern) <= len(path) and all(
                p in ("*", k) for p, k in zip(pattern, path, strict=False)):
            if best is None or len(pattern) >= best[0]:
                best = (len(pattern), c.deid)
    return best[1] if best else None


def _pattern(name: str) -> tuple[str, ...]:
    return tuple(part for piece in name.split(".")
                 for part in ((piece[:-2], "[]") if piece.endswith("[]") else (piece,)))


def _documented() -> list[tuple[str, list[Column]]]:
    return [*TABLES.items(), ("codebook", CODEBOOK), ("manifest.json", MANIFEST)]


def codebook_rows() -> list[dict[str, str]]:
    return [
        {"table": table, "name": c.name, "type": c.dtype, "meaning": c.meaning,
         "allowed_values": c.allowed, "deid": c.deid}
        for table, columns in _documented() for c in columns
    ]


def codebook_markdown() -> str:
    lines = [f"# Codebook (output schema version {SCHEMA_VERSION})", "",
             "Generated from `src/fhir_spine/schema.py` by "
             "`python -m fhir_spine.schema > docs/codebook.md`; every output folder carries "
             "the same content as `codebook.csv`.", "",
             "`deid` is what `--pseudonymise` publishes in a column's place:", ""]
    lines += [f"- `{rule}`: {meaning}" for rule, meaning in DEID_RULES.items()]
    lines.append("")
    for table, columns in _documented():
        lines += [f"## {table}", "", "| column | type | meaning | allowed values | deid |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c.name} | {c.dtype} | {c.meaning} | {c.allowed} | {c.deid} |"
                  for c in columns]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(codebook_markdown(), end="")
