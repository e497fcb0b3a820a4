"""Per-patient recomputation: which unit a resource belongs to, and each unit's part.

The pathway is strictly per patient (`pathway.classify.reconstruct` sees one patient's
records), so a refresh recomputes only the patients whose resources changed. The unit
of recomputation is the patient compartment as the views see it: the Patient itself and
every resource whose `patient_ref` names it. Two more units hold what belongs to no
patient: `#medications` (every Medication) and `#unlinked` (resources with no usable
patient reference, or of a type no view reads); `#run` holds the problems met while
reading this run's changes (unreadable lines, export error files).

A unit is computed by running the ordinary pipeline (`pipeline.extract`) on the unit's
resources plus the Medications they reference, and `dataset.part_of` on the result, so
rules, validation, issue texts and row rules are exactly those of `fhir-spine extract`.
The part is kept in the store (`Part.to_json`). The Medications a patient unit only
borrowed (to resolve its orders' codes) are taken out of its part again: the
`#medications` unit owns them, their issues and their counts, once.

Assembly is `dataset.build_dataset` over every unit's stored part, recomputed ones
replaced: the same builder as `extract`, so tables come out in the same canonical order
and the Medications are decided across all units (used when any order refers to them)
exactly as in a full extraction. Nothing about table rows or their order lives here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from fhir_spine.dataset import Dataset, Part, build_dataset, part_of
from fhir_spine.errors import ConfigError
from fhir_spine.fhir import MEDICATION_USERS, reference_id
from fhir_spine.handlers import REGISTRY, view_rows
from fhir_spine.pipeline import Accounting, extract
from fhir_spine.settings import Mappings
from fhir_spine.sources.files import RawResource, ReadProblem, SourceItem
from fhir_spine.validate import Mode
from fhir_spine.views.runner import compile_view

from .store import MEDS, UNLINKED, RawStore


class UnitResolver:
    """Which unit a resource belongs to, and which Medication it references, as the
    views read them (the same `patient_ref` / `medication_ref` the handlers use)."""

    def __init__(self, mappings: Mappings) -> None:
        self.views = {t: compile_view(v) for t, v in mappings.views.items() if t in REGISTRY}
        self.files = mappings.view_files

    def unit_of(self, resource: dict[str, Any]) -> tuple[str, str | None]:
        rtype = str(resource.get("resourceType"))
        if rtype == "Medication":
            return MEDS, None
        if rtype == "Patient":
            return str(resource.get("id")), None
        view = self.views.get(rtype)
        if view is None:
            return UNLINKED, None
        try:
            rows = view_rows(REGISTRY[rtype], view, resource, self.files.get(rtype, ""))
        except ConfigError:
            raise  # several rows for a one-row handler: the view's shape (exit 3)
        except Exception:  # noqa: BLE001 - the pipeline reports the failure in `issues`
            rows = []
        row = rows[0] if rows else {}
        ref = row.get("patient_ref")
        medication: str | None = None
        if rtype in MEDICATION_USERS:
            medication = str(row.get("medication_ref") or "") or reference_id(
                (resource.get("medicationReference") or {}).get("reference"), "Medication")
        return (str(ref) if ref else UNLINKED), medication or None


def compute_units(units: Iterable[str], store: RawStore, mappings: Mappings,
                  validation: Mode) -> dict[str, Part | None]:
    """Recompute units from the store; None for a unit that has no resources any more."""
    out: dict[str, Part | None] = {}
    for unit in units:
        resources = list(store.resources_of(unit))
        if not resources:
            out[unit] = None
            continue
        items: list[SourceItem] = [RawResource(r, o) for r, o in resources]
        borrowed: list[SourceItem] = []
        if unit != MEDS:
            borrowed = [RawResource(r, o) for r, o in
                        store.resources_by_id("Medication", store.medications_of(unit))]
        part = part_of(extract(items + borrowed, mappings, validation=validation))
        out[unit] = _without_borrowed(part, {str(i.resource["id"]) for i in borrowed
                                             if isinstance(i, RawResource)})
    return out


def _without_borrowed(part: Part, borrowed: set[str]) -> Part:
    """A patient unit's part less the Medications it only borrowed."""
    if not borrowed:
        return part
    pending = {m: o for m, o in part.pending_medications.items() if m not in borrowed}
    set_aside_while_read = len(borrowed) - (len(part.pending_medications) - len(pending))
    c = part.counts
    counts = Accounting(c.read - len(borrowed), c.used, c.set_aside - set_aside_while_read,
                        c.unaccounted)
    read_by_type = dict(part.read_by_type)
    left = read_by_type.pop("Medication", 0) - len(borrowed)
    if left > 0:
        read_by_type["Medication"] = left
    rows = replace(part.rows, issues=[r for r in part.rows.issues
                                      if r.get("resource_type") != "Medication"])
    return replace(part, rows=rows, counts=counts, read_by_type=read_by_type,
                   pending_medications=pending)


def compute_run_unit(problems: list[ReadProblem], mappings: Mappings) -> Part:
    """The problems met reading this run's input: one `issues` row each."""
    return part_of(extract(list(problems), mappings))


def assemble(parts: Iterable[Part]) -> Dataset:
    """Every unit's part -> the dataset (`dataset.build_dataset`, as `extract` does)."""
    return build_dataset(parts)
