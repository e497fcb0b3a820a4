"""Baseline and at-diagnosis values of the patient-reported and clinical measures."""

from __future__ import annotations

from collections.abc import Sequence

from fhir_spine.pathway.model import DatedMeasurement
from fhir_spine.pathway.time import OnDay, not_after

# Measures reported at both time points in `patients` (column prefix -> measure name).
PRO_MEASURES = {
    "vas": "vas",
    "sosgoq_total": "sosgoq_total",
    "sosgoq_pain": "sosgoq_pain",
    "sosgoq_physical": "sosgoq_physical",
    "sosgoq_mental": "sosgoq_mental",
    "sosgoq_social": "sosgoq_social",
}
# Measured once, before the biopsy.
BASELINE_ONLY = ("sins_total", "ecog", "asa")

RANGES: dict[str, tuple[float, float]] = {
    "vas": (0, 10),
    "sosgoq_total": (0, 100), "sosgoq_pain": (0, 100), "sosgoq_physical": (0, 100),
    "sosgoq_mental": (0, 100), "sosgoq_social": (0, 100),
    "sins_total": (0, 18), "sins_location": (0, 3), "sins_pain": (0, 3),
    "sins_bone_lesion": (0, 2), "sins_alignment": (0, 4), "sins_collapse": (0, 3),
    "sins_posterolateral": (0, 3),
    "ecog": (0, 5), "asa": (1, 6),
}


def in_range(measure: str, value: float) -> bool:
    low, high = RANGES.get(measure, (float("-inf"), float("inf")))
    return low <= value <= high


def baseline(
    values: Sequence[DatedMeasurement], index_biopsy: OnDay, lookback_days: int
) -> DatedMeasurement | None:
    """The last value on or before the index biopsy, no older than `lookback_days`."""
    candidates = [
        m for m in values
        if not_after(m.effective, index_biopsy)
        and (index_biopsy.day - m.effective.day).days <= lookback_days
    ]
    return max(candidates, key=lambda m: m.effective.sort_key(), default=None)


def at_diagnosis(
    values: Sequence[DatedMeasurement], index_biopsy: OnDay, diagnosis: OnDay, window_days: int
) -> DatedMeasurement | None:
    """The value nearest the diagnosis date within +/- `window_days`, taken after the
    index biopsy (a pre-biopsy value is baseline, never at-diagnosis); ties: the later."""
    candidates = [
        m for m in values
        if not not_after(m.effective, index_biopsy)
        and abs((m.effective.day - diagnosis.day).days) <= window_days
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda m: (abs((m.effective.day - diagnosis.day).days), _negated(m.effective)),
    )


def _negated(when: OnDay) -> tuple[int, float]:
    """Sort key that prefers the later of two equally near values."""
    day = when.day.toordinal()
    seconds = when.instant.timestamp() if when.instant is not None else float("-inf")
    return (-day, -seconds)
