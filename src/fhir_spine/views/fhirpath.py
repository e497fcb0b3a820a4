"""FHIRPath evaluation for ViewDefinitions: a thin, strict, cached layer over fhirpathpy.

Why this module exists rather than calling ``fhirpathpy.evaluate`` directly:

* **Strict parsing.**  fhirpathpy's parser swallows syntax errors (``a..b`` or
  ``name.where(`` parse "successfully"), but the SQL on FHIR spec requires an invalid
  expression to reject the view.  :func:`parse_fhirpath` drives the same ANTLR
  grammar with a raising error listener and insists on consuming the whole input.
* **Compile once.**  :func:`compile_path` parses each expression once and caches the
  result, so a view run over 100k resources never re-parses.
* **SQL on FHIR functions.**  ``getResourceKey()``, ``getReferenceKey([type])``, a
  ``join()`` that returns ``''`` for an empty input (as the conformance suite
  expects) and a ``&`` that ignores ``_element`` extension-only shadows are supplied
  through fhirpathpy's user invocation table; no expression rewriting is needed.
* **Fast path.**  Nearly all view columns are member chains (``id``,
  ``subject.reference``, ``performed.ofType(Period).start``), optionally with
  ``first()``, a string-building ``select(system & '|' & code)`` or a final
  ``getReferenceKey()``; plus literals, ``{}``, ``$this`` and ``getResourceKey()``.
  These are evaluated by walking the dicts directly, several times faster than
  the interpreter.  The walker mirrors fhirpathpy's member navigation step by step:
  it tracks each node's FHIR model path, resolves choice elements (``value[x]``)
  the same way, includes ``_element`` shadows, re-types contained resources, and
  answers ``ofType`` with fhirpathpy's own type test.  Anything else goes to the
  interpreter.  The tests run both on the conformance suite and on edge-case
  resources and require identical results.

Values handed back to callers are plain JSON-like Python values: interpreter
``Decimal`` results become ``float`` (raw JSON numbers are passed through
untouched), FHIRPath date/time objects become their ISO strings.

Why it stays one long module (~800 lines): the fast path is only correct while it
mirrors this module's interpreter set-up, functions and value conversion step by step;
kept side by side, a change to one is seen next to the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations.constants import constants as fp_constants
from fhirpathpy.engine.nodes import FP_DateTime, FP_Time, FP_Type, ResourceNode, TypeInfo
from fhirpathpy.engine.util import arraify, get_data, process_user_invocation_table
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = [
    "BUILTIN_VARIABLES",
    "CompiledPath",
    "FhirPathError",
    "R4_MODEL",
    "compile_path",
    "constant_value",
    "is_resource_type",
    "parse_fhirpath",
    "reference_key",
    "referenced_variables",
    "to_plain",
]

R4_MODEL: Final[dict[str, Any]] = models["r4"]
"""fhirpathpy's R4 model; needed so ``value.ofType(string)`` finds ``valueString``."""

BUILTIN_VARIABLES: Final[frozenset[str]] = frozenset(
    {"rowIndex", "resource", "rootResource", "context", "ucum", "sct", "loinc"}
)
"""Environment variables a path may use without declaring a constant."""


class FhirPathError(ValueError):
    """A FHIRPath expression is syntactically invalid or uses an unknown variable."""


# --------------------------------------------------------------------------- parsing


class _RaisingErrorListener(ErrorListener):
    """ANTLR listener that turns the first syntax error into an exception."""

    def syntaxError(  # noqa: N802 - ANTLR callback name
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise FhirPathError(f"syntax error at column {column}: {msg}")


def _raise(exc: Exception) -> None:
    raise exc


def parse_fhirpath(expression: str) -> dict[str, Any]:
    """Parse ``expression`` into fhirpathpy's AST, raising :class:`FhirPathError` if invalid."""
    if not isinstance(expression, str) or not expression.strip():
        raise FhirPathError("expression must be a non-empty string")
    listener = _RaisingErrorListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.recover = _raise
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.buildParseTrees = True
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    ast = ASTPathListener()
    try:
        tree = parser.expression()
        if tokens.LA(1) != Token.EOF:
            raise FhirPathError(f"unexpected trailing input {tokens.LT(1).text!r}")
        ParseTreeWalker().walk(ast, tree)
    except FhirPathError:
        raise
    except Exception as exc:  # lexer errors surface as ANTLR exceptions
        raise FhirPathError(f"syntax error: {exc!r}") from exc
    root: dict[str, Any] = ast.parentStack[0]
    if not root.get("children"):
        raise FhirPathError("empty expression")
    return root


def referenced_variables(ast: Mapping[str, Any]) -> set[str]:
    """Names of all ``%variables`` used anywhere in a parsed expression."""
    found: set[str] = set()
    stack: list[Mapping[str, Any]] = [ast]
    while stack:
        node = stack.pop()
        if node.get("type") == "ExternalConstant":
            for child in node.get("children") or ():
                if child.get("type") == "Identifier":
                    found.add(str(child["text"]).strip("`\"'"))
        stack.extend(node.get("children") or ())
    return found


# ------------------------------------------------------------------- reference keys

_ID = r"[A-Za-z0-9\-.]{1,64}"
_TYPED_REF = re.compile(rf"(?:^|/)([A-Z][A-Za-z]{{1,63}})/({_ID})(?:/_history/{_ID})?$")
_UUID_REF = re.compile(
    r"^urn:uuid:([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
)


def _resource_types() -> frozenset[str]:
    parents: Mapping[str, str] = R4_MODEL["type2Parent"]
    found = set()
    for name in parents:
        current: str | None = name
        while current is not None:
            if current == "Resource":
                found.add(name)
                break
            current = parents.get(current)
    found.update({"Resource", "DomainResource"})
    return frozenset(found)


_RESOURCE_TYPES: Final[frozenset[str]] = _resource_types()


def is_resource_type(name: str) -> bool:
    """True for FHIR R4 resource type names (``Patient``, ``Bundle``, ...)."""
    return name in _RESOURCE_TYPES and name not in {"Resource", "DomainResource"}


def reference_key(
    reference: Mapping[str, Any] | str, resource_type: str | None = None
) -> str | None:
    """Key of the resource a FHIR ``Reference`` points to, or ``None``.

    The key equals ``getResourceKey()`` of the target, i.e. its logical id.
    Accepted forms of ``Reference.reference``: ``Patient/1``,
    ``Patient/1/_history/2`` (version dropped), absolute ``http(s)://host/fhir/Patient/1``
    (server base dropped) and ``urn:uuid:<uuid>`` (key is the uuid, as in
    transaction bundles whose resources use the uuid as id).  Contained (``#x``),
    conditional (``Patient?identifier=...``) and identifier-only references have
    no key.

    With ``resource_type`` set, a reference known to point at another type yields
    ``None``.  ``urn:uuid`` references carry no type; there ``Reference.type`` is
    used when present, otherwise the reference is accepted (it cannot be shown to
    be of the wrong type, and rejecting it would drop every bundle-local link).
    """
    if isinstance(reference, str):
        literal: Any = reference
        declared_type: Any = None
    elif isinstance(reference, Mapping):
        literal = reference.get("reference")
        declared_type = reference.get("type")
    else:
        return None
    if not isinstance(literal, str):
        return None
    literal = literal.strip()
    target_type: str | None
    typed = _TYPED_REF.search(literal)
    if typed is not None and (literal.startswith(("http://", "https://")) or typed.start() == 0):
        if "?" in literal or "#" in literal:
            return None
        target_type, key = typed.group(1), typed.group(2)
    else:
        uuid = _UUID_REF.match(literal)
        if uuid is None:
            return None
        key = uuid.group(1)
        target_type = declared_type if isinstance(declared_type, str) else None
    if resource_type is not None and target_type is not None and target_type != resource_type:
        return None
    return key


# ------------------------------------------------------------- SQL on FHIR functions


def _type_name(type_info: Any) -> str | None:
    """Resource type named by a ``getReferenceKey`` argument (``Patient`` or ``'Patient'``)."""
    if type_info is None or type_info == []:
        return None
    name = getattr(type_info, "name", type_info)
    return str(name).strip("'\"`").split(".")[-1] or None


def _get_resource_key(inputs: Sequence[Any]) -> list[str]:
    keys = []
    for item in inputs:
        if isinstance(item, Mapping) and "resourceType" in item:
            rid = item.get("id")
            if isinstance(rid, str) and rid:
                keys.append(rid)
    return keys


def _get_reference_key(inputs: Sequence[Any], type_info: Any = None) -> list[str]:
    wanted = _type_name(type_info)
    keys = []
    for item in inputs:
        key = reference_key(item, wanted)
        if key is not None:
            keys.append(key)
    return keys


def _join(inputs: Sequence[Any], separator: Any = "") -> str:
    """FHIRPath ``join``: an empty input gives ``''`` (fhirpathpy returns empty)."""
    sep = separator if isinstance(separator, str) else ""
    parts = []
    for item in inputs:
        if item is None or _is_extension_only(item):
            continue
        if not isinstance(item, str):
            raise TypeError("join() requires a collection of strings")
        parts.append(item)
    return sep.join(parts)


def _concat_operand(values: Sequence[Any]) -> str:
    """One side of ``&``: empty is ``''``; primitive-extension shadows are not values."""
    present = [v for v in values if v is not None and not _is_extension_only(v)]
    if not present:
        return ""
    if len(present) > 1:
        raise ValueError(f"'&' operand has {len(present)} values, expected one string")
    value = present[0]
    if not isinstance(value, str):
        raise TypeError(f"'&' operand must be a string, got {type(value).__name__}")
    return value


def _concat(left: Sequence[Any], right: Sequence[Any]) -> str:
    """FHIRPath ``&``.  Replaces fhirpathpy's, which counts ``_element`` shadows as values."""
    return _concat_operand(left) + _concat_operand([get_data(r) for r in right])


_USER_FUNCTIONS: Final[dict[str, dict[str, Any]]] = {
    "&": {"fn": _concat, "arity": {2: ["Any", "Any"]}},
    "getResourceKey": {"fn": _get_resource_key},
    "getReferenceKey": {"fn": _get_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
}
_INVOCATIONS: Final[dict[str, Any]] = process_user_invocation_table(_USER_FUNCTIONS)


# ------------------------------------------------------------------------ constants

_DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_DATETIME_RE = re.compile(
    r"^\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_TIME_RE = re.compile(r"^\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?$")
_STRING_TYPES = frozenset(
    {"base64Binary", "canonical", "code", "id", "markdown", "oid", "string", "uri", "url", "uuid"}
)
CONSTANT_TYPES: Final[frozenset[str]] = _STRING_TYPES | {
    "boolean",
    "date",
    "dateTime",
    "decimal",
    "instant",
    "integer",
    "integer64",
    "positiveInt",
    "time",
    "unsignedInt",
}


def constant_value(value_type: str, raw: Any) -> Any:
    """Convert a ViewDefinition ``constant.value[x]`` to the value fhirpathpy compares.

    Raises ``ValueError`` when the JSON value does not fit the declared type, so a
    constant like ``{"valueInteger": "3"}`` is rejected when the view is loaded.
    """
    if value_type in _STRING_TYPES:
        if isinstance(raw, str):
            return raw
    elif value_type == "boolean":
        if isinstance(raw, bool):
            return raw
    elif value_type in {"integer", "integer64", "positiveInt", "unsignedInt"}:
        if value_type == "integer64" and isinstance(raw, str) and re.fullmatch(r"-?\d+", raw):
            raw = int(raw)
        if isinstance(raw, int) and not isinstance(raw, bool):
            if value_type == "positiveInt" and raw < 1:
                raise ValueError(f"positiveInt must be >= 1, got {raw}")
            if value_type == "unsignedInt" and raw < 0:
                raise ValueError(f"unsignedInt must be >= 0, got {raw}")
            return raw
    elif value_type == "decimal":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return Decimal(str(raw))
    elif value_type == "date":
        if isinstance(raw, str) and _DATE_RE.match(raw):
            return FP_DateTime(raw)
    elif value_type in {"dateTime", "instant"}:
        if isinstance(raw, str) and _DATETIME_RE.match(raw):
            return FP_DateTime(raw)
    elif value_type == "time":
        if isinstance(raw, str) and _TIME_RE.match(raw):
            return FP_Time(raw)
    else:
        raise ValueError(f"unsupported constant type value{value_type[:1].upper()}{value_type[1:]}")
    raise ValueError(f"{raw!r} is not a valid {value_type}")


# ------------------------------------------------------------------- value helpers


def _is_extension_only(item: Any) -> bool:
    """fhirpathpy yields ``_element`` dicts holding only extensions; they are not values."""
    return isinstance(item, dict) and len(item) == 1 and "extension" in item


_JSON_TYPES: Final = frozenset({str, int, float, bool, dict, list})


def to_plain(item: Any) -> Any:
    """One interpreter result as a plain Python value (see the module docstring)."""
    if type(item) in _JSON_TYPES:
        return item
    if isinstance(item, ResourceNode):
        item = item.data
    if isinstance(item, Decimal):
        return float(item)
    if isinstance(item, FP_Type):
        return str(item)
    return item


def _clean(items: Iterable[Any]) -> list[Any]:
    out = []
    for item in items:
        data = item.data if isinstance(item, ResourceNode) else item
        if data is None or _is_extension_only(data):
            continue
        out.append(item)
    return out


# ------------------------------------------------------------------------ fast path
#
# The walker keeps, for every item, the FHIR model path fhirpathpy would give the
# node ("Observation.component", "CodeableConcept", ...).  It needs that for the
# same two reasons fhirpathpy does: to resolve choice elements (`performed` ->
# `performedDateTime`) and to answer `ofType()`.  Each step below mirrors the
# corresponding piece of fhirpathpy's member navigation; the tests compare both.

_PATHS_ELSEWHERE: Final[Mapping[str, str]] = R4_MODEL["pathsDefinedElsewhere"]
_CHOICE_PATHS: Final[Mapping[str, Sequence[str]]] = R4_MODEL["choiceTypePaths"]
_PATH_TO_TYPE: Final[Mapping[str, str]] = R4_MODEL["path2Type"]

_Item = tuple[Any, str | None]  # (JSON data, model path)
_Op = tuple[str, Any]


class _NotFast(Exception):
    """Raised while walking when only the interpreter can give the right answer."""


_Variant = tuple[str, str, str]  # (JSON key, its `_key` shadow, model type of the child)
_STEPS: dict[tuple[str | None, str], tuple[_Variant, ...]] = {}


def _step_variants(path: str | None, key: str) -> tuple[_Variant, ...]:
    """Where ``.key`` looks on a node typed ``path``: one variant, or one per choice type.

    Pure function of (path, key), so it is computed once and memoised; this is the
    model lookup fhirpathpy repeats for every node.
    """
    cached = _STEPS.get((path, key))
    if cached is not None:
        return cached
    child = f"{path}.{key}" if path else f"_.{key}"
    child = _PATHS_ELSEWHERE.get(child, child)
    choices = _CHOICE_PATHS.get(child)
    if choices:
        variants = tuple(
            (key + suffix, f"_{key}{suffix}", _PATH_TO_TYPE.get(child + suffix, child + suffix))
            for suffix in choices
        )
    else:
        typed = "Extension" if key == "extension" else child
        variants = ((key, "_" + key, _PATH_TO_TYPE.get(typed, typed)),)
    _STEPS[(path, key)] = variants
    return variants


def _member(items: list[_Item], key: str) -> list[_Item]:
    """One ``.key`` step, as fhirpathpy's member invocation performs it with a model."""
    out: list[_Item] = []
    for data, path in items:
        if not isinstance(data, dict):
            continue
        for field_name, shadow_name, child in _step_variants(path, key):
            value = data.get(field_name)
            shadow = data.get(shadow_name)
            if value is None and shadow is None:
                continue  # choice: try the next type (fhirpathpy takes the first present)
            for found in (value, shadow):
                if found is None:
                    continue
                if not isinstance(found, list):
                    found = (found,)
                for x in found:
                    # fhirpathpy re-types any dict carrying a resourceType (contained resources)
                    if isinstance(x, dict) and "resourceType" in x:
                        out.append((x, str(x["resourceType"])))
                    else:
                        out.append((x, child))
            break
    return out


_TYPE_MATCHES: dict[tuple[str, str, str | None], bool] = {}


def _of_type(items: list[_Item], wanted: TypeInfo) -> list[_Item]:
    """``ofType(wanted)``, answered by fhirpathpy's own type test and memoised per path."""
    kept: list[tuple[Any, str | None]] = []
    for data, path in items:
        if path is None:
            raise _NotFast  # fhirpathpy cannot type a path-less node either
        key = (path, wanted.name, wanted.namespace)
        matches = _TYPE_MATCHES.get(key)
        if matches is None:
            TypeInfo.model = R4_MODEL  # type: ignore[assignment]  # fhirpathpy declares it None
            # The node's type depends on its path only (never on its data) once the
            # model is set, so one answer per path holds for every node.
            matches = bool(ResourceNode({}, path).get_type_info().is_(wanted))
            _TYPE_MATCHES[key] = matches
        if matches:
            kept.append((data, path))
    return kept


def _walk(items: list[_Item], ops: Sequence[_Op]) -> list[_Item]:
    for op, arg in ops:
        if op == "member":
            items = _member(items, arg)
        elif op == "ofType":
            items = _of_type(items, arg)
        elif op == "first":
            items = items[:1]
        elif op == "concat":
            items = [(_concat_item(item, arg), "System.String") for item in items]
        else:  # pragma: no cover - plans are built from the ops above only
            raise AssertionError(op)
    return items


def _concat_item(item: _Item, operands: Sequence[tuple[str, Any]]) -> str:
    text = ""
    for kind, operand in operands:
        if kind == "literal":
            text += operand
        else:
            text += _concat_operand([data for data, _ in _walk([item], operand)])
    return text


def _start(focus: Any) -> _Item:
    if isinstance(focus, ResourceNode):
        return focus.data, focus.path
    if isinstance(focus, dict) and "resourceType" in focus:
        return focus, str(focus["resourceType"])
    return focus, None


@dataclass(frozen=True, slots=True)
class _FastPlan:
    """An expression the dict walker can evaluate.

    ``kind`` is ``"chain"`` (``ops`` from the focus, then an optional
    ``getReferenceKey``), ``"literal"``, ``"empty"`` (``{}``), ``"this"`` or
    ``"resource_key"``.
    """

    kind: str
    ops: tuple[_Op, ...] = ()
    reference_key: bool = False
    ref_type: str | None = None
    literal: str | None = None

    def run(self, focus: Any) -> list[Any]:
        """Raw result data (not yet cleaned); raises :class:`_NotFast` to defer."""
        if self.kind == "literal":
            return [self.literal]
        if self.kind == "empty":
            return []
        data, path = _start(focus)
        if self.kind == "this":
            return [data] if data is not None and data != [] else []
        if self.kind == "resource_key":
            return _get_resource_key([data])
        found = [data for data, _ in _walk([(data, path)], self.ops)]
        if self.reference_key:
            return _get_reference_key(found, self.ref_type)
        return found


def _single_child(node: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    children = node.get("children") or []
    if len(children) == 1 and children[0].get("type") == kind:
        child: Mapping[str, Any] = children[0]
        return child
    return None


def _step(node: Mapping[str, Any]) -> tuple[str, Any] | None:
    """Classify one invocation node as ("member", name), ("fn", (name, params)) or ("this", _)."""
    kind = node.get("type")
    if kind == "MemberInvocation":
        ident = _single_child(node, "Identifier")
        if ident is None:
            return None
        return "member", re.sub(r'(^"|"$)', "", str(ident["text"])).replace("`", "")
    if kind == "FunctionInvocation":
        functn = _single_child(node, "Functn")
        if functn is None:
            return None
        children = functn.get("children") or []
        name = str(children[0].get("text")) if children else ""
        params = (children[1].get("children") or []) if len(children) > 1 else []
        return "fn", (name, params)
    if kind == "ThisInvocation":
        return "this", None
    return None


def _chain(node: Mapping[str, Any]) -> list[tuple[str, Any]] | None:
    """Flatten ``a.b.fn()`` into steps; literals become ("literal", text)."""
    kind = node.get("type")
    if kind == "TermExpression":
        term = (node.get("children") or [None])[0]
        if term is None:
            return None
        if term.get("type") == "InvocationTerm":
            inner = (term.get("children") or [None])[0]
            step = _step(inner) if inner is not None else None
            return [step] if step is not None else None
        if term.get("type") == "LiteralTerm":
            if _single_child(term, "NullLiteral") is not None:
                return [("empty", None)]
            literal = _single_child(term, "StringLiteral")
            if literal is None:
                return None
            return [("literal", str(literal["text"]))]
        return None
    if kind == "InvocationExpression":
        children = node.get("children") or []
        if len(children) != 2:
            return None
        head = _chain(children[0])
        step = _step(children[1])
        if head is None or step is None:
            return None
        return [*head, step]
    return None


def _plain_literal(text: str) -> str | None:
    if len(text) >= 2 and text[0] == text[-1] == "'" and "\\" not in text[1:-1]:
        return text[1:-1]
    return None


def _type_specifier(param: Mapping[str, Any]) -> TypeInfo | None:
    text = param.get("text")
    if not isinstance(text, str):
        return None
    parts = text.replace("`", "").split(".")
    if len(parts) == 1:
        return TypeInfo(name=parts[0], namespace=None)
    if len(parts) == 2:
        return TypeInfo(name=parts[1], namespace=parts[0])
    return None


def _concat_operands(node: Mapping[str, Any]) -> list[tuple[str, Any]] | None:
    """Operands of ``a & 'x' & b.c`` as ("literal", str) / ("path", ops) pairs."""
    if node.get("type") == "AdditiveExpression" and node.get("terminalNodeText") == ["&"]:
        children = node.get("children") or []
        if len(children) != 2:
            return None
        left = _concat_operands(children[0])
        right = _concat_operands(children[1])
        return None if left is None or right is None else [*left, *right]
    steps = _chain(node)
    if steps is None:
        return None
    if len(steps) == 1 and steps[0][0] == "literal":
        text = _plain_literal(str(steps[0][1]))
        return None if text is None else [("literal", text)]
    ops = _ops(steps)
    return None if ops is None else [("path", tuple(ops))]


def _ops(steps: Sequence[tuple[str, Any]]) -> list[_Op] | None:
    """Walker operations for member/ofType/first/select(concat) steps, else ``None``."""
    ops: list[_Op] = []
    for kind, arg in steps:
        if kind == "member":
            key = str(arg)
            # Capitalised names filter by resourceType; `length` is special-cased in fhirpathpy.
            if not key or key[0] == key[0].upper() or key == "length":
                return None
            ops.append(("member", key))
        elif kind == "fn":
            name, params = arg
            if name == "first" and not params:
                ops.append(("first", None))
            elif name == "ofType" and len(params) == 1:
                wanted = _type_specifier(params[0])
                if wanted is None:
                    return None
                ops.append(("ofType", wanted))
            elif name == "select" and len(params) == 1:
                if params[0].get("terminalNodeText") != ["&"]:
                    return None  # only string-building selects: `select(a & '|' & b)`
                operands = _concat_operands(params[0])
                if operands is None:
                    return None
                ops.append(("concat", tuple(operands)))
            else:
                return None
        else:
            return None
    return ops


def _fast_plan(ast: Mapping[str, Any]) -> _FastPlan | None:
    """Recognise the expression shapes the dict walker supports; ``None`` otherwise."""
    root = (ast.get("children") or [None])[0]
    steps = _chain(root) if root is not None else None
    if not steps:
        return None
    first_kind, first_arg = steps[0]
    if len(steps) == 1:
        if first_kind == "literal":
            text = _plain_literal(str(first_arg))
            return None if text is None else _FastPlan("literal", literal=text)
        if first_kind == "this":
            return _FastPlan("this")
        if first_kind == "empty":
            return _FastPlan("empty")
        if first_kind == "fn" and first_arg == ("getResourceKey", []):
            return _FastPlan("resource_key")
    reference = False
    ref_type: str | None = None
    last_kind, last_arg = steps[-1]
    if last_kind == "fn" and last_arg[0] == "getReferenceKey" and len(last_arg[1]) <= 1:
        reference = True
        if last_arg[1]:
            wanted = _type_specifier(last_arg[1][0])
            if wanted is None:
                return None
            ref_type = _type_name(wanted)
        steps = steps[:-1]
    ops = _ops(steps)
    if not ops or ops[0][0] != "member":
        return None
    return _FastPlan("chain", tuple(ops), reference, ref_type)


# --------------------------------------------------------------------- compiled path


class CompiledPath:
    """One parsed FHIRPath expression, evaluable many times.

    ``values`` gives plain Python values (for columns and ``where``); ``nodes``
    keeps fhirpathpy's typed nodes so that a ``forEach`` focus still knows its
    FHIR type (required for ``value.ofType(string)`` inside the iteration).
    """

    __slots__ = ("expression", "variables", "_ast", "_root", "_plan")

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._ast = parse_fhirpath(expression)
        self._root = self._ast["children"][0]
        self.variables: frozenset[str] = frozenset(referenced_variables(self._ast))
        self._plan = None if self.variables else _fast_plan(self._ast)

    @property
    def has_fast_path(self) -> bool:
        """Whether the expression can be evaluated without the interpreter."""
        return self._plan is not None

    def _interpret(self, focus: Any, variables: Mapping[str, Any] | None) -> list[Any]:
        # Same set-up as fhirpathpy.apply_parsed_path, plus `$this` bound at the root
        # (view paths such as `$this` are evaluated on the focus) and the type model
        # pinned: fhirpathpy otherwise keeps it in a global only `is`/`as` set, which
        # would make `ofType` subtype-aware or not depending on earlier calls.
        fp_constants.reset()
        TypeInfo.model = R4_MODEL  # type: ignore[assignment]  # fhirpathpy declares it None
        root = arraify(focus)
        env = {"context": focus, "ucum": "http://unitsofmeasure.org"}
        if variables:
            env.update(variables)
        ctx = {
            "dataRoot": root,
            "$this": root,
            "vars": env,
            "model": R4_MODEL,
            "userInvocationTable": _INVOCATIONS,
        }
        result = do_eval(ctx, root, self._root)
        return _clean(result if isinstance(result, list) else [result])

    def _fast(self, focus: Any) -> list[Any] | None:
        """Plain values via the walker, or ``None`` if the interpreter must answer."""
        if self._plan is None:
            return None
        try:
            raw = self._plan.run(focus)
        except _NotFast:
            return None
        return [to_plain(v) for v in raw if v is not None and not _is_extension_only(v)]

    def nodes(self, focus: Any, variables: Mapping[str, Any] | None = None) -> list[Any]:
        """Result collection with type information kept (for iteration foci)."""
        return self._interpret(focus, variables)

    def values(self, focus: Any, variables: Mapping[str, Any] | None = None) -> list[Any]:
        """Result collection as plain values, via the fast path when it is safe."""
        plan = self._plan
        if plan is not None:
            try:
                raw = plan.run(focus)
            except _NotFast:
                pass
            else:
                return [to_plain(v) for v in raw if v is not None and not _is_extension_only(v)]
        return [to_plain(item) for item in self._interpret(focus, variables)]

    def interpreted_values(
        self, focus: Any, variables: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """``values`` forced through fhirpathpy (used to check the fast path)."""
        return [to_plain(item) for item in self._interpret(focus, variables)]

    def fast_values(self, focus: Any) -> list[Any] | None:
        """``values`` through the fast path only; ``None`` if it does not apply here."""
        return self._fast(focus)

    def __repr__(self) -> str:
        return f"CompiledPath({self.expression!r}, fast={self._plan is not None})"


@lru_cache(maxsize=4096)
def compile_path(expression: str) -> CompiledPath:
    """Parse ``expression`` once; later calls with the same text reuse the result."""
    return CompiledPath(expression)
