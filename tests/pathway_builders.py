"""Small builders for pathway unit tests: one line per record."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    EncounterRecord,
    Measurement,
    PathologyReport,
    PatientInput,
    PatientRecord,
    Source,
)
from fhir_spine.pathway.time import When, parse_when

UTC = ZoneInfo("UTC")
_counter = iter(range(1, 1_000_000))


def when(raw: str) -> When:
    return parse_when(raw, UTC)


def event(concept: str, start: str | None, *, rid: str | None = None, end: str | None = None,
          encounter: str | None = None, part_of: tuple[str, ...] = (), levels=("T10",),
          countable: bool = True, note: str = "", rtype: str = "Procedure",
          request: str | None = None) -> ClinicalEvent:
    return ClinicalEvent(
        concept, Source(rtype, rid or f"{concept}-{next(_counter)}"),
        when(start) if start else None, when(end) if end else None, "completed",
        countable, note, encounter, part_of, tuple(levels), request_id=request)


def report(issued: str, finding: str | None = "tumour-solid-metastasis", *,
           countable: bool = True) -> PathologyReport:
    return PathologyReport(Source("DiagnosticReport", f"dr-{next(_counter)}"), when(issued),
                           finding, "final", countable)


def condition(finding: str, levels=(), onset: str | None = None) -> ConditionRecord:
    return ConditionRecord(Source("Condition", f"c-{next(_counter)}"), finding, tuple(levels),
                           when(onset) if onset else None)


def encounter(rid: str, start: str, *, class_code: str = "IMP", urgent: bool = False,
              pain: bool = False) -> EncounterRecord:
    return EncounterRecord(Source("Encounter", rid), class_code, when(start), None, urgent, pain)


def measure(name: str, value: float, effective: str) -> Measurement:
    return Measurement(name, value, when(effective),
                       Source("Observation", f"o-{next(_counter)}"))


def complete_patient(
    *, biopsy: str = "2023-03-01T09:00:00Z", stab: str = "2023-03-01T10:00:00Z",
    report_on: str = "2023-03-10", therapy: str = "2023-03-31", birth: date = date(1960, 1, 1),
    extra_events=(), encounter_ids: tuple[str | None, str | None] = (None, None),
) -> PatientInput:
    """A patient who meets every criterion: change one thing per test."""
    return PatientInput(
        PatientRecord("p1", birth, "female"),
        events=[
            event("vertebral-biopsy", biopsy, rid="bx", encounter=encounter_ids[0]),
            event("stabilization", stab, rid="stab", encounter=encounter_ids[1],
                  levels=("T9", "T10", "T11")),
            event("systemic-therapy", therapy, rid="chemo", rtype="MedicationRequest",
                  levels=()),
            *extra_events,
        ],
        reports=[report(report_on)],
        conditions=[condition("secondary-malignancy", ("T10",), "2023-03-10"),
                    condition("tumour-solid-metastasis", (), "2023-03-10")],
        measurements=[
            measure("vas", 8, "2023-02-27"), measure("vas", 4, "2023-03-11"),
            measure("sosgoq_total", 50, "2023-02-27"), measure("sosgoq_total", 60, "2023-03-11"),
        ],
    )
