"""`patients_affected`, exactly: rerun the pathway as if a suggested code were mapped.

Issue 12 item 4 asks, per unmapped code with a suggested concept, for "the screened patients
whose classification would change if that code were mapped as suggested". The pathway is a
pure function of one patient's records, so this is computed, not estimated: for each
distinct (code, suggested concept), the view rows of the patients who carry the code (and
every Medication row, which orders refer to) are normalised again with a concept map in
which that code is listed first under the suggested concept (as the draft site mapping of
`fhir-spine codes --write-site-mappings` lists it: site entries before the defaults), and
each of those patients' classification (included, exclusion reasons, strategy) is compared
with the run's own.

Cheap: only the carriers of a suggested code are recomputed, and distinct suggestions are
few. Deterministic: it runs once per computation on rows in resource-id order (after the
`--jobs` workers are merged), and since each patient is recomputed alone, the patients
found in several computations (a refresh's per-patient parts) unite to the same set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fhir_spine import review
from fhir_spine.normalise import CodeCount, normalise
from fhir_spine.pathway.classify import reconstruct
from fhir_spine.pathway.model import PatientResult
from fhir_spine.settings import Mappings

Row = dict[str, Any]
Classification = tuple[bool, tuple[str, ...], str | None]


def classification(result: PatientResult) -> Classification:
    """What "classification" means here: included, the exclusion reasons, the strategy."""
    return result.included, tuple(sorted(result.exclusion_reasons)), result.strategy


def annotate(codes: Iterable[CodeCount], rows: Mapping[str, list[Row]],
             results: Iterable[PatientResult], mappings: Mappings) -> tuple[CodeCount, ...]:
    """The code counts with `hints` (display -> (concept, rule), unmapped codes only) and
    `changed` (suggested concept -> ids of the patients whose classification changes)."""
    baseline = {r.patient_id: classification(r) for r in results}
    out: list[CodeCount] = []
    by_patient: dict[str, dict[str, list[Row]]] | None = None
    for count in codes:
        if count.concept is not None:
            out.append(count)
            continue
        rtype, element, _, _ = count.key
        hints = {display: hint for display in count.displays
                 if (hint := review.suggest(rtype, element, display, mappings.lexicon))}
        if not hints:
            out.append(count)
            continue
        changed: dict[str, frozenset[str]] = {}
        carriers = sorted(count.patients & baseline.keys())
        for concept in sorted({concept for concept, _ in hints.values()}):
            if not carriers:
                changed[concept] = frozenset()
                continue
            if by_patient is None:
                by_patient = _rows_by_patient(rows)
            changed[concept] = _changed(count.key, concept, carriers, by_patient, rows,
                                        baseline, mappings)
        out.append(replace(count, hints=hints, changed=changed))
    return tuple(out)


def _rows_by_patient(rows: Mapping[str, list[Row]]) -> dict[str, dict[str, list[Row]]]:
    """patient id -> resource type -> that patient's rows, in the run's order."""
    out: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for rtype, typed in rows.items():
        for row in typed:
            pid = row.get("id") if rtype == "Patient" else row.get("patient_ref")
            if pid:
                out[str(pid)][rtype].append(row)
    return out


def _changed(key: tuple[str, str, str, str], concept: str, carriers: list[str],
             by_patient: Mapping[str, Mapping[str, list[Row]]],
             rows: Mapping[str, list[Row]], baseline: Mapping[str, Classification],
             mappings: Mappings) -> frozenset[str]:
    rtype, element, system, code = key
    group = review.group_of(rtype, element)
    if group is None:
        return frozenset()
    cmap = mappings.concepts.with_code(group, concept, system, code)
    sub: dict[str, list[Row]] = defaultdict(list)
    sub["Medication"] = list(rows.get("Medication", ()))  # orders refer to them by id
    for pid in carriers:
        for typed, patient_rows in by_patient.get(pid, {}).items():
            sub[typed].extend(patient_rows)
    normalised = normalise(dict(sub), cmap, mappings.settings, mappings.questionnaires)
    return frozenset(
        pid for pid in carriers
        if pid in normalised.inputs
        and classification(reconstruct(normalised.inputs[pid], mappings.settings))
        != baseline[pid])
