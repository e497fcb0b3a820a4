"""Resource identifiers: readable for NDJSON (`p001-biopsy-1`), stable uuids for the Bundle."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6f1c2d4e-8b7a-5c3d-9e2f-1a0b3c4d5e6f")


def patient_pid(index: int, patients: int) -> str:
    """`p001`.. with enough digits for the cohort, so ids sort in patient order."""
    return f"p{index:0{max(3, len(str(patients)))}d}"


def resource_id(pid: str, key: str | None) -> str:
    return pid if key is None else f"{pid}-{key}"


def resource_uuid(seed: int, pid: str, key: str | None) -> str:
    """Deterministic per seed and resource: the same cohort gets the same Bundle."""
    return str(uuid.uuid5(_NAMESPACE, f"{seed}/{resource_id(pid, key)}"))
