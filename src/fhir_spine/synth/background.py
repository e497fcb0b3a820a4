"""Irrelevant records around each synthetic patient: the bulk of a real export.

A hospital export is mostly vital signs, routine labs, unrelated visits and problems,
immunizations and allergies; almost nothing in it concerns the spine pathway. The scale
mode of `fhir-spine synth` (`--background N`) adds on average N such resources per
patient so that a benchmark reads a realistic mix. None of them can change a patient's
classification: their codes are ones no default concept maps (checked by a test),
Encounters are ambulatory, with no priority and no reason the pathway reads, and nothing
references them.

Deterministic: each patient's background has its own random stream, seeded from the
cohort seed and the patient's id, so it never shifts the pathway records of any patient.
Not validated per resource (the model round trip costs ~3 ms a resource, which would make
100,000 patients take hours): every shape here is validated by `tests/test_synth.py`.
"""

from __future__ import annotations

import random
from datetime import datetime, time, timedelta
from typing import Any

from fhir_spine.synth.build import Builder, Built, concept
from fhir_spine.synth.model import PatientPlan, When
from fhir_spine.synth.vocab import ACT_CODE, LOINC, OBS_CATEGORY, SCT, UCUM, Code

JSON = dict[str, Any]
CVX = "http://hl7.org/fhir/sid/cvx"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"

# (LOINC code, display, UCUM unit, low, high, category): none is a pathway measure.
VITALS_AND_LABS: tuple[tuple[str, str, str, float, float, str], ...] = (
    ("8867-4", "Heart rate", "/min", 55, 105, "vital-signs"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 170, "vital-signs"),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 100, "vital-signs"),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.2, "vital-signs"),
    ("29463-7", "Body weight", "kg", 45, 110, "vital-signs"),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 180, "laboratory"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 9, 16.5, "laboratory"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6,
     "laboratory"),
)
# Unrelated problems: no neoplasm, no spinal finding, no exclusion criterion.
CONDITIONS: tuple[Code, ...] = (
    Code(SCT, "38341003", "Hypertensive disorder"),
    Code(SCT, "44054006", "Diabetes mellitus type 2"),
    Code(SCT, "195967001", "Asthma"),
    Code(SCT, "55822004", "Hyperlipidemia"),
)
VACCINES: tuple[Code, ...] = (
    Code(CVX, "140", "Influenza, seasonal, injectable, preservative free"),
    Code(CVX, "208", "SARS-COV-2 (COVID-19) vaccine, mRNA, 30 mcg/0.3mL dose"),
    Code(CVX, "115", "Tdap"),
)
ALLERGENS: tuple[Code, ...] = (
    Code(SCT, "764146007", "Penicillin"),
    Code(SCT, "256349002", "Peanut"),
    Code(SCT, "227493005", "Cashew nut"),
)
# Kind weights: a realistic export is mostly observations.
KINDS: tuple[tuple[str, int], ...] = (
    ("observation", 70), ("encounter", 12), ("condition", 8), ("immunization", 6),
    ("allergy", 4),
)
TYPES: tuple[str, ...] = (
    "Observation", "Encounter", "Condition", "Immunization", "AllergyIntolerance",
)


def _anchor(plan: PatientPlan) -> datetime:
    """The patient's first pathway moment: background spreads around it."""
    moments = [e.start.local for e in plan.encounters] + \
        [p.start.local for p in plan.procedures]
    if moments:
        return min(moments)
    return datetime.combine(plan.birth_date, time(9)) + timedelta(days=365 * 60)


class _Background:
    def __init__(self, builder: Builder, rng: random.Random, anchor: datetime) -> None:
        self.b = builder
        self.rng = rng
        self.anchor = anchor

    def when(self) -> When:
        """A moment from three years before the first pathway moment to one after."""
        offset = timedelta(days=self.rng.randint(-3 * 365, 365),
                           minutes=self.rng.randint(0, 10 * 60))
        day = (self.anchor + offset).replace(hour=8, minute=0, second=0, microsecond=0)
        return When(day + timedelta(minutes=self.rng.randint(0, 10 * 60)))

    def emit(self, key: str, resource: JSON) -> Built:
        return Built(resource["resourceType"], self.b.uuid(key), resource)

    def observation(self, key: str, n: int) -> Built:
        code, display, unit, low, high, category = self.rng.choice(VITALS_AND_LABS)
        res = self.b.frame("Observation", key, n)
        res.update({
            "status": "final",
            "category": [concept(Code(OBS_CATEGORY, category))],
            "code": concept(Code(LOINC, code, display), text=display),
            "subject": self.b.subject(),
            "effectiveDateTime": self.b.dt(self.when()),
            "valueQuantity": {"value": round(self.rng.uniform(low, high), 1), "unit": unit,
                              "system": UCUM, "code": unit},
        })
        return self.emit(key, res)

    def encounter(self, key: str, n: int) -> Built:
        start = self.when()
        res = self.b.frame("Encounter", key, n)
        res.update({
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "subject": self.b.subject(),
            "period": {"start": self.b.dt(start),
                       "end": self.b.dt(start.shifted(timedelta(minutes=30)))},
        })
        return self.emit(key, res)

    def condition(self, key: str, n: int) -> Built:
        code = self.rng.choice(CONDITIONS)
        res = self.b.frame("Condition", key, n)
        res.update({
            "clinicalStatus": concept(Code(
                "http://terminology.hl7.org/CodeSystem/condition-clinical", "active")),
            "code": concept(code, text=code.display),
            "subject": self.b.subject(),
            "onsetDateTime": self.b.dt(self.when()),
        })
        return self.emit(key, res)

    def immunization(self, key: str, n: int) -> Built:
        code = self.rng.choice(VACCINES)
        res = self.b.frame("Immunization", key, n)
        res.update({
            "status": "completed",
            "vaccineCode": concept(code, text=code.display),
            "patient": self.b.subject(),
            "occurrenceDateTime": self.b.dt(self.when()),
        })
        return self.emit(key, res)

    def allergy(self, key: str, n: int) -> Built:
        code = self.rng.choice(ALLERGENS)
        res = self.b.frame("AllergyIntolerance", key, n)
        res.update({
            "clinicalStatus": concept(Code(ALLERGY_CLINICAL, "active")),
            "code": concept(code, text=code.display),
            "patient": self.b.subject(),
            "recordedDate": self.b.dt(self.when()),
        })
        return self.emit(key, res)


def background(builder: Builder, mean: int) -> list[Built]:
    """0..2*mean irrelevant resources for the builder's patient (uniform, so mean on average).

    Ids are `<pid>-bg-<k>` (uuids in the Bundle, as for the pathway records).
    """
    if mean <= 0:
        return []
    plan = builder.plan
    rng = random.Random(f"fhir-spine-synth/{builder.seed}/background/{plan.pid}")  # noqa: S311
    make = _Background(builder, rng, _anchor(plan))
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    out = []
    for k in range(rng.randint(0, 2 * mean)):
        kind = rng.choices(kinds, weights)[0]
        out.append(getattr(make, kind)(f"bg-{k}", k))
    return out
