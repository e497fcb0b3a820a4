"""Can a resource matter to the pathway? Decided cheaply, on the parsed dict, before any
model validation (issue 16: validation where it pays).

A resource whose type relevance is decided by its codes (Procedure, Condition,
Observation, DiagnosticReport) can matter only when one of its codings is in the concept
expansions (any element group of `concepts.yaml`, exact code, prefix or range), or a
declared profile is. Every other type the pathway reads (Patient, Encounter, the
medication types, QuestionnaireResponse) can always matter. The test is deliberately
generous: a false "can matter" costs one validation; a false "cannot" only skips the
validation warning of a resource the handlers then set aside as unmapped anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fhir_spine.concepts import Coding, ConceptMap

CODED_TYPES = frozenset({"Procedure", "Condition", "Observation", "DiagnosticReport"})
_CODED_ELEMENTS = ("code", "category", "bodySite", "conclusionCode", "valueCodeableConcept")
PROFILE_SYSTEM = "urn:fhir-spine:meta.profile"


class Prefilter:
    def __init__(self, concepts: ConceptMap) -> None:
        self.exact: set[tuple[str, str]] = set()
        self.patterns: dict[str, list[Any]] = {}
        for entries in concepts.entries.values():
            for e in entries:
                if e.code is not None:
                    self.exact.add((e.system, e.code))
                else:
                    self.patterns.setdefault(e.system, []).append(e)
        self._seen: dict[tuple[str, str], bool] = {}

    def known(self, system: str, code: str) -> bool:
        key = (system, code)
        hit = self._seen.get(key)
        if hit is None:
            hit = key in self.exact or any(
                e.matches(Coding(system, code)) for e in self.patterns.get(system, ()))
            self._seen[key] = hit
        return hit

    def may_matter(self, resource: dict[str, Any]) -> bool:
        if resource.get("resourceType") not in CODED_TYPES:
            return True
        for system, code in _codings(resource):
            if self.known(system, code):
                return True
        meta = resource.get("meta")
        if isinstance(meta, dict):
            for url in _list(meta.get("profile")):
                if isinstance(url, str) and self.known(PROFILE_SYSTEM, url):
                    return True
        return False


def _codings(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for name in _CODED_ELEMENTS:
        yield from _of(resource.get(name))
    for component in _list(resource.get("component")):
        if isinstance(component, dict):
            yield from _of(component.get("code"))
            yield from _of(component.get("valueCodeableConcept"))


def _of(value: Any) -> Iterator[tuple[str, str]]:
    for concept in value if isinstance(value, list) else (value,):
        if not isinstance(concept, dict):
            continue
        for coding in _list(concept.get("coding")):
            if isinstance(coding, dict):
                yield str(coding.get("system") or ""), str(coding.get("code") or "")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
