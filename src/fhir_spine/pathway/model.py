"""Typed records the pathway works on, and the typed result it returns.

Normalisation (FHIR rows -> these records) happens before the pathway; the records hold
only what a rule needs, with the resource they came from so every decision is traceable.

A record's time may be missing or partial, but a record the pathway uses has a day: the
time-bearing records are generic in their time's type, `is_placed`, `is_dated` and
`is_issued` narrow a record to the `OnDay` form, and the rules take only that form
(`PlacedEvent`, `IssuedReport`, `DatedMeasurement`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Generic, TypeAlias

from typing_extensions import TypeIs, TypeVar

from fhir_spine.concepts import Coding
from fhir_spine.pathway.time import OnDay, When
from fhir_spine.pathway.vocabulary import ExclusionReason, Strategy, Timepoint, TumourGroup

T = TypeVar("T", bound=When | None, default=When | None, covariant=True)
W = TypeVar("W", bound=When, default=When, covariant=True)


@dataclass(frozen=True)
class Source:
    resource_type: str
    resource_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_type, self.resource_id)


@dataclass(frozen=True)
class ClinicalEvent(Generic[T]):
    """A Procedure or medication use (MedicationRequest, MedicationAdministration,
    MedicationStatement) tagged with one concept; a resource whose code maps to several
    concepts (combined chemoradiation) gives one event per concept."""

    concept: str
    source: Source
    start: T
    end: When | None = None
    status: str = ""
    countable: bool = True        # status/intent allow it to count
    status_note: str = ""         # why not, when not
    encounter_id: str | None = None
    part_of: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()  # vertebral levels from bodySite, e.g. ("T9", "T10")
    coding: Coding | None = None
    request_id: str | None = None  # the order an administration carries out (.request)

    @property
    def placed(self) -> bool:
        return is_placed(self)


PlacedEvent: TypeAlias = ClinicalEvent[OnDay]


def is_placed(event: ClinicalEvent) -> TypeIs[PlacedEvent]:
    """The event starts on a calendar day (not missing, not a partial date)."""
    return isinstance(event.start, OnDay)


@dataclass(frozen=True)
class PathologyReport(Generic[T]):
    source: Source
    issued: T
    finding: str | None           # concept of the conclusion code, e.g. tumour-haematological
    status: str = ""
    countable: bool = True
    status_note: str = ""
    coding: Coding | None = None
    basis: str | None = None      # how `finding` was read: "coded", "narrative" or None
    conclusion_text: bool = False  # a narrative conclusion is present


IssuedReport: TypeAlias = PathologyReport[OnDay]


def is_issued(report: PathologyReport) -> TypeIs[IssuedReport]:
    """The report was issued on a calendar day."""
    return isinstance(report.issued, OnDay)


@dataclass(frozen=True)
class ConditionRecord:
    source: Source
    finding: str | None
    levels: tuple[str, ...]
    onset: When | None
    countable: bool = True
    status_note: str = ""
    coding: Coding | None = None


@dataclass(frozen=True)
class EncounterRecord:
    source: Source
    class_code: str
    start: When | None
    end: When | None = None
    urgent: bool = False
    pain_reason: bool = False
    status: str = ""


@dataclass(frozen=True)
class Measurement(Generic[W]):
    measure: str
    value: float
    effective: W
    source: Source


DatedMeasurement: TypeAlias = Measurement[OnDay]


def is_dated(m: Measurement) -> TypeIs[DatedMeasurement]:
    """The value was taken on a calendar day."""
    return isinstance(m.effective, OnDay)


@dataclass(frozen=True)
class PatientRecord:
    patient_id: str
    birth_date: date | None
    sex: str
    birth_range: tuple[date, date] | None = None  # year/month-only birthDate: first, last day


@dataclass
class PatientInput:
    patient: PatientRecord
    events: list[ClinicalEvent] = field(default_factory=list)
    reports: list[PathologyReport] = field(default_factory=list)
    conditions: list[ConditionRecord] = field(default_factory=list)
    encounters: list[EncounterRecord] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """What the pathway made of one input record (one `events` row)."""

    source: Source
    event_type: str
    used: bool
    note: str = ""


@dataclass
class PatientResult:
    patient_id: str
    included: bool = False
    exclusion_reasons: list[ExclusionReason] = field(default_factory=list)
    strategy: Strategy | None = None
    strategy_basis: str | None = None
    age_at_biopsy: int | None = None
    age_upper_bound: int | None = None  # set when a partial birthDate leaves the age open
    sex: str = "unknown"
    index_biopsy_date: date | None = None
    stabilization_date: date | None = None
    diagnosis_available_date: date | None = None
    histology_basis: str | None = None   # coded, narrative, condition
    therapy_start_date: date | None = None
    therapy_modalities: list[str] = field(default_factory=list)
    days_biopsy_to_therapy: int | None = None
    days_biopsy_to_stabilization: int | None = None
    days_stabilization_to_therapy: int | None = None
    fixation_levels: int | None = None
    sins_total: float | None = None
    ecog: float | None = None
    asa: float | None = None
    metastatic_outside_index: bool | None = None
    involved_vertebrae: int | None = None
    tumour_group: TumourGroup | None = None
    measures: dict[str, float] = field(default_factory=dict)   # e.g. vas_baseline
    ae_repeat_biopsy: int = 0
    ae_revision: int = 0
    ae_unplanned_fixation: int = 0
    ae_pain_readmission: int = 0
    decisions: list[Decision] = field(default_factory=list)
    # (resource type, id, measure) -> time point: one resource may give several measures
    timepoints: dict[tuple[str, str, str], Timepoint] = field(default_factory=dict)
