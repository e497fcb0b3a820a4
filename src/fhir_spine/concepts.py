"""Code system + code -> pathway concept, from `fhir_spine/mappings/concepts.yaml`.

Site-specific codes live in data, not here: an integration engineer extends the map
with `--mappings DIR` after reading the `codes` table of a first run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_spine.errors import ConfigError
from fhir_spine.issues import Issue

ELEMENTS = (
    "procedure", "observation", "value", "report", "finding", "medication",
    "reason", "priority", "body-site",
)
_RANGE = re.compile(r"^([A-Z])(\d\d)-([A-Z])(\d\d)$")


@dataclass(frozen=True)
class Coding:
    """One coding as the views flatten it: `system|code|display`."""

    system: str
    code: str
    display: str = ""

    @classmethod
    def parse(cls, flat: str) -> Coding:
        system, _, rest = flat.partition("|")
        code, _, display = rest.partition("|")
        return cls(system, code, display)


def parse_codings(values: Iterable[str] | None) -> tuple[Coding, ...]:
    if not values:
        return ()
    return tuple(c for c in (Coding.parse(v) for v in values if v) if c.code)


@dataclass(frozen=True)
class Match:
    concept: str
    coding: Coding
    value: float | None = None
    requires: str | None = None


@dataclass(frozen=True)
class _Entry:
    concept: str
    system: str
    code: str | None = None
    prefix: str | None = None
    low: str | None = None
    high: str | None = None
    value: float | None = None
    requires: str | None = None
    is_a: str | None = None  # SNOMED-style parent: offline the code itself only
    source: str = ""  # where a code came from when not from a concepts file ("terminology")

    def matches(self, coding: Coding) -> bool:
        if coding.system != self.system:
            return False
        if self.code is not None:
            return coding.code == self.code
        if self.prefix is not None:
            return coding.code.upper().startswith(self.prefix.upper())
        if self.is_a is not None:
            return coding.code == self.is_a
        category = coding.code.upper()[:3]
        return self.low is not None and self.high is not None and self.low <= category <= self.high


class CodeDecider(Protocol):
    """Decides one code against an `is-a` parent (terminology_codes.CodeDecider)."""

    def member(self, system: str, parent: str, code: str) -> bool: ...

    def take_issues(self) -> list[Issue]: ...


@dataclass
class ConceptMap:
    """All entries, grouped by element, in file order (first match wins).

    `decider` and the open `is-a` entries (`decide_by_server`): a coding no entry matches,
    of a system with an open entry in its element group, is asked of the terminology
    server (an incomplete expansion; terminology.py).
    """

    entries: dict[str, list[_Entry]] = field(default_factory=dict)
    meanings: dict[str, str] = field(default_factory=dict)
    element_of: dict[str, str] = field(default_factory=dict)
    system_aliases: dict[str, str] = field(default_factory=dict)
    _cache: dict[tuple[str, str, str], _Entry | None] = field(default_factory=dict, repr=False)
    _also_cache: dict[tuple[str, str, str], tuple[_Entry, ...]] = field(default_factory=dict,
                                                                        repr=False)
    decider: CodeDecider | None = field(default=None, repr=False)
    # (element, system) -> `is-a` entries whose expansion was incomplete, in file order
    _open: dict[tuple[str, str], list[_Entry]] = field(default_factory=dict, repr=False)

    def lookup(self, element: str, coding: Coding) -> Match | None:
        key = (element, coding.system, coding.code)
        if key not in self._cache:
            entry = next((e for e in self.entries.get(element, ()) if e.matches(coding)), None)
            if entry is None and self.decider is not None:
                entry = self._decided(element, coding)
            self._cache[key] = entry
        entry = self._cache[key]
        if entry is None:
            return None
        return Match(entry.concept, coding, entry.value, entry.requires)

    def first(self, element: str, codings: Iterable[Coding]) -> Match | None:
        """The best match among a resource's codings: earliest concept in file order."""
        best: tuple[int, Match] | None = None
        order = self._order(element)
        for coding in codings:
            match = self.lookup(element, coding)
            if match is not None:
                rank = order[match.concept]
                if best is None or rank < best[0]:
                    best = (rank, match)
        return best[1] if best else None

    def all(self, element: str, codings: Iterable[Coding]) -> list[Match]:
        return [m for c in codings if (m := self.lookup(element, c)) is not None]

    def also(self, element: str, coding: Coding) -> list[Match]:
        """Every further concept that lists this coding by exact code (not the first match).

        A code listed by exact `code` under several concepts of one element belongs to each
        of them: Synthea's SNOMED 703423002 "Combined chemotherapy and radiation therapy" is
        systemic therapy *and* radiotherapy (PATHWAY.md "Therapy modalities": every
        definitive modality counts). Prefix and range entries stay first-match-wins
        catch-alls, so an ICD-10 C79.51 is still only a secondary malignancy; so do codes a
        terminology server added to an `is-a` entry (`source == "terminology"`): SNOMED's
        secondary malignancies are all descendants of tumour-other's 363346000 too.
        """
        key = (element, coding.system, coding.code)
        if key not in self._also_cache:
            first = self.lookup(element, coding)
            seen = {first.concept} if first is not None else set()
            extra: list[_Entry] = []
            for e in self.entries.get(element, ()):
                if (e.code is not None and e.source != "terminology"
                        and e.concept not in seen and e.matches(coding)):
                    seen.add(e.concept)
                    extra.append(e)
            self._also_cache[key] = tuple(extra)
        return [Match(e.concept, coding, e.value, e.requires) for e in self._also_cache[key]]

    def matches(self, element: str, codings: Iterable[Coding]) -> list[Match]:
        """The concepts a resource maps to: the best match (`first`), and the further
        concepts that list the very coding that decided it by exact code (`also`).

        Other codings of the resource that map elsewhere do not add concepts: one resource
        is one record unless its code itself says it is several.
        """
        best = self.first(element, codings)
        if best is None:
            return []
        return [best, *self.also(element, best.coding)]

    def _order(self, element: str) -> dict[str, int]:
        order: dict[str, int] = {}
        for entry in self.entries.get(element, ()):
            order.setdefault(entry.concept, len(order))
        return order

    def system_url(self, alias: str) -> str:
        return self.system_aliases.get(alias, alias)

    def codes(self, element: str, concept: str | None = None) -> set[tuple[str, str]]:
        """Every exact (system, code) of an element (or of one concept of it), is-a parents
        and codes added from a terminology server included; prefixes and ranges are in
        `patterns`. A cheap pre-filter: a coding outside `codes` and `patterns` never maps."""
        return {(e.system, e.code if e.code is not None else str(e.is_a))
                for e in self.entries.get(element, ())
                if (e.code is not None or e.is_a is not None)
                and (concept is None or e.concept == concept)}

    def patterns(self, element: str) -> list[tuple[str, str, str]]:
        """(system, kind, value) of the prefix (`prefix`, `C7B`) and range (`range`,
        `C77-C79`) entries of an element."""
        out = []
        for e in self.entries.get(element, ()):
            if e.prefix is not None:
                out.append((e.system, "prefix", e.prefix))
            elif e.low is not None:
                out.append((e.system, "range", f"{e.low}-{e.high}"))
        return out

    def intensional(self) -> list[tuple[str, str, str]]:
        """(concept, system, parent code) of every `is-a` entry."""
        return [(e.concept, e.system, e.is_a) for entries in self.entries.values()
                for e in entries if e.is_a is not None]

    def decide_by_server(self, concept: str, system: str, parent: str) -> None:
        """Mark `concept`'s `is-a parent` entry open: codes of `system` that no entry of
        its element matches are asked of `decider` (its expansion was incomplete)."""
        element = self.element_of[concept]
        entry = next(e for e in self.entries[element]
                     if e.concept == concept and e.system == system and e.is_a == parent)
        self._open.setdefault((element, system), []).append(entry)
        self._cache.clear()
        self._also_cache.clear()

    def with_code(self, group: str, concept: str, system: str, code: str) -> ConceptMap:
        """A copy with `system|code` listed first under `concept` (in `group`), as a site
        mapping drafted by the review loop lists it (what_if.py). The terminology server's
        per-code answers come along (`decider`, the open `is-a` entries: the run's cache,
        no new request), or a code the run mapped through them would be unmapped in the
        copy and change a classification for another reason."""
        entries = {k: list(v) for k, v in self.entries.items()}
        entries[group] = [_Entry(concept=concept, system=system, code=code),
                          *entries.get(group, ())]
        element_of = dict(self.element_of)
        element_of.setdefault(concept, group)
        return ConceptMap(entries, dict(self.meanings), element_of, dict(self.system_aliases),
                          decider=self.decider, _open=self._open)

    def open_systems(self) -> frozenset[str]:
        """Systems with an open `is-a` entry and a decider: any code of theirs may map."""
        if self.decider is None:
            return frozenset()
        return frozenset(system for _, system in self._open)

    def _decided(self, element: str, coding: Coding) -> _Entry | None:
        """The first open `is-a` entry the server puts `coding` under, if any. Only for a
        coding no entry matches: a known code, or one of a system with no open entry,
        never costs a request."""
        assert self.decider is not None
        for entry in self._open.get((element, coding.system), ()):
            if self.decider.member(coding.system, str(entry.is_a), coding.code):
                return entry
        return None

    def add_descendants(self, concept: str, system: str, parent: str,
                        codes: Iterable[str]) -> int:
        """Codes a terminology server says are in `parent`'s hierarchy, added as exact
        entries right after the `is-a` entry (so they rank as it does). Returns how many
        were new to the concept."""
        element = self.element_of[concept]
        entries = self.entries[element]
        known = {e.code for e in entries if e.concept == concept and e.system == system}
        at = next(i for i, e in enumerate(entries)
                  if e.concept == concept and e.system == system and e.is_a == parent)
        base = entries[at]
        new = [_Entry(concept=concept, system=system, code=c, value=base.value,
                      requires=base.requires, source="terminology")
               for c in dict.fromkeys(codes) if c not in known and c != parent]
        entries[at + 1:at + 1] = new
        self._cache.clear()
        self._also_cache.clear()
        return len(new)


def build_concept_map(documents: Sequence[Mapping[str, Any]]) -> ConceptMap:
    """Merge concept documents; earlier documents take precedence (site over default)."""
    cmap = ConceptMap()
    for doc in documents:
        for alias, url in (doc.get("systems") or {}).items():
            cmap.system_aliases.setdefault(str(alias), str(url))
    for doc in documents:
        for name, spec in (doc.get("concepts") or {}).items():
            _add_concept(cmap, str(name), spec)
    return cmap


def _add_concept(cmap: ConceptMap, name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"concepts: {name!r} must be a mapping")
    element = spec.get("element")
    if element not in ELEMENTS:
        raise ConfigError(f"concepts: {name!r} has element {element!r}; expected one of "
                          f"{', '.join(ELEMENTS)}")
    if name in cmap.element_of and cmap.element_of[name] != element:
        raise ConfigError(f"concepts: {name!r} is defined for two elements")
    cmap.element_of[name] = element
    cmap.meanings.setdefault(name, str(spec.get("meaning", "")))
    for raw in spec.get("codes") or []:
        cmap.entries.setdefault(element, []).append(_entry(cmap, name, raw))


def _entry(cmap: ConceptMap, concept: str, raw: Any) -> _Entry:
    if not isinstance(raw, Mapping) or "system" not in raw:
        raise ConfigError(f"concepts: {concept!r} has a code entry without a system: {raw!r}")
    system = cmap.system_url(str(raw["system"]))
    value = raw.get("value")
    common: dict[str, Any] = {
        "concept": concept, "system": system,
        "value": float(value) if value is not None else None,
        "requires": raw.get("requires"),
    }
    if "code" in raw:
        return _Entry(code=str(raw["code"]), **common)
    if "prefix" in raw:
        return _Entry(prefix=str(raw["prefix"]), **common)
    if "is-a" in raw:
        return _Entry(is_a=str(raw["is-a"]), **common)
    if "range" in raw:
        m = _RANGE.match(str(raw["range"]).upper())
        if not m:
            raise ConfigError(f"concepts: {concept!r} range {raw['range']!r} is not like C81-C96")
        return _Entry(low=m.group(1) + m.group(2), high=m.group(3) + m.group(4), **common)
    raise ConfigError(f"concepts: {concept!r} entry needs code, prefix, range or is-a: {raw!r}")
