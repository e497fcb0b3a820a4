"""The messy variants: decoys and awkward renderings added to otherwise clean plans.

Every decoy is placed where it *would* change an answer if a reader counted it (a
not-done biopsy before the real one, a cancelled chemo order before the real start,
...). The generator re-computes the truth afterwards and insists it did not move: a
decoy that changed the answer would be a generator bug, not a test of the pathway.
Each variant tags the patients it touched (ground truth column `variants`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from fhir_spine.synth import clock, truth
from fhir_spine.synth.calibrate import round_half_up
from fhir_spine.synth.model import (
    AdministrationPlan,
    ConditionPlan,
    EncounterPlan,
    MedicationPlan,
    ObservationPlan,
    PatientPlan,
    ProcedurePlan,
    ReportPlan,
    When,
)
from fhir_spine.synth.timeline import biopsy_codes
from fhir_spine.synth.vocab import (
    BIOPSY_PCS,
    CPT_LONG_CONSTRUCT,
    METASTASIS_ELSEWHERE,
    PAIN_REASONS,
    PROCEDURE_CODES,
    SITE_LUNG,
)


@dataclass(frozen=True)
class Context:
    rng: random.Random
    zone: ZoneInfo
    rank: int  # how many patients got this variant before: rotates flavours
    forced: bool = False  # asked for by the patient's exclusion flavour


Eligible = Callable[[PatientPlan, truth.Facts], bool]
Apply = Callable[[PatientPlan, truth.Facts, Context], None]


@dataclass(frozen=True)
class Variant:
    tag: str
    per_hundred: int  # patients that get it in a cohort of 100 (forced ones come on top)
    eligible: Eligible
    apply: Apply


def _years_before(rng: random.Random, lo: int, hi: int) -> int:
    """A day offset some years back: history that must stay out of the pathway."""
    return -365 * rng.randint(lo, hi) - rng.randint(0, 300)


def _offset_day(facts: truth.Facts, days: int) -> date:
    assert facts.index_day is not None  # noqa: S101 - only called with an index biopsy
    return facts.index_day + timedelta(days=days)


def _has_index(plan: PatientPlan, f: truth.Facts) -> bool:
    return f.index is not None


def _has_tumour(plan: PatientPlan, f: truth.Facts) -> bool:
    return f.diagnosis is not None and f.diagnosis.finding == "tumour" and plan.tumour is not None


def _room_for_order(plan: PatientPlan, f: truth.Facts) -> bool:
    """A decoy order starts the day after the diagnosis: it must still precede therapy."""
    if not _has_tumour(plan, f) or f.diagnosis_day is None:
        return False
    return f.therapy_start is None or (f.therapy_start - f.diagnosis_day).days >= 2


# ---------------------------------------------------------------- renderings


def performed_datetime(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    for proc in plan.procedures:
        if proc.kind in ("biopsy", "stabilization", "revision", "decompression", "resection",
                         "separation"):
            proc.use_period = False


def partial_date(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """A historic operation known only to the month; the primary's onset likewise."""
    kind = ctx.rng.choice(["appendectomy", "cholecystectomy"])
    day = _offset_day(f, _years_before(ctx.rng, 5, 20))
    plan.procedures.append(ProcedurePlan(
        f"{kind}-history", kind, clock.month_of(day), None, PROCEDURE_CODES[kind],
        use_period=False))
    for cond in plan.conditions:
        if cond.role == "primary" and cond.onset is not None:
            cond.onset = clock.month_of(cond.onset.local.date())


def midnight_offset(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """Rotate over the biopsy session, the report's issue time and the therapy start."""
    flavours = ["biopsy"]
    if f.diagnosis is not None:
        flavours.append("report")
    if f.therapy_events:
        flavours.append("therapy")
    flavour = flavours[ctx.rank % len(flavours)]
    if flavour == "biopsy":
        _cross_biopsy_session(plan, f, ctx.zone)
    elif flavour == "report":
        assert f.diagnosis is not None  # noqa: S101 - flavour offered only then
        f.diagnosis.issued = clock.crossing_moment(f.diagnosis.issued.local.date(), ctx.zone)
    else:
        _cross_therapy_start(plan, f, ctx.zone)


def _cross_biopsy_session(plan: PatientPlan, f: truth.Facts, zone: ZoneInfo) -> None:
    index = f.index
    assert index is not None and index.end is not None  # noqa: S101
    moment = clock.crossing_moment(index.start.local.date(), zone)
    delta = moment.local - index.start.local
    session = [p for p in plan.procedures if p is index or (
        p.kind == "stabilization" and p.status == "completed" and truth.session_link(index, p))]
    for proc in session:
        old = proc.start
        proc.start = When(proc.start.local + delta, render_offset=moment.render_offset)
        if proc.end is not None:
            proc.end = proc.end.shifted(delta)
        for report in plan.reports:  # specimen collection time moves with the biopsy
            if report.effective is old:
                report.effective = proc.start
    if index.encounter:
        enc = plan.encounter(index.encounter)
        enc.start = When(min(enc.start.local, moment.local - timedelta(minutes=40)))


def _cross_therapy_start(plan: PatientPlan, f: truth.Facts, zone: ZoneInfo) -> None:
    when, _, key = f.therapy_events[0]
    moment = clock.crossing_moment(when.local.date(), zone)
    for med in plan.medications:
        if med.key == key:
            if med.start is None:
                med.authored = moment
            else:
                med.start = moment
                if med.authored.local.date() >= moment.local.date():
                    med.authored = med.authored.shifted(timedelta(days=-1))
    for adm in plan.administrations:
        if adm.key == key or adm.when.local.date() == moment.local.date():
            adm.when = moment
    for proc in plan.procedures:
        if proc.key == key:
            proc.start = moment


def multi_system_codes(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    for proc in plan.procedures:
        if proc.kind == "biopsy" and proc.levels:
            local, cpt, sct, _ = PROCEDURE_CODES["biopsy"]
            proc.codes = (local, cpt, BIOPSY_PCS[proc.levels[0][0]], sct)
        elif proc.kind == "stabilization" and proc.status == "completed":
            local, cpt, screw, _ = PROCEDURE_CODES["stabilization"]
            proc.codes = (local, CPT_LONG_CONSTRUCT if len(proc.levels) >= 7 else cpt, screw)


def reference_style(style: str) -> Apply:
    def apply(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
        plan.ref_style = style
    return apply


def date_only(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    for obs in plan.observations:
        if obs.key.endswith("-baseline"):
            obs.when = clock.on(obs.when.local.date())


def observation_period(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    for obs in plan.observations:
        if obs.measure.startswith("sosgoq_") and obs.key.endswith("-diagnosis"):
            obs.style = "period"


# ---------------------------------------------------------------- procedure decoys


def not_done(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    index = f.index
    assert index is not None  # noqa: S101
    start = clock.between(ctx.rng, _offset_day(f, -ctx.rng.randint(1, 3)), 9, 12)
    plan.procedures.append(ProcedurePlan(
        "biopsy-not-done", "biopsy", start, None, biopsy_codes(ctx.rng, index.levels),
        status="not-done", levels=index.levels, use_period=False))


def entered_in_error(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """A stabilization in the biopsy's encounter (would make a staged patient single-stage,
    or give a never-stabilized one a stabilization), else a wrong score near the diagnosis."""
    index = f.index
    assert index is not None and index.end is not None  # noqa: S101
    if f.strategy != "single-stage" and (ctx.forced or f.diagnosis is None or ctx.rank % 2 == 0):
        start = index.end.shifted(timedelta(minutes=15))
        template = f.stabilization.levels if f.stabilization else index.levels
        plan.procedures.append(ProcedurePlan(
            "stabilization-entered-in-error", "stabilization", start,
            start.shifted(timedelta(minutes=60)), PROCEDURE_CODES["stabilization"][:1],
            status="entered-in-error", levels=template, encounter=index.encounter))
        return
    _late_score(plan, f, "obs-vas-entered-in-error", 10.0, "entered-in-error")


def _late_score(plan: PatientPlan, f: truth.Facts, key: str, value: float, status: str) -> None:
    """A VAS on the diagnosis day, late in the evening: nearest (and the later of any tie)."""
    assert f.diagnosis_day is not None  # noqa: S101
    plan.observations.append(ObservationPlan(key, "vas", value, clock.at(f.diagnosis_day, 22, 30),
                                             status=status))


def old_stabilization(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """A fusion years before the index biopsy: not the pathway's stabilization."""
    days = _years_before(ctx.rng, 4, 12)
    day = _offset_day(f, days)
    plan.encounters.append(EncounterPlan(
        "enc-old-surgery", "IMP", clock.at(day, 7, 0), clock.at(day + timedelta(days=4), 11, 0),
        "surgery"))
    start = clock.at(day, 9, 30)
    plan.procedures.append(ProcedurePlan(
        "stabilization-old", "stabilization", start, start.shifted(timedelta(hours=2)),
        (PROCEDURE_CODES["stabilization"][2],), levels=("L4", "L5", "S"),
        encounter="enc-old-surgery"))


def non_vertebral_biopsy(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    start = clock.between(ctx.rng, _offset_day(f, -ctx.rng.randint(2, 6)), 9, 13)
    plan.procedures.append(ProcedurePlan(
        "biopsy-lung-1", "other-biopsy", start, start.shifted(timedelta(minutes=30)),
        (PROCEDURE_CODES["biopsy"][2],), site=SITE_LUNG))


# ---------------------------------------------------------------- therapy decoys


def _order(plan: PatientPlan, f: truth.Facts, ctx: Context, key: str, status: str, intent: str
           ) -> None:
    assert plan.tumour is not None and f.diagnosis_day is not None  # noqa: S101
    day = f.diagnosis_day
    plan.medications.append(MedicationPlan(
        key, plan.tumour.drugs[0], clock.between(ctx.rng, day, 12, 16),
        clock.on(day + timedelta(days=1)), status=status, intent=intent))


def cancelled(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    _order(plan, f, ctx, "medreq-cancelled", "cancelled", "order")


def proposal(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    _order(plan, f, ctx, "medreq-proposal", "active", "proposal")


def therapy_before_biopsy(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """Treatment of an earlier cancer years ago, and its old (conclusive) pathology report."""
    assert plan.tumour is not None  # noqa: S101
    day = _offset_day(f, _years_before(ctx.rng, 2, 8))
    if ctx.rank % 2 == 0:
        start = clock.at(day, 9, 0)
        plan.procedures.append(ProcedurePlan(
            "radiotherapy-history", "radiotherapy", start,
            start.shifted(timedelta(days=ctx.rng.randint(14, 30))),
            (PROCEDURE_CODES["radiotherapy"][0],)))
    else:
        plan.medications.append(MedicationPlan(
            "medreq-systemic-history", plan.tumour.drugs[-1], clock.at(day, 11, 0),
            clock.on(day + timedelta(days=3)), status="completed"))
    report_day = clock.at(day - timedelta(days=20), 15, 0)
    plan.reports.append(ReportPlan(
        "report-history", report_day, report_day.shifted(timedelta(days=-6)), "tumour",
        plan.tumour.conclusion, f"Primary tumour: {plan.tumour.code.display}.",
        tumour_group=plan.tumour.group))


def bone_modifying_alone(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """Denosumab or zoledronic acid and dexamethasone, and nothing definitive."""
    start = f.diagnosis_day or _offset_day(f, 7)
    drug = "denosumab" if ctx.rank % 2 == 0 else "zoledronic-acid"
    plan.medications.append(MedicationPlan(
        "medreq-bone-1", drug, clock.between(ctx.rng, start, 10, 15),
        clock.on(start + timedelta(days=ctx.rng.randint(2, 7)))))
    _dexamethasone(plan, f, ctx)


def _dexamethasone(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    index = f.index
    assert index is not None  # noqa: S101
    plan.medications.append(MedicationPlan(
        "medreq-steroid-1", "dexamethasone", index.start.shifted(timedelta(hours=-3)),
        clock.on(index.start.local.date()), status="completed", with_rxnorm=ctx.rank % 3 != 0))


def non_definitive_drugs(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """Steroid around the biopsy and a bone-modifying agent before the therapy starts."""
    assert f.therapy_start is not None and f.index_day is not None  # noqa: S101
    _dexamethasone(plan, f, ctx)
    first = f.diagnosis_day or f.index_day
    latest = (f.therapy_start - first).days - 1
    if latest >= 1:
        day = first + timedelta(days=ctx.rng.randint(1, latest))
        plan.medications.append(MedicationPlan(
            "medreq-bone-1", ctx.rng.choice(["zoledronic-acid", "denosumab"]),
            clock.between(ctx.rng, day, 10, 15), clock.on(day)))


def systemic_as_procedure(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """Chemotherapy recorded as a Procedure instead of medication orders."""
    orders = [m for m in plan.medications if m.key.startswith("medreq-systemic-")
              and m.key != "medreq-systemic-history"]
    first = min(orders, key=lambda m: (m.start or m.authored).sort_key())
    day = (first.start or first.authored).local.date()
    plan.medications = [m for m in plan.medications if m not in orders]
    start = clock.at(day, 10, 0)
    plan.procedures.append(ProcedurePlan(
        "chemotherapy-1", "systemic-procedure", start, start.shifted(timedelta(hours=4)),
        (PROCEDURE_CODES["systemic-procedure"][0],), use_period=ctx.rank % 2 == 0))


def medication_reference(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    for med in plan.medications:
        if med.key.startswith("medreq-systemic-"):
            med.as_reference = True


def medication_administration(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    _, _, key = f.therapy_events[0]
    med = next(m for m in plan.medications if m.key == key)
    when = med.start or med.authored
    if not when.has_time:
        when = clock.between(ctx.rng, when.local.date(), 9, 14)
    plan.administrations.append(AdministrationPlan("medadmin-1", med.drug, when, med.key))


def _first_is_order(plan: PatientPlan, f: truth.Facts) -> bool:
    return bool(f.therapy_events) and f.therapy_events[0][2].startswith("medreq-systemic-")


# ---------------------------------------------------------------- reports, conditions, scores


def preliminary_report(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    final = f.diagnosis
    assert final is not None  # noqa: S101
    plan.reports.append(ReportPlan(
        "report-preliminary", final.issued.shifted(timedelta(days=-ctx.rng.randint(1, 2))),
        final.effective, final.finding, final.conclusion, "Preliminary: " + final.text,
        status="preliminary", code_style=final.code_style, tumour_group=final.tumour_group))


def refuted_condition(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    code, site = METASTASIS_ELSEWHERE[0]
    when = clock.between(ctx.rng, _offset_day(f, -3), 10, 15)
    plan.conditions.append(ConditionPlan(
        "condition-refuted", "metastasis", "secondary-malignancy", code,
        clock.on(when.local.date()), when, site=site, verification="refuted"))


def late_metastasis(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    assert f.diagnosis_day is not None  # noqa: S101
    code, site = METASTASIS_ELSEWHERE[1]
    when = clock.between(ctx.rng, f.diagnosis_day + timedelta(days=ctx.rng.randint(20, 60)),
                         10, 15)
    plan.conditions.append(ConditionPlan(
        "condition-metastasis-late", "metastasis", "secondary-malignancy", code,
        clock.on(when.local.date()), when, site=site))


def decoy_encounters(plan: PatientPlan, f: truth.Facts, ctx: Context) -> None:
    """A clinic (not inpatient) visit for pain before therapy, and an admission after it."""
    assert f.therapy_start is not None and f.index_day is not None  # noqa: S101
    busy = {e.start.local.date() + timedelta(days=k) for e in plan.encounters
            for k in range((e.end.local.date() - e.start.local.date()).days + 1)}
    days = [f.index_day + timedelta(days=k) for k in range(1, (f.therapy_start - f.index_day).days)]
    free = [d for d in days if d not in busy]
    if free:
        day = ctx.rng.choice(free)
        start = clock.between(ctx.rng, day, 9, 15)
        plan.encounters.append(EncounterPlan(
            "enc-clinic-pain", "AMB", start, start.shifted(timedelta(minutes=30)), "visit",
            reason=PAIN_REASONS[0], pain=True))
    after = f.therapy_start + timedelta(days=ctx.rng.randint(5, 20))
    plan.encounters.append(EncounterPlan(
        "enc-pain-after-therapy", "IMP", clock.at(after, 19, 0),
        clock.at(after + timedelta(days=2), 11, 0), "readmission",
        reason=PAIN_REASONS[1], pain=True))


# ---------------------------------------------------------------- the catalogue

VARIANTS: tuple[Variant, ...] = (
    Variant("systemic-as-procedure", 2, _first_is_order, systemic_as_procedure),
    Variant("performed-datetime", 12, _has_index, performed_datetime),
    Variant("partial-date", 4, _has_index, partial_date),
    Variant("midnight-offset", 9, _has_index, midnight_offset),
    Variant("not-done", 4, _has_index, not_done),
    Variant("entered-in-error", 5,
            lambda p, f: f.index is not None and (
                f.strategy != "single-stage" or f.diagnosis is not None), entered_in_error),
    Variant("cancelled", 4, _room_for_order, cancelled),
    Variant("proposal", 3, _room_for_order, proposal),
    Variant("multi-system-codes", 15, _has_index, multi_system_codes),
    Variant("absolute-reference", 5, lambda p, f: p.ref_style == "relative",
            reference_style("absolute")),
    Variant("versioned-reference", 2, lambda p, f: p.ref_style == "relative",
            reference_style("versioned")),
    Variant("bundle-urn-uuid", 4, lambda p, f: p.ref_style == "relative",
            reference_style("bundle")),
    Variant("old-stabilization", 4,
            lambda p, f: f.index is not None and "directed-to-resection" not in f.reasons,
            old_stabilization),
    Variant("therapy-before-biopsy", 4, _has_tumour, therapy_before_biopsy),
    Variant("bone-modifying-agent-alone", 0,
            lambda p, f: f.index is not None and f.therapy_start is None, bone_modifying_alone),
    Variant("non-definitive-drugs", 35,
            lambda p, f: f.therapy_start is not None and not any(
                m.key == "medreq-steroid-1" for m in p.medications), non_definitive_drugs),
    Variant("medication-reference", 5,
            lambda p, f: any(m.key.startswith("medreq-systemic-") for m in p.medications),
            medication_reference),
    Variant("medication-administration", 8, _first_is_order, medication_administration),
    Variant("date-only", 4, _has_index, date_only),
    Variant("preliminary-report", 3,
            lambda p, f: f.diagnosis is not None and f.diagnosis.status == "final",
            preliminary_report),
    Variant("refuted-condition", 2,
            lambda p, f: _has_tumour(p, f) and truth.metastatic_outside(p, f) is False,
            refuted_condition),
    Variant("late-metastasis", 2,
            lambda p, f: _has_tumour(p, f) and truth.metastatic_outside(p, f) is False,
            late_metastasis),
    Variant("non-vertebral-biopsy", 2, _has_index, non_vertebral_biopsy),
    Variant("decoy-encounter", 4, lambda p, f: f.therapy_start is not None, decoy_encounters),
    Variant("observation-period", 3, lambda p, f: f.diagnosis is not None, observation_period),
)
BY_TAG = {v.tag: v for v in VARIANTS}
# Tags set while planning rather than here (the no-biopsy flavours, the session order)
# or derived from the plan at the end.
PLANNED_TAGS = ("stabilization-before-biopsy", "several-biopsies")
ALL_TAGS: tuple[str, ...] = tuple(sorted({v.tag for v in VARIANTS} | set(PLANNED_TAGS)))


def apply_variants(plans: list[PatientPlan], wanted: dict[int, tuple[str, ...]],
                   rng: random.Random, zone: ZoneInfo) -> None:
    """Forced variants first (excluded patients' own decoys), then each variant's share."""
    ranks = dict.fromkeys(BY_TAG, 0)

    def apply(plan: PatientPlan, tag: str, forced: bool = False) -> None:
        variant = BY_TAG[tag]
        facts = truth.analyse(plan)
        if not variant.eligible(plan, facts):
            raise ValueError(f"{plan.pid}: variant {tag} not applicable")
        variant.apply(plan, facts, Context(rng, zone, ranks[tag], forced))
        ranks[tag] += 1
        plan.variants.add(tag)

    for plan in plans:
        for tag in wanted.get(plan.index, ()):
            apply(plan, tag, forced=True)
    n = len(plans)
    for variant in VARIANTS:
        want = max(1, round_half_up(variant.per_hundred * n / 100)) if variant.per_hundred else 0
        pool = [p for p in plans
                if variant.tag not in p.variants and variant.eligible(p, truth.analyse(p))]
        for plan in rng.sample(pool, min(want, len(pool))):
            apply(plan, variant.tag)
    for plan in plans:
        if len(truth.completed(plan, "biopsy")) > 1:
            plan.variants.add("several-biopsies")
