"""Cohort-level allocation: who is included, in which group, with which calibrated traits.

Each published marginal (sex, ASA, ECOG band, ...) is apportioned to exact counts and
handed out by its own seeded shuffle, so the marginals are exact while their
combinations stay random. Continuous values are sampled and calibrated per group.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TypeVar

from fhir_spine.synth import anatomy
from fhir_spine.synth.calibrate import (
    apportion,
    calibrated_ints,
    calibrated_tenths,
    expand,
    fit_mean_tenths,
    round_half_up,
    scaled,
    shuffled,
)
from fhir_spine.synth.model import Scores, Traits
from fhir_spine.synth.targets import (
    BASE_INCLUDED,
    BASE_SINGLE,
    CONSTRUCT_LENGTHS,
    DAYS_TO_STABILIZATION,
    ECOG_WITHIN_BAND,
    EXCLUSION_REASONS,
    EXTRA_EXCLUSION_ORDER,
    GROUPS,
    INCLUDED_FRACTION,
    MIN_EXCLUDED_FOR_ALL_REASONS,
    MODALITY_COUNTS,
    SURGICAL_MODALITIES,
    TUMOUR_GROUP_COUNTS,
    UNPLANNED_DAYS_TO_STABILIZATION,
    GroupTargets,
)
from fhir_spine.synth.vocab import SOSGOQ_DOMAINS, TUMOURS, Tumour

K = TypeVar("K")

FIRST_BIOPSY_DAY = date(2020, 11, 2)
LAST_BIOPSY_DAY = date(2024, 11, 30)  # leaves room for therapy and follow-up before 2025-06
MAX_DAYS_TO_THERAPY = 90


@dataclass(frozen=True)
class CohortSizes:
    single: int
    staged: int
    excluded: dict[str, int]  # reason -> patients

    @property
    def total(self) -> int:
        return self.single + self.staged + sum(self.excluded.values())


def cohort_sizes(n: int) -> CohortSizes:
    """65% included (21:44 single:staged), the rest spread over the exclusion reasons.

    From 20 patients on, at least one per reason, even if that takes the included share
    below 65%.
    """
    included = round_half_up(n * INCLUDED_FRACTION)
    if n >= MIN_EXCLUDED_FOR_ALL_REASONS:
        included = min(included, n - len(EXCLUSION_REASONS))
    single = round_half_up(included * BASE_SINGLE / BASE_INCLUDED)
    n_excluded = n - included
    per_reason = dict.fromkeys(EXCLUSION_REASONS, n_excluded // len(EXCLUSION_REASONS))
    for reason in EXTRA_EXCLUSION_ORDER[: n_excluded % len(EXCLUSION_REASONS)]:
        per_reason[reason] += 1
    return CohortSizes(single, included - single, per_reason)


def draw_biopsy_day(rng: random.Random) -> date:
    span = (LAST_BIOPSY_DAY - FIRST_BIOPSY_DAY).days
    return FIRST_BIOPSY_DAY + timedelta(days=rng.randint(0, span))


def pick_tumour(rng: random.Random, group: str, sex: str) -> Tumour:
    options = [t for t in TUMOURS if t.group == group and t.sex in (None, sex)]
    return rng.choice(options)


def labels(rng: random.Random, n: int, counts: Mapping[K, int]) -> list[K]:
    """A published categorical split scaled to n patients, handed out by a shuffle."""
    return shuffled(rng, expand(apportion(n, counts))) if n else []


def draw_scores(rng: random.Random, lesion: tuple[str, ...], sins_total: int,
                vas: tuple[float, float], sosgoq: dict[str, tuple[float, float]],
                ecog: int, asa: int) -> Scores:
    location = anatomy.sins_location(lesion)
    return Scores(vas, sosgoq, anatomy.sins_components(rng, sins_total, location), ecog, asa)


# ---------------------------------------------------------------- included patients


def included_traits(rng: random.Random, sizes: CohortSizes) -> list[Traits]:
    """Traits of every included patient: single-stage first, then staged."""
    n = sizes.single + sizes.staged
    constructs = labels(rng, n, CONSTRUCT_LENGTHS)
    tumour_groups = labels(rng, n, TUMOUR_GROUP_COUNTS)
    modalities = _modalities(rng, tumour_groups)
    out: list[Traits] = []
    for group, size, offset in (("single-stage", sizes.single, 0),
                                ("staged", sizes.staged, sizes.single)):
        part = slice(offset, offset + size)
        out.extend(_group_traits(rng, group, size, constructs[part], tumour_groups[part],
                                 modalities[part]))
    return out


def _modalities(rng: random.Random, tumour_groups: list[str]) -> list[str]:
    """Modality mix over the cohort; surgery goes to primary bone first, never myeloma."""
    n = len(tumour_groups)
    patterns = expand(apportion(n, MODALITY_COUNTS)) if n else []
    surgical = shuffled(rng, [p for p in patterns if p in SURGICAL_MODALITIES])
    others = shuffled(rng, [p for p in patterns if p not in SURGICAL_MODALITIES])
    preference = {"primary-bone": 0, "solid-metastasis": 1, "other": 1, "haematological": 2}
    order = sorted(shuffled(rng, range(n)), key=lambda i: preference[tumour_groups[i]])
    out = [""] * n
    for i in order:
        out[i] = surgical.pop() if surgical else others.pop()
    return out


def _group_traits(rng: random.Random, group: str, n: int, constructs: list[int],
                  tumour_groups: list[str], modalities: list[str]) -> list[Traits]:
    spec = GROUPS[group]
    staged = group == "staged"
    sexes = labels(rng, n, {"female": spec.female, "male": spec.n - spec.female})
    metastatic = labels(rng, n, {True: spec.metastatic_outside,
                                 False: spec.n - spec.metastatic_outside})
    involved = _involved(rng, spec, constructs)
    bases = labels(rng, n, spec.basis) if spec.basis else [None] * n
    flags = _adverse_flags(rng, n, spec)
    to_stab, to_therapy = _days(rng, spec, staged, flags)
    ages = calibrated_ints(rng, n, spec.age[0], spec.age[1], 18, 90)
    lesions = [anatomy.draw_lesion(rng, k) for k in involved]
    scores = _scores(rng, spec, lesions)
    out = []
    for i in range(n):
        out.append(Traits(
            group=group,
            basis=bases[i],
            sex=sexes[i],
            age=ages[i],
            biopsy_day=draw_biopsy_day(rng),
            tumour=pick_tumour(rng, tumour_groups[i], sexes[i]),
            lesion_levels=lesions[i],
            construct=anatomy.construct_window(rng, lesions[i], constructs[i]),
            metastatic_outside=metastatic[i],
            modality=modalities[i],
            days_to_therapy=to_therapy[i],
            days_to_stabilization=to_stab[i],
            scores=scores[i],
            repeat_biopsy="repeat_biopsy" in flags[i],
            revision="revision" in flags[i],
            unplanned="unplanned" in flags[i],
            pain_readmission="pain_readmission" in flags[i],
        ))
    return out


def _involved(rng: random.Random, spec: GroupTargets, constructs: list[int]) -> list[int]:
    """Multi-level lesions go to patients with longer constructs (a construct spans them)."""
    n = len(constructs)
    multi = apportion(n, spec.involved)["2-3"] if n else 0
    order = sorted(shuffled(rng, range(n)), key=lambda i: constructs[i] < 4)
    out = [1] * n
    for i in order[:multi]:
        out[i] = 3 if constructs[i] >= 5 and rng.random() < 0.35 else 2
    return out


def _adverse_flags(rng: random.Random, n: int, spec: GroupTargets) -> list[set[str]]:
    """Adverse events on distinct patients (counts scaled from the study)."""
    flags: list[set[str]] = [set() for _ in range(n)]
    wanted = [a for a, c in spec.adverse.items() for _ in range(scaled(c, spec.n, n))]
    for slot, event in zip(rng.sample(range(n), min(n, len(wanted))), wanted, strict=False):
        flags[slot].add(event)
    return flags


def _days(rng: random.Random, spec: GroupTargets, staged: bool,
          flags: list[set[str]]) -> tuple[list[int | None], list[int]]:
    """Biopsy->stabilization (staged) and biopsy->therapy, calibrated to the study means.

    Lower bounds keep every timeline feasible: a repeat biopsy needs a second report
    before therapy, a staged therapy follows its stabilization, a readmission needs room.
    """
    n = len(flags)
    to_stab: list[int | None] = [None] * n
    if staged:
        planned = [i for i in range(n) if "unplanned" not in flags[i]]
        mean, sd = DAYS_TO_STABILIZATION
        for i, v in zip(planned, calibrated_ints(rng, len(planned), mean, sd, 5, 26),
                        strict=True):
            to_stab[i] = v
        for i in range(n):
            if "unplanned" in flags[i]:
                to_stab[i] = rng.randint(*UNPLANNED_DAYS_TO_STABILIZATION)
    lows = []
    for i in range(n):
        low = 20 if "repeat_biopsy" in flags[i] else 10
        if staged:
            gap = 9 if "pain_readmission" in flags[i] else 6
            low = max(low, (to_stab[i] or 0) + gap)
        lows.append(low)
    mean, sd = spec.days_to_therapy
    return to_stab, calibrated_ints(rng, n, mean, sd, lows, MAX_DAYS_TO_THERAPY)


def _scores(rng: random.Random, spec: GroupTargets,
            lesions: list[tuple[str, ...]]) -> list[Scores]:
    n = len(lesions)
    bounds = [anatomy.sins_bounds(anatomy.sins_location(lesion)) for lesion in lesions]
    mean, sd = spec.sins_total
    totals = calibrated_ints(rng, n, mean, sd, [b[0] for b in bounds], [b[1] for b in bounds])
    vas = [calibrated_tenths(rng, n, m, s, 0.0, 10.0) for m, s in spec.vas]
    domains = [d for d in SOSGOQ_DOMAINS if d != "total"]
    sosgoq = {d: [calibrated_tenths(rng, n, m, s, 0.0, 100.0) for m, s in spec.sosgoq[d]]
              for d in domains}
    # The total tracks the mean of the domains, then is calibrated to its own target.
    sosgoq["total"] = [
        fit_mean_tenths(
            rng,
            [sum(sosgoq[d][t][i] for d in domains) / 4 + rng.gauss(0, 2) for i in range(n)],
            spec.sosgoq["total"][t][0], 0.0, 100.0,
        )
        for t in (0, 1)
    ]
    bands = labels(rng, n, spec.ecog_band)
    ecogs = [rng.choices(list(ECOG_WITHIN_BAND[b]), list(ECOG_WITHIN_BAND[b].values()))[0]
             for b in bands]
    asas = labels(rng, n, spec.asa)
    return [
        draw_scores(
            rng, lesions[i], totals[i], (vas[0][i], vas[1][i]),
            {d: (sosgoq[d][0][i], sosgoq[d][1][i]) for d in SOSGOQ_DOMAINS},
            ecogs[i], asas[i],
        )
        for i in range(n)
    ]
