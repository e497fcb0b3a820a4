"""Can a resource matter to the pathway? Decided cheaply, on the parsed dict, before any
model validation (issue 16: validation where it pays).

A resource whose type relevance is decided by its codes (Procedure, Condition,
Observation, DiagnosticReport) can matter only when one of its codings is in the concept
expansions (any element group of `concepts.yaml`, exact code, prefix or range), or a
declared profile is. Every other type the pathway reads (Patient, Encounter, the
medication types, QuestionnaireResponse) can always matter. The test is deliberately
generous: a false "can matter" costs one validation; a false "cannot" only skips the
validation warning of a resource the handlers then set aside as unmapped anyway.

A resource that cannot matter is not flattened by its whole view either: `accounting_view`
keeps only the columns that account for it (its id, its patient, its codes: what the
`codes` table counts and the quiet `unmapped-code` disposition needs), so the handlers
still see it, count its codes and set it aside exactly as before, at a fraction of the
cost (issue 16: on the Synthea corpus most resources are such). Only for the project's
own views: a site view may read its codes from elsewhere (an extension, say), which the
element list below does not look at, so a site view always flattens whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fhir_spine import review
from fhir_spine.concepts import Coding, ConceptMap
from fhir_spine.lexicon import Lexicon

CODED_TYPES = frozenset({"Procedure", "Condition", "Observation", "DiagnosticReport"})
_CODED_ELEMENTS = ("code", "category", "bodySite", "conclusionCode", "valueCodeableConcept")
# the elements whose displays the review loop suggests concepts for (review.group_of)
_DISPLAY_ELEMENTS = frozenset({"code", "category", "conclusionCode", "component.code"})
PROFILE_SYSTEM = "urn:fhir-spine:meta.profile"
# The columns a handler reads before it sets a resource aside as `unmapped-code`
# (normalise.py: patient, codes counted per element, the profile lookup of Procedure).
ACCOUNTING_COLUMNS = frozenset({
    "id", "resource_type", "patient_ref", "patient_reference", "codings",
    "category_codings", "body_site_codings", "conclusion_codings", "components", "profiles"})


def accounting_view(view: Mapping[str, Any]) -> dict[str, Any] | None:
    """`view` (a ViewDefinition as JSON) reduced to its `ACCOUNTING_COLUMNS`, or None when
    it is not one flat `select` of columns (no forEach, unionAll or nesting): only such a
    view keeps one row per resource when columns are dropped."""
    selects = view.get("select")
    if not isinstance(selects, list) or len(selects) != 1 or set(selects[0]) != {"column"}:
        return None
    if view.get("where"):
        return None
    columns = [c for c in selects[0]["column"] if c.get("name") in ACCOUNTING_COLUMNS]
    return {**view, "select": [{"column": columns}]}


class Prefilter:
    """`may_matter(resource)`; `lexicon`: a resource whose unmapped code has a display the
    review loop's lexicon suggests a concept for can matter too (what_if.py reruns the
    pathway with that code mapped, and needs the resource's whole row: its dates)."""

    def __init__(self, concepts: ConceptMap, lexicon: Lexicon | None = None) -> None:
        self.lexicon = lexicon
        self._suggested: dict[tuple[str, str], bool] = {}
        self.exact: set[tuple[str, str]] = set()
        self.patterns: dict[str, list[Any]] = {}
        for entries in concepts.entries.values():
            for e in entries:
                if e.code is not None:
                    self.exact.add((e.system, e.code))
                else:
                    self.patterns.setdefault(e.system, []).append(e)
        # A terminology server decides the codes of these systems one by one
        # (terminology_codes.py): any of them may map, so none is rejected here.
        self.open_systems = concepts.open_systems()
        self._seen: dict[tuple[str, str], bool] = {}

    def known(self, system: str, code: str) -> bool:
        key = (system, code)
        hit = self._seen.get(key)
        if hit is None:
            hit = key in self.exact or system in self.open_systems or any(
                e.matches(Coding(system, code)) for e in self.patterns.get(system, ()))
            self._seen[key] = hit
        return hit

    def may_matter(self, resource: dict[str, Any]) -> bool:
        rtype = resource.get("resourceType")
        if rtype not in CODED_TYPES:
            return True
        displays: list[tuple[str, str]] = []  # (element, display), for the lexicon
        for element, coding in _codings(resource):
            if self.known(str(coding.get("system") or ""), str(coding.get("code") or "")):
                return True
            display = coding.get("display")
            if element in _DISPLAY_ELEMENTS and isinstance(display, str):
                displays.append((element, display))
        meta = resource.get("meta")
        if isinstance(meta, dict):
            for url in _list(meta.get("profile")):
                if isinstance(url, str) and self.known(PROFILE_SYSTEM, url):
                    return True
        return self.lexicon is not None and any(
            self._suggests(str(rtype), element, display) for element, display in displays)

    def _suggests(self, rtype: str, element: str, display: str) -> bool:
        assert self.lexicon is not None
        group = review.group_of(rtype, f"{rtype}.{element}")
        if group is None:
            return False
        key = (group, display)
        hit = self._suggested.get(key)
        if hit is None:
            hit = self.lexicon.suggest(group, display) is not None
            self._suggested[key] = hit
        return hit


def _codings(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(element, coding) of every coding the concept groups look up, in one walk."""
    for name in _CODED_ELEMENTS:
        for coding in _of(resource.get(name)):
            yield name, coding
    for component in _list(resource.get("component")):
        if isinstance(component, dict):
            for coding in _of(component.get("code")):
                yield "component.code", coding
            for coding in _of(component.get("valueCodeableConcept")):
                yield "component.valueCodeableConcept", coding


def _of(value: Any) -> Iterator[dict[str, Any]]:
    """The coding dicts of a CodeableConcept or a list of them."""
    for concept in value if isinstance(value, list) else (value,):
        if isinstance(concept, dict):
            for coding in _list(concept.get("coding")):
                if isinstance(coding, dict):
                    yield coding


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
