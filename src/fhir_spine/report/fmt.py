"""Number formatting for report cells, following gtsummary's conventions.

Analysts put the report next to a gtsummary table, so p-values use `style_pvalue`'s
rounding (">0.9", one decimal down to 0.2, two between 0.1 and 0.2, three down to
0.001, then "<0.001") and percentages drop decimals from 10% upwards. Full-precision
numbers are in the statistics CSV; these strings are for reading.
"""

from __future__ import annotations

import math

from fhir_spine.report.stats import MeanCI, MedianIQR

DASH = "—"


def num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    text = f"{value:.{digits}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


def pvalue(p: float | None) -> str:
    """gtsummary `style_pvalue(digits = 1)`."""
    if p is None or not math.isfinite(p):
        return DASH
    if p > 0.9:
        return ">0.9"
    if round(p, 1) >= 0.2:
        return f"{p:.1f}"
    if round(p, 2) >= 0.1:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    return "<0.001"


def percent(count: int, total: int) -> str:
    if total == 0:
        return DASH
    pct = 100.0 * count / total
    return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"


def n_pct(count: int, total: int) -> str:
    return f"{count} ({percent(count, total)})" if total else f"{count}"


def mean_ci(m: MeanCI, digits: int = 1) -> str:
    if m.mean is None:
        return DASH
    if m.low is None or m.high is None:
        return num(m.mean, digits)
    return f"{num(m.mean, digits)} ({num(m.low, digits)}, {num(m.high, digits)})"


def median_iqr(m: MedianIQR, digits: int = 1) -> str:
    if m.median is None:
        return DASH
    return f"{num(m.median, digits)} ({num(m.q1, digits)}, {num(m.q3, digits)})"


def interval(est: float | None, ci: tuple[float, float] | None, digits: int = 1) -> str:
    if est is None:
        return DASH
    if ci is None:
        return num(est, digits)
    return f"{num(est, digits)} ({num(ci[0], digits)}, {num(ci[1], digits)})"
