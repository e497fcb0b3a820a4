"""Contained resources, flattened so a `#id` reference can be resolved.

FHIR R4 "References" (2.3.0.3, contained resources): a reference whose value starts with
`#` points to a resource in the referring resource's own `contained` list. EHR servers and
US Core examples send a MedicationRequest's drug that way (`medicationReference: "#med1"`).
Contained resources are part of their container: they are not read, counted or accounted
for on their own; each is flattened with the view of its type and kept on the container's
row (`row["_contained"]`, keyed by local id) for the normaliser to resolve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Row = dict[str, Any]


def contained_rows(resource: Mapping[str, Any], views: Mapping[str, Any]) -> dict[str, Row]:
    """Local id -> view row of each contained resource whose type has a view."""
    found: dict[str, Row] = {}
    contained = resource.get("contained")
    if not isinstance(contained, list):
        return found
    for inner in contained:
        if not isinstance(inner, Mapping):
            continue
        rtype, local_id = inner.get("resourceType"), inner.get("id")
        if not isinstance(local_id, str) or not local_id or not isinstance(rtype, str) \
                or rtype not in views:
            continue
        try:
            rows = views[rtype].rows(inner)
        except Exception:  # noqa: BLE001, S112 - an odd contained resource: the ref stays unresolved
            continue
        if rows:
            found[local_id] = dict(rows[0])
    return found
