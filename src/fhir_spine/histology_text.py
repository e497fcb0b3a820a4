"""Histology from a pathology report's narrative `conclusion` (issue 11, item 5).

Many systems send the pathology report as text only: US Core's pathology note
(category LOINC LP7839-6, code 11526-1) has a `conclusion` and a `presentedForm`, no
`conclusionCode`. This rule reads the `conclusion` when no `conclusionCode` maps. It is a
small NegEx-style term rule (Chapman et al., J Biomed Inform 2001;34:301-10), with every
list in `mappings/settings.yaml` so a site changes the words without code:

1. The text is split into clauses at `.`, `;`, line breaks and the words of
   `narrative_clause_breaks` ("but", "however", ...): a negation never crosses them.
2. In each clause every term of `narrative_histology` (concept -> terms, matched
   case-insensitively at the start of a word, so "metasta" matches "metastatic" and
   "metastases") is found. A term is
   - *uncertain* when the clause holds a `narrative_uncertain` phrase ("suspicious for");
   - *negated* when a `narrative_negations` phrase ("no evidence of", "negative for")
     ends at most `NEGATION_WINDOW` words before it, or a `narrative_post_negations`
     phrase ("not identified") follows it in the clause;
   - *affirmed* otherwise.
3. The conclusion is, in this order: the first concept (in file order) with an affirmed
   neoplastic term; `histology-insufficient` when an insufficient-sample term is
   affirmed; `histology-non-neoplastic` when a neoplastic term is negated ("negative for
   malignancy") or a non-neoplastic term is affirmed; otherwise unread (a warning row).

Limits, on purpose: a negation before a comma-separated list covers the whole list
("negative for carcinoma, lymphoma and myeloma"), so "no lymphoma, metastatic carcinoma"
reads as negated too; uncertain wording is never taken as a diagnosis. A coded
`conclusionCode` always wins over the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from fhir_spine.pathway.timeline import INSUFFICIENT, NON_NEOPLASTIC
from fhir_spine.pathway.timeline import NEOPLASTIC_FINDINGS as NEOPLASTIC

NEGATION_WINDOW = 5

# The defaults (repeated, with comments, in mappings/settings.yaml).
DEFAULT_FINDINGS: dict[str, tuple[str, ...]] = {
    "tumour-haematological": ("myeloma", "plasmacytoma", "plasma cell neoplasm", "lymphoma",
                              "leukaemia", "leukemia"),
    "tumour-primary-bone": ("chordoma", "chondrosarcoma", "osteosarcoma", "ewing sarcoma",
                            "giant cell tumour", "giant cell tumor", "sarcoma"),
    "secondary-malignancy": ("metasta", "carcinoma", "adenocarcinoma", "melanoma", "malignan",
                             "neoplas", "tumour", "tumor", "cancer"),
    "histology-insufficient": ("insufficient", "nondiagnostic", "non-diagnostic", "inadequate",
                               "inconclusive"),
    "histology-non-neoplastic": ("benign", "osteomyelitis", "reactive", "inflammat",
                                 "infection", "tubercul", "normal bone"),
}
DEFAULT_NEGATIONS = ("no evidence of", "no evidence for", "negative for", "no", "not", "non",
                     "without", "free of", "absence of", "ruled out")
DEFAULT_POST_NEGATIONS = ("not identified", "not seen", "not present", "not detected",
                          "is absent", "are absent", "ruled out", "excluded")
DEFAULT_UNCERTAIN = ("suspicious for", "suspicious of", "suggestive of", "possible",
                     "possibly", "probable", "cannot be excluded", "cannot exclude",
                     "not excluded", "atypical", "equivocal", "indeterminate")
DEFAULT_CLAUSE_BREAKS = ("but", "however", "although", "except")


@dataclass(frozen=True)
class TextRules:
    """The lists of `mappings/settings.yaml` (narrative_*), compiled once."""

    findings: tuple[tuple[str, tuple[str, ...]], ...]
    negations: tuple[str, ...]
    post_negations: tuple[str, ...]
    uncertain: tuple[str, ...]
    clause_breaks: tuple[str, ...]

    @classmethod
    def from_settings(cls, findings: Mapping[str, Iterable[str]], negations: Iterable[str],
                      post_negations: Iterable[str], uncertain: Iterable[str],
                      clause_breaks: Iterable[str]) -> TextRules:
        return cls(tuple((str(k), tuple(str(t) for t in v)) for k, v in findings.items()),
                   tuple(negations), tuple(post_negations), tuple(uncertain),
                   tuple(clause_breaks))


@dataclass(frozen=True)
class Reading:
    """What the rule made of one conclusion."""

    concept: str | None
    term: str = ""       # the term that decided it
    why_not: str = ""    # when unread: what was found (uncertain / nothing known)


def _phrases(words: Iterable[str]) -> str:
    return "|".join(re.escape(w.lower()).replace(r"\ ", r"\s+") for w in
                    sorted(words, key=len, reverse=True) if w.strip())


@lru_cache(maxsize=32)
def _compiled(rules: TextRules) -> tuple[re.Pattern[str], list[tuple[str, re.Pattern[str]]],
                                          re.Pattern[str] | None, re.Pattern[str] | None,
                                          re.Pattern[str] | None]:
    breaks = _phrases(rules.clause_breaks)
    splitter = re.compile(r"[.;\n\r]+" + (rf"|\b(?:{breaks})\b" if breaks else ""),
                          re.IGNORECASE)
    terms = [(concept, re.compile(rf"\b(?:{_phrases(words)})", re.IGNORECASE))
             for concept, words in rules.findings if _phrases(words)]
    neg = _phrases(rules.negations)
    negation = re.compile(rf"\b(?:{neg})\b(?:\W+\w+){{0,{NEGATION_WINDOW}}}\W*$",
                          re.IGNORECASE) if neg else None
    post = _phrases(rules.post_negations)
    post_negation = re.compile(rf"\b(?:{post})\b", re.IGNORECASE) if post else None
    unc = _phrases(rules.uncertain)
    uncertain = re.compile(rf"(?:^|\W)(?:{unc})(?:\W|$)", re.IGNORECASE) if unc else None
    return splitter, terms, negation, post_negation, uncertain


def read_conclusion(text: str, rules: TextRules) -> Reading:
    """The finding concept a narrative conclusion states (rules in the module docstring)."""
    splitter, terms, negation, post_negation, uncertain = _compiled(rules)
    affirmed: list[tuple[int, str, str]] = []   # (concept order, concept, term)
    negated_neoplastic: str = ""
    was_uncertain = ""
    for clause in splitter.split(text or ""):
        if not clause.strip():
            continue
        doubt = uncertain is not None and uncertain.search(clause) is not None
        for order, (concept, pattern) in enumerate(terms):
            for m in pattern.finditer(clause):
                # the whole word the term starts ("metasta" -> "metastatic")
                end = m.end() + len(re.match(r"\w*", clause[m.end():]).group(0))  # type: ignore[union-attr]
                term = clause[m.start():end].lower()
                if doubt:
                    was_uncertain = was_uncertain or term
                    continue
                before, after = clause[:m.start()], clause[end:]
                if (negation is not None and negation.search(before)) or (
                        post_negation is not None and post_negation.search(after)):
                    if concept in NEOPLASTIC and not negated_neoplastic:
                        negated_neoplastic = term
                    continue
                affirmed.append((order, concept, term))
    neoplastic = [a for a in affirmed if a[1] in NEOPLASTIC]
    if neoplastic:
        _, concept, term = min(neoplastic, key=lambda a: a[0])  # first concept; first term
        return Reading(concept, term)
    for _, concept, term in affirmed:
        if concept == INSUFFICIENT:
            return Reading(INSUFFICIENT, term)
    if negated_neoplastic:
        return Reading(NON_NEOPLASTIC, f"negated {negated_neoplastic}")
    for _, concept, term in affirmed:
        if concept == NON_NEOPLASTIC:
            return Reading(NON_NEOPLASTIC, term)
    if was_uncertain:
        return Reading(None, why_not=f"uncertain wording around {was_uncertain!r}")
    return Reading(None, why_not="no histology term of the text rule")
