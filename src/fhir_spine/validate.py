"""Structural validation of raw resources against the FHIR models of `fhir.resources`.

fhir.resources ships R4B models; for every type this project reads they are the R4
definitions. Validation is a reader's courtesy, not a gate by default (`warn`): real
exports break small rules (timestamps without offsets, say) that the pathway can still
read, so a failure is an `issues` row and the resource goes on. `strict` sets it aside.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import ValidationError

Mode = Literal["off", "warn", "strict"]


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return None


def validation_problem(resource: dict[str, Any]) -> str | None:
    """A one-line description of what is invalid, or None when the resource is valid.

    The offending input values are left out on purpose: they may be health data and the
    message goes to logs as well as the `issues` table.
    """
    model = _model(str(resource.get("resourceType")))
    if model is None:
        return f"unknown resource type {resource.get('resourceType')!r}"
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3]
        )
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        return f"fails FHIR validation: {shown}{more}"
    except Exception as exc:  # noqa: BLE001 - the model library can fail on odd shapes in
        # any way (an int where it expects an object); that is a validation failure too.
        return f"fails FHIR validation: {type(exc).__name__} while checking the structure"
    return None
