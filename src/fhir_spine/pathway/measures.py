"""Baseline and at-diagnosis values of the patient-reported and clinical measures."""

from __future__ import annotations

from collections.abc import Sequence

from fhir_spine.pathway.model import DatedMeasurement
from fhir_spine.pathway.time import OnDay, not_after
from fhir_spine.pathway.vocabulary import MEASURE_RANGES

_RANGES: dict[str, tuple[float, float]] = {m: r for m, r in MEASURE_RANGES.items()}


def in_range(measure: str, value: float) -> bool:
    """Inside the measure's scale (any value of a measure without one)."""
    low, high = _RANGES.get(measure, (float("-inf"), float("inf")))
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
    if not candidates:
        return None
    return max(candidates, key=lambda m: m.effective.sort_key())


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
