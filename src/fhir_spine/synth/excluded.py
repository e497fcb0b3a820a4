"""Screened patients who must be excluded: realistic otherwise, failing one rule on purpose.

Their traits are drawn freely (no calibration: the study's figures describe the included
cohort only); then the flags for the intended exclusion reason are set. `nth` (the
patient's rank within its reason) rotates the flavours, so three patients excluded for
the same reason reach it three different ways.
"""

from __future__ import annotations

import random

from fhir_spine.synth import anatomy
from fhir_spine.synth.calibrate import round_half_up
from fhir_spine.synth.cohort import draw_biopsy_day, draw_scores, pick_tumour
from fhir_spine.synth.model import Traits
from fhir_spine.synth.targets import ECOG_WITHIN_BAND, GROUPS, TUMOUR_GROUP_COUNTS
from fhir_spine.synth.vocab import SOSGOQ_DOMAINS

_NO_BIOPSY_FLAVOURS = ("not-done", "entered-in-error", "non-vertebral")
_MISSING_FLAVOURS = (
    "baseline-vas-outside-lookback",
    "diagnosis-sosgoq-missing",
    "diagnosis-vas-late",
    "no-sosgoq",
)
_NON_SURGICAL = ("sys+rt", "sys+rt", "sys", "rt")


def _clip(value: float, lo: float, hi: float) -> float:
    return round(min(max(value, lo), hi), 1)


def _free_traits(rng: random.Random, cervical: bool = False) -> Traits:
    """A plausible screened patient, drawn around the staged group's figures."""
    spec = GROUPS["staged"]
    sex = rng.choice(["female", "male"])
    group = rng.choice(["single-stage", "staged", "staged"])
    involved = 2 if rng.random() < 0.2 else 1
    lesion = anatomy.draw_lesion(rng, involved, cervical=cervical)
    length = rng.choice([3, 3, 4, 5, 5, 6]) if not cervical else rng.choice([3, 4])
    tumour_group = rng.choices(list(TUMOUR_GROUP_COUNTS), list(TUMOUR_GROUP_COUNTS.values()))[0]
    lo, hi = anatomy.sins_bounds(anatomy.sins_location(lesion))
    to_stab = rng.randint(5, 22) if group == "staged" else None
    band = rng.choice(list(ECOG_WITHIN_BAND))
    scores = draw_scores(
        rng, lesion, rng.randint(lo, hi),
        (_clip(rng.gauss(*spec.vas[0]), 0, 10), _clip(rng.gauss(*spec.vas[1]), 0, 10)),
        {d: (_clip(rng.gauss(*spec.sosgoq[d][0]), 0, 100),
             _clip(rng.gauss(*spec.sosgoq[d][1]), 0, 100)) for d in SOSGOQ_DOMAINS},
        rng.choices(list(ECOG_WITHIN_BAND[band]), list(ECOG_WITHIN_BAND[band].values()))[0],
        rng.choice([1, 2, 2, 3]),
    )
    return Traits(
        group=group,
        basis=rng.choice(["same-encounter", "same-encounter", "part-of", "time-window"])
        if group == "single-stage" else None,
        sex=sex,
        age=min(max(round_half_up(rng.gauss(60, 12)), 22), 88),
        biopsy_day=draw_biopsy_day(rng),
        tumour=pick_tumour(rng, tumour_group, sex),
        lesion_levels=lesion,
        construct=anatomy.construct_window(rng, lesion, max(length, involved + 1)),
        metastatic_outside=rng.random() < 0.4,
        modality=rng.choice(_NON_SURGICAL),
        days_to_therapy=rng.randint(max(14, (to_stab or 0) + 6), 60),
        days_to_stabilization=to_stab,
        scores=scores,
    )


def excluded_traits(rng: random.Random, reason: str, nth: int) -> Traits:
    """Traits of the `nth` patient excluded for `reason` (reason codes as in the profile)."""
    t = _free_traits(rng, cervical=reason == "cervical")
    if reason == "no-index-biopsy":
        t.biopsy = _NO_BIOPSY_FLAVOURS[nth % len(_NO_BIOPSY_FLAVOURS)]
        t.group = t.basis = t.days_to_stabilization = t.days_to_therapy = None
        t.tumour, t.metastatic_outside, t.modality = None, False, "none"
    elif reason == "under-18":
        t.age = rng.randint(15, 17)
        t.tumour = pick_tumour(rng, rng.choice(["primary-bone", "haematological"]), t.sex)
    elif reason == "decompression":
        t.group, t.basis, t.decompression = "staged", None, True
        t.days_to_stabilization = rng.randint(3, 10)
        t.days_to_therapy = rng.randint(t.days_to_stabilization + 8, 55)
    elif reason == "directed-to-resection":
        t.group = t.basis = t.days_to_stabilization = None
        t.modality = "resection"
        t.tumour = pick_tumour(rng, rng.choice(["primary-bone", "solid-metastasis"]), t.sex)
    elif reason == "histology-not-neoplastic":
        _no_tumour(t, "non-neoplastic")
    elif reason == "histology-unconfirmed":
        _no_tumour(t, "insufficient")
        if nth % 3 == 0:  # empirical radiotherapy despite no diagnosis
            t.modality = "rt"
            t.days_to_therapy = rng.randint(max(20, (t.days_to_stabilization or 0) + 6), 45)
        if nth % 3 == 2:
            t.repeat_biopsy = t.repeat_insufficient = True
    elif reason == "no-stabilization":
        t.group = t.basis = t.days_to_stabilization = None
        t.wanted_variants = (("entered-in-error",), ("old-stabilization",), ())[nth % 3]
    elif reason == "no-definitive-therapy":
        t.modality, t.days_to_therapy = "none", None
        t.wanted_variants = (("bone-modifying-agent-alone",),
                             ("bone-modifying-agent-alone", "cancelled"),
                             ("bone-modifying-agent-alone", "proposal"))[nth % 3]
    elif reason == "missing-outcome-measures":
        t.missing_measure = _MISSING_FLAVOURS[nth % len(_MISSING_FLAVOURS)]
    elif reason != "cervical":
        raise ValueError(f"unknown exclusion reason {reason}")
    return t


def _no_tumour(t: Traits, histology: str) -> None:
    t.histology = histology
    t.tumour, t.metastatic_outside = None, False
    t.modality, t.days_to_therapy = "none", None
