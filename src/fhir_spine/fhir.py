"""Small FHIR facts every server pull shares: references, instants, and which resource
types a pull asks for.

Plain functions over dicts and strings (no HTTP, no pandas), so the REST pull, the Bulk
Data export, the refresh and `check` agree on them and any module may import this one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_spine.settings import Mappings
    from fhir_spine.sources.capabilities import Capabilities

# Types fetched by id rather than by patient: the patient itself and the medications
# that orders point to.
BY_ID_TYPES = ("Patient", "Medication")
# Types whose `medicationReference` makes a pull fetch the Medication by id.
MEDICATION_USERS = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")
# Types read when the server offers them; a server without them still has what the pathway
# needs (MedicationStatement: mCODE STU1 therapy records, besides orders and administrations).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Key = tuple[str, str]


# ------------------------------------------------------------------ references

def reference_key(reference: Any) -> Key | None:
    """(type, id) of a `Type/id` reference, an absolute or `_history` URL, or a request
    URL with a query; None for contained (`#...`), `urn:` and anything else."""
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")):
        return None
    parts = reference.split("?")[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-1]:
        return parts[-2], parts[-1]
    return None


def reference_id(reference: Any, resource_type: str) -> str | None:
    """The logical id in a `Type/id` or absolute reference to `resource_type`."""
    key = reference_key(reference)
    return key[1] if key is not None and key[0] == resource_type else None


def medication_id(resource: dict[str, Any]) -> str | None:
    """The id of the Medication an order (`MEDICATION_USERS`) references, if any."""
    if resource.get("resourceType") not in MEDICATION_USERS:
        return None
    return reference_id((resource.get("medicationReference") or {}).get("reference"),
                        "Medication")


# ------------------------------------------------------------------ instants

def instant(moment: datetime, *, millis: bool = True) -> str:
    """FHIR instant in UTC with `Z`. With milliseconds by default: the one form every
    server compares right (sekmet compares `_since` as text against `...SS.mmmZ`);
    whole seconds for `_lastUpdated` search windows."""
    moment = moment.astimezone(UTC)
    if not millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(text: str) -> datetime:
    """An instant or dateTime with time; one without a zone is taken as UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ------------------------------------------------------------------ resource types

# View types a server may well not offer (many do not store questionnaire answers): a REST
# pull searches them only when the CapabilityStatement lists them with a `patient` search
# parameter, else skips them with a warning and names them in the manifest's
# `query.types_not_offered` (issue 11, item 8). Every other view type is required.
# Types some servers do not offer (sekmet, older HAPI setups): pulled only when the
# CapabilityStatement declares a patient search for them.
OPTIONAL_TYPES = ("MedicationStatement", "QuestionnaireResponse")


def optional_types_not_offered(caps: Capabilities, types: Iterable[str]) -> tuple[str, ...]:
    """The optional `types` a CapabilityStatement does not offer for patient searches.

    Not declared means not offered, even when the statement lists no types at all: an
    optional type is evidence a server may lack, and searching one it lacks would fail
    the whole pull (exit 5) where skipping it with a warning loses nothing it has."""
    missing = []
    for t in types:
        support = caps.types.get(t)
        if t in OPTIONAL_TYPES and (support is None or (
                support.search_params and "patient" not in caps.search_params_of(t))):
            missing.append(t)
    return tuple(missing)


def patient_types(mappings: Mappings) -> tuple[str, ...]:
    """Types the views read that a pull asks for by patient (`<Type>?patient=...`)."""
    return tuple(t for t in sorted(mappings.views) if t not in BY_ID_TYPES)


def pulled_types(mappings: Mappings) -> tuple[str, ...]:
    """Every type the views read: Patient, the patient types, Medication."""
    medication = ("Medication",) if "Medication" in mappings.views else ()
    return ("Patient",) + patient_types(mappings) + medication


def export_types(mappings: Mappings, level: str) -> tuple[str, ...]:
    """The `_type` list of a `$export`. Patient-compartment exports (patient, group)
    cannot carry Medication (HAPI refuses it: no patient search parameter), so at those
    levels the referenced Medications are fetched by id afterwards."""
    types = pulled_types(mappings)
    return types if level == "system" else tuple(t for t in types if t != "Medication")
