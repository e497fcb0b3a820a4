"""View rows -> the pathway's typed records, tagged with concepts.

This is where FHIR's variety is absorbed: status and intent rules, `performed[x]`
choices, coded or numeric observation values, medication by code or by reference, and
every code seen is tallied for the `codes` table. Each row either becomes a record or an
`Issue` that says why not.

`normalise()` is the interface: view rows in, an immutable `Normalised` out (per-patient
inputs, issues, code counts). The `Normaliser` is the handlers' working state; which
method handles which resource type, in what order and reading which view columns, is
the registry in `handlers.py`. Nothing outside this module and the registry touches the
Normaliser, so its handlers can change without the pipeline knowing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhir_spine import questionnaires, values
from fhir_spine.concepts import Coding, ConceptMap, Match, parse_codings
from fhir_spine.handlers import in_order
from fhir_spine.histology_text import read_conclusion
from fhir_spine.issues import Issue
from fhir_spine.pathway.model import (
    ClinicalEvent,
    ConditionRecord,
    EncounterRecord,
    Measurement,
    PathologyReport,
    PatientInput,
    PatientRecord,
    PatientResult,
    Source,
)
from fhir_spine.pathway.time import UnparseableTime, When, day_bounds, parse_when
from fhir_spine.pathway.timeline import role_of
from fhir_spine.questionnaires import QuestionnaireMap
from fhir_spine.settings import PathwaySettings

Row = dict[str, Any]
SEXES = {"female", "male", "other", "unknown"}
PROFILE_SYSTEM = "urn:fhir-spine:meta.profile"  # concepts.yaml alias `meta-profile`


@dataclass
class CodeTally:
    """Every code seen, per resource type and element, with resource and patient counts.

    Each coding is looked up on its own (not only the one that decided the record), so an
    RxNorm code next to the ATC code that mapped still shows as known in `codes`.
    """

    concepts_map: ConceptMap
    resources: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    patients: dict[tuple[str, str, str, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))
    displays: dict[tuple[str, str, str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    concepts: dict[tuple[str, str, str, str], str] = field(default_factory=dict)

    def add(self, resource_type: str, element: str, codings: Iterable[Coding],
            patient_id: str, group: str | None = None) -> None:
        for c in set(codings):
            key = (resource_type, element, c.system, c.code)
            self.resources[key] += 1
            if patient_id:
                self.patients[key].add(patient_id)
            if c.display:
                self.displays[key][c.display] += 1
            if group is not None and key not in self.concepts:
                found = self.concepts_map.matches(group, [c])
                if found:
                    self.concepts[key] = ";".join(m.concept for m in found)

    def counts(self) -> tuple[CodeCount, ...]:
        """An immutable copy, in first-seen order (the `codes` table sorts it)."""
        return tuple(
            CodeCount(k, n, frozenset(self.patients.get(k, ())),
                      dict(sorted(self.displays.get(k, Counter()).items())),
                      self.concepts.get(k))
            for k, n in self.resources.items())


@dataclass(frozen=True)
class CodeCount:
    """One code's counts in one computation; counts of several computations add up
    (`resources` and `displays` summed, `patients` united), whatever their split."""

    key: tuple[str, str, str, str]  # resource type, element, system, code
    resources: int
    patients: frozenset[str]
    displays: Mapping[str, int]     # display text -> resources showing it
    concept: str | None
    # Unmapped codes only (what_if.annotate): display -> (suggested concept, rule), and
    # suggested concept -> the patients whose classification changes if so mapped.
    hints: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    changed: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Normalised:
    """What the handlers made of the view rows; read-only for the pipeline."""

    inputs: Mapping[str, PatientInput]    # every Patient read, by id, sorted
    measurements: tuple[tuple[str, Measurement], ...]  # (patient id, value), as handled
    issues: tuple[Issue, ...]
    codes: tuple[CodeCount, ...]
    medications: frozenset[str]           # Medication ids that gave a row
    referenced_medications: frozenset[str]  # Medication ids an order refers to
    # Patients with a year or year-month birthDate: id -> (birthDate as sent, origin)
    partial_births: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def age_notes(normalised: Normalised, results: Iterable[PatientResult]) -> tuple[Issue, ...]:
    """An info row per patient whose age came from a partial birthDate: exact when every
    day it may stand for gives the same age at the index biopsy, else the lower bound
    (pathway.classify.age_at)."""
    notes: list[Issue] = []
    for result in results:
        partial = normalised.partial_births.get(result.patient_id)
        if partial is None or result.age_at_biopsy is None:
            continue
        raw, origin = partial
        if result.age_upper_bound is None:
            message = (f"birthDate {raw!r} is partial; age at the index biopsy "
                       f"{result.age_at_biopsy} is exact (every possible birth day gives it)")
        else:
            message = (f"birthDate {raw!r} is partial; age at the index biopsy is at least "
                       f"{result.age_at_biopsy} (at most {result.age_upper_bound}): the "
                       "lower bound is reported")
        notes.append(Issue("info", "partial-birth-date", message, result.patient_id,
                           "Patient", result.patient_id, origin))
    return tuple(notes)


def normalise(rows: Mapping[str, Iterable[Row]], concepts: ConceptMap,
              settings: PathwaySettings,
              questionnaire_map: QuestionnaireMap | None = None) -> Normalised:
    """View rows by resource type -> records, each type by its registered handler, in
    the registry's order (patients and medications first, so references resolve)."""
    norm = Normaliser(concepts, settings, questionnaires=questionnaire_map or QuestionnaireMap())
    for entry in in_order(rows):
        handle = getattr(norm, entry.handler)
        for row in rows[entry.resource_type]:
            handle(row)
    return norm.result()


@dataclass
class PatientBundle:
    """All normalised records of one patient, before the pathway sees them."""

    events: list[ClinicalEvent] = field(default_factory=list)
    reports: list[PathologyReport] = field(default_factory=list)
    conditions: list[ConditionRecord] = field(default_factory=list)
    encounters: list[EncounterRecord] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)


@dataclass
class Normaliser:
    concepts: ConceptMap
    settings: PathwaySettings
    patients: dict[str, PatientRecord] = field(default_factory=dict)
    medications: dict[str, tuple[Coding, ...]] = field(default_factory=dict)
    medication_ingredients: dict[str, tuple[Coding, ...]] = field(default_factory=dict)
    partial_births: dict[str, tuple[str, str]] = field(default_factory=dict)  # raw, origin
    referenced_medications: set[str] = field(default_factory=set)
    by_patient: dict[str, PatientBundle] = field(default_factory=lambda: defaultdict(PatientBundle))
    issues: list[Issue] = field(default_factory=list)
    codes: CodeTally = field(init=False)
    measurement_rows: list[tuple[str, Measurement]] = field(default_factory=list)
    questionnaires: QuestionnaireMap = field(default_factory=QuestionnaireMap)

    def __post_init__(self) -> None:
        self.codes = CodeTally(self.concepts)

    def result(self) -> Normalised:
        inputs: dict[str, PatientInput] = {}
        for pid in sorted(self.patients):
            inp = PatientInput(self.patients[pid])
            bundle = self.by_patient.get(pid)
            if bundle is not None:
                inp.events, inp.reports = bundle.events, bundle.reports
                inp.conditions, inp.encounters = bundle.conditions, bundle.encounters
                inp.measurements = bundle.measurements
            inputs[pid] = inp
        return Normalised(inputs, tuple(self.measurement_rows), tuple(self.issues),
                          self.codes.counts(), frozenset(self.medications),
                          frozenset(self.referenced_medications), dict(self.partial_births))

    # ------------------------------------------------------------------ helpers
    def _issue(self, severity: str, code: str, message: str, row: Row, patient_id: str = "",
               *, sets_aside: bool = False) -> None:
        self.issues.append(Issue(
            severity, code, message, patient_id, str(row.get("resource_type") or ""),  # type: ignore[arg-type]
            str(row.get("id") or ""), str(row.get("_origin") or ""), sets_aside))

    def _when(self, raw: Any, row: Row, patient_id: str, what: str) -> When | None:
        if raw in (None, ""):
            return None
        try:
            when = parse_when(str(raw), self.settings.tz)
        except UnparseableTime as exc:
            self._issue("error", "unparseable-date", f"{what}: {exc}", row, patient_id)
            return None
        if not when.is_day_precise:
            self._issue("warning", "partial-date",
                        f"{what} {raw!r} has {when.precision} precision; not placed on a day",
                        row, patient_id)
        return when

    def _levels(self, row: Row, column: str, patient_id: str) -> tuple[str, ...]:
        codings = parse_codings(row.get(column))
        matches = {c: m.concept for c in codings
                   if (m := self.concepts.lookup("body-site", c)) is not None}
        self.codes.add(row["resource_type"], f"{row['resource_type']}.bodySite", codings,
                       patient_id, "body-site")
        return tuple(sorted({m.removeprefix("level-") for m in matches.values()},
                            key=_level_order))

    def _patient_of(self, row: Row) -> str | None:
        """The row's patient id, or None after recording why it cannot be used."""
        ref = row.get("patient_ref")
        raw = row.get("patient_reference")
        if not ref:
            self._issue("error", "no-patient-reference",
                        f"{row['resource_type']} has no usable subject/patient reference"
                        + (f" ({raw!r})" if raw else ""), row, sets_aside=True)
            return None
        if ref not in self.patients:
            self._issue("error", "missing-patient",
                        f"refers to Patient {ref!r}, which is not in the source", row, str(ref),
                        sets_aside=True)
            return None
        return str(ref)

    # ------------------------------------------------------------------ types
    def patient(self, row: Row) -> None:
        """Patient -> record. A year or year-month birthDate keeps its range of days, so the
        age is still known when the dates decide it (pathway.classify.age_at)."""
        pid = str(row["id"])
        birth: date | None = None
        birth_range: tuple[date, date] | None = None
        when = self._when(row.get("birth_date"), row, pid, "birthDate")
        if when is not None and when.day is not None:
            birth = when.day
        elif when is not None:
            birth_range = day_bounds(when)
            self.partial_births[pid] = (when.raw, str(row.get("_origin") or ""))
        elif row.get("birth_date") in (None, ""):
            self._issue("warning", "no-birth-date", "Patient has no birthDate; age unknown",
                        row, pid)
        gender = str(row.get("gender") or "unknown")
        self.patients[pid] = PatientRecord(pid, birth, gender if gender in SEXES else "unknown",
                                           birth_range)

    def medication(self, row: Row) -> None:
        """A Medication resource: its code, and its ingredients' codes (R4 Medication)."""
        mid = str(row["id"])
        self.medications[mid] = parse_codings(row.get("codings"))
        ingredients = parse_codings(row.get("ingredient_codings"))
        if ingredients:
            self.medication_ingredients[mid] = ingredients

    def procedure(self, row: Row) -> None:
        """Procedure -> one event per concept its code maps to (ConceptMap.matches).

        Which statuses count depends on the role the concept plays on the pathway
        (`procedure_statuses_by_role`, PATHWAY.md "Events"): a biopsy or stabilization must
        be `completed`; a definitive therapy counts once it started, so a radiotherapy
        course `in-progress` or `stopped` early is a therapy start (mCODE
        RadiotherapyCourseSummary is `in-progress` until the course ends).
        """
        pid = self._patient_of(row)
        if pid is None:
            return
        codings = parse_codings(row.get("codings"))
        categories = parse_codings(row.get("category_codings"))
        levels = self._levels(row, "body_site_codings", pid)
        matches = self._procedure_concepts(codings, categories, levels)
        self.codes.add("Procedure", "Procedure.code", codings, pid, "procedure")
        self.codes.add("Procedure", "Procedure.category", categories, pid, "procedure")
        if not matches:
            self._issue("info", "unmapped-code", "Procedure code not mapped to a pathway "
                        f"concept: {_show(codings)}", row, pid, sets_aside=True)
            return
        start_raw = row.get("performed_datetime") or row.get("performed_period_start")
        if start_raw in (None, "") and row.get("performed_string"):
            self._issue("warning", "unparseable-date",
                        f"performedString {row['performed_string']!r} is not a date", row, pid)
            start = None
        else:
            start = self._start(row, pid, "performed", start_raw, row.get("performed_period_end"),
                                _absent_reason(row))
        end = self._when(row.get("performed_period_end"), row, pid, "performedPeriod.end")
        status = str(row.get("status") or "")
        for match in matches:
            ok = status in self.settings.procedure_statuses_for(role_of(match.concept))
            self.by_patient[pid].events.append(ClinicalEvent(
                match.concept, Source("Procedure", str(row["id"])), start, end, status,
                countable=ok, status_note="" if ok else f"status {status or '(none)'}",
                encounter_id=row.get("encounter_ref") or None,
                part_of=tuple(r for r in row.get("part_of_refs") or () if r),
                levels=levels, coding=match.coding))

    def procedure_with_profile(self, row: Row) -> None:
        """Procedure rows, with a declared profile that concepts.yaml maps (system
        `meta-profile`, e.g. mCODE CancerRelatedSurgicalProcedure) added to its categories,
        then `procedure()`: the profile is the sender's statement of what the procedure is
        (issue 11: mCODE examples), looked up after the codes, as categories are."""
        extra = []
        for url in row.get("profiles") or ():
            coding = Coding(PROFILE_SYSTEM, str(url))
            if self.concepts.lookup("procedure", coding) is not None:
                extra.append(f"{PROFILE_SYSTEM}|{url}|declared profile")
        if extra:
            row = {**row, "category_codings": [*(row.get("category_codings") or ()), *extra]}
        self.procedure(row)

    def _procedure_concepts(self, codings: tuple[Coding, ...], categories: tuple[Coding, ...],
                            levels: tuple[str, ...]) -> list[Match]:
        """Procedure.code decides; Procedure.category only when no code maps."""
        for group in (codings, categories):
            matches = [m for m in self.concepts.matches("procedure", group)
                       if m.requires != "vertebral-body-site" or levels]
            if matches:
                return matches
        return []

    def _start(self, row: Row, pid: str, what: str, raw: Any, end_raw: Any = None,
               absent_reason: Any = None) -> When | None:
        """The start of a pathway event, with a warning row when it has none.

        A start that cannot be placed on a day (partial date, data-absent-reason, a period
        with only an `end`) keeps the record in `events` unused; the pathway then names the
        unusable date as the exclusion reason (PATHWAY.md "Events", README decisions).
        """
        if raw not in (None, ""):
            return self._when(raw, row, pid, what)
        if end_raw not in (None, ""):
            why = f"has only an end ({end_raw}); its start cannot be placed on a day"
        elif absent_reason not in (None, ""):
            why = f"is absent (data-absent-reason {absent_reason})"
        else:
            why = "is missing"
        self._issue("warning", "no-date", f"{row['resource_type']} {what} date {why}", row, pid)
        return None

    def _contained(self, row: Row, reference: Any) -> Row | None:
        """The view row of a contained resource a `#id` reference points to, or None.

        FHIR R4 "References" 2.3.0.3: a reference starting with `#` points into the
        referring resource's own `contained` list; the pipeline flattens those resources
        with their type's view into `row["_contained"]` (see fhir_spine.contained).
        """
        if not isinstance(reference, str) or not reference.startswith("#"):
            return None
        return (row.get("_contained") or {}).get(reference[1:])

    def _medication_codings(self, row: Row, pid: str) -> tuple[tuple[Coding, ...], str] | None:
        """The codings that classify the drug of a medication use, and the element they came
        from; None when the referenced Medication cannot be found (an issue is written).

        `medication[x]` as a CodeableConcept, else the referenced Medication (a resource in
        the source, or a contained one for `#id`): its `code`, or its ingredients' codes
        (`Medication.ingredient.itemCodeableConcept`) when the code maps to nothing.
        """
        rtype = row["resource_type"]
        codings = parse_codings(row.get("medication_codings"))
        raw = row.get("medication_reference")
        if codings or not (raw or row.get("medication_ref")):
            return codings, f"{rtype}.medication"
        contained = self._contained(row, raw)
        med_codes: tuple[Coding, ...] = ()
        ingredients: tuple[Coding, ...] = ()
        if contained is not None:
            med_codes = parse_codings(contained.get("codings"))
            ingredients = parse_codings(contained.get("ingredient_codings"))
        elif row.get("medication_ref") and not str(raw or "").startswith("#"):
            ref = str(row["medication_ref"])
            self.referenced_medications.add(ref)
            med_codes = self.medications.get(ref, ())
            ingredients = self.medication_ingredients.get(ref, ())
        if not med_codes and not ingredients:
            where = "among the resource's contained resources" \
                if str(raw or "").startswith("#") else "in the source"
            self._issue("error", "unresolved-medication",
                        f"medicationReference {raw or row.get('medication_ref')!r} not found "
                        f"{where}", row, pid, sets_aside=True)
            return None
        if ingredients and not self.concepts.matches("medication", med_codes):
            self.codes.add(rtype, f"{rtype}.medication", med_codes, pid, "medication")
            return ingredients, "Medication.ingredient"
        return med_codes, f"{rtype}.medication"

    def medication_use(self, row: Row) -> None:
        """MedicationRequest, MedicationAdministration and MedicationStatement -> events.

        Start: an order's planned start (`dosageInstruction.timing.repeat.boundsPeriod
        .start`), else `authoredOn`; an administration's or statement's `effective[x]`.
        When administrations name their order (`MedicationAdministration.request`), the
        first of them is the therapy start and the order is not (pathway.timeline,
        `orders_started_by_administration`). Statuses: per resource type, in settings.
        """
        pid = self._patient_of(row)
        if pid is None:
            return
        rtype = row["resource_type"]
        found = self._medication_codings(row, pid)
        if found is None:
            return
        codings, element = found
        matches = self.concepts.matches("medication", codings)
        self.codes.add(rtype, element, codings, pid, "medication")
        if not matches:
            self._issue("info", "unmapped-code", f"{rtype} medication not mapped: "
                        f"{_show(codings)}", row, pid, sets_aside=True)
            return
        status = str(row.get("status") or "")
        request = None
        if rtype == "MedicationRequest":
            intent = str(row.get("intent") or "")
            start_raw = row.get("bounds_period_start") or row.get("authored_on")
            note = ""
            if status not in self.settings.medication_request_statuses:
                note = f"status {status or '(none)'}"
            elif intent not in self.settings.medication_request_intents:
                note = f"intent {intent or '(none)'}"
            encounter = row.get("encounter_ref")
            what, end_raw = "authoredOn", None
        else:
            allowed = self.settings.medication_statement_statuses \
                if rtype == "MedicationStatement" \
                else self.settings.medication_administration_statuses
            start_raw = row.get("effective_datetime") or row.get("effective_period_start")
            note = "" if status in allowed else f"status {status or '(none)'}"
            encounter = row.get("context_ref")
            what, end_raw = "effective", row.get("effective_period_end")
            request = row.get("request_ref") or None
        start = self._start(row, pid, what, start_raw, end_raw, _absent_reason(row))
        for match in matches:
            self.by_patient[pid].events.append(ClinicalEvent(
                match.concept, Source(rtype, str(row["id"])), start, None, status,
                countable=not note, status_note=note, encounter_id=encounter or None,
                coding=match.coding, request_id=request))

    def diagnostic_report(self, row: Row) -> None:
        pid = self._patient_of(row)
        if pid is None:
            return
        codings = parse_codings(row.get("codings"))
        categories = parse_codings(row.get("category_codings"))
        kind = self.concepts.first("report", codings) or self.concepts.first("report", categories)
        self.codes.add("DiagnosticReport", "DiagnosticReport.code", codings, pid,
                       "report")
        self.codes.add("DiagnosticReport", "DiagnosticReport.category", categories, pid,
                       "report")
        if kind is None:
            self._issue("info", "unmapped-code", "DiagnosticReport is not a pathology report: "
                        f"{_show(codings)}", row, pid, sets_aside=True)
            return
        conclusion = parse_codings(row.get("conclusion_codings"))
        finding = self.concepts.first("finding", conclusion)
        self.codes.add("DiagnosticReport", "DiagnosticReport.conclusionCode", conclusion, pid,
                       "finding")
        concept, basis = (finding.concept, "coded") if finding else (None, None)
        text = row.get("conclusion")
        has_text = isinstance(text, str) and bool(text.strip())
        if concept is None and has_text:
            reading = read_conclusion(str(text), self.settings.text_rules)
            if reading.concept is not None:
                concept, basis = reading.concept, "narrative"
                self._issue("info", "narrative-conclusion", "histology read from the narrative "
                            f"conclusion by the text rule: {reading.concept} ({reading.term!r})",
                            row, pid)
            else:
                self._issue("warning", "narrative-conclusion-unread",
                            "pathology report conclusion is narrative only and no text rule "
                            f"read it ({reading.why_not}; {len(str(text))} characters); "
                            "code it, or extend narrative_histology in settings.yaml",
                            row, pid)
        elif concept is None:
            self._issue("warning", "conclusion-not-read", "pathology report has no "
                        + ("mapped conclusionCode (" + _show(conclusion) + ")" if conclusion
                           else "conclusionCode and no conclusion text"), row, pid)
        issued = self._when(row.get("issued") or row.get("effective_datetime")
                            or row.get("effective_period_start"), row, pid, "issued")
        status = str(row.get("status") or "")
        ok = status in self.settings.report_statuses
        self.by_patient[pid].reports.append(PathologyReport(
            Source("DiagnosticReport", str(row["id"])), issued,
            concept, status, ok,
            "" if ok else f"status {status or '(none)'}",
            finding.coding if finding else None, basis, has_text))

    def condition(self, row: Row) -> None:
        pid = self._patient_of(row)
        if pid is None:
            return
        codings = parse_codings(row.get("codings"))
        finding = self.concepts.first("finding", codings)
        self.codes.add("Condition", "Condition.code", codings, pid,
                       "finding")
        if finding is None:
            self._issue("info", "unmapped-code", f"Condition code not mapped: {_show(codings)}",
                        row, pid, sets_aside=True)
            return
        levels = self._levels(row, "body_site_codings", pid)
        onset = self._when(row.get("onset_datetime") or row.get("onset_period_start")
                           or row.get("recorded_date"), row, pid, "onset")
        verification = {v for v in row.get("verification_status_codes") or () if isinstance(v, str)}
        bad = verification & self.settings.condition_verification_excluded
        self.by_patient[pid].conditions.append(ConditionRecord(
            Source("Condition", str(row["id"])), finding.concept, levels, onset,
            countable=not bad, status_note=f"verificationStatus {sorted(bad)[0]}" if bad else "",
            coding=finding.coding))

    def encounter(self, row: Row) -> None:
        pid = self._patient_of(row)
        if pid is None:
            return
        reasons = parse_codings(row.get("reason_codings"))
        priority = parse_codings(row.get("priority_codings"))
        pain = self.concepts.first("reason", reasons)
        urgent = self.concepts.first("priority", priority)
        self.codes.add("Encounter", "Encounter.reasonCode", reasons, pid,
                       "reason")
        self.codes.add("Encounter", "Encounter.priority", priority, pid,
                       "priority")
        start = self._when(row.get("period_start"), row, pid, "period.start")
        end = self._when(row.get("period_end"), row, pid, "period.end")
        self.by_patient[pid].encounters.append(EncounterRecord(
            Source("Encounter", str(row["id"])), str(row.get("class_code") or ""), start, end,
            urgent=urgent is not None, pain_reason=pain is not None and pain.concept == "pain",
            status=str(row.get("status") or "")))

    def observation(self, row: Row) -> None:
        """One Observation -> zero or more measurements (issue 11, item 3).

        The Observation's own code and value give one measure; each `component` whose
        code maps gives another (pain inside a panel, SOSGOQ2.0 domains, SINS components,
        ECOG). Per resource, one value per measure: the Observation's own value first,
        then components in order. Values are read by `values.read_number`. A
        `dataAbsentReason` is an `info` row naming it; a value in a form that gives no
        number is a `warning` row naming the form. The resource is set aside only when
        no measure gave a usable value.
        """
        pid = self._patient_of(row)
        if pid is None:
            return
        codings = parse_codings(row.get("codings"))
        measure = self.concepts.first("observation", codings)
        self.codes.add("Observation", "Observation.code", codings, pid,
                       "observation")
        candidates: list[tuple[str, str, values.FoundValue]] = []
        if measure is not None:
            candidates.append((measure.concept, "", values.from_row(row)))
        for n, component in enumerate(row.get("components") or ()):
            if not isinstance(component, dict):
                continue
            code = component.get("code")
            comp_codings = values.codings_of(code.get("coding") if isinstance(code, dict)
                                             else None)
            self.codes.add("Observation", "Observation.component.code", comp_codings, pid,
                           "observation")
            hit = self.concepts.first("observation", comp_codings)
            if hit is not None:
                candidates.append((hit.concept, f"component[{n}] ", values.from_element(component)))
        if not candidates:
            self._issue("info", "unmapped-code", f"Observation code not mapped: "
                        f"{_show(codings)}", row, pid, sets_aside=True)
            return
        shown = candidates[0][0]
        status = str(row.get("status") or "")
        if status not in self.settings.observation_statuses:
            self._issue("info", "status-not-counted", f"{shown} observation has "
                        f"status {status or '(none)'}", row, pid, sets_aside=True)
            return
        first_issue = len(self.issues)
        found = self._observation_values(row, pid, candidates)
        if not found:
            if len(self.issues) == first_issue:
                self._issue("warning", "no-value", f"{shown} observation has no usable value",
                            row, pid)
            self._set_aside_since(first_issue)
            return
        self._measurements(row, pid, found, row.get("effective_datetime")
                           or row.get("effective_period_start")
                           or row.get("effective_instant") or row.get("issued"),
                           "effective", f"{shown} observation has no usable effective time")

    def questionnaire_response(self, row: Row) -> None:
        """One QuestionnaireResponse -> a measurement per mapped answered item (issue 11,
        item 8): `mappings/questionnaires.yaml` maps questionnaire canonical + linkId to a
        measure; the answer is read like an Observation value; `authored` is the effective
        time. A response none of whose items the map covers is counted (an `info` row,
        set aside), not an error."""
        pid = self._patient_of(row)
        if pid is None:
            return
        canonical = str(row.get("questionnaire") or "")
        by_link = self.questionnaires.measures_for(canonical)
        candidates: list[tuple[str, str, values.FoundValue]] = []
        seen = 0
        for link_id, answers in questionnaires.answered_items(row.get("items")):
            seen += 1
            measure = by_link.get(link_id)
            if measure is None:
                continue
            answer = answers[0] if answers else {}
            candidates.append((measure, f"item {link_id!r} ", values.from_element(answer)))
        if not candidates:
            self._issue("info", "questionnaire-not-mapped",
                        f"QuestionnaireResponse of {canonical or '(no questionnaire)'}: none of "
                        f"its {seen} items is in questionnaires.yaml", row, pid,
                        sets_aside=True)
            return
        status = str(row.get("status") or "")
        if status not in self.settings.questionnaire_response_statuses:
            self._issue("info", "status-not-counted", f"QuestionnaireResponse has status "
                        f"{status or '(none)'}", row, pid, sets_aside=True)
            return
        first_issue = len(self.issues)
        found = self._observation_values(row, pid, candidates, "QuestionnaireResponse")
        if not found:
            self._set_aside_since(first_issue)
            if len(self.issues) == first_issue:
                self._issue("warning", "no-value", "QuestionnaireResponse: no mapped item has "
                            "an answer", row, pid, sets_aside=True)
            return
        self._measurements(row, pid, found, row.get("authored"), "authored",
                           "QuestionnaireResponse has no authored time")

    def _measurements(self, row: Row, pid: str, found: dict[str, float], raw_time: Any,
                      what: str, no_time: str) -> None:
        """One measurement per value `found`, at `raw_time`; when that time cannot be placed
        on a day the resource is set aside, with the row that says why (the parser's, or a
        `no-date` warning `no_time` when it said nothing: absent, or not a string)."""
        first_issue = len(self.issues)
        when = self._when(raw_time, row, pid, what)
        if when is None or not when.is_day_precise:
            if len(self.issues) == first_issue:
                self._issue("warning", "no-date", no_time, row, pid)
            self._set_aside_since(first_issue)
            return
        source = Source(str(row["resource_type"]), str(row["id"]))
        for concept, value in found.items():
            m = Measurement(concept, value, when, source)
            self.by_patient[pid].measurements.append(m)
            self.measurement_rows.append((pid, m))

    def _set_aside_since(self, first_issue: int) -> None:
        """Mark the rows written since `first_issue` as the ones that set the row aside."""
        for i in range(first_issue, len(self.issues)):
            self.issues[i] = _set_aside(self.issues[i])

    def _observation_values(self, row: Row, pid: str,
                            candidates: list[tuple[str, str, values.FoundValue]],
                            rtype: str = "Observation") -> dict[str, float]:
        """measure -> value for one resource; every value not used is an issue row."""
        from fhir_spine.pathway.measures import in_range
        from fhir_spine.pathway.vocabulary import MEASURE_RANGES

        ranges: dict[str, tuple[int, int]] = {str(k): v for k, v in MEASURE_RANGES.items()}
        found: dict[str, float] = {}
        components = any(where for _, where, _ in candidates)
        for concept, where, forms in candidates:
            top = ranges[concept][1] if concept in ranges else None
            read = values.read_number(forms, self.concepts, top)
            element = ("QuestionnaireResponse.item.answer" if rtype != "Observation"
                       else "Observation.component.value" if where else "Observation.value")
            self.codes.add(rtype, element, forms.codings, pid, "value")
            what = (f"{concept} observation {where}" if rtype == "Observation"
                    else f"{concept} answer {where}").rstrip()
            if read.number is None:
                if read.absent_reason:
                    self._issue("info", "data-absent", f"{what}: dataAbsentReason "
                                f"{read.absent_reason}; no value", row, pid)
                elif read.problem:
                    self._issue("warning", "unreadable-value", f"{what}: value not read: "
                                f"{read.problem}", row, pid)
                elif not (components and not where):
                    self._issue("warning", "no-value", f"{what} has no value", row, pid)
                continue
            if not in_range(concept, read.number):
                self._issue("error", "value-out-of-range", f"{concept} value {read.number:g} is "
                            f"out of range ({what}, {read.form})", row, pid)
                continue
            if concept in found:
                if found[concept] != read.number:
                    self._issue("info", "duplicate-measure", f"{what}: {concept} "
                                f"{read.number:g} ignored; this resource already gave "
                                f"{found[concept]:g}", row, pid)
                continue
            found[concept] = read.number
        return found


DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


def _absent_reason(row: Row) -> str | None:
    """The data-absent-reason code on the row's date element (view column
    `date_extensions`, 'url|valueCode'), or None."""
    for ext in row.get("date_extensions") or ():
        url, _, code = str(ext).partition("|")
        if url == DATA_ABSENT_REASON:
            return code or "(no code)"
    return None


def _set_aside(issue: Issue) -> Issue:
    from dataclasses import replace

    return replace(issue, sets_aside=True)


def _show(codings: Iterable[Coding]) -> str:
    shown = [f"{c.system}|{c.code}" for c in codings]
    return ", ".join(shown) if shown else "(no coding)"


_SEGMENTS = {"C": 0, "T": 1, "L": 2, "S": 3}


def _level_order(level: str) -> tuple[int, int]:
    number = level[1:]
    return (_SEGMENTS.get(level[:1], 9), int(number) if number.isdigit() else 0)
