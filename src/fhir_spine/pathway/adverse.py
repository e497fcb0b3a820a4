"""Adverse events of PATHWAY.md: repeat biopsy, revision, unplanned urgent fixation and
acute pain-related readmission."""

from __future__ import annotations

from collections.abc import Sequence

from fhir_spine.pathway.model import ClinicalEvent, EncounterRecord, PlacedEvent
from fhir_spine.pathway.time import OnDay
from fhir_spine.pathway.timeline import after, usable


def repeat_biopsies(repeats: Sequence[PlacedEvent], therapy_start: OnDay | None) -> int:
    """Biopsies in a later session than the index, before definitive therapy starts."""
    return len([
        b for b in repeats
        if therapy_start is None or not after(b.start, therapy_start)
    ])


def revisions(
    events: Sequence[ClinicalEvent], stabilization: PlacedEvent, index_levels: set[str]
) -> list[PlacedEvent]:
    """Revision procedures after the stabilization, at the index/instrumented levels
    (or with no level recorded)."""
    levels = index_levels | set(stabilization.levels)
    return [
        e for e in usable(events, "revision")
        if after(e.start, stabilization.start)
        and (not e.levels or levels.intersection(e.levels))
    ]


def unplanned_fixation(
    strategy: str | None, stabilization: ClinicalEvent | None,
    encounters: dict[str, EncounterRecord],
) -> bool:
    """A staged stabilization done under an urgent/emergency encounter."""
    if strategy != "staged" or stabilization is None or not stabilization.encounter_id:
        return False
    encounter = encounters.get(stabilization.encounter_id)
    return bool(encounter and encounter.urgent)


def pain_readmissions(
    encounters: Sequence[EncounterRecord], index_biopsy: OnDay, therapy_start: OnDay | None,
    pathway_encounters: set[str], classes: frozenset[str],
) -> list[EncounterRecord]:
    """Inpatient/emergency encounters for pain after the index biopsy day and before
    definitive therapy starts, other than the stays of the pathway's own procedures."""
    found = []
    for enc in encounters:
        if (
            enc.pain_reason and enc.class_code in classes
            and enc.source.resource_id not in pathway_encounters
            and enc.start is not None and enc.start.day is not None
            and enc.start.day > index_biopsy.day
            and (therapy_start is None or enc.start.sort_key() < therapy_start.sort_key())
        ):
            found.append(enc)
    return found
