"""The mapping review loop: suggestions for unmapped codes, and a draft site mapping.

* `suggest`: an unmapped code's display text against `mappings/lexicon.yaml` (drug names of
  the antineoplastic and endocrine therapy classes, "radiotherapy", "biopsy", "pedicle
  screw", ...) -> (concept, rule).
* `affected`: the screened patients carrying the code who are excluded for a reason the
  suggested concept answers (`no-definitive-therapy` for a therapy concept,
  `no-index-biopsy` for a biopsy, ...): those whose classification would change if the code
  were mapped as suggested (an upper bound: the rules still check dates and statuses).
* `issue_rows` / `warning_line`: what a run says about such codes (exit 0).
* `site_mappings`: a draft site `concepts.yaml` (`extends: default`) of the suggestions,
  each entry commented with its display, counts and rule (`fhir-spine codes OUT
  --write-site-mappings DIR`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

LEXICON = Path(__file__).parent / "mappings" / "lexicon.yaml"
ISSUE_CODE = "unmapped-code-suggested"

_THERAPY = frozenset({"no-definitive-therapy"})
REMEDIES: dict[str, frozenset[str]] = {
    "vertebral-biopsy": frozenset({"no-index-biopsy"}),
    "stabilization": frozenset({"no-stabilization"}),
    "radiotherapy": _THERAPY,
    "systemic-therapy": _THERAPY,
    "systemic-therapy-procedure": _THERAPY,
    "oncologic-resection": _THERAPY,
    "separation-surgery": _THERAPY,
    "secondary-malignancy": frozenset({"histology-unconfirmed"}),
    "tumour-haematological": frozenset({"histology-unconfirmed"}),
    "tumour-primary-bone": frozenset({"histology-unconfirmed"}),
    "pathology-report": frozenset({"histology-unconfirmed"}),
    "vas": frozenset({"missing-outcome-measures"}),
}
_MEDICATION_TYPES = {"Medication", "MedicationRequest", "MedicationAdministration",
                     "MedicationStatement"}


def group_of(resource_type: str, element: str) -> str | None:
    """The concept map element whose concepts a code of this place may be suggested for."""
    if resource_type == "Procedure":
        return "procedure"
    if resource_type in _MEDICATION_TYPES:
        return "medication"
    if resource_type == "Condition" or "conclusion" in element:
        return "finding"
    if resource_type == "DiagnosticReport":
        return "report"
    if resource_type == "Observation" and "value" not in element.lower():
        return "observation"
    return None


@lru_cache(maxsize=4)
def _rules(path: str = str(LEXICON)) -> dict[str, list[tuple[str, str, re.Pattern[str]]]]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    out: dict[str, list[tuple[str, str, re.Pattern[str]]]] = {}
    for group, concepts in doc.items():
        for concept, terms in (concepts or {}).items():
            for term in terms:
                out.setdefault(str(group), []).append((str(concept), str(term), _term(term)))
    return out


def _term(term: object) -> re.Pattern[str]:
    """`word` at a word start; `a & b` both; `a & !b` a without b (a lookahead regex)."""
    parts = [p.strip().lower() for p in str(term).split("&")]
    ahead = "".join(
        ("(?!.*" if p.startswith("!") else "(?=.*") + r"(?<![a-z0-9])"
        + re.escape(p.lstrip("!").strip()) + ")" for p in parts)
    return re.compile("^" + ahead, re.DOTALL)


def suggest(resource_type: str, element: str, display: str | None) -> tuple[str, str] | None:
    """(concept, rule) for an unmapped code's display, or None."""
    group = group_of(resource_type, element)
    if group is None or not display:
        return None
    text = display.lower()
    for concept, term, pattern in _rules().get(group, []):
        if pattern.match(text):
            return concept, f"lexicon {group}: display contains {term!r}"
    return None


def excluded_reasons(patients: Any) -> dict[str, frozenset[str]]:
    """patient_id -> exclusion reasons of the excluded patients of a patients table."""
    out: dict[str, frozenset[str]] = {}
    if patients is None or not len(patients):
        return out
    for pid, included, reasons in zip(patients["patient_id"], patients["included"],
                                      patients["exclusion_reasons"], strict=True):
        if included is not True and isinstance(reasons, str) and reasons:
            out[str(pid)] = frozenset(reasons.split(";"))
    return out


def affected(concept: str, patient_ids: Iterable[str],
             excluded: Mapping[str, frozenset[str]]) -> int:
    remedies = REMEDIES.get(concept, frozenset())
    return sum(1 for p in set(patient_ids) if excluded.get(p, frozenset()) & remedies)


def _top(codes: Any) -> Any:
    mask = codes["suggested_concept"].notna() & (codes["patients_affected"] > 0)
    return codes[mask].sort_values(["patients_affected", "resources"], ascending=False,
                                   kind="stable")


def issue_rows(codes: Any) -> list[dict[str, Any]]:
    """One warning per unmapped code with a suggestion that would change an excluded
    patient's classification."""
    rows = []
    for r in _top(codes).itertuples(index=False):
        rows.append({
            "severity": "warning", "patient_id": None, "resource_type": r.resource_type,
            "resource_id": None, "code": ISSUE_CODE,
            "message": (f"{r.system}|{r.code} {r.display!r} ({r.element}) is unmapped; "
                        f"suggested {r.suggested_concept} ({r.suggestion_rule}); "
                        f"{r.patients_affected} excluded patient(s) carry it"),
            "origin": None, "set_aside": False,
        })
    return rows


def warning_line(codes: Any, patients: Any, top: int = 3) -> str | None:
    """The closing warning of a run, or None when no excluded patient has such a code."""
    if codes is None or "suggested_concept" not in codes or not len(codes):
        return None
    rows = _top(codes)
    if not len(rows):
        return None
    excluded = excluded_reasons(patients)
    n = int(rows["patients_affected"].max())  # the union is not in the table: a floor
    shown = ", ".join(f"{r.code} {r.display!r} -> {r.suggested_concept}"
                      for r in rows.head(top).itertuples(index=False))
    return (f"{len(rows)} unmapped code(s) with a suggested concept are carried by "
            f"excluded patients (at least {n} of {len(excluded)} excluded); top: {shown}; "
            "see codes.csv and `fhir-spine codes OUT --write-site-mappings DIR`")


def site_mappings(codes: Any) -> str:
    """A draft site concepts.yaml of every suggestion in a codes table."""
    rows = codes[codes["suggested_concept"].notna()].sort_values(
        ["suggested_concept", "patients_affected", "resources"],
        ascending=[True, False, False], kind="stable")
    lines = [
        "# Draft site mapping written by `fhir-spine codes --write-site-mappings`: one",
        "# suggestion per unmapped code of codes.csv. Review each entry, delete what is wrong,",
        "# then run with `--mappings` pointing at this folder.",
        "extends: default",
        "concepts:",
    ]
    current = None
    for r in rows.itertuples(index=False):
        if r.suggested_concept != current:
            current = r.suggested_concept
            element = group_of(r.resource_type, r.element)
            lines += [f"  {current}:", f"    element: {element}", "    codes:"]
        lines.append(f"      # {r.display!r}: {r.resources} resource(s), {r.patients} "
                     f"patient(s), {r.patients_affected} excluded patient(s) affected; "
                     f"{r.suggestion_rule}")
        code = yaml.safe_dump(str(r.code), default_style='"').strip()
        lines.append(f"      - {{system: {r.system}, code: {code}, confidence: L}}")
    return "\n".join(lines) + "\n"
