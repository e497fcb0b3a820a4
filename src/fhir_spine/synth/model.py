"""The clinical plan: what happened to one synthetic patient, before any FHIR exists.

Everything downstream reads these records: `truth.py` applies the profile's rules to
them and `build.py` renders them as FHIR. Keeping the plan free of FHIR shapes is what
lets the ground truth be computed from clinical facts rather than parsed back from
the resources the system under test will read.

Times are *site-local wall-clock* times (naive datetimes): the ground truth's calendar
dates are their dates, whatever offset a resource is later rendered with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from fhir_spine.synth.vocab import Code, Tumour


@dataclass(slots=True)
class When:
    """A moment in site-local wall-clock time, and how precisely the source recorded it.

    `precision` is "second" (a timestamp), "day" (date-only) or "month" (a partial date
    that cannot be placed on a day). `render_offset` set means the timestamp is written
    with that fixed UTC offset instead of the site's, chosen so that its written date
    differs from the site-local date (the midnight-crossing variant).
    """

    local: datetime
    precision: str = "second"
    render_offset: timedelta | None = None

    @property
    def day(self) -> date | None:
        return None if self.precision == "month" else self.local.date()

    @property
    def has_time(self) -> bool:
        return self.precision == "second"

    def sort_key(self) -> tuple[date, int, datetime]:
        """Date-only values sort before any timestamp of the same day (profile: Time)."""
        return (self.local.date(), 1 if self.has_time else 0, self.local)

    def shifted(self, delta: timedelta) -> When:
        return When(self.local + delta, self.precision, self.render_offset)


@dataclass(slots=True)
class EncounterPlan:
    key: str
    cls: str  # v3-ActCode: IMP | EMER | AMB
    start: When
    end: When
    purpose: str  # index | stabilization | repeat-biopsy | readmission | revision | surgery | visit
    priority: str | None = None  # v3-ActPriority: EM | R
    reason: Code | None = None
    pain: bool = False  # the reason is a pain code
    status: str = "finished"


@dataclass(slots=True)
class ProcedurePlan:
    key: str
    kind: str  # biopsy | stabilization | revision | decompression | resection | separation |
    #            radiotherapy | systemic-procedure | other-biopsy | appendectomy | cholecystectomy
    start: When
    end: When | None
    codes: tuple[Code, ...]
    status: str = "completed"
    levels: tuple[str, ...] = ()  # vertebral body sites
    site: Code | None = None  # a non-vertebral body site
    encounter: str | None = None
    part_of: str | None = None
    use_period: bool = True  # performedPeriod, else performedDateTime


@dataclass(slots=True)
class ReportPlan:
    key: str
    issued: When
    effective: When
    finding: str  # tumour | non-neoplastic | insufficient
    conclusion: tuple[Code, ...]
    text: str
    status: str = "final"
    code_style: str = "11529-5"  # a REPORT_CODES key, or "SP" (category only)
    tumour_group: str | None = None


@dataclass(slots=True)
class ConditionPlan:
    key: str
    role: str  # primary | lesion | metastasis | benign
    concept: str  # secondary-malignancy | tumour-<group> | non-neoplastic
    code: Code
    onset: When | None
    recorded: When | None
    levels: tuple[str, ...] = ()
    site: Code | None = None
    verification: str = "confirmed"


@dataclass(slots=True)
class MedicationPlan:
    key: str
    drug: str  # vocab.DRUGS key
    authored: When
    start: When | None  # dosageInstruction[0].timing.repeat.boundsPeriod.start
    status: str = "active"
    intent: str = "order"
    as_reference: bool = False  # medicationReference to a Medication resource
    with_rxnorm: bool = True


@dataclass(slots=True)
class AdministrationPlan:
    key: str
    drug: str
    when: When
    request: str | None
    status: str = "completed"


@dataclass(slots=True)
class ObservationPlan:
    key: str
    measure: str
    value: float | int
    when: When
    status: str = "final"
    style: str = "default"  # default | integer | quantity | code | period


@dataclass(slots=True)
class Scores:
    """Patient-reported and clinical scores, as planned (one decimal where continuous)."""

    vas: tuple[float, float]  # baseline, at diagnosis
    sosgoq: dict[str, tuple[float, float]]  # domain -> (baseline, at diagnosis)
    sins: dict[str, int]  # component -> points (incl. sins_location) ; total = sum
    ecog: int
    asa: int


@dataclass(slots=True)
class Traits:
    """Per-patient draws that the timeline turns into events.

    Included patients get these from calibrated cohort-level shuffles (`cohort.py`),
    excluded ones from `excluded.py`, which also sets the flags that make them fail.
    """

    group: str | None  # single-stage | staged | None (no stabilization)
    basis: str | None  # single-stage session link: same-encounter | part-of | time-window |
    #                    time-window-before
    sex: str
    age: int
    biopsy_day: date
    tumour: Tumour | None
    lesion_levels: tuple[str, ...]
    construct: tuple[str, ...]
    metastatic_outside: bool
    modality: str  # sys+rt | sys | rt | neoadjuvant-resection | resection | separation+rt | none
    days_to_therapy: int | None
    days_to_stabilization: int | None  # staged only
    scores: Scores
    histology: str = "tumour"  # tumour | non-neoplastic | insufficient
    biopsy: str = "done"  # done | not-done | entered-in-error | non-vertebral (no index biopsy)
    repeat_biopsy: bool = False
    repeat_insufficient: bool = False  # the repeat sample is insufficient too
    revision: bool = False
    unplanned: bool = False
    pain_readmission: bool = False
    decompression: bool = False
    missing_measure: str | None = None
    wanted_variants: tuple[str, ...] = ()


@dataclass(slots=True)
class PatientPlan:
    index: int
    pid: str  # readable id prefix (p001)
    patient_id: str  # logical id as the source shows it
    gender: str
    birth_date: date
    intent: str  # single-stage | staged | the exclusion reason the planner aimed at
    name: tuple[str, str]
    tumour: Tumour | None = None
    encounters: list[EncounterPlan] = field(default_factory=list)
    procedures: list[ProcedurePlan] = field(default_factory=list)
    reports: list[ReportPlan] = field(default_factory=list)
    conditions: list[ConditionPlan] = field(default_factory=list)
    medications: list[MedicationPlan] = field(default_factory=list)
    administrations: list[AdministrationPlan] = field(default_factory=list)
    observations: list[ObservationPlan] = field(default_factory=list)
    variants: set[str] = field(default_factory=set)
    ref_style: str = "relative"  # relative | absolute | versioned | bundle

    def procedure(self, key: str) -> ProcedurePlan:
        return next(p for p in self.procedures if p.key == key)

    def encounter(self, key: str) -> EncounterPlan:
        return next(e for e in self.encounters if e.key == key)
