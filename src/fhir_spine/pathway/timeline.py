"""Find the pathway's landmark events: index biopsy, stabilization, diagnosis, therapy.

Each function takes only the records it needs and returns the landmark (or None) so a
rule can be tested alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    IssuedReport,
    PathologyReport,
    PlacedEvent,
    is_issued,
    is_placed,
)
from fhir_spine.pathway.time import OnDay, hours_apart
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


def find_definitive_therapy(
    index: PlacedEvent, events: Sequence[ClinicalEvent], window_days: int
) -> TherapyFinding:
    """First definitive therapy after the index biopsy, and every modality starting
    within `window_days` of it."""
    after_index = [e for e in usable(events, THERAPY_MODALITY) if after(e.start, index.start)]
    if not after_index:
        return TherapyFinding(None)
    first = after_index[0]
    window = tuple(
        e for e in after_index if (e.start.day - first.start.day).days <= window_days
    )
    present = {THERAPY_MODALITY[e.concept] for e in window}
    return TherapyFinding(first, tuple(m for m in MODALITY_ORDER if m in present), window)
