"""SQL on FHIR v2 ViewDefinition runner.

Typical use::

    from fhir_spine.settings import DEFAULT_MAPPINGS
    from fhir_spine.views import compile_view, load_view

    view = compile_view(load_view(DEFAULT_MAPPINGS / "views" / "Procedure.json"))
    for resource in resources:
        for row in view.rows(resource):
            ...

See :mod:`fhir_spine.views.runner` for the evaluation model and
:mod:`fhir_spine.views.fhirpath` for the FHIRPath layer and its fast path.
"""

from fhir_spine.views.definition import (
    Column,
    Constant,
    Select,
    ViewDefinition,
    load_view,
    parse_view,
)
from fhir_spine.views.errors import ViewDefinitionError, ViewError, ViewEvaluationError
from fhir_spine.views.fhirpath import reference_key
from fhir_spine.views.runner import ColumnInfo, CompiledView, compile_view, run_view

__all__ = [
    "Column",
    "ColumnInfo",
    "CompiledView",
    "Constant",
    "Select",
    "ViewDefinition",
    "ViewDefinitionError",
    "ViewError",
    "ViewEvaluationError",
    "compile_view",
    "load_view",
    "parse_view",
    "reference_key",
    "run_view",
]
