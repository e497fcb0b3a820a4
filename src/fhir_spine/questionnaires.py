"""Patient-reported outcomes recorded as QuestionnaireResponse (issue 11, item 8).

Many sites record pain and SOSGOQ2.0 as questionnaire answers, not Observations. Which
answer is which measure is site data, so it lives in `mappings/questionnaires.yaml`:

    questionnaires:
      <Questionnaire canonical>:      # `url`, `url|version` (that version only) or "*" (any)
        <item linkId>: <measure>      # a measure of concepts.yaml (element: observation)

A response's questionnaire matches an entry by its canonical without the `|version`
suffix, unless the entry itself names a version; "*" entries apply to every
questionnaire (after the specific ones). Items are searched at every depth (`item.item`,
`item.answer.item`); the first answer of a mapped item is read like an Observation value
(fhir_spine.values). The effective time is `QuestionnaireResponse.authored`.

A site's file with `extends: default` is merged over the default map (its entries win);
without it, it replaces the default map, as concepts.yaml does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_spine.errors import ConfigError

ANY = "*"


@dataclass(frozen=True)
class QuestionnaireMap:
    """(questionnaire canonical, linkId) -> measure."""

    items: dict[str, dict[str, str]] = field(default_factory=dict)

    def measures_for(self, canonical: str) -> dict[str, str]:
        """linkId -> measure for a response's questionnaire (specific entries win)."""
        url, _, _ = canonical.partition("|")
        found: dict[str, str] = {}
        for key in (canonical, url, ANY):
            for link_id, measure in self.items.get(key, {}).items():
                found.setdefault(link_id, measure)
        return found


def build_questionnaire_map(documents: Sequence[Mapping[str, Any]],
                            known_measures: set[str]) -> QuestionnaireMap:
    """Merge documents (earlier ones win) and check every measure is a known one."""
    items: dict[str, dict[str, str]] = {}
    for doc in documents:
        raw = doc.get("questionnaires") or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("questionnaires.yaml: `questionnaires` must be a mapping of "
                              "canonical -> {linkId: measure}")
        for canonical, links in raw.items():
            if not isinstance(links, Mapping):
                raise ConfigError(f"questionnaires.yaml: {canonical!r} must map linkId -> "
                                  "measure")
            target = items.setdefault(str(canonical), {})
            for link_id, measure in links.items():
                if str(measure) not in known_measures:
                    raise ConfigError(
                        f"questionnaires.yaml: {canonical} linkId {link_id!r} -> {measure!r} "
                        "is not a measure (an `observation` concept of concepts.yaml: "
                        f"{', '.join(sorted(known_measures))})")
                target.setdefault(str(link_id), str(measure))
    return QuestionnaireMap(items)


def answered_items(items: Any) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    """(linkId, answers) for every item at any depth, in document order."""
    for item in items or ():
        if not isinstance(item, Mapping):
            continue
        answers = [a for a in item.get("answer") or () if isinstance(a, Mapping)]
        if isinstance(item.get("linkId"), str):
            yield item["linkId"], answers
        yield from answered_items(item.get("item"))
        for answer in answers:
            yield from answered_items(answer.get("item"))
