"""Conditional references (`Patient?identifier=system|value`) resolved inside one Bundle.

A transaction Bundle may refer to a resource by a search instead of an id; the server
resolves the search when it processes the transaction and fails the transaction when
the search finds no match or several (FHIR R4 http.html, "Conditional References"). A
folder of files has no server, but the Bundle itself holds the resources it refers to,
so the file source runs the search over the Bundle's own entries: exactly one match is
rewritten to `Type/id`; anything else is reported, never guessed.

Only search parameters that can be evaluated exactly on one resource are supported:
`_id`, `identifier` (token: `system|value`, `|value`, `system|`, `value`), and a few
simple ones (`gender`, `birthdate`, `status`, `family`, `given`, `name`). A reference
using any other parameter or a modifier is reported as not evaluable here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]{1,63})\?(.+)$", re.DOTALL)

Outcome = Literal["resolved", "none", "several", "unsupported", "no-id"]


@dataclass(frozen=True)
class Resolution:
    """What a conditional reference resolved to within one Bundle."""

    outcome: Outcome
    target: str = ""      # `Type/id` when resolved
    detail: str = ""      # why not, for the issues row


def is_conditional(reference: Any) -> bool:
    return isinstance(reference, str) and CONDITIONAL.match(reference) is not None


def resolve(reference: str, candidates: Iterable[dict[str, Any]]) -> Resolution:
    """Run the search `reference` over `candidates` (the Bundle's entry resources, with
    the ids the file source gave them) the way a server would for one transaction."""
    match = CONDITIONAL.match(reference)
    if match is None:
        return Resolution("unsupported", detail="not a conditional reference")
    rtype, query = match.groups()
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for part in query.split("&"):
        name, sep, raw = part.partition("=")
        if not sep or not name:
            return Resolution("unsupported", detail=f"malformed search {part!r}")
        test = _parameter_test(name, [unquote(v) for v in raw.split(",")])
        if test is None:
            return Resolution("unsupported",
                              detail=f"search parameter {name!r} cannot be evaluated here")
        tests.append(test)
    found = [r for r in candidates
             if r.get("resourceType") == rtype and all(t(r) for t in tests)]
    if not found:
        return Resolution("none", detail=f"no {rtype} in the Bundle matches")
    if len(found) > 1:
        ids = ", ".join(str(r.get("id") or "?") for r in found[:5])
        return Resolution("several", detail=f"{len(found)} {rtype} entries match ({ids})")
    rid = found[0].get("id")
    if not isinstance(rid, str) or not rid:
        return Resolution("no-id", detail=f"the matching {rtype} has no id")
    return Resolution("resolved", target=f"{rtype}/{rid}")


def _parameter_test(name: str, values: list[str]) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for one `name=v1,v2` (values are ORed), or None when unsupported."""
    if name == "_id":
        return lambda r: r.get("id") in values
    if name == "identifier":
        return lambda r: any(_identifier_matches(i, v) for i in _list(r.get("identifier"))
                             for v in values)
    if name in _EXACT:
        element = _EXACT[name]
        return lambda r: isinstance(r.get(element), str) and r[element] in values
    if name in _NAME_PARTS:
        parts = _NAME_PARTS[name]
        wanted = [v.casefold() for v in values]
        return lambda r: any(text.casefold().startswith(w) for text in _name_texts(r, parts)
                             for w in wanted)
    return None


# Token/date parameters whose value equals one top-level primitive element.
_EXACT = {"gender": "gender", "birthdate": "birthDate", "status": "status"}
# String parameters on HumanName: case-insensitive "starts with", as FHIR string search.
_NAME_PARTS = {"family": ("family",), "given": ("given",),
               "name": ("family", "given", "text", "prefix", "suffix")}


def _identifier_matches(identifier: Any, token: str) -> bool:
    if not isinstance(identifier, dict):
        return False
    system, value = identifier.get("system"), identifier.get("value")
    if "|" not in token:
        return value == token
    want_system, want_value = token.split("|", 1)
    if want_system == "":  # `|value`: an identifier with no system
        return not system and value == want_value
    if want_value == "":  # `system|`: any identifier in that system
        return system == want_system
    return system == want_system and value == want_value


def _name_texts(resource: dict[str, Any], parts: tuple[str, ...]) -> Iterable[str]:
    for name in _list(resource.get("name")):
        if not isinstance(name, dict):
            continue
        for part in parts:
            for text in _list(name.get(part)):
                if isinstance(text, str):
                    yield text


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
