"""Read an extraction output folder into the plain columns the report computes on.

The report must run on any folder `fhir-spine extract` wrote, including older ones and
ones with an empty cohort, so reading is forgiving about dtypes (nullable Int64,
boolean, Arrow strings all become floats / Python objects with None) and strict only
about what makes the folder unusable: no folder, no `manifest.json`, no patients table.
Columns the schema defines but the folder lacks are added empty and listed, so the
report can say which rows it could not fill instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhir_spine import schema
from fhir_spine.errors import UsageError
from fhir_spine.pathway.vocabulary import STRATEGIES, STRATEGY_LABELS

MANIFEST = "manifest.json"
GROUP_LABELS: dict[str, str] = {**{s: STRATEGY_LABELS[s] for s in STRATEGIES},
                                "overall": "Overall"}

_NUMERIC = {c.name for c in schema.PATIENTS if c.dtype in ("int", "float")}
_BOOL = {c.name for c in schema.PATIENTS if c.dtype == "bool"}


@dataclass(frozen=True)
class Cohort:
    """Screened patients, the analytic cohort and the folder's provenance."""

    patients: pd.DataFrame
    manifest: dict[str, Any]
    source: Path
    missing_columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def included(self) -> pd.DataFrame:
        mask = np.array([v is True for v in self.patients["included"]], dtype=bool)
        return self.patients.loc[mask]  # .loc + bool array: safe on an empty frame

    def group(self, strategy: str) -> pd.DataFrame:
        """Included patients of one strategy, or all included ones for "overall"."""
        inc = self.included
        if strategy == "overall":
            return inc
        return inc.loc[np.array([v == strategy for v in inc["strategy"]], dtype=bool)]

    def column(self, strategy: str, name: str) -> np.ndarray:
        """A numeric column of one group as floats with NaN for missing."""
        return self.group(strategy)[name].to_numpy(dtype=float)


def _as_bool(value: Any) -> bool | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip().lower()
    return True if text in ("true", "1", "yes") else False if text in ("false", "0", "no") \
        else None


def _as_text(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value)
    return text if text != "" else None


def normalise(df: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Schema columns in plain dtypes: float64 numbers, bool/None flags, str/None text."""
    out = pd.DataFrame(index=range(len(df)))
    missing: list[str] = []
    for col in schema.PATIENTS:
        if col.name not in df.columns:
            missing.append(col.name)
            series = pd.Series([None] * len(df), dtype=object)
        else:
            series = df[col.name].reset_index(drop=True)
        if col.name in _NUMERIC:
            out[col.name] = pd.to_numeric(series, errors="coerce").astype("Float64") \
                .to_numpy(dtype=float, na_value=np.nan)
        elif col.name in _BOOL:
            out[col.name] = pd.Series([_as_bool(v) for v in series], dtype=object)
        else:
            out[col.name] = pd.Series([_as_text(v) for v in series], dtype=object)
    return out, tuple(missing)


def load_cohort(folder: Path) -> Cohort:
    """Open OUT_DIR; every problem a user can fix is one UsageError line."""
    if not folder.exists():
        raise UsageError(f"{folder} does not exist; pass the folder `fhir-spine extract` wrote")
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass the folder `fhir-spine extract` "
                         "wrote")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UsageError(f"{folder} holds no {MANIFEST}: not a fhir-spine output folder")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{manifest_path} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise UsageError(f"{manifest_path} is not a JSON object")
    version = manifest.get("schema_version")
    if version is not None and version != schema.SCHEMA_VERSION:
        raise UsageError(f"{folder} has schema version {version}; this report reads "
                         f"version {schema.SCHEMA_VERSION}")
    parquet, csv = folder / "patients.parquet", folder / "patients.csv"
    try:
        if parquet.is_file():
            raw = pd.read_parquet(parquet)
        elif csv.is_file():
            raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
        else:
            raise UsageError(f"{folder} holds no patients.parquet or patients.csv")
    except UsageError:
        raise
    except Exception as exc:  # pyarrow / parser errors: a damaged folder, not a bug
        raise UsageError(f"cannot read the patients table in {folder}: {exc}") from exc
    patients, missing = normalise(raw)
    return Cohort(patients, manifest, folder, missing)
