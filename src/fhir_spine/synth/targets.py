"""The study's published figures (PATHWAY.md table) that the included cohort is calibrated to.

Counts are for the default cohort (21 single-stage + 44 staged); other sizes scale them.
Means are targets; the SDs are the generator's choice where the paper gives none
(days SDs follow from the published 95% CIs).
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_spine.pathway import vocabulary

BASE_PATIENTS = 100
BASE_INCLUDED = 65
BASE_SINGLE = 21
BASE_STAGED = 44
INCLUDED_FRACTION = BASE_INCLUDED / BASE_PATIENTS
MIN_EXCLUDED_FOR_ALL_REASONS = 20  # from this size on, every exclusion reason appears

# Profile order: patients.exclusion_reasons lists reasons in exactly this order. The
# names are the pathway's (one vocabulary); which patient has which reason is synth's own.
# The generator places every record it makes on a day, so it never produces the reasons
# that name an unusable date (`*-date-unusable`); those are tested on their own.
EXCLUSION_REASONS: tuple[str, ...] = tuple(
    r for r in vocabulary.EXCLUSION_REASONS if r not in vocabulary.DATE_EXCLUSION_REASONS)
# Who gets the excluded patients beyond an even split (35 = 3 x 10 + these 5 first).
EXTRA_EXCLUSION_ORDER: tuple[str, ...] = (
    "no-stabilization",
    "no-definitive-therapy",
    "histology-unconfirmed",
    "missing-outcome-measures",
    "cervical",
    "no-index-biopsy",
    "decompression",
    "histology-not-neoplastic",
    "directed-to-resection",
    "under-18",
)


@dataclass(frozen=True)
class GroupTargets:
    n: int
    female: int
    asa: dict[int, int]
    ecog_band: dict[str, int]  # "0-2" / "3-4"
    metastatic_outside: int
    involved: dict[str, int]  # "1" / "2-3"
    days_to_therapy: tuple[float, float]  # mean, sd
    age: tuple[float, float]
    sins_total: tuple[float, float]
    vas: tuple[tuple[float, float], tuple[float, float]]  # (mean, sd) baseline, at diagnosis
    sosgoq: dict[str, tuple[tuple[float, float], tuple[float, float]]]
    adverse: dict[str, int]  # repeat_biopsy | revision | unplanned | pain_readmission
    basis: dict[str, int]  # single-stage session links (empty for staged)


GROUPS: dict[str, GroupTargets] = {
    "single-stage": GroupTargets(
        n=BASE_SINGLE,
        female=16,
        asa={1: 8, 2: 10, 3: 3},
        ecog_band={"0-2": 9, "3-4": 12},
        metastatic_outside=9,
        involved={"1": 17, "2-3": 4},
        days_to_therapy=(30.2, 12.5),
        age=(55.3, 10.0),
        sins_total=(12.7, 2.0),
        vas=((7.5, 1.1), (4.3, 1.4)),
        # Baselines lower than at diagnosis: stabilization relieved mechanical pain.
        sosgoq={
            "total": ((53.5, 8.0), (63.2, 8.0)),
            "physical": ((62.0, 11.0), (77.7, 11.0)),
            "pain": ((36.0, 11.0), (51.2, 11.0)),
            "mental": ((57.0, 11.0), (61.0, 11.0)),
            "social": ((59.0, 11.0), (63.0, 11.0)),
        },
        adverse={"repeat_biopsy": 2, "revision": 1},
        basis={"same-encounter": 12, "part-of": 4, "time-window": 3, "time-window-before": 2},
    ),
    "staged": GroupTargets(
        n=BASE_STAGED,
        female=26,
        asa={1: 8, 2: 25, 3: 11},
        ecog_band={"0-2": 26, "3-4": 18},
        metastatic_outside=18,
        involved={"1": 37, "2-3": 7},
        days_to_therapy=(40.1, 11.2),
        age=(57.1, 10.0),
        sins_total=(11.8, 2.0),
        vas=((7.5, 1.1), (6.9, 1.2)),
        # Staged: little changes while the patient waits for the stabilization.
        sosgoq={
            "total": ((56.0, 8.0), (57.0, 8.0)),
            "physical": ((64.5, 11.0), (65.5, 11.0)),
            "pain": ((37.0, 11.0), (37.5, 11.0)),
            "mental": ((60.0, 11.0), (61.0, 11.0)),
            "social": ((62.0, 11.0), (63.0, 11.0)),
        },
        adverse={"pain_readmission": 3, "repeat_biopsy": 3, "unplanned": 2},
        basis={},
    ),
}

# Over all included patients.
CONSTRUCT_LENGTHS: dict[int, int] = {3: 28, 4: 4, 5: 25, 6: 6, 7: 2}
TUMOUR_GROUP_COUNTS: dict[str, int] = {
    "solid-metastasis": 43, "haematological": 7, "primary-bone": 6, "other": 9,
}
# Systemic+RT 58%, systemic 20%, RT 9.2%, surgery-containing 12.3% (4.6 + 4.6 + 3.1).
MODALITY_COUNTS: dict[str, int] = {
    "sys+rt": 38, "sys": 13, "rt": 6,
    "neoadjuvant-resection": 3, "resection": 3, "separation+rt": 2,
}
SURGICAL_MODALITIES = ("neoadjuvant-resection", "resection", "separation+rt")

# Staged component: biopsy -> stabilization (the rest is stabilization -> therapy).
DAYS_TO_STABILIZATION = (14.0, 5.0)
UNPLANNED_DAYS_TO_STABILIZATION = (2, 6)  # urgent fixation comes early

ECOG_WITHIN_BAND: dict[str, dict[int, int]] = {"0-2": {0: 1, 1: 3, 2: 4}, "3-4": {3: 3, 4: 1}}
