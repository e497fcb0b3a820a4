"""FHIR R4 resources from a patient's plan, each validated with the fhir.resources R4B models.

R4B is structurally R4 for every type used here. Validation happens on every resource
that leaves this module, and what is written is the model's own JSON dump, so the files
are exactly what a FHIR library reads back. No randomness here: every choice about the
data was made in the plan; this module only decides FHIR shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B import get_fhir_model_class

from fhir_spine.synth import clock
from fhir_spine.synth.ids import resource_id, resource_uuid
from fhir_spine.synth.model import (
    AdministrationPlan,
    ConditionPlan,
    EncounterPlan,
    MedicationPlan,
    ObservationPlan,
    PatientPlan,
    ProcedurePlan,
    ReportPlan,
    When,
)
from fhir_spine.synth.vocab import (
    ABSOLUTE_BASE,
    ACT_CODE,
    ACT_PRIORITY,
    ASA_ANSWERS,
    CONDITION_CATEGORY,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    DIAGNOSTIC_CATEGORY,
    DRUGS,
    ECOG_ANSWERS,
    LOINC,
    MEASURE_CODES,
    MRN_SYSTEM,
    OBS_CATEGORY,
    RADIOTHERAPY_CATEGORY,
    REPORT_CATEGORY_SP,
    REPORT_CODES,
    SCT,
    SURGICAL_CATEGORY,
    UCUM,
    Code,
    level_code,
)

JSON = dict[str, Any]

_CLASS_DISPLAY = {"IMP": "inpatient encounter", "EMER": "emergency", "AMB": "ambulatory"}
_PRIORITY_DISPLAY = {"EM": "emergency", "R": "routine", "UR": "urgent"}
_PROCEDURE_CATEGORY = {
    "biopsy": DIAGNOSTIC_CATEGORY, "other-biopsy": DIAGNOSTIC_CATEGORY,
    "radiotherapy": RADIOTHERAPY_CATEGORY, "systemic-procedure": None,
}
_OBSERVATION_CATEGORY = {"sins": "imaging", "ecog": "exam", "asa": "exam"}


@dataclass(frozen=True)
class Built:
    """One validated resource, with the uuid it has if it travels in the Bundle."""

    resource_type: str
    uuid: str
    resource: JSON


def validated(resource: JSON) -> JSON:
    """Round-trip through the R4B model: raises on anything FHIR would reject."""
    model = get_fhir_model_class(resource["resourceType"])
    return model.model_validate(resource).model_dump(mode="json", exclude_none=True)


def concept(*codes: Code, text: str | None = None) -> JSON:
    out: JSON = {"coding": [c.coding() for c in codes]}
    if text:
        out["text"] = text
    return out


class Builder:
    """Renders one plan; knows the patient's reference style and the site's time zone."""

    def __init__(self, plan: PatientPlan, zone: ZoneInfo, seed: int) -> None:
        self.plan = plan
        self.zone = zone
        self.seed = seed
        self.in_bundle = plan.ref_style == "bundle"

    # ---------------------------------------------------------------- plumbing
    def uuid(self, key: str | None) -> str:
        return resource_uuid(self.seed, self.plan.pid, key)

    def ref(self, resource_type: str, key: str | None) -> JSON:
        pid, style = self.plan.pid, self.plan.ref_style
        if style == "bundle":
            return {"reference": f"urn:uuid:{self.uuid(key)}"}
        path = f"{resource_type}/{resource_id(pid, key)}"
        if style == "absolute":
            return {"reference": f"{ABSOLUTE_BASE}/{path}"}
        if style == "versioned" and resource_type == "Patient":
            return {"reference": f"{path}/_history/2"}
        return {"reference": path}

    def subject(self) -> JSON:
        return self.ref("Patient", None)

    def dt(self, when: When) -> str:
        return clock.render(when, self.zone)

    def frame(self, resource_type: str, key: str | None, position: int) -> JSON:
        """Id as the source shows it: readable, or in the Bundle the uuid or none at all."""
        out: JSON = {"resourceType": resource_type}
        if not self.in_bundle:
            out["id"] = resource_id(self.plan.pid, key)
        elif key is not None and position % 2 == 0:
            out["id"] = self.uuid(key)
        return out

    def emit(self, key: str | None, resource: JSON) -> Built:
        return Built(resource["resourceType"], self.uuid(key), validated(resource))

    # ---------------------------------------------------------------- resources
    def patient(self) -> Built:
        p = self.plan
        res = self.frame("Patient", None, 0)
        res.update({
            "identifier": [{"system": MRN_SYSTEM, "value": f"MRN{p.index:06d}"}],
            "name": [{"family": p.name[1], "given": [p.name[0]]}],
            "gender": p.gender,
            "birthDate": p.birth_date.isoformat(),
        })
        return self.emit(None, res)

    def encounter(self, enc: EncounterPlan, n: int) -> Built:
        res = self.frame("Encounter", enc.key, n)
        res.update({
            "status": enc.status,
            "class": {"system": ACT_CODE, "code": enc.cls, "display": _CLASS_DISPLAY[enc.cls]},
            "subject": self.subject(),
            "period": {"start": self.dt(enc.start), "end": self.dt(enc.end)},
        })
        if enc.priority:
            res["priority"] = concept(Code(ACT_PRIORITY, enc.priority,
                                           _PRIORITY_DISPLAY[enc.priority]))
        if enc.reason:
            res["reasonCode"] = [concept(enc.reason)]
        return self.emit(enc.key, res)

    def procedure(self, proc: ProcedurePlan, n: int) -> Built:
        res = self.frame("Procedure", proc.key, n)
        res["status"] = proc.status
        if proc.status == "not-done":
            res["statusReason"] = {"text": "Anticoagulation not paused; rescheduled"}
        category = _PROCEDURE_CATEGORY.get(proc.kind, SURGICAL_CATEGORY)
        if category:
            res["category"] = concept(category)
        res["code"] = concept(*proc.codes, text=proc.codes[0].display)
        res["subject"] = self.subject()
        if proc.encounter:
            res["encounter"] = self.ref("Encounter", proc.encounter)
        if proc.part_of:
            res["partOf"] = [self.ref("Procedure", proc.part_of)]
        if proc.use_period and proc.end is not None:
            res["performedPeriod"] = {"start": self.dt(proc.start), "end": self.dt(proc.end)}
        else:
            res["performedDateTime"] = self.dt(proc.start)
        sites = [concept(level_code(level), text=level) for level in proc.levels]
        if proc.site:
            sites.append(concept(proc.site))
        if sites:
            res["bodySite"] = sites
        return self.emit(proc.key, res)

    def report(self, rep: ReportPlan, n: int) -> Built:
        res = self.frame("DiagnosticReport", rep.key, n)
        res["status"] = rep.status
        if rep.code_style in ("SP", "11529-5"):
            res["category"] = [concept(REPORT_CATEGORY_SP)]
        if rep.code_style == "SP":
            res["code"] = {"text": "Pathology report"}
        else:
            code = REPORT_CODES[rep.code_style]
            res["code"] = concept(code, text=code.display)
        res.update({
            "subject": self.subject(),
            "effectiveDateTime": self.dt(rep.effective),
            "issued": clock.render_instant(rep.issued, self.zone),
            "conclusion": rep.text,
            "conclusionCode": [concept(c) for c in rep.conclusion],
        })
        return self.emit(rep.key, res)

    def condition(self, cond: ConditionPlan, n: int) -> Built:
        res = self.frame("Condition", cond.key, n)
        clinical = "inactive" if cond.verification == "refuted" else "active"
        res.update({
            "clinicalStatus": concept(Code(CONDITION_CLINICAL, clinical)),
            "verificationStatus": concept(Code(CONDITION_VERIFICATION, cond.verification)),
            "category": [concept(Code(CONDITION_CATEGORY, "problem-list-item"))],
            "code": concept(cond.code, text=cond.code.display),
            "subject": self.subject(),
        })
        sites = [concept(level_code(level), text=level) for level in cond.levels]
        if cond.site:
            sites.append(concept(cond.site))
        if sites:
            res["bodySite"] = sites
        if cond.onset:
            res["onsetDateTime"] = self.dt(cond.onset)
        if cond.recorded:
            res["recordedDate"] = self.dt(cond.recorded)
        return self.emit(cond.key, res)

    def medication(self, drug_key: str, n: int) -> Built:
        drug = DRUGS[drug_key]
        key = f"medication-{drug_key}"
        res = self.frame("Medication", key, n)
        res["code"] = concept(*drug.codes(with_rxnorm=True), text=drug.name)
        return self.emit(key, res)

    def _drug(self, res: JSON, drug_key: str, by_reference: bool, with_rxnorm: bool) -> None:
        drug = DRUGS[drug_key]
        if by_reference:
            res["medicationReference"] = self.ref("Medication", f"medication-{drug_key}")
        else:
            res["medicationCodeableConcept"] = concept(*drug.codes(with_rxnorm), text=drug.name)

    def medication_request(self, med: MedicationPlan, n: int) -> Built:
        res = self.frame("MedicationRequest", med.key, n)
        res.update({"status": med.status, "intent": med.intent})
        self._drug(res, med.drug, med.as_reference, med.with_rxnorm)
        res["subject"] = self.subject()
        res["authoredOn"] = self.dt(med.authored)
        if med.start is not None:
            res["dosageInstruction"] = [{
                "text": f"{DRUGS[med.drug].name} per protocol",
                "timing": {"repeat": {"boundsPeriod": {"start": self.dt(med.start)}}},
            }]
        return self.emit(med.key, res)

    def administration(self, adm: AdministrationPlan, n: int, by_reference: bool) -> Built:
        res = self.frame("MedicationAdministration", adm.key, n)
        res["status"] = adm.status
        self._drug(res, adm.drug, by_reference, with_rxnorm=True)
        res["subject"] = self.subject()
        res["effectiveDateTime"] = self.dt(adm.when)
        if adm.request:
            res["request"] = self.ref("MedicationRequest", adm.request)
        return self.emit(adm.key, res)

    def observation(self, obs: ObservationPlan, n: int) -> Built:
        res = self.frame("Observation", obs.key, n)
        family = obs.measure.split("_")[0]
        res.update({
            "status": obs.status,
            "category": [concept(Code(OBS_CATEGORY, _OBSERVATION_CATEGORY.get(family, "survey")))],
            "code": concept(MEASURE_CODES[obs.measure], text=MEASURE_CODES[obs.measure].display),
            "subject": self.subject(),
        })
        if obs.style == "period":
            end = obs.when.shifted(timedelta(minutes=20))
            res["effectivePeriod"] = {"start": self.dt(obs.when), "end": self.dt(end)}
        else:
            res["effectiveDateTime"] = self.dt(obs.when)
        res.update(self._value(obs))
        return self.emit(obs.key, res)

    @staticmethod
    def _value(obs: ObservationPlan) -> JSON:
        if obs.style == "code" and obs.measure == "ecog":
            return {"valueCodeableConcept": concept(Code(LOINC, ECOG_ANSWERS[int(obs.value)]))}
        if obs.style == "code" and obs.measure == "asa":
            return {"valueCodeableConcept": concept(
                Code(SCT, ASA_ANSWERS[int(obs.value) - 1], f"ASA class {int(obs.value)}"))}
        if obs.style == "integer":
            return {"valueInteger": int(obs.value)}
        return {"valueQuantity": {"value": obs.value, "unit": "score", "system": UCUM,
                                  "code": "{score}"}}

    # ---------------------------------------------------------------- all of it
    def build(self) -> list[Built]:
        p = self.plan
        out = [self.patient()]
        out += [self.encounter(e, i) for i, e in enumerate(p.encounters)]
        out += [self.procedure(x, i) for i, x in enumerate(p.procedures)]
        out += [self.condition(c, i) for i, c in enumerate(p.conditions)]
        out += [self.report(r, i) for i, r in enumerate(p.reports)]
        by_reference = sorted({m.drug for m in p.medications if m.as_reference})
        out += [self.medication(d, i) for i, d in enumerate(by_reference)]
        out += [self.medication_request(m, i) for i, m in enumerate(p.medications)]
        out += [self.administration(a, i, a.drug in by_reference)
                for i, a in enumerate(p.administrations)]
        out += [self.observation(o, i) for i, o in enumerate(p.observations)]
        return out


def build_patient(plan: PatientPlan, zone: ZoneInfo, seed: int) -> list[Built]:
    return Builder(plan, zone, seed).build()
