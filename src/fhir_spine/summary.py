"""The short classification summary printed after an extraction, and the counts of the
final event every command ends with under `--log-format json` (`note`, `taken`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd


def summary_lines(patients: pd.DataFrame) -> list[str]:
    screened = len(patients)
    included = patients[patients["included"].fillna(False).astype(bool)]
    lines = [f"patients screened: {screened}, included: {len(included)}, "
             f"excluded: {screened - len(included)}"]
    reasons: Counter[str] = Counter()
    for text in patients["exclusion_reasons"].dropna():
        reasons.update(r for r in str(text).split(";") if r)
    for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  excluded for {reason}: {n}")
    for strategy in ("single-stage", "staged"):
        group = included[included["strategy"] == strategy]
        days = group["days_biopsy_to_therapy"].dropna().astype(float)
        mean = f"{days.mean():.1f}" if len(days) else "-"
        lines.append(f"  {strategy}: {len(group)} included, mean days biopsy -> therapy {mean}"
                     f" (n={len(days)})")
    return lines


_final: dict[str, Any] = {}


def reset() -> None:
    _final.clear()


def note(**fields: Any) -> None:
    """Add fields to the run's final event (counts, the time zone, the error)."""
    _final.update(fields)


def taken() -> dict[str, Any]:
    fields = dict(_final)
    _final.clear()
    return fields


def dataset_counts(patients: pd.DataFrame, issues: pd.DataFrame,
                   accounting: dict[str, Any] | None = None) -> dict[str, Any]:
    """read / used / set aside, screened, included by strategy, issues by severity."""
    included = patients[patients["included"].fillna(False).astype(bool)]
    by_strategy = {str(k): int(v) for k, v in
                   included["strategy"].fillna("").value_counts().sort_index().items()}
    counts: dict[str, Any] = {}
    if accounting is not None:
        counts.update({k: int(accounting[k]) for k in ("read", "used", "set_aside")
                       if k in accounting})
    counts.update({
        "screened": int(len(patients)), "included": int(len(included)),
        "excluded": int(len(patients) - len(included)),
        "included_by_strategy": by_strategy,
        "issues": {str(k): int(v) for k, v in
                   issues["severity"].value_counts().sort_index().items()},
    })
    return counts


def timezone_line(timezone: str, assumed: bool) -> str:
    if assumed:
        return (f"time zone: {timezone} (assumed: none configured; set --timezone or "
                "`timezone:` in the site settings.yaml)")
    return f"time zone: {timezone}"
