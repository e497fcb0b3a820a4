"""Ground truth: the profile's rules applied to the clinical plan, not to the FHIR files.

This is an independent oracle for `fhir_spine.pathway` (the system under test), so it
never imports it. It reads the plan's records, which carry their clinical meaning
directly (a procedure's kind, a report's finding, a condition's concept), and applies
the rules of `profiles/README.md` with the defaults of `fhir_spine/mappings/settings.yaml`:
statuses that do not count, partial dates that cannot be placed, session links,
windows. Decoys added by `variants.py` go through the same rules, which is how the
generator checks that no decoy changes an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from fhir_spine.pathway.vocabulary import (
    BASELINE_MEASURES,
    EXCLUSION_REASONS,
    PRO_MEASURES,
    ExclusionReason,
)
from fhir_spine.synth.model import (
    ConditionPlan,
    ObservationPlan,
    PatientPlan,
    ProcedurePlan,
    ReportPlan,
    When,
)
from fhir_spine.synth.vocab import DRUGS, SINS_COMPONENTS


@dataclass(frozen=True)
class Rules:
    """The defaults of fhir_spine/mappings/settings.yaml the truth depends on (tested)."""

    same_session_gap_hours: int = 6
    therapy_modality_window_days: int = 30
    baseline_lookback_days: int = 90
    at_diagnosis_window_days: int = 14
    metastasis_lookahead_days: int = 0
    minimum_age_years: int = 18
    excluded_level_prefixes: tuple[str, ...] = ("C",)
    required_measures: tuple[str, ...] = ("vas", "sosgoq_total")
    procedure_statuses: tuple[str, ...] = ("completed",)
    report_statuses: tuple[str, ...] = ("final", "amended", "corrected", "appended")
    observation_statuses: tuple[str, ...] = ("final", "amended", "corrected", "preliminary")
    medication_request_statuses: tuple[str, ...] = ("active", "completed", "on-hold", "stopped")
    medication_request_intents: tuple[str, ...] = (
        "order", "original-order", "reflex-order", "filler-order", "instance-order", "plan")
    medication_administration_statuses: tuple[str, ...] = ("completed", "in-progress", "stopped")
    # procedure_statuses_by_role["definitive-therapy"]: a therapy counts once it started
    therapy_procedure_statuses: tuple[str, ...] = ("completed", "in-progress", "stopped")
    condition_verification_excluded: tuple[str, ...] = ("entered-in-error", "refuted")
    readmission_encounter_classes: tuple[str, ...] = ("IMP", "EMER", "ACUTE")
    urgent_priorities: tuple[str, ...] = ("EM", "UR", "S")


DEFAULT_RULES = Rules()
MODALITY_ORDER = ("systemic", "radiotherapy", "surgery")
MEASURE_RANGES: dict[str, tuple[float, float]] = {
    "vas": (0, 10), "sosgoq_total": (0, 100), "sosgoq_physical": (0, 100),
    "sosgoq_pain": (0, 100), "sosgoq_mental": (0, 100), "sosgoq_social": (0, 100),
    "sins_total": (0, 18), "sins_location": (0, 3), "ecog": (0, 5), "asa": (1, 6),
    **{c: (0, max(values)) for c, values in SINS_COMPONENTS.items()},
}
_THERAPY_PROCEDURES = {
    "radiotherapy": "radiotherapy", "systemic-procedure": "systemic",
    "resection": "surgery", "separation": "surgery",
}
_PATHWAY_PROCEDURES = ("biopsy", "stabilization", "revision", "decompression",
                       *_THERAPY_PROCEDURES)


@dataclass
class Facts:
    """What the rules make of one patient's plan; the truth row is a rendering of this."""

    index: ProcedurePlan | None = None
    stabilization: ProcedurePlan | None = None
    strategy: str | None = None
    basis: str | None = None
    repeat_biopsies: int = 0
    revisions: int = 0
    unplanned: bool = False
    pain_readmissions: int = 0
    diagnosis: ReportPlan | None = None
    therapy_start: date | None = None
    therapy_events: list[tuple[When, str, str]] = field(default_factory=list)  # when, modality, key
    modalities: list[str] = field(default_factory=list)
    reasons: list[ExclusionReason] = field(default_factory=list)

    @property
    def index_day(self) -> date | None:
        return self.index.start.day if self.index else None

    @property
    def diagnosis_day(self) -> date | None:
        return self.diagnosis.issued.day if self.diagnosis else None


def _placed(when: When | None) -> bool:
    return when is not None and when.precision != "month"


def completed(plan: PatientPlan, kind: str, rules: Rules = DEFAULT_RULES) -> list[ProcedurePlan]:
    """Completed procedures of a kind that can be placed on a day, in time order."""
    found = [p for p in plan.procedures
             if p.kind == kind and p.status in rules.procedure_statuses and _placed(p.start)]
    return sorted(found, key=lambda p: p.start.sort_key())


def session_link(a: ProcedurePlan, b: ProcedurePlan, rules: Rules = DEFAULT_RULES) -> str | None:
    """Profile precedence: shared encounter, then partOf, then the clock (times only)."""
    if a.encounter is not None and a.encounter == b.encounter:
        return "same-encounter"
    if a.part_of == b.key or b.part_of == a.key:
        return "part-of"
    if a.start.has_time and b.start.has_time:
        if abs(a.start.local - b.start.local) <= timedelta(hours=rules.same_session_gap_hours):
            return "time-window"
        a_end = a.end if a.use_period else None
        b_end = b.end if b.use_period else None
        if a_end and b_end and a.start.local <= b_end.local and b.start.local <= a_end.local:
            return "time-window"
    return None


def analyse(plan: PatientPlan, rules: Rules = DEFAULT_RULES) -> Facts:
    facts = Facts()
    biopsies = completed(plan, "biopsy", rules)
    if not biopsies:
        facts.reasons = ["no-index-biopsy"]
        return facts
    index = facts.index = biopsies[0]
    facts.repeat_biopsies = sum(session_link(index, b, rules) is None for b in biopsies[1:])
    _stabilization(plan, facts, rules)
    _diagnosis(plan, facts, rules)
    _therapy(plan, facts, rules)
    facts.pain_readmissions = _pain_readmissions(plan, facts, rules)
    facts.reasons = _reasons(plan, facts, rules)
    return facts


def _stabilization(plan: PatientPlan, facts: Facts, rules: Rules) -> None:
    assert facts.index is not None  # noqa: S101 - analyse() checked
    stabs = completed(plan, "stabilization", rules)
    for candidate in stabs:
        link = session_link(facts.index, candidate, rules)
        if link:
            facts.stabilization, facts.strategy, facts.basis = candidate, "single-stage", link
            break
    else:
        later = [s for s in stabs if s.start.sort_key() > facts.index.start.sort_key()]
        if later:
            facts.stabilization, facts.strategy, facts.basis = (
                later[0], "staged", "separate-session")
    stab = facts.stabilization
    if stab is None:
        return
    facts.revisions = sum(r.start.sort_key() > stab.start.sort_key()
                          for r in completed(plan, "revision", rules))
    if facts.strategy == "staged" and stab.encounter:
        priority = plan.encounter(stab.encounter).priority
        facts.unplanned = priority in rules.urgent_priorities


def _diagnosis(plan: PatientPlan, facts: Facts, rules: Rules) -> None:
    index_day = facts.index_day
    assert index_day is not None  # noqa: S101 - analyse() checked
    conclusive = [r for r in plan.reports
                  if r.status in rules.report_statuses and r.finding != "insufficient"
                  and _placed(r.issued) and r.issued.local.date() >= index_day]
    if conclusive:
        facts.diagnosis = min(conclusive, key=lambda r: r.issued.sort_key())


def _therapy(plan: PatientPlan, facts: Facts, rules: Rules) -> None:
    events: list[tuple[When, str, str]] = []
    # an order given by administrations starts at its first administration, not its own date
    administered = {adm.request for adm in plan.administrations
                    if adm.request and adm.status in rules.medication_administration_statuses
                    and _placed(adm.when)}
    for med in plan.medications:
        if (DRUGS[med.drug].role == "systemic" and med.status in rules.medication_request_statuses
                and med.intent in rules.medication_request_intents
                and med.key not in administered):
            events.append((med.start or med.authored, "systemic", med.key))
    for adm in plan.administrations:
        if (DRUGS[adm.drug].role == "systemic"
                and adm.status in rules.medication_administration_statuses):
            events.append((adm.when, "systemic", adm.key))
    for kind, modality in _THERAPY_PROCEDURES.items():
        events.extend((p.start, modality, p.key) for p in plan.procedures
                      if p.kind == kind and p.status in rules.therapy_procedure_statuses)
    index_day = facts.index_day
    assert index_day is not None  # noqa: S101 - analyse() checked
    events = sorted(
        (e for e in events if _placed(e[0]) and e[0].local.date() >= index_day),
        key=lambda e: e[0].sort_key(),
    )
    facts.therapy_events = events
    if not events:
        return
    start = facts.therapy_start = events[0][0].local.date()
    window = start + timedelta(days=rules.therapy_modality_window_days)
    present = {m for when, m, _ in events if when.local.date() <= window}
    facts.modalities = [m for m in MODALITY_ORDER if m in present]


def _pathway_encounters(plan: PatientPlan) -> set[str]:
    return {p.encounter for p in plan.procedures
            if p.kind in _PATHWAY_PROCEDURES and p.encounter is not None}


def _pain_readmissions(plan: PatientPlan, facts: Facts, rules: Rules) -> int:
    index_day = facts.index_day
    assert index_day is not None  # noqa: S101 - analyse() checked
    skip = _pathway_encounters(plan)
    return sum(
        1 for e in plan.encounters
        if e.cls in rules.readmission_encounter_classes and e.pain and e.key not in skip
        and e.start.local.date() > index_day
        and (facts.therapy_start is None or e.start.local.date() < facts.therapy_start)
    )


# ---------------------------------------------------------------- measures


def _valid(obs: ObservationPlan, rules: Rules) -> bool:
    lo, hi = MEASURE_RANGES[obs.measure]
    return obs.status in rules.observation_statuses and _placed(obs.when) and lo <= obs.value <= hi


def baseline(plan: PatientPlan, measure: str, facts: Facts, rules: Rules = DEFAULT_RULES
             ) -> ObservationPlan | None:
    """The last value on or before the index biopsy day, within the look-back."""
    day = facts.index_day
    if day is None:
        return None
    first = day - timedelta(days=rules.baseline_lookback_days)
    found = [o for o in plan.observations if o.measure == measure and _valid(o, rules)
             and first <= o.when.local.date() <= day]
    return max(found, key=lambda o: o.when.sort_key(), default=None)


def at_diagnosis(plan: PatientPlan, measure: str, facts: Facts, rules: Rules = DEFAULT_RULES
                 ) -> ObservationPlan | None:
    """The value nearest the diagnosis date, within the window; ties go to the later one."""
    day = facts.diagnosis_day
    if day is None:
        return None
    found = [o for o in plan.observations if o.measure == measure and _valid(o, rules)
             and abs((o.when.local.date() - day).days) <= rules.at_diagnosis_window_days]
    found.sort(key=lambda o: o.when.sort_key())
    # min() keeps the first of equals: scanning latest-first makes ties go to the later one.
    return min(reversed(found), key=lambda o: abs((o.when.local.date() - day).days),
               default=None)


# ---------------------------------------------------------------- conditions


def _conditions(plan: PatientPlan, rules: Rules) -> list[ConditionPlan]:
    excluded = rules.condition_verification_excluded
    return [c for c in plan.conditions if c.verification not in excluded]


def tumour_group(plan: PatientPlan, facts: Facts, rules: Rules = DEFAULT_RULES) -> str | None:
    for cond in _conditions(plan, rules):
        if cond.concept.startswith("tumour-"):
            return cond.concept.removeprefix("tumour-")
    return facts.diagnosis.tumour_group if facts.diagnosis else None


def involved_vertebrae(plan: PatientPlan, facts: Facts, rules: Rules = DEFAULT_RULES) -> int | None:
    levels = {level for c in _conditions(plan, rules)
              if c.concept.startswith("tumour-") or c.concept == "secondary-malignancy"
              for level in c.levels}
    if levels:
        return len(levels)
    return len(set(facts.index.levels)) if facts.index else None


def metastatic_outside(plan: PatientPlan, facts: Facts, rules: Rules = DEFAULT_RULES
                       ) -> bool | None:
    """Needs the index level (empty without an index biopsy); bounded by the diagnosis date
    when there is one. Without one nothing bounds it (generated data then has no
    secondary-malignancy Condition, so the answer is false either way)."""
    if facts.index is None:
        return None
    day = facts.diagnosis_day
    index_levels = set(facts.index.levels)
    for cond in _conditions(plan, rules):
        if cond.concept != "secondary-malignancy" or set(cond.levels) & index_levels:
            continue
        when = cond.onset or cond.recorded
        if day is None:
            return True
        last = day + timedelta(days=rules.metastasis_lookahead_days)
        if when is not None and _placed(when) and when.local.date() <= last:
            return True
    return False


# ---------------------------------------------------------------- exclusion


def _reasons(plan: PatientPlan, facts: Facts, rules: Rules) -> list[ExclusionReason]:
    index = facts.index
    assert index is not None and facts.index_day is not None  # noqa: S101 - analyse() checked
    found: set[ExclusionReason] = set()
    if age_at(plan.birth_date, facts.index_day) < rules.minimum_age_years:
        found.add("under-18")
    if any(level.startswith(rules.excluded_level_prefixes) for level in index.levels):
        found.add("cervical")
    if any(facts.therapy_start is None or d.start.local.date() < facts.therapy_start
           for d in completed(plan, "decompression", rules)):
        found.add("decompression")
    stab = facts.stabilization
    if any(stab is None or r.start.sort_key() < stab.start.sort_key()
           for r in completed(plan, "resection", rules)):
        found.add("directed-to-resection")
    if facts.diagnosis is None:
        found.add("histology-unconfirmed")
    elif facts.diagnosis.finding == "non-neoplastic":
        found.add("histology-not-neoplastic")
    if stab is None:
        found.add("no-stabilization")
    if facts.therapy_start is None:
        found.add("no-definitive-therapy")
    for measure in rules.required_measures:
        if baseline(plan, measure, facts, rules) is None or (
                facts.diagnosis is not None and at_diagnosis(plan, measure, facts, rules) is None):
            found.add("missing-outcome-measures")
    return [r for r in EXCLUSION_REASONS if r in found]


def age_at(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


# ---------------------------------------------------------------- the row

COLUMNS: tuple[str, ...] = (
    "patient_id", "included", "exclusion_reasons", "strategy", "strategy_basis",
    "age_at_biopsy", "sex", "index_biopsy_date", "stabilization_date",
    "diagnosis_available_date", "therapy_start_date", "therapy_modalities",
    "days_biopsy_to_therapy", "days_biopsy_to_stabilization", "days_stabilization_to_therapy",
    "fixation_levels", "involved_vertebrae", "metastatic_outside_index", "tumour_group",
    "sins_total", "ecog", "asa", "vas_baseline", "vas_at_diagnosis",
    "sosgoq_total_baseline", "sosgoq_total_at_diagnosis",
    "sosgoq_pain_baseline", "sosgoq_pain_at_diagnosis",
    "sosgoq_physical_baseline", "sosgoq_physical_at_diagnosis",
    "sosgoq_mental_baseline", "sosgoq_mental_at_diagnosis",
    "sosgoq_social_baseline", "sosgoq_social_at_diagnosis",
    "ae_repeat_biopsy", "ae_revision", "ae_unplanned_fixation", "ae_pain_readmission",
    "variants",
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _days(a: date | None, b: date | None) -> int | None:
    return (b - a).days if a and b else None


def truth_row(plan: PatientPlan, rules: Rules = DEFAULT_RULES) -> dict[str, str]:
    """One ground-truth row; empty cells where a value is not applicable."""
    f = analyse(plan, rules)
    stab_day = f.stabilization.start.day if f.stabilization else None
    row: dict[str, object] = {
        "patient_id": plan.patient_id,
        "included": not f.reasons,
        "exclusion_reasons": ";".join(f.reasons),
        "strategy": f.strategy,
        "strategy_basis": f.basis,
        "age_at_biopsy": age_at(plan.birth_date, f.index_day) if f.index_day else None,
        "sex": plan.gender,
        "index_biopsy_date": f.index_day,
        "stabilization_date": stab_day,
        "diagnosis_available_date": f.diagnosis_day,
        "therapy_start_date": f.therapy_start,
        "therapy_modalities": ";".join(f.modalities),
        "days_biopsy_to_therapy": _days(f.index_day, f.therapy_start),
        # Filled whenever both events exist (profile), so 0 days for single-stage.
        "days_biopsy_to_stabilization": _days(f.index_day, stab_day),
        "days_stabilization_to_therapy": _days(stab_day, f.therapy_start),
        "fixation_levels": len(set(f.stabilization.levels)) if f.stabilization else None,
        "involved_vertebrae": involved_vertebrae(plan, f, rules),
        "metastatic_outside_index": metastatic_outside(plan, f, rules),
        "tumour_group": tumour_group(plan, f, rules),
    }
    for measure in BASELINE_MEASURES:
        obs = baseline(plan, measure, f, rules)
        row[measure] = int(obs.value) if obs else None
    for pro in PRO_MEASURES:
        first, near = baseline(plan, pro, f, rules), at_diagnosis(plan, pro, f, rules)
        row[f"{pro}_baseline"] = float(first.value) if first else None
        row[f"{pro}_at_diagnosis"] = float(near.value) if near else None
    # Counts: a patient without the events has zero of them, never "not applicable".
    row["ae_repeat_biopsy"] = f.repeat_biopsies
    row["ae_revision"] = f.revisions
    row["ae_unplanned_fixation"] = int(f.unplanned)
    row["ae_pain_readmission"] = f.pain_readmissions
    row["variants"] = ";".join(sorted(plan.variants))
    return {c: _cell(row[c]) for c in COLUMNS}
