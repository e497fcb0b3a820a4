"""The mapping review loop: suggestions for unmapped codes, and a draft site mapping.

* `suggest`: an unmapped code's display text against `mappings/lexicon.yaml` (drug names of
  the antineoplastic and endocrine therapy classes, "radiotherapy", "biopsy", "pedicle
  screw", ...) -> (concept, rule).
* `patients_affected` (computed by what_if.py, exactly): the screened patients whose
  classification (included, exclusion reasons, strategy) changes when the pathway is rerun
  with the code mapped as suggested.
* `issue_rows` / `warning_line`: what a run says about such codes (exit 0).
* `site_mappings`: a draft site `concepts.yaml` (`extends: default`) of the suggestions,
  each entry commented with its display, counts and rule (`fhir-spine codes OUT
  --write-site-mappings DIR`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from fhir_spine.lexicon import Lexicon, parse

LEXICON = Path(__file__).parent / "mappings" / "lexicon.yaml"
ISSUE_CODE = "unmapped-code-suggested"

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


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The package's lexicon.yaml (settings.load_mappings layers a site's over it)."""
    return parse(LEXICON, LEXICON.read_bytes())


def suggest(resource_type: str, element: str, display: str | None,
            lexicon: Lexicon | None = None) -> tuple[str, str] | None:
    """(concept, rule) for an unmapped code's display, or None."""
    group = group_of(resource_type, element)
    if group is None or not display:
        return None
    return (lexicon or default_lexicon()).suggest(group, display)


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


def _top(codes: Any) -> Any:
    mask = codes["suggested_concept"].notna() & (codes["patients_affected"] > 0)
    return codes[mask].sort_values(["patients_affected", "resources"], ascending=False,
                                   kind="stable")


def issue_rows(codes: Any) -> list[dict[str, Any]]:
    """One warning per unmapped code with a suggestion that would change a screened
    patient's classification."""
    rows = []
    for r in _top(codes).itertuples(index=False):
        rows.append({
            "severity": "warning", "patient_id": None, "resource_type": r.resource_type,
            "resource_id": None, "code": ISSUE_CODE,
            "message": (f"{r.system}|{r.code} {r.display!r} ({r.element}) is unmapped; "
                        f"suggested {r.suggested_concept} ({r.suggestion_rule}); "
                        f"mapped so, {r.patients_affected} patient(s) would be classified "
                        "differently"),
            "origin": None, "set_aside": False,
        })
    return rows


def warning_line(codes: Any, patients: Any, top: int = 3) -> str | None:
    """The closing warning of a run, or None when no suggestion would change a
    classification."""
    if codes is None or "suggested_concept" not in codes or not len(codes):
        return None
    rows = _top(codes)
    if not len(rows):
        return None
    excluded = excluded_reasons(patients)
    n = int(rows["patients_affected"].max())  # the union is not in the table: a floor
    shown = ", ".join(f"{r.code} {r.display!r} -> {r.suggested_concept}"
                      for r in rows.head(top).itertuples(index=False))
    return (f"{len(rows)} unmapped code(s) with a suggested concept "
            f"would change patients' classification (at least {n} patient(s); "
            f"{len(excluded)} excluded in all); top: {shown}; "
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
                     f"patient(s), {r.patients_affected} classification(s) it changes; "
                     f"{r.suggestion_rule}")
        code = yaml.safe_dump(str(r.code), default_style='"').strip()
        lines.append(f"      - {{system: {r.system}, code: {code}, confidence: L}}")
    return "\n".join(lines) + "\n"
