"""The generator end to end: sizes -> traits -> plans -> variants -> truth -> FHIR.

Determinism: every random stream is a `random.Random` seeded from the cohort seed and a
fixed label (each patient's timeline has its own stream), nothing iterates a set or
reads the clock, so the same (patients, seed, timezone) gives the same cohort.

The generator checks itself: each included patient's truth must reproduce its planned
traits (a calibration that the rules would not see is worth nothing), each excluded
patient must carry its intended reason, and no variant may change any truth cell.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

from fhir_spine.synth import truth
from fhir_spine.synth.background import background
from fhir_spine.synth.build import Builder, Built
from fhir_spine.synth.calibrate import shuffled
from fhir_spine.synth.cohort import CohortSizes, cohort_sizes, included_traits
from fhir_spine.synth.excluded import excluded_traits
from fhir_spine.synth.ids import patient_pid, resource_uuid
from fhir_spine.synth.model import PatientPlan, Traits
from fhir_spine.synth.timeline import plan_patient
from fhir_spine.synth.variants import apply_variants

_GIVEN = {
    "female": ("Anna", "Maria", "Olga", "Elena", "Sofia", "Irina", "Laura", "Nadia", "Vera"),
    "male": ("Ivan", "Pavel", "Mikhail", "Sergei", "Andrei", "Peter", "Karl", "Oleg", "Jonas"),
}
_FAMILY = ("Ivanova", "Novak", "Petrov", "Smirnov", "Kuznets", "Berg", "Larsen", "Moreau",
           "Keller", "Rossi", "Walker", "Fischer")
_EXPECTED_MODALITIES = {
    "sys+rt": "systemic;radiotherapy", "sys": "systemic", "rt": "radiotherapy",
    "neoadjuvant-resection": "systemic", "resection": "surgery",
    "separation+rt": "radiotherapy;surgery",
}


class GenerationError(RuntimeError):
    """The generator produced a cohort that contradicts its own plan: a generator bug."""


@dataclass(frozen=True)
class CohortPlan:
    """Every patient's plan and truth, before any FHIR: small enough for 100,000 patients.

    `build(i)` renders patient i's resources; the writer calls it one patient at a time so
    that the resources of a large cohort are never all in memory.
    """

    patients: int
    seed: int
    timezone: str
    sizes: CohortSizes
    plans: list[PatientPlan]
    truth: list[dict[str, str]]  # per patient, truth.COLUMNS

    def build(self, index: int, background_mean: int = 0) -> list[Built]:
        """Patient `index` (0-based) as FHIR, Patient first, then `background_mean` on
        average irrelevant resources (`synth.background`; 0: none, the default cohort)."""
        builder = Builder(self.plans[index], ZoneInfo(self.timezone), self.seed)
        return builder.build() + background(builder, background_mean)


@dataclass(frozen=True)
class Cohort(CohortPlan):
    resources: list[list[Built]]  # per patient, Patient first


def _stream(seed: int, label: str) -> random.Random:
    return random.Random(f"fhir-spine-synth/{seed}/{label}")  # noqa: S311 - simulation


def birth_date(rng: random.Random, biopsy_day: date, age: int) -> date:
    """A birth date that makes the patient exactly `age` on the biopsy day."""
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    before_birthday = (month, day) > (biopsy_day.month, biopsy_day.day)
    return date(biopsy_day.year - age - before_birthday, month, day)


def _intents(sizes: CohortSizes) -> list[str]:
    out = ["single-stage"] * sizes.single + ["staged"] * sizes.staged
    for reason, count in sizes.excluded.items():
        out += [reason] * count
    return out


def _all_traits(seed: int, intents: list[str], sizes: CohortSizes) -> list[Traits]:
    """Traits in intent order: calibrated for the included, per-reason for the excluded."""
    included = included_traits(_stream(seed, "cohort"), sizes)
    rng = _stream(seed, "excluded")
    seen: dict[str, int] = {}
    out = list(included)
    for intent in intents[len(included):]:
        out.append(excluded_traits(rng, intent, seen.get(intent, 0)))
        seen[intent] = seen.get(intent, 0) + 1
    return out


def generate(patients: int, seed: int, timezone: str = "UTC") -> Cohort:
    """The whole cohort with its resources in memory (the demo, the tests)."""
    plan = plan_cohort(patients, seed, timezone)
    return Cohort(plan.patients, plan.seed, plan.timezone, plan.sizes, plan.plans, plan.truth,
                  [plan.build(i) for i in range(len(plan.plans))])


def plan_cohort(patients: int, seed: int, timezone: str = "UTC") -> CohortPlan:
    """Plans and truth for every patient, checked against their intents; no FHIR yet."""
    if patients < 1:
        raise ValueError("a cohort needs at least one patient")
    zone = ZoneInfo(timezone)
    sizes = cohort_sizes(patients)
    intents = _intents(sizes)
    traits = _all_traits(seed, intents, sizes)
    slots = shuffled(_stream(seed, "slots"), range(len(intents)))
    plans: list[PatientPlan] = []
    by_index: dict[int, tuple[str, Traits]] = {}
    for position, slot in enumerate(slots, start=1):
        intent, t = intents[slot], traits[slot]
        rng = _stream(seed, f"patient/{position}")
        pid = patient_pid(position, patients)
        plan = PatientPlan(
            index=position, pid=pid, patient_id=pid, gender=t.sex,
            birth_date=birth_date(rng, t.biopsy_day, t.age), intent=intent,
            name=(rng.choice(_GIVEN[t.sex]), rng.choice(_FAMILY)), tumour=t.tumour,
        )
        plans.append(plan_patient(plan, t, rng))
        by_index[position] = (intent, t)
    before = [truth.truth_row(p) for p in plans]
    for plan, row in zip(plans, before, strict=True):
        _check_plan(plan, *by_index[plan.index], row)
    wanted = {i: t.wanted_variants for i, (_, t) in by_index.items() if t.wanted_variants}
    apply_variants(plans, wanted, _stream(seed, "variants"), zone)
    for plan in plans:
        if plan.ref_style == "bundle":
            plan.patient_id = resource_uuid(seed, plan.pid, None)
    after = [truth.truth_row(p) for p in plans]
    for plan, old, new in zip(plans, before, after, strict=True):
        _check_unchanged(plan, old, new)
    return CohortPlan(patients, seed, timezone, sizes, plans, after)


def _check_unchanged(plan: PatientPlan, old: dict[str, str], new: dict[str, str]) -> None:
    moved = [c for c in truth.COLUMNS if c not in ("patient_id", "variants") and old[c] != new[c]]
    if moved:
        raise GenerationError(
            f"{plan.pid}: variants {sorted(plan.variants)} changed {moved}: "
            f"{[(old[c], new[c]) for c in moved]}")


def _check_plan(plan: PatientPlan, intent: str, t: Traits, row: dict[str, str]) -> None:
    """The truth computed by the rules must say what the plan meant."""
    def fail(what: str) -> None:
        raise GenerationError(f"{plan.pid} ({intent}): {what}; truth row {row}")

    if intent not in ("single-stage", "staged"):
        if intent not in row["exclusion_reasons"].split(";"):
            fail(f"intended exclusion {intent} missing")
        return
    s = t.scores
    assert t.tumour is not None  # noqa: S101 - included patients always have a tumour
    expected = {
        "included": "true",
        "strategy": intent,
        "strategy_basis": "separate-session" if intent == "staged" else (
            "time-window" if t.basis == "time-window-before" else t.basis),
        "age_at_biopsy": str(t.age),
        "therapy_modalities": _EXPECTED_MODALITIES[t.modality],
        "days_biopsy_to_therapy": str(t.days_to_therapy),
        "days_biopsy_to_stabilization": str(t.days_to_stabilization or 0),
        "fixation_levels": str(len(t.construct)),
        "involved_vertebrae": str(len(t.lesion_levels)),
        "metastatic_outside_index": "true" if t.metastatic_outside else "false",
        "tumour_group": t.tumour.group,
        "sins_total": str(sum(s.sins.values())),
        "ecog": str(s.ecog),
        "asa": str(s.asa),
        "vas_baseline": f"{s.vas[0]:.1f}",
        "vas_at_diagnosis": f"{s.vas[1]:.1f}",
        "ae_repeat_biopsy": str(int(t.repeat_biopsy)),
        "ae_revision": str(int(t.revision)),
        "ae_unplanned_fixation": str(int(t.unplanned)),
        "ae_pain_readmission": str(int(t.pain_readmission)),
    }
    for domain, (first, near) in s.sosgoq.items():
        expected[f"sosgoq_{domain}_baseline"] = f"{first:.1f}"
        expected[f"sosgoq_{domain}_at_diagnosis"] = f"{near:.1f}"
    wrong = {k: (v, row[k]) for k, v in expected.items() if row[k] != v}
    if wrong:
        fail(f"planned vs truth {wrong}")
    if not row["diagnosis_available_date"] < row["therapy_start_date"]:
        fail("diagnosis not before therapy start")
