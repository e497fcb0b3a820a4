"""Find the pathway's landmark events: index biopsy, stabilization, diagnosis, therapy.

Each function takes only the records it needs and returns the landmark (or None) so a
rule can be tested alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    IssuedReport,
    PathologyReport,
    PlacedEvent,
    is_issued,
    is_placed,
)
from fhir_spine.pathway.time import OnDay, day_bounds, hours_apart
from fhir_spine.pathway.vocabulary import TUMOUR_FINDINGS, Strategy

BIOPSY = "vertebral-biopsy"
STABILIZATION = "stabilization"
THERAPY_MODALITY = {
    "systemic-therapy": "systemic",
    "systemic-therapy-procedure": "systemic",
    "radiotherapy": "radiotherapy",
    "oncologic-resection": "surgery",
    "separation-surgery": "surgery",
    "cancer-related-surgery": "surgery",
}
MODALITY_ORDER = ("systemic", "radiotherapy", "surgery")
NEOPLASTIC_FINDINGS = frozenset({"secondary-malignancy", *TUMOUR_FINDINGS})
NON_NEOPLASTIC = "histology-non-neoplastic"
INSUFFICIENT = "histology-insufficient"


def role_of(concept: str) -> str:
    """The role a concept plays on the pathway (PATHWAY.md "Events"); it decides which
    Procedure statuses count (settings `procedure_statuses_by_role`)."""
    if concept == BIOPSY:
        return "biopsy"
    if concept in THERAPY_MODALITY:
        return "definitive-therapy"
    return concept


def usable(events: Iterable[ClinicalEvent], concept: str | Iterable[str]) -> list[PlacedEvent]:
    """Countable events of a concept that sit on a calendar day, in time order."""
    concepts = {concept} if isinstance(concept, str) else set(concept)
    found = [e for e in events if is_placed(e) and e.concept in concepts and e.countable]
    return sorted(found, key=lambda e: e.start.sort_key())


def after(event_start: OnDay, anchor: OnDay) -> bool:
    return event_start.sort_key() > anchor.sort_key()


def same_session(a: ClinicalEvent, b: ClinicalEvent, gap_hours: float) -> str | None:
    """The evidence that two procedures shared one operative session, or None.

    Precedence follows PATHWAY.md: a shared Encounter, then `partOf`, then times.
    """
    if a.encounter_id and a.encounter_id == b.encounter_id:
        return "same-encounter"
    if a.source.resource_id in b.part_of or b.source.resource_id in a.part_of:
        return "part-of"
    if a.start is None or b.start is None:
        return None
    gap = hours_apart(a.start, b.start)
    if gap is not None and gap <= gap_hours:
        return "time-window"
    if _periods_overlap(a, b):
        return "time-window"
    return None


def _periods_overlap(a: ClinicalEvent, b: ClinicalEvent) -> bool:
    spans = []
    for e in (a, b):
        if e.start is None or e.start.instant is None:
            return False
        end = e.end.instant if e.end is not None and e.end.instant is not None else e.start.instant
        spans.append((e.start.instant, end))
    (a0, a1), (b0, b1) = spans
    return a0 <= b1 and b0 <= a1


@dataclass(frozen=True)
class BiopsyFindings:
    index: PlacedEvent | None
    same_session: tuple[PlacedEvent, ...] = ()   # duplicate records of the index session
    repeats: tuple[PlacedEvent, ...] = ()        # later sessions


def find_biopsies(events: Sequence[ClinicalEvent], gap_hours: float) -> BiopsyFindings:
    """Index biopsy = first completed vertebral biopsy; later sessions are repeats."""
    biopsies = usable(events, BIOPSY)
    if not biopsies:
        return BiopsyFindings(None)
    index, rest = biopsies[0], biopsies[1:]
    duplicates = tuple(b for b in rest if same_session(index, b, gap_hours))
    repeats = tuple(b for b in rest if b not in duplicates)
    return BiopsyFindings(index, duplicates, repeats)


@dataclass(frozen=True)
class StabilizationFinding:
    event: PlacedEvent | None
    strategy: Strategy | None = None
    basis: str | None = None


def find_stabilization(
    index: PlacedEvent, events: Sequence[ClinicalEvent], gap_hours: float
) -> StabilizationFinding:
    """Single-stage when a stabilization shares the index biopsy's session (even if it was
    recorded a little before it); otherwise the first stabilization after the biopsy."""
    candidates = usable(events, STABILIZATION)
    for stab in candidates:
        basis = same_session(index, stab, gap_hours)
        if basis:
            return StabilizationFinding(stab, "single-stage", basis)
    for stab in candidates:
        if after(stab.start, index.start):
            return StabilizationFinding(stab, "staged", "separate-session")
    return StabilizationFinding(None)


@dataclass(frozen=True)
class DiagnosisFinding:
    report: IssuedReport | None
    histology: str | None = None  # "neoplastic", "non-neoplastic" or None (unconfirmed)
    basis: str | None = None      # "coded", "narrative" or "condition"


def find_diagnosis(index: PlacedEvent, reports: Sequence[PathologyReport],
                   conditions: Sequence[ConditionRecord] = ()) -> DiagnosisFinding:
    """The first conclusive pathology report issued on or after the index biopsy day.

    Its histology is read from `conclusionCode` (basis `coded`) or, failing that, from
    the narrative conclusion by the site's text rule (`narrative`; histology_text.py).
    When no report's conclusion could be read at all, an unread report still dates the
    diagnosis if a neoplasm Condition supports it (basis `condition`): a countable
    neoplastic Condition at an index level, or first recorded on/after the biopsy day
    (issue 11, item 5; README "Decisions recorded here").
    """
    after_index = [r for r in reports
                   if is_issued(r) and r.countable and r.issued.day >= index.start.day]
    conclusive = [r for r in after_index
                  if r.finding in NEOPLASTIC_FINDINGS or r.finding == NON_NEOPLASTIC]
    if not conclusive:
        unread = [r for r in after_index if r.finding is None]
        if unread and _supporting_condition(index, conditions):
            first = min(unread, key=lambda r: r.issued.sort_key())
            return DiagnosisFinding(first, "neoplastic", "condition")
        return DiagnosisFinding(None)
    first = min(conclusive, key=lambda r: r.issued.sort_key())
    histology = "non-neoplastic" if first.finding == NON_NEOPLASTIC else "neoplastic"
    return DiagnosisFinding(first, histology, first.basis or "coded")


def _supporting_condition(index: PlacedEvent, conditions: Sequence[ConditionRecord]) -> bool:
    for c in conditions:
        if not c.countable or c.finding not in NEOPLASTIC_FINDINGS:
            continue
        if set(index.levels) & set(c.levels):
            return True
        if c.onset is not None and c.onset.day is not None and c.onset.day >= index.start.day:
            return True
    return False


@dataclass(frozen=True)
class TherapyFinding:
    first: PlacedEvent | None
    modalities: tuple[str, ...] = ()
    within_window: tuple[PlacedEvent, ...] = ()
    started_by: dict[str, PlacedEvent] = field(default_factory=dict)  # order id -> admin


def orders_started_by_administration(
    events: Sequence[ClinicalEvent],
) -> dict[str, PlacedEvent]:
    """Order id -> its first administration that was given and sits on a day.

    PATHWAY.md "Definitive therapy start" in FHIR terms: a drug therapy starts at its first
    administration when there is one (`MedicationAdministration.request` names the order),
    else at the order's planned start (`boundsPeriod.start`), else at `authoredOn`.
    """
    first: dict[str, PlacedEvent] = {}
    for e in events:
        if not is_placed(e) or e.source.resource_type != "MedicationAdministration" \
                or not e.request_id or not e.countable:
            continue
        seen = first.get(e.request_id)
        if seen is None or e.start.sort_key() < seen.start.sort_key():
            first[e.request_id] = e
    return first


def find_definitive_therapy(
    index: PlacedEvent, events: Sequence[ClinicalEvent], window_days: int
) -> TherapyFinding:
    """First definitive therapy after the index biopsy, and every modality starting
    within `window_days` of it. An order carried out by administrations is represented
    by them (`orders_started_by_administration`)."""
    started_by = orders_started_by_administration(events)
    after_index = [
        e for e in usable(events, THERAPY_MODALITY)
        if after(e.start, index.start)
        and not (e.source.resource_type == "MedicationRequest"
                 and e.source.resource_id in started_by)
    ]
    if not after_index:
        return TherapyFinding(None, started_by=started_by)
    first = after_index[0]
    window = tuple(
        e for e in after_index if (e.start.day - first.start.day).days <= window_days
    )
    present = {THERAPY_MODALITY[e.concept] for e in window}
    return TherapyFinding(first, tuple(m for m in MODALITY_ORDER if m in present), window,
                          started_by)


def undated(events: Iterable[ClinicalEvent], concept: str | Iterable[str],
            not_before: OnDay | None = None) -> list[ClinicalEvent]:
    """Countable events of a concept whose start cannot be placed on a day (partial date,
    data-absent-reason, a period with only an end, no date) and that could lie on or after
    `not_before`. Such a record means the date is unusable, not that the event is missing
    (README "Decisions": the exclusion reason names the unusable date)."""
    concepts = {concept} if isinstance(concept, str) else set(concept)
    found = []
    for e in events:
        if e.concept not in concepts or not e.countable or is_placed(e):
            continue
        if not_before is not None:
            latest = _latest_day(e)
            if latest is not None and latest < not_before.day:
                continue
        found.append(e)
    return found


def _latest_day(e: ClinicalEvent) -> date | None:
    """The latest day an unplaced event can have started, or None when nothing says."""
    if e.start is not None:
        return day_bounds(e.start)[1]
    if e.end is not None:
        return e.end.day  # None for a partial end: nothing says
    return None
