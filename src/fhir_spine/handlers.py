"""The registry of resource handlers: for each FHIR resource type the pathway reads, its
handler, its order, and the view columns the handler reads.

Why one place: the columns a handler reads are a contract with the ViewDefinitions a site
may replace (`--mappings DIR/views/<Type>.json`). Kept here as data, the contract can be
checked when the mappings load, before any resource is read, so a site view that renames
`performed_datetime` or misspells a FHIRPath stops the run with exit status 3 and one
line naming the file and the column, instead of silently dropping patients. Adding a
resource type (MedicationStatement, QuestionnaireResponse, ...) is one entry here plus
its handler method in `normalise.py`.

Decisions recorded here:

- **Required and optional columns.** Required: every column a handler reads to decide
  something (a date, a code, a status, a reference). A view must declare each one, with a
  compatible FHIR type and multiplicity, even if its path finds nothing in the site's
  data. Optional: columns read only to word a message (the raw reference behind an
  unresolvable key, `performedString`). Other columns a view declares are ignored.
- **Column types.** A declared type must be one the handler can read (a date column
  takes `date`, `dateTime` or `instant`; a code list takes string-like types with
  `collection: true`). A required or optional column must declare its type.
- **Several rows for one resource.** Each handler says whether it takes one row per
  resource (`rows="one"`) or one per row (`rows="many"`). Every handler today builds one
  record per resource, keyed by the resource id (events, accounting and time points are
  keyed so), so all are "one": a view that yields several rows for one resource is a
  configuration error (exit 3, naming the view file and the iterating select), found at
  the first such resource, before anything is published. A handler that can take each
  row on its own declares "many" and is called once per row. Nothing is kept silently
  from the first row only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fhir_spine.errors import ConfigError
from fhir_spine.views.definition import Select
from fhir_spine.views.errors import ViewDefinitionError
from fhir_spine.views.runner import CompiledView, compile_view

Row = dict[str, Any]
RowsPerResource = Literal["one", "many"]

TEXT_TYPES = frozenset({"string", "code", "id", "uri", "url", "canonical", "oid", "uuid",
                        "markdown"})
TIME_TYPES = frozenset({"date", "dateTime", "instant"})
NUMBER_TYPES = frozenset({"decimal", "integer", "positiveInt", "unsignedInt", "integer64"})


@dataclass(frozen=True)
class ViewColumn:
    """A column a handler reads: its name, the FHIR types it accepts, its multiplicity."""

    name: str
    types: frozenset[str]
    collection: bool = False

    @property
    def expects(self) -> str:
        kind = f"one of {', '.join(sorted(self.types))}"
        return f"{kind}{', collection: true' if self.collection else ''}"


def text(name: str) -> ViewColumn:
    return ViewColumn(name, TEXT_TYPES)


def texts(name: str) -> ViewColumn:
    """A list of strings: codings as `system|code|display`, codes, reference keys."""
    return ViewColumn(name, TEXT_TYPES, collection=True)


def when(name: str) -> ViewColumn:
    return ViewColumn(name, TIME_TYPES)


def number(name: str) -> ViewColumn:
    return ViewColumn(name, NUMBER_TYPES)


def elements(name: str, fhir_type: str) -> ViewColumn:
    """A list of whole FHIR elements (JSON objects), e.g. `Observation.component`: the
    handler reads inside them, so the view stays one row per resource."""
    return ViewColumn(name, frozenset({fhir_type}), collection=True)


@dataclass(frozen=True)
class ResourceHandler:
    """How one resource type is read: the `Normaliser` method named `handler` is called
    with each view row, types in ascending `order` (patients and medications first, so
    references to them resolve)."""

    resource_type: str
    handler: str
    order: int
    required: tuple[ViewColumn, ...]
    optional: tuple[ViewColumn, ...] = ()
    rows: RowsPerResource = "one"

    def columns(self) -> tuple[ViewColumn, ...]:
        return self.required + self.optional


_SUBJECT = (text("id"), text("resource_type"), text("patient_ref"))
_SUBJECT_RAW = (text("patient_reference"),)

HANDLERS: tuple[ResourceHandler, ...] = (
    ResourceHandler("Patient", "patient", 0,
                    (text("id"), text("resource_type"), when("birth_date"), text("gender"))),
    ResourceHandler("Medication", "medication", 1,
                    (text("id"), texts("codings"), texts("ingredient_codings"))),
    ResourceHandler(
        "Procedure", "procedure_with_profile", 2,
        (*_SUBJECT, text("status"), texts("codings"), texts("category_codings"),
         texts("body_site_codings"), when("performed_datetime"),
         when("performed_period_start"), when("performed_period_end"),
         text("encounter_ref"), texts("part_of_refs"), texts("profiles")),
        (*_SUBJECT_RAW, text("performed_string"), texts("date_extensions"))),
    ResourceHandler(
        "MedicationRequest", "medication_use", 3,
        (*_SUBJECT, text("status"), text("intent"), texts("medication_codings"),
         text("medication_ref"), text("medication_reference"), when("bounds_period_start"),
         when("authored_on"), text("encounter_ref")),
        (*_SUBJECT_RAW, texts("date_extensions"))),
    ResourceHandler(
        "MedicationAdministration", "medication_use", 4,
        (*_SUBJECT, text("status"), texts("medication_codings"), text("medication_ref"),
         text("medication_reference"), when("effective_datetime"),
         when("effective_period_start"), when("effective_period_end"), text("context_ref"),
         text("request_ref")),
        (*_SUBJECT_RAW, texts("date_extensions"))),
    # mCODE STU1 CancerRelatedMedicationStatement: a record of therapy (its own statuses).
    ResourceHandler(
        "MedicationStatement", "medication_use", 5,
        (*_SUBJECT, text("status"), texts("medication_codings"), text("medication_ref"),
         text("medication_reference"), when("effective_datetime"),
         when("effective_period_start"), when("effective_period_end"), text("context_ref")),
        (*_SUBJECT_RAW, texts("date_extensions"))),
    ResourceHandler(
        "DiagnosticReport", "diagnostic_report", 6,
        (*_SUBJECT, text("status"), texts("codings"), texts("category_codings"),
         texts("conclusion_codings"), text("conclusion"), when("issued"),
         when("effective_datetime"), when("effective_period_start")),
        _SUBJECT_RAW),
    ResourceHandler(
        "Condition", "condition", 7,
        (*_SUBJECT, texts("codings"), texts("body_site_codings"), when("onset_datetime"),
         when("onset_period_start"), when("recorded_date"),
         texts("verification_status_codes")),
        _SUBJECT_RAW),
    ResourceHandler(
        "Encounter", "encounter", 8,
        (*_SUBJECT, text("status"), text("class_code"), texts("reason_codings"),
         texts("priority_codings"), when("period_start"), when("period_end")),
        _SUBJECT_RAW),
    ResourceHandler(
        "Observation", "observation", 9,
        (*_SUBJECT, text("status"), texts("codings"), when("effective_datetime"),
         when("effective_period_start"), when("effective_instant"), when("issued"),
         number("value_quantity"), number("value_integer"), texts("value_codings"),
         text("value_string"), text("value_comparator"),
         elements("value_coding_extensions", "Extension"),
         texts("data_absent_reason_codings"), elements("components", "BackboneElement")),
        # read only to name the value form in a warning (values.py)
        (*_SUBJECT_RAW, ViewColumn("value_boolean", frozenset({"boolean"})),
         number("value_range_low"), number("value_range_high"),
         number("value_ratio_numerator"), text("value_sampled_data"),
         ViewColumn("value_time", frozenset({"time"})), when("value_datetime"),
         when("value_period_start"))),
    # Patient-reported outcomes as questionnaire answers (issue 11, item 8); `items` are
    # the top-level items whole, read through mappings/questionnaires.yaml.
    ResourceHandler(
        "QuestionnaireResponse", "questionnaire_response", 10,
        (*_SUBJECT, text("status"), text("questionnaire"), when("authored"),
         elements("items", "BackboneElement")),
        _SUBJECT_RAW),
)

REGISTRY: Mapping[str, ResourceHandler] = {h.resource_type: h for h in HANDLERS}


def in_order(resource_types: Iterable[str]) -> list[ResourceHandler]:
    """The handlers of these types (types without one are skipped), in handling order."""
    return sorted((REGISTRY[t] for t in set(resource_types) if t in REGISTRY),
                  key=lambda h: h.order)


# ------------------------------------------------------------------ load-time checks

def check_view(file: Path | str, view: Mapping[str, Any]) -> CompiledView:
    """Compile a view and check it against its handler; `ConfigError` (exit 3) with one
    line naming the file and the column otherwise."""
    try:
        compiled = compile_view(view)
    except ViewDefinitionError as exc:
        raise ConfigError(f"{file}: {_one_line(exc.problem)}") from None
    rtype = compiled.resource_type
    handler = REGISTRY.get(rtype)
    if handler is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"{file}: no handler reads {rtype} resources, so this view "
                          f"would only be ignored (handled types: {known})")
    declared = {c.name: c for c in compiled.columns}
    for want in handler.columns():
        got = declared.get(want.name)
        if got is None:
            if want in handler.required:
                raise ConfigError(
                    f"{file}: column {want.name!r} is missing; the {rtype} handler reads "
                    f"it ({want.expects}); declare it, even with a path that finds nothing")
            continue
        if got.type is None:
            raise ConfigError(f"{file}: column {want.name!r} declares no type; the {rtype} "
                              f"handler reads it as {want.expects}")
        if got.type not in want.types or got.collection != want.collection:
            shown = f"{got.type}{', collection: true' if got.collection else ''}"
            raise ConfigError(f"{file}: column {want.name!r} is {shown}; the {rtype} "
                              f"handler reads it as {want.expects}")
    return compiled


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ run-time rows

def view_rows(handler: ResourceHandler, view: CompiledView, resource: Mapping[str, Any],
              file: Path | str = "") -> list[Row]:
    """The rows of `resource` its handler takes: all of them for a "many" handler; for a
    "one" handler the single row, or `ConfigError` when the view gave several (see the
    module docstring). May raise the view's own `ViewEvaluationError` on odd data."""
    rows = view.rows(resource)
    if handler.rows == "one" and len(rows) > 1:
        where = _iteration(view.definition.select) or "the view"
        raise ConfigError(
            f"{file or view.label}: {where} gave {len(rows)} rows for "
            f"{handler.resource_type}/{resource.get('id')}; the {handler.resource_type} "
            "handler takes one row per resource (make multi-valued columns "
            "`collection: true` instead of iterating)")
    return rows


def _iteration(selects: tuple[Select, ...], where: str = "") -> str | None:
    """Where a view can multiply rows: the first forEach, forEachOrNull, repeat or
    unionAll, as `select[0].forEach 'component'`."""
    for i, sel in enumerate(selects):
        here = f"{where}select[{i}]"
        for key, value in (("forEach", sel.for_each), ("forEachOrNull", sel.for_each_or_null),
                           ("repeat", ", ".join(sel.repeat) or None)):
            if value:
                return f"{here}.{key} {value!r}"
        if sel.union_all:
            return f"{here}.unionAll"
        inner = _iteration(sel.selects, f"{here}.")
        if inner:
            return inner
    return None
