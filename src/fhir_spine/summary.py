"""The short classification summary printed after an extraction."""

from __future__ import annotations

from collections import Counter

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
