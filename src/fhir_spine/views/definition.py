"""Loading and validating SQL on FHIR v2 ViewDefinitions.

A ViewDefinition arrives as JSON written by people; mistakes in it should be
reported once, when the view is loaded, with a message naming the view and the
exact problem - not as a confusing failure half-way through 100k resources.  So
:func:`parse_view` checks everything that can be checked without data:

* structure and JSON types of every element (``forEach`` must be a string, ...),
* SQL-safe view and column names, unique column names across the whole view,
* ``unionAll`` branches producing the same column names in the same order,
* constants with exactly one well-typed ``value[x]``,
* every FHIRPath expression parses, and every ``%variable`` it uses is defined.

The result is a tree of frozen dataclasses that the runner compiles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from fhir_spine.views.errors import ViewDefinitionError
from fhir_spine.views.fhirpath import (
    BUILTIN_VARIABLES,
    CONSTANT_TYPES,
    FhirPathError,
    compile_path,
    constant_value,
    is_resource_type,
)

__all__ = [
    "Column",
    "Constant",
    "Select",
    "ViewDefinition",
    "load_view",
    "parse_view",
]

SQL_NAME: Final[re.Pattern[str]] = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
"""Names usable as table/column names in common databases (spec invariant ``sql-name``)."""

_SELECT_KEYS: Final[frozenset[str]] = frozenset(
    {"column", "select", "unionAll", "forEach", "forEachOrNull", "repeat", "id", "extension"}
)
_COLUMN_KEYS: Final[frozenset[str]] = frozenset(
    {"name", "path", "description", "collection", "type", "tag", "tags", "id", "extension"}
)
_WHERE_KEYS: Final[frozenset[str]] = frozenset({"path", "description", "id", "extension"})


@dataclass(frozen=True, slots=True)
class Constant:
    """A named value usable as ``%name`` in every path of the view."""

    name: str
    value_type: str
    raw: Any
    value: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class Column:
    """One output column: its name, FHIRPath, declared FHIR type and multiplicity."""

    name: str
    path: str
    type: str | None = None
    collection: bool = False
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """A selection structure; at most one of ``for_each``/``for_each_or_null``/``repeat``."""

    columns: tuple[Column, ...] = ()
    selects: tuple[Select, ...] = ()
    union_all: tuple[Select, ...] = ()
    for_each: str | None = None
    for_each_or_null: str | None = None
    repeat: tuple[str, ...] = ()

    def output_columns(self) -> tuple[Column, ...]:
        """Columns this structure emits, in output order (own, nested, then union)."""
        out = list(self.columns)
        for sel in self.selects:
            out.extend(sel.output_columns())
        if self.union_all:
            out.extend(self.union_all[0].output_columns())
        return tuple(out)


@dataclass(frozen=True, slots=True)
class ViewDefinition:
    """A validated ViewDefinition.  ``columns`` lists the output columns in order."""

    resource: str
    select: tuple[Select, ...]
    name: str | None = None
    status: str | None = None
    constants: tuple[Constant, ...] = ()
    where: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        """How error messages refer to this view."""
        return _label(self.source) if self.source else (self.name or f"<{self.resource} view>")


def _label(raw: Any) -> str:
    if isinstance(raw, Mapping):
        for key in ("name", "id", "title"):
            value = raw.get(key)
            if isinstance(value, str) and value:
                return value
        resource = raw.get("resource")
        if isinstance(resource, str) and resource:
            return f"<unnamed {resource} view>"
    return "<unnamed view>"


class _Parser:
    """Validates one raw ViewDefinition; ``fail`` raises with the view's label."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.label = _label(raw)
        self.variables: set[str] = set(BUILTIN_VARIABLES)

    def fail(self, problem: str) -> ViewDefinitionError:
        return ViewDefinitionError(self.label, problem)

    def path(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where} must be a non-empty FHIRPath string, got {value!r}")
        try:
            compiled = compile_path(value)
        except FhirPathError as exc:
            raise self.fail(f"{where} {value!r} is not valid FHIRPath ({exc})") from None
        unknown = sorted(compiled.variables - self.variables)
        if unknown:
            raise self.fail(f"{where} {value!r} uses undefined constant %{unknown[0]}")
        return value

    def view(self) -> ViewDefinition:
        raw = self.raw
        resource = raw.get("resource")
        if not isinstance(resource, str) or not resource:
            raise self.fail("'resource' (the FHIR resource type) is required")
        if not is_resource_type(resource):
            raise self.fail(f"'resource' {resource!r} is not a FHIR R4 resource type")
        name = raw.get("name")
        if name is not None and (not isinstance(name, str) or not SQL_NAME.match(name)):
            raise self.fail(f"name {name!r} must match {SQL_NAME.pattern}")
        status = raw.get("status")
        if status is not None and not isinstance(status, str):
            raise self.fail(f"status must be a string, got {status!r}")
        constants = self.constants(raw.get("constant"))
        select_raw = raw.get("select")
        if not isinstance(select_raw, list) or not select_raw:
            raise self.fail("'select' must be a non-empty list of selection structures")
        selects = tuple(self.select(item, f"select[{i}]") for i, item in enumerate(select_raw))
        where = self.where(raw.get("where"))
        root = Select(selects=selects)
        columns = self.check_columns(root, [], "")
        return ViewDefinition(
            resource=resource,
            select=selects,
            name=name,
            status=status,
            constants=constants,
            where=where,
            columns=tuple(columns),
            source=raw,
        )

    def constants(self, raw: Any) -> tuple[Constant, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail("'constant' must be a list")
        out = []
        for i, item in enumerate(raw):
            where = f"constant[{i}]"
            if not isinstance(item, Mapping):
                raise self.fail(f"{where} must be an object")
            name = item.get("name")
            if not isinstance(name, str) or not SQL_NAME.match(name):
                raise self.fail(f"{where} name {name!r} must match {SQL_NAME.pattern}")
            if name in self.variables:
                raise self.fail(f"{where} name {name!r} is already defined")
            values = [key for key in item if key.startswith("value")]
            if len(values) != 1:
                raise self.fail(f"constant {name!r} must have exactly one value[x], got {values}")
            key = values[0]
            value_type = key[5:6].lower() + key[6:]  # valueDateTime -> dateTime
            if value_type not in CONSTANT_TYPES:
                raise self.fail(f"constant {name!r} has unsupported type {key}")
            try:
                converted = constant_value(value_type, item[key])
            except ValueError as exc:
                raise self.fail(f"constant {name!r}: {exc}") from None
            self.variables.add(name)
            out.append(Constant(name, value_type, item[key], converted))
        return tuple(out)

    def where(self, raw: Any) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail("'where' must be a list of {path} objects")
        paths = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise self.fail(f"where[{i}] must be an object with a 'path'")
            extra = sorted(set(item) - _WHERE_KEYS)
            if extra:
                raise self.fail(f"where[{i}] has unknown element {extra[0]!r}")
            paths.append(self.path(item.get("path"), f"where[{i}].path"))
        return tuple(paths)

    def select(self, raw: Any, where: str) -> Select:
        if not isinstance(raw, Mapping):
            raise self.fail(f"{where} must be an object")
        extra = sorted(set(raw) - _SELECT_KEYS)
        if extra:
            raise self.fail(f"{where} has unknown element {extra[0]!r}")
        iterators = [key for key in ("forEach", "forEachOrNull", "repeat") if key in raw]
        if len(iterators) > 1:
            raise self.fail(f"{where} may use only one of {', '.join(iterators)}")
        for_each = for_each_or_null = None
        repeat: tuple[str, ...] = ()
        if "forEach" in raw:
            for_each = self.path(raw["forEach"], f"{where}.forEach")
        if "forEachOrNull" in raw:
            for_each_or_null = self.path(raw["forEachOrNull"], f"{where}.forEachOrNull")
        if "repeat" in raw:
            items = raw["repeat"]
            if not isinstance(items, list) or not items:
                raise self.fail(f"{where}.repeat must be a non-empty list of FHIRPath strings")
            repeat = tuple(self.path(p, f"{where}.repeat[{i}]") for i, p in enumerate(items))
        columns = tuple(
            self.column(c, f"{where}.column[{i}]")
            for i, c in enumerate(self.list_of(raw, "column", where))
        )
        selects = tuple(
            self.select(s, f"{where}.select[{i}]")
            for i, s in enumerate(self.list_of(raw, "select", where))
        )
        union = tuple(
            self.select(s, f"{where}.unionAll[{i}]")
            for i, s in enumerate(self.list_of(raw, "unionAll", where))
        )
        return Select(columns, selects, union, for_each, for_each_or_null, repeat)

    def list_of(self, raw: Mapping[str, Any], key: str, where: str) -> list[Any]:
        value = raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"{where}.{key} must be a list")
        return value

    def column(self, raw: Any, where: str) -> Column:
        if not isinstance(raw, Mapping):
            raise self.fail(f"{where} must be an object")
        extra = sorted(set(raw) - _COLUMN_KEYS)
        if extra:
            raise self.fail(f"{where} has unknown element {extra[0]!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not SQL_NAME.match(name):
            raise self.fail(f"{where} name {name!r} must match {SQL_NAME.pattern}")
        path = self.path(raw.get("path"), f"column {name!r} path")
        collection = raw.get("collection", False)
        if not isinstance(collection, bool):
            raise self.fail(f"column {name!r} collection must be true or false")
        type_ = raw.get("type")
        if type_ is not None and (not isinstance(type_, str) or not type_):
            raise self.fail(f"column {name!r} type must be a FHIR type name")
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            raise self.fail(f"column {name!r} description must be a string")
        return Column(name, path, type_, collection, description)

    def check_columns(self, sel: Select, seen: list[Column], where: str) -> list[Column]:
        """Spec "ValidateColumns": unique names, and union branches that agree."""
        out = list(seen)

        def add(col: Column) -> None:
            if any(prev.name == col.name for prev in out):
                raise self.fail(f"column name {col.name!r} is defined more than once")
            out.append(col)

        for col in sel.columns:
            add(col)
        prefix = f"{where}." if where else ""
        for i, child in enumerate(sel.selects):
            for col in self.check_columns(child, out, f"{prefix}select[{i}]")[len(out) :]:
                add(col)
        if sel.union_all:
            branches = [
                self.check_columns(branch, out, f"{prefix}unionAll[{i}]")[len(out) :]
                for i, branch in enumerate(sel.union_all)
            ]
            first = [c.name for c in branches[0]]
            for i, branch in enumerate(branches[1:], start=1):
                names = [c.name for c in branch]
                if names != first:
                    raise self.fail(
                        f"{where}.unionAll[{i}] columns {names} differ from unionAll[0] {first}"
                    )
            for col in branches[0]:
                add(col)
        return out


def parse_view(raw: Mapping[str, Any]) -> ViewDefinition:
    """Validate a ViewDefinition given as parsed JSON; raise :class:`ViewDefinitionError`."""
    if not isinstance(raw, Mapping):
        raise ViewDefinitionError(_label(raw), "a ViewDefinition must be a JSON object")
    return _Parser(raw).view()


def load_view(path: str | Path) -> ViewDefinition:
    """Read and validate a ViewDefinition JSON file."""
    file = Path(path)
    try:
        raw = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ViewDefinitionError(file.name, f"cannot read view file {file}: {exc}") from None
    return parse_view(raw)
