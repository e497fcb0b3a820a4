"""Running ViewDefinitions over FHIR resources.

:func:`compile_view` turns a validated :class:`ViewDefinition` into a
:class:`CompiledView` once; :meth:`CompiledView.rows` then projects one resource
at a time, so a pipeline can stream 100k resources without holding them.

Row production follows the spec's processing model: each selection structure
yields partial rows (its own columns, each nested ``select``, and the
concatenated ``unionAll`` branches) whose Cartesian product forms its rows;
``forEach``/``forEachOrNull``/``repeat`` run that once per focus.  Structures
with no iteration and no union always give exactly one partial row, so they are
flattened at compile time into a single column list - the common "one row per
resource" view then costs one dict per resource.

``%rowIndex`` is the 0-based position of the focus within the nearest enclosing
iteration (the flattened depth-first order for ``repeat``), and 0 at the root.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_spine.views.definition import Select, ViewDefinition, parse_view
from fhir_spine.views.errors import ViewError, ViewEvaluationError
from fhir_spine.views.fhirpath import CompiledPath, compile_path

__all__ = ["ColumnInfo", "CompiledView", "compile_view", "run_view"]

Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """An output column as declared: name, FHIR type (if given) and multiplicity."""

    name: str
    type: str | None
    collection: bool


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    path: CompiledPath
    collection: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """A compiled selection structure.

    ``columns`` already includes the columns of nested structures that were
    flattened into this one; ``selects`` only holds the ones that could not be.
    """

    columns: tuple[_Column, ...]
    selects: tuple[_Plan, ...]
    union: tuple[_Plan, ...]
    for_each: CompiledPath | None
    or_null: bool
    repeat: tuple[CompiledPath, ...]
    names: tuple[str, ...]

    @property
    def single_row(self) -> bool:
        """Always emits exactly one partial row (no iteration, no union, no sub-plans)."""
        return self.for_each is None and not self.repeat and not self.union and not self.selects


def _compile_select(select: Select) -> _Plan:
    columns = [_Column(c.name, compile_path(c.path), c.collection) for c in select.columns]
    nested: list[_Plan] = []
    for child in select.selects:
        plan = _compile_select(child)
        # A one-row child contributes columns to every row: merge it into ours, but
        # only while no row-multiplying sibling precedes it, to keep column order.
        if plan.single_row and not nested:
            columns.extend(plan.columns)
        else:
            nested.append(plan)
    iterate = select.for_each or select.for_each_or_null
    return _Plan(
        columns=tuple(columns),
        selects=tuple(nested),
        union=tuple(_compile_select(u) for u in select.union_all),
        for_each=compile_path(iterate) if iterate else None,
        or_null=select.for_each_or_null is not None,
        repeat=tuple(compile_path(p) for p in select.repeat),
        names=tuple(c.name for c in select.output_columns()),
    )


class CompiledView:
    """A ViewDefinition ready to run; reuse one instance across all resources.

    Attributes:
        definition: the validated view.
        resource_type: the FHIR resource type the view applies to.
        columns: output columns (name, declared type, collection flag) in order.
    """

    def __init__(self, definition: ViewDefinition, *, fast_path: bool = True) -> None:
        self.definition = definition
        self.fast_path = fast_path
        self.resource_type: str = definition.resource
        self.columns: tuple[ColumnInfo, ...] = tuple(
            ColumnInfo(c.name, c.type, c.collection) for c in definition.columns
        )
        self.column_names: tuple[str, ...] = tuple(c.name for c in self.columns)
        self.label = definition.label
        self._constants = {c.name: c.value for c in definition.constants}
        self._where = tuple(compile_path(p) for p in definition.where)
        self._root = _compile_select(Select(selects=definition.select))

    @property
    def name(self) -> str | None:
        """The view's ``name`` (its table name), if declared."""
        return self.definition.name

    def rows(self, resource: Mapping[str, Any]) -> list[Row]:
        """All rows the view produces for ``resource`` (none if it is another type).

        Raises :class:`ViewEvaluationError` when the data cannot be projected, e.g.
        a non-collection column meets several values or ``where`` is not boolean.
        """
        if not isinstance(resource, Mapping):
            raise ViewEvaluationError(
                self.label, f"expected a resource dict, got {type(resource).__name__}"
            )
        if resource.get("resourceType") != self.resource_type:
            return []
        env: dict[str, Any] = {
            **self._constants,
            "resource": resource,
            "rootResource": resource,
            "rowIndex": 0,
        }
        for where in self._where:
            if not self._accepts(where, resource, env):
                return []
        return self._process(self._root, resource, 0, env, resource)

    def run(self, resources: Iterable[Mapping[str, Any]]) -> Iterator[Row]:
        """Stream the rows of every resource in ``resources``."""
        for resource in resources:
            yield from self.rows(resource)

    # ------------------------------------------------------------------ internals

    def _error(self, problem: str, resource: Mapping[str, Any]) -> ViewEvaluationError:
        ident = f"{resource.get('resourceType')}/{resource.get('id', '?')}"
        return ViewEvaluationError(self.label, problem, ident)

    def _values(
        self, path: CompiledPath, focus: Any, env: dict[str, Any], resource: Mapping[str, Any]
    ) -> list[Any]:
        try:
            if self.fast_path:
                return path.values(focus, env)
            return path.interpreted_values(focus, env)
        except ViewError:
            raise
        except Exception as exc:
            raise self._error(f"path {path.expression!r} failed: {exc}", resource) from exc

    def _nodes(
        self, path: CompiledPath, focus: Any, env: dict[str, Any], resource: Mapping[str, Any]
    ) -> list[Any]:
        try:
            return path.nodes(focus, env)
        except ViewError:
            raise
        except Exception as exc:
            raise self._error(f"path {path.expression!r} failed: {exc}", resource) from exc

    def _accepts(
        self, where: CompiledPath, resource: Mapping[str, Any], env: dict[str, Any]
    ) -> bool:
        result = self._values(where, resource, env, resource)
        if not result:
            return False
        if len(result) == 1 and isinstance(result[0], bool):
            return result[0]
        raise self._error(
            f"where path {where.expression!r} must evaluate to a boolean, got {result!r}",
            resource,
        )

    def _process(
        self,
        plan: _Plan,
        focus: Any,
        row_index: int,
        env: dict[str, Any],
        resource: Mapping[str, Any],
    ) -> list[Row]:
        if plan.for_each is None and not plan.repeat:
            return self._emit(plan, focus, row_index, env, resource)
        env["rowIndex"] = row_index
        if plan.repeat:
            foci = self._descendants(plan.repeat, focus, env, resource)
        else:
            assert plan.for_each is not None  # neither forEach nor repeat returned above
            foci = self._nodes(plan.for_each, focus, env, resource)
        rows: list[Row] = []
        for index, item in enumerate(foci):
            rows.extend(self._emit(plan, item, index, env, resource))
        if not foci and plan.or_null:
            rows.append(self._null_row(plan, env, resource))
        return rows

    def _null_row(self, plan: _Plan, env: dict[str, Any], resource: Mapping[str, Any]) -> Row:
        """The ``forEachOrNull`` row for an empty collection.

        Every column is null, except that the structure's own columns that use
        ``%rowIndex`` are evaluated against the empty focus with ``%rowIndex`` 0
        (the conformance suite expects the index of the null row to be 0).
        """
        row: Row = dict.fromkeys(plan.names)
        env["rowIndex"] = 0
        for col in plan.columns:
            if "rowIndex" in col.path.variables:
                row[col.name] = self._cell(col, self._values(col.path, [], env, resource), resource)
        return row

    def _cell(self, col: _Column, values: list[Any], resource: Mapping[str, Any]) -> object:
        """A column's value: the list for collections, else the single value or null."""
        if col.collection:
            return values
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        raise self._too_many(col, values, resource)

    def _too_many(
        self, col: _Column, values: list[Any], resource: Mapping[str, Any]
    ) -> ViewEvaluationError:
        return self._error(
            f"column {col.name!r} (path {col.path.expression!r}) gave {len(values)} values "
            "but is not declared collection: true",
            resource,
        )

    def _descendants(
        self,
        paths: tuple[CompiledPath, ...],
        focus: Any,
        env: dict[str, Any],
        resource: Mapping[str, Any],
    ) -> list[Any]:
        """``repeat``: every node reachable through ``paths``, depth-first pre-order."""
        out: list[Any] = []
        stack: list[Iterator[Any]] = [iter(self._children(paths, focus, env, resource))]
        while stack:
            item = next(stack[-1], _DONE)
            if item is _DONE:
                stack.pop()
                continue
            out.append(item)
            stack.append(iter(self._children(paths, item, env, resource)))
        return out

    def _children(
        self,
        paths: tuple[CompiledPath, ...],
        focus: Any,
        env: dict[str, Any],
        resource: Mapping[str, Any],
    ) -> list[Any]:
        found: list[Any] = []
        for path in paths:
            found.extend(self._nodes(path, focus, env, resource))
        return found

    def _emit(
        self,
        plan: _Plan,
        focus: Any,
        row_index: int,
        env: dict[str, Any],
        resource: Mapping[str, Any],
    ) -> list[Row]:
        env["rowIndex"] = row_index
        row: Row = {}
        # Hot loop (columns x resources): evaluate inline rather than via _values.
        fast = self.fast_path
        col = None
        try:
            for col in plan.columns:
                path = col.path
                values = path.values(focus, env) if fast else path.interpreted_values(focus, env)
                if col.collection:
                    row[col.name] = values
                elif not values:
                    row[col.name] = None
                elif len(values) == 1:
                    row[col.name] = values[0]
                else:
                    raise self._too_many(col, values, resource)
        except ViewError:
            raise
        except Exception as exc:
            expression = col.path.expression if col is not None else "?"
            raise self._error(f"path {expression!r} failed: {exc}", resource) from exc
        if not plan.selects and not plan.union:
            return [row]
        parts: list[list[Row]] = [[row]]
        for child in plan.selects:
            sub = self._process(child, focus, row_index, env, resource)
            if not sub:
                return []
            parts.append(sub)
        if plan.union:
            merged: list[Row] = []
            for branch in plan.union:
                merged.extend(self._process(branch, focus, row_index, env, resource))
            if not merged:
                return []
            parts.append(merged)
        out: list[Row] = []
        for combo in itertools.product(*parts):
            full: Row = {}
            for part in combo:
                full.update(part)
            out.append(full)
        return out


_DONE = object()


def compile_view(
    view: Mapping[str, Any] | ViewDefinition | CompiledView, *, fast_path: bool = True
) -> CompiledView:
    """Validate (if needed) and compile a ViewDefinition given as JSON or dataclass.

    ``fast_path=False`` forces every path through fhirpathpy; it exists for
    benchmarking and for checking the fast path, not for production use.
    """
    if isinstance(view, CompiledView):
        if view.fast_path == fast_path:
            return view
        view = view.definition
    definition = view if isinstance(view, ViewDefinition) else parse_view(view)
    return CompiledView(definition, fast_path=fast_path)


def run_view(
    view: Mapping[str, Any] | ViewDefinition | CompiledView,
    resources: Iterable[Mapping[str, Any]],
) -> Iterator[Row]:
    """Stream the rows of ``view`` over ``resources`` (resources of other types are skipped).

    The view is validated and compiled before the first row is requested, so a
    broken view fails even when ``resources`` is empty.
    """
    return compile_view(view).run(resources)
