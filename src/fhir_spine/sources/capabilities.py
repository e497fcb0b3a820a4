"""What a server says it offers: its CapabilityStatement (`GET metadata`), read once.

`check` shows it, the REST pull and the Bulk export take the FHIR version from it (and
refuse anything but R4), a refresh decides from it where deletions come from
(`_history`) and takes the server's clock from the answer's `Date`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from fhir_spine.errors import ServerError
from fhir_spine.redact import redact_url

if TYPE_CHECKING:
    from fhir_spine.sources.http import FhirClient

# Levels of `$export`, by where the operation is declared.
EXPORT_LEVEL_OF = {"Patient": "patient", "Group": "group"}


@dataclass(frozen=True)
class TypeSupport:
    """One `rest.resource` entry: interactions, search parameters, operations."""

    interactions: frozenset[str] = frozenset()
    search_params: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()


@dataclass
class Capabilities:
    """The parts of a CapabilityStatement fhir-spine uses (server-mode `rest` only)."""

    fhir_version: str = ""
    software: str = ""
    interactions: frozenset[str] = frozenset()     # system level: transaction, ...
    search_params: frozenset[str] = frozenset()    # declared for every type
    operations: frozenset[str] = frozenset()       # system level, without `$`
    types: dict[str, TypeSupport] = field(default_factory=dict)
    server_time: datetime | None = None            # the answer's `Date` header

    @property
    def is_r4(self) -> bool:
        return self.fhir_version.startswith("4.0")

    @property
    def history_system(self) -> bool:
        return "history-system" in self.interactions

    @property
    def history_types(self) -> set[str]:
        return {t for t, s in self.types.items() if "history-type" in s.interactions}

    def offers_history(self, types: tuple[str, ...] | list[str]) -> bool:
        return self.history_system or all(t in self.history_types for t in types)

    @property
    def export_levels(self) -> list[str]:
        """`system`, `patient`, `group`: where `$export` is declared."""
        levels = ["system"] if "export" in self.operations else []
        return levels + [level for rtype, level in EXPORT_LEVEL_OF.items()
                         if "export" in self.types.get(rtype, TypeSupport()).operations]

    def search_params_of(self, resource_type: str) -> frozenset[str]:
        support = self.types.get(resource_type)
        return self.search_params | (support.search_params if support else frozenset())


def parse_capabilities(metadata: dict[str, Any], server_time: datetime | None = None
                       ) -> Capabilities:
    """The parts of a CapabilityStatement resource that fhir-spine uses."""
    raw_software = metadata.get("software")
    software: dict[str, Any] = raw_software if isinstance(raw_software, dict) else {}
    caps = Capabilities(fhir_version=str(metadata.get("fhirVersion") or ""),
                        software=f"{software.get('name', '?')} "
                                 f"{software.get('version', '')}".rstrip(),
                        server_time=server_time)
    types: dict[str, TypeSupport] = {}
    for rest in metadata.get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        caps.interactions |= _codes(rest.get("interaction"))
        caps.search_params |= _names(rest.get("searchParam"))
        caps.operations |= _names(rest.get("operation"))
        for res in rest.get("resource") or []:
            if isinstance(res, dict) and res.get("type"):
                old = types.get(str(res["type"]), TypeSupport())
                types[str(res["type"])] = TypeSupport(
                    old.interactions | _codes(res.get("interaction")),
                    old.search_params | _names(res.get("searchParam")),
                    old.operations | _names(res.get("operation")))
    caps.types = types
    return caps


def read_capabilities(client: FhirClient, *, r4_only: bool = True) -> Capabilities:
    """`GET metadata`: a CapabilityStatement (else a clear error), R4 unless `r4_only` is
    off (a statement without `fhirVersion` passes: the pull reads it as 4.0.1)."""
    shown = f"GET {redact_url(client.url('metadata'))}"
    response = client.request("GET", "metadata")
    metadata = client.json_of(response, shown)
    if metadata.get("resourceType") != "CapabilityStatement":
        raise ServerError(f"{shown}: not a CapabilityStatement; is this a FHIR base URL?")
    server_time: datetime | None = None
    if response.headers.get("Date"):
        try:
            server_time = parsedate_to_datetime(response.headers["Date"])
        except (TypeError, ValueError):
            server_time = None
    caps = parse_capabilities(metadata, server_time)
    if r4_only and caps.fhir_version and not caps.is_r4:
        raise ServerError(f"{redact_url(client.base_url)} speaks FHIR {caps.fhir_version}; "
                          "fhir-spine reads R4 (4.0.x)")
    return caps


def _codes(entries: Any) -> frozenset[str]:
    return frozenset(str(e.get("code")) for e in entries or [] if isinstance(e, dict)
                     and e.get("code"))


def _names(entries: Any) -> frozenset[str]:
    return frozenset(str(e.get("name")).lstrip("$") for e in entries or []
                     if isinstance(e, dict) and e.get("name"))
