"""The pathway's vocabulary (PATHWAY.md), defined once: exclusion reasons, strategies,
time points, measures, adverse events and tumour groups.

Each is a `Literal` type, so the type checker catches a misspelt code in the pathway,
and a tuple of its values in output order, so the schema's allowed values, the report's
rows and the synthetic generator's names come from the same place. At run time the codes
are plain strings: outputs are byte-for-byte what they were before this module existed.

Only names and display labels live here. The rules that produce them stay in
`pathway/`, and `synth/` keeps its own independent rules (it is the test oracle).
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, get_args

# ------------------------------------------------------------------ exclusion reasons

# `*-date-unusable`: the record exists but its date cannot be placed on a day (partial
# date, data-absent-reason, a period with only an end), so the event is not missing.
ExclusionReason: TypeAlias = Literal[
    "no-index-biopsy",
    "biopsy-date-unusable",
    "under-18",
    "cervical",
    "decompression",
    "directed-to-resection",
    "histology-not-neoplastic",
    "histology-unconfirmed",
    "no-stabilization",
    "stabilization-date-unusable",
    "no-definitive-therapy",
    "therapy-date-unusable",
    "missing-outcome-measures",
]
# patients.exclusion_reasons lists a patient's reasons in exactly this order.
EXCLUSION_REASONS: Final[tuple[ExclusionReason, ...]] = get_args(ExclusionReason)
# The reasons that name an unusable date rather than a missing record.
DATE_EXCLUSION_REASONS: Final[tuple[ExclusionReason, ...]] = tuple(
    r for r in EXCLUSION_REASONS if r.endswith("-date-unusable"))
EXCLUSION_LABELS: Final[dict[ExclusionReason, str]] = {
    "no-index-biopsy": "no index vertebral biopsy",
    "biopsy-date-unusable": "biopsy date not on a calendar day",
    "under-18": "under 18 at the index biopsy",
    "cervical": "cervical index lesion",
    "decompression": "decompression for cord compression / deficit",
    "directed-to-resection": "directed to definitive resection",
    "histology-not-neoplastic": "histology not neoplastic",
    "histology-unconfirmed": "histology never confirmed",
    "no-stabilization": "no stabilization recorded",
    "stabilization-date-unusable": "stabilization date not on a calendar day",
    "no-definitive-therapy": "no definitive therapy recorded",
    "therapy-date-unusable": "therapy start not on a calendar day",
    "missing-outcome-measures": "missing outcome measures",
}

# ------------------------------------------------------------------ strategy

Strategy: TypeAlias = Literal["single-stage", "staged"]
STRATEGIES: Final[tuple[Strategy, ...]] = get_args(Strategy)
STRATEGY_LABELS: Final[dict[Strategy, str]] = {"single-stage": "Single-stage",
                                               "staged": "Staged"}

# ------------------------------------------------------------------ time points

Timepoint: TypeAlias = Literal["baseline", "at-diagnosis"]
TIMEPOINTS: Final[tuple[Timepoint, ...]] = get_args(Timepoint)

# ------------------------------------------------------------------ measures

# Reported at both time points (`<measure>_baseline`, `<measure>_at_diagnosis`).
ProMeasure: TypeAlias = Literal[
    "vas", "sosgoq_total", "sosgoq_pain", "sosgoq_physical", "sosgoq_mental", "sosgoq_social",
]
# Taken once, before the biopsy (a patients column of the same name).
BaselineMeasure: TypeAlias = Literal["sins_total", "ecog", "asa"]
# Recorded in `observations` but not a patients column of their own.
SinsComponent: TypeAlias = Literal[
    "sins_location", "sins_pain", "sins_bone_lesion", "sins_alignment", "sins_collapse",
    "sins_posterolateral",
]
# Recorded in `observations` only: no patients column, no rule reads it. Karnofsky (mCODE
# KarnofskyPerformanceStatus, LOINC 89243-0, 0-100) is kept as sent and never converted
# to ECOG: PATHWAY.md defines no such rule.
ObservationMeasure: TypeAlias = Literal["karnofsky"]
Measure: TypeAlias = ProMeasure | BaselineMeasure | SinsComponent | ObservationMeasure

PRO_MEASURES: Final[tuple[ProMeasure, ...]] = get_args(ProMeasure)
BASELINE_MEASURES: Final[tuple[BaselineMeasure, ...]] = get_args(BaselineMeasure)
SINS_COMPONENTS: Final[tuple[SinsComponent, ...]] = get_args(SinsComponent)
# observations.measure: every measure, in codebook order.
MEASURES: Final[tuple[Measure, ...]] = (
    *PRO_MEASURES, "sins_total", *SINS_COMPONENTS, "ecog", "asa", "karnofsky",
)
# SOSGOQ2.0's domains (its total is `sosgoq_total`).
SOSGOQ_DOMAINS: Final[tuple[ProMeasure, ...]] = (
    "sosgoq_pain", "sosgoq_physical", "sosgoq_mental", "sosgoq_social",
)
PRO_LABELS: Final[dict[ProMeasure, str]] = {
    "vas": "VAS pain",
    "sosgoq_total": "SOSGOQ2.0 total",
    "sosgoq_pain": "SOSGOQ2.0 pain",
    "sosgoq_physical": "SOSGOQ2.0 physical function",
    "sosgoq_mental": "SOSGOQ2.0 mental health",
    "sosgoq_social": "SOSGOQ2.0 social function",
}
PRO_SCALES: Final[dict[ProMeasure, str]] = {
    "vas": "0-10, lower is better",
    **dict.fromkeys(("sosgoq_total", *SOSGOQ_DOMAINS), "0-100, higher is better"),
}
# The range a value must lie in to be used (inclusive).
MEASURE_RANGES: Final[dict[Measure, tuple[int, int]]] = {
    "vas": (0, 10),
    "sosgoq_total": (0, 100), "sosgoq_pain": (0, 100), "sosgoq_physical": (0, 100),
    "sosgoq_mental": (0, 100), "sosgoq_social": (0, 100),
    "sins_total": (0, 18), "sins_location": (0, 3), "sins_pain": (0, 3),
    "sins_bone_lesion": (0, 2), "sins_alignment": (0, 4), "sins_collapse": (0, 3),
    "sins_posterolateral": (0, 3),
    "ecog": (0, 5), "asa": (1, 6), "karnofsky": (0, 100),
}

# ------------------------------------------------------------------ adverse events

# The patients column counting each adverse event.
AdverseEvent: TypeAlias = Literal[
    "ae_repeat_biopsy", "ae_revision", "ae_unplanned_fixation", "ae_pain_readmission",
]
ADVERSE_EVENTS: Final[tuple[AdverseEvent, ...]] = get_args(AdverseEvent)
ADVERSE_EVENT_LABELS: Final[dict[AdverseEvent, str]] = {
    "ae_repeat_biopsy": "Repeat biopsy (insufficient sample)",
    "ae_revision": "Revision / reoperation at the index level",
    "ae_unplanned_fixation": "Unplanned urgent fixation",
    "ae_pain_readmission": "Acute pain-related readmission",
}

# ------------------------------------------------------------------ tumour groups

TumourGroup: TypeAlias = Literal["solid-metastasis", "haematological", "primary-bone", "other"]
TUMOUR_GROUPS: Final[tuple[TumourGroup, ...]] = get_args(TumourGroup)
TUMOUR_GROUP_LABELS: Final[dict[TumourGroup, str]] = {
    "solid-metastasis": "Solid metastasis",
    "haematological": "Haematological",
    "primary-bone": "Primary bone tumour",
    "other": "Other",
}
# The concept (mappings/concepts.yaml) of a primary cancer or pathology conclusion -> group.
TUMOUR_FINDINGS: Final[dict[str, TumourGroup]] = {
    "tumour-solid-metastasis": "solid-metastasis",
    "tumour-haematological": "haematological",
    "tumour-primary-bone": "primary-bone",
    "tumour-other": "other",
}
