"""The extraction run: source items -> view rows -> records -> pathway -> result.

Raw resources are flattened as soon as they are read, so only the (small) rows are kept
in memory, never the whole raw export. Every item read is accounted for: it is used, or
it is set aside with a reason in `events` or `issues` (`Accounting`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fhir_spine.contained import contained_rows
from fhir_spine.issues import Issue
from fhir_spine.normalise import Normaliser
from fhir_spine.pathway.classify import reconstruct
from fhir_spine.pathway.model import PatientInput, PatientResult
from fhir_spine.settings import Mappings
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem
from fhir_spine.validate import Mode, validation_problem
from fhir_spine.views.runner import compile_view

log = logging.getLogger(__name__)

# Order matters: patients and medications first, so references to them resolve.
NORMALISE_ORDER = (
    "Patient", "Medication", "Procedure", "MedicationRequest", "MedicationAdministration",
    "MedicationStatement", "DiagnosticReport", "Condition", "Encounter", "Observation",
)


@dataclass
class Accounting:
    read: int = 0
    used: int = 0
    set_aside: int = 0
    unaccounted: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return self.read == self.used + self.set_aside and not self.unaccounted


@dataclass
class Extraction:
    results: list[PatientResult]
    inputs: dict[str, PatientInput]
    normaliser: Normaliser
    read_by_type: Counter[str]
    accounting: Accounting

    @property
    def issues(self) -> list[Issue]:
        return self.normaliser.issues


def extract(
    items: Iterable[SourceItem], mappings: Mappings, *, validation: Mode = "warn",
    progress: Callable[[int], None] | None = None,
) -> Extraction:
    views = {rtype: compile_view(view) for rtype, view in mappings.views.items()}
    norm = Normaliser(mappings.concepts, mappings.settings)
    rows: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in views}
    read_by_type: Counter[str] = Counter()
    accounting = Accounting()

    for item in items:
        accounting.read += 1
        if progress is not None:
            progress(1)
        if isinstance(item, ReadProblem):
            norm.issues.append(Issue("error", item.code, item.message, "", item.resource_type,
                                     item.resource_id, item.origin, sets_aside=True))
            accounting.set_aside += 1
            continue
        _read_resource(item, views, rows, norm, read_by_type, accounting, validation)

    for rtype in NORMALISE_ORDER + tuple(sorted(set(rows) - set(NORMALISE_ORDER))):
        handler = _handler(norm, rtype)
        for row in rows.get(rtype, {}).values():
            handler(row)

    inputs: dict[str, PatientInput] = {}
    results: list[PatientResult] = []
    for pid in sorted(norm.patients):
        bundle = norm.by_patient.get(pid)
        inp = PatientInput(norm.patients[pid])
        if bundle is not None:
            inp.events, inp.reports = bundle.events, bundle.reports
            inp.conditions, inp.encounters = bundle.conditions, bundle.encounters
            inp.measurements = bundle.measurements
        inputs[pid] = inp
        results.append(reconstruct(inp, mappings.settings))
        norm.note_age(results[-1])

    _account(rows, norm, results, accounting)
    return Extraction(results, inputs, norm, read_by_type, accounting)


def _read_resource(
    item: RawResource, views: dict[str, Any], rows: dict[str, dict[str, dict[str, Any]]],
    norm: Normaliser, read_by_type: Counter[str], accounting: Accounting, validation: Mode,
) -> None:
    resource = item.resource
    rtype = str(resource.get("resourceType"))
    raw_id = resource.get("id")
    rid = raw_id if isinstance(raw_id, str) else ""
    read_by_type[rtype] += 1

    def set_aside(severity: str, code: str, message: str) -> None:
        norm.issues.append(Issue(severity, code, message, "", rtype, rid, item.origin,  # type: ignore[arg-type]
                                 sets_aside=True))
        accounting.set_aside += 1

    if rtype not in views:
        set_aside("info", "unsupported-type", f"{rtype} is not used by the pathway")
        return
    if not rid.strip():
        shown = "has no id" if raw_id in (None, "") else \
            f"has a non-string id ({type(raw_id).__name__})"
        set_aside("error", "no-id", f"{rtype} at {item.origin} {shown}")
        return
    if validation != "off":
        problem = validation_problem(resource)
        if problem is not None:
            if validation == "strict":
                set_aside("error", "invalid-resource", problem)
                return
            norm.issues.append(Issue("warning", "invalid-resource", problem, "", rtype, rid,
                                     item.origin))
    try:
        view_rows = views[rtype].rows(resource)
    except Exception as exc:  # noqa: BLE001 - a view failing on odd data must not stop the run
        set_aside("error", "view-failed", f"flattening failed: {type(exc).__name__}: {exc}")
        return
    if not view_rows:
        set_aside("error", "view-no-row", f"{rtype} view gave no row")
        return
    row = dict(view_rows[0])
    row["_origin"] = item.origin
    if resource.get("contained"):
        row["_contained"] = contained_rows(resource, views)
    row["_last_updated"] = str((resource.get("meta") or {}).get("lastUpdated") or "")
    previous = rows[rtype].get(rid)
    if previous is not None:
        keep, drop = (row, previous) if row["_last_updated"] >= previous["_last_updated"] \
            else (previous, row)
        rows[rtype][rid] = keep
        norm.issues.append(Issue(
            "warning", "duplicate-resource",
            f"{rtype}/{rid} read twice; kept the version from {keep['_origin']}", "",
            rtype, rid, drop["_origin"], sets_aside=True))
        accounting.set_aside += 1
        return
    rows[rtype][rid] = row


def _handler(norm: Normaliser, rtype: str) -> Callable[[dict[str, Any]], None]:
    handlers: dict[str, Callable[[dict[str, Any]], None]] = {
        "Patient": norm.patient,
        "Medication": norm.medication,
        "Procedure": norm.procedure,
        "MedicationRequest": norm.medication_use,
        "MedicationAdministration": norm.medication_use,
        "MedicationStatement": norm.medication_use,
        "DiagnosticReport": norm.diagnostic_report,
        "Condition": norm.condition,
        "Encounter": norm.encounter,
        "Observation": norm.observation,
    }
    return handlers.get(rtype, lambda row: None)


def _account(
    rows: dict[str, dict[str, dict[str, Any]]], norm: Normaliser,
    results: list[PatientResult], accounting: Accounting,
) -> None:
    """Give every kept row exactly one disposition: used, or set aside with a reason."""
    used: set[tuple[str, str]] = {("Patient", pid) for pid in norm.patients}
    aside: set[tuple[str, str]] = set()
    for result in results:
        for d in result.decisions:
            (used if d.used else aside).add(d.source.key)
    used.update(m.source.key for _, m in norm.measurement_rows)
    used.update(("Medication", mid) for mid in norm.referenced_medications
                if mid in norm.medications)
    counted_issue_keys: set[tuple[str, str]] = set()
    for issue in norm.issues:
        if issue.sets_aside and issue.resource_id and issue.code != "duplicate-resource":
            counted_issue_keys.add((issue.resource_type, issue.resource_id))
    for rtype, by_id in rows.items():
        for rid in by_id:
            key = (rtype, rid)
            if key in used:
                accounting.used += 1
            elif key in aside or key in counted_issue_keys:
                accounting.set_aside += 1
            elif rtype == "Medication":
                norm.issues.append(Issue("info", "unreferenced-medication",
                                         "Medication not referenced by any order", "",
                                         rtype, rid, by_id[rid]["_origin"], sets_aside=True))
                accounting.set_aside += 1
            else:
                accounting.unaccounted.append(f"{rtype}/{rid}")
    if accounting.unaccounted:
        log.error("accounting: %d resources neither used nor set aside (a bug): %s",
                  len(accounting.unaccounted), ", ".join(accounting.unaccounted[:5]))
