"""Problems met in the input: one `issues` row each, so nothing read is lost silently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Issue:
    severity: Severity
    code: str
    message: str
    patient_id: str = ""
    resource_type: str = ""
    resource_id: str = ""
    origin: str = ""      # file:line or URL the resource came from
    sets_aside: bool = False  # the resource was not used because of this problem
