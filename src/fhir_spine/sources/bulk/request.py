"""What one `$export` asks for: the level (system, patient, group:ID), the types,
`_since` and `_typeFilter`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_spine.errors import UsageError

LEVELS = ("system", "patient", "group")


@dataclass(frozen=True)
class BulkRequest:
    """One `$export` kick-off: which level, which types, changed since when."""

    level: str = "system"
    group_id: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    type_filters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise UsageError(f"--bulk: unknown level {self.level!r}; use system, patient or "
                             "group:ID")
        if (self.level == "group") != bool(self.group_id):
            raise UsageError("--bulk group:ID needs a Group id (and only group takes one)")

    @property
    def path(self) -> str:
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        return f"Group/{self.group_id}/$export"

    def params(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.types:
            out.append(("_type", ",".join(self.types)))
        if self.since:
            out.append(("_since", self.since))
        out += [("_typeFilter", f) for f in self.type_filters]
        return out

    def describe(self) -> str:
        what = self.level if self.level != "group" else f"group {self.group_id}"
        since = f", changed since {self.since}" if self.since else ""
        return f"{what} level export of {', '.join(self.types) or 'all types'}{since}"

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "group_id": self.group_id, "types": list(self.types),
                "since": self.since, "type_filters": list(self.type_filters)}


def parse_level(text: str) -> tuple[str, str | None]:
    """`system`, `patient` or `group:ID` -> (level, group id)."""
    value = text.strip()
    if value in ("system", "patient"):
        return value, None
    if value.startswith("group:") and value[6:].strip():
        gid = value[6:].strip().removeprefix("Group/")
        if "/" in gid or "?" in gid or " " in gid:
            raise UsageError(f"--bulk {text!r}: {gid!r} is not a Group id")
        return "group", gid
    raise UsageError(f"--bulk {text!r}: expected system, patient or group:ID")
