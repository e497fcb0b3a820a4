"""One patient's clinical timeline: traits in, dated events (the plan) out.

Day offsets are counted from the index biopsy day B. The order of the care pathway is
built in: biopsy, (stabilization), pathology report(s), definitive therapy, with the
scores taken before the biopsy and when the diagnosis became available. Decoys and
messy renderings are not made here; `variants.py` adds them afterwards.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from fhir_spine.synth import clock
from fhir_spine.synth.model import (
    ConditionPlan,
    EncounterPlan,
    MedicationPlan,
    ObservationPlan,
    PatientPlan,
    ProcedurePlan,
    ReportPlan,
    Traits,
    When,
)
from fhir_spine.synth.vocab import (
    BIOPSY_PCS,
    CPT_LONG_CONSTRUCT,
    FINDING_INSUFFICIENT,
    FINDING_NON_NEOPLASTIC,
    LESION_CODES,
    METASTASIS_ELSEWHERE,
    NON_NEOPLASTIC_CONDITIONS,
    PAIN_REASONS,
    PROCEDURE_CODES,
    SINS_COMPONENTS,
    SITE_LUNG,
    Code,
)

# Missing-measure flavours whose baseline must sit more than 14 days from the diagnosis.
_FAR_BASELINE = ("diagnosis-sosgoq-missing", "diagnosis-vas-late")


def biopsy_codes(rng: random.Random, levels: tuple[str, ...]) -> tuple[Code, ...]:
    """One coding, as one site or another would record a vertebral core biopsy."""
    local, cpt, sct_biopsy, sct_trephine = PROCEDURE_CODES["biopsy"]
    pcs = BIOPSY_PCS[levels[0][0]]
    return (rng.choices([local, cpt, sct_biopsy, pcs, sct_trephine],
                        weights=[40, 20, 15, 15, 10])[0],)


def stabilization_codes(rng: random.Random, levels: tuple[str, ...]) -> tuple[Code, ...]:
    local, cpt, screw, fixation = PROCEDURE_CODES["stabilization"]
    if len(levels) >= 7:
        cpt = CPT_LONG_CONSTRUCT
    return (rng.choices([local, cpt, screw, fixation], weights=[40, 20, 25, 15])[0],)


class Timeline:
    """Builds the plan's events for one patient; each method adds one part of the pathway."""

    def __init__(self, plan: PatientPlan, traits: Traits, rng: random.Random) -> None:
        self.plan = plan
        self.t = traits
        self.rng = rng
        self.b = traits.biopsy_day
        self.therapy = traits.days_to_therapy  # offset from B, None without therapy
        self.diagnosis: int | None = None  # offset of the conclusive report
        self.busy: set[int] = set()  # day offsets inside a stay (readmissions avoid them)

    def day(self, offset: int) -> date:
        return self.b + timedelta(days=offset)

    def between(self, offset: int, first_hour: int, last_hour: int) -> When:
        return clock.between(self.rng, self.day(offset), first_hour, last_hour)

    # ------------------------------------------------------------------ entry point
    def build(self) -> PatientPlan:
        if self.t.biopsy != "done":
            self._no_biopsy()
        else:
            self._index_biopsy()
            if self.t.group == "single-stage":
                self._single_stage()
            elif self.t.group == "staged":
                self._staged()
            self._pathology()
            self._therapy()
            self._conditions()
            self._adverse_events()
        self._observations()
        return self.plan

    # ------------------------------------------------------------------ encounters
    def _stay(self, key: str, purpose: str, first: int, last: int, cls: str = "IMP",
              priority: str | None = None, reason: Code | None = None) -> EncounterPlan:
        enc = EncounterPlan(
            key, cls, self.between(first, 6, 8), self.between(last, 10, 14), purpose,
            priority=priority, reason=reason, pain=reason in PAIN_REASONS,
        )
        self.plan.encounters.append(enc)
        self.busy.update(range(first, last + 1))
        return enc

    def _admission_reason(self) -> Code | None:
        # The index admission is often for pain: a decoy for "pain readmission" rules,
        # which must skip the encounter of a pathway procedure.
        return self.rng.choice(PAIN_REASONS) if self.rng.random() < 0.3 else None

    # ------------------------------------------------------------------ procedures
    def _index_biopsy(self) -> None:
        t = self.t
        discharge = self.rng.randint(2, 3) if t.group == "single-stage" else self.rng.randint(1, 2)
        if t.days_to_stabilization is not None:  # home before the staged stabilization stay
            discharge = min(discharge, t.days_to_stabilization - 1)
        self._stay("enc-index", "index", 0, discharge, reason=self._admission_reason())
        start = self.between(0, 9, 13)
        in_encounter = t.basis not in ("time-window", "time-window-before")
        self.plan.procedures.append(ProcedurePlan(
            "biopsy-1", "biopsy", start, start.shifted(timedelta(minutes=25)),
            biopsy_codes(self.rng, t.lesion_levels), levels=t.lesion_levels,
            encounter="enc-index" if in_encounter else None,
        ))

    def _stabilization(self, start: When, minutes: int, encounter: str | None,
                       part_of: str | None = None) -> ProcedurePlan:
        proc = ProcedurePlan(
            "stabilization-1", "stabilization", start, start.shifted(timedelta(minutes=minutes)),
            stabilization_codes(self.rng, self.t.construct), levels=self.t.construct,
            encounter=encounter, part_of=part_of,
        )
        self.plan.procedures.append(proc)
        return proc

    def _single_stage(self) -> None:
        """Same session: shared encounter, `partOf`, or only the clock links them."""
        biopsy = self.plan.procedure("biopsy-1")
        assert biopsy.end is not None  # noqa: S101 - built with an end just above
        basis = self.t.basis
        if basis == "time-window-before":
            lead = self.rng.randint(30, 60)
            start = biopsy.start.shifted(timedelta(minutes=-lead))
            self._stabilization(start, lead - 5, None)
            self.plan.variants.add("stabilization-before-biopsy")
            return
        start = biopsy.end.shifted(timedelta(minutes=self.rng.randint(10, 25)))
        minutes = self.rng.randint(40, 100)
        if basis == "same-encounter":
            self._stabilization(start, minutes, "enc-index")
        elif basis == "part-of":
            self._stabilization(start, minutes, None, part_of="biopsy-1")
        else:
            self._stabilization(start, minutes, None)

    def _staged(self) -> None:
        t = self.t
        s = t.days_to_stabilization
        assert s is not None  # noqa: S101 - staged traits always carry the interval
        if t.unplanned:
            reason = self.rng.choice(PAIN_REASONS) if self.rng.random() < 0.5 else None
            enc = self._stay("enc-stabilization", "stabilization", s, s + self.rng.randint(2, 3),
                             priority="EM", reason=reason)
            enc.start = self.between(s, 1, 5)
            start = self.between(s, 8, 12)
        else:
            priority = "R" if self.rng.random() < 0.5 else None
            self._stay("enc-stabilization", "stabilization", s, s + self.rng.randint(2, 3),
                       priority=priority)
            start = self.between(s, 9, 14)
        proc = self._stabilization(start, self.rng.randint(40, 100), "enc-stabilization")
        if t.decompression:
            begin = proc.start.shifted(timedelta(minutes=50))
            self.plan.procedures.append(ProcedurePlan(
                "decompression-1", "decompression", begin, begin.shifted(timedelta(hours=1)),
                (self.rng.choice(PROCEDURE_CODES["decompression"]),),
                levels=t.lesion_levels, encounter="enc-stabilization",
            ))

    # ------------------------------------------------------------------ pathology
    def _finding(self) -> tuple[str, tuple[Code, ...], str]:
        t = self.t
        if t.histology == "non-neoplastic":
            return "non-neoplastic", (FINDING_NON_NEOPLASTIC,), (
                "No neoplasm identified. Acute and chronic osteomyelitis.")
        if t.histology == "insufficient":
            return "insufficient", (FINDING_INSUFFICIENT,), (
                "Crushed and haemorrhagic material; insufficient for diagnosis.")
        assert t.tumour is not None  # noqa: S101 - tumour histology implies a tumour
        codes = t.tumour.conclusion
        if t.tumour.group in ("solid-metastasis", "other") and self.rng.random() < 0.3:
            codes = (*codes, LESION_CODES[0])
        return "tumour", codes, f"Vertebral core biopsy: {t.tumour.code.display}."

    def _report(self, n: int, biopsy: ProcedurePlan, offset: int, finding: str,
                codes: tuple[Code, ...], text: str) -> None:
        style = self.rng.choices(["11529-5", "22637-3", "60568-3", "SP"], [50, 25, 10, 15])[0]
        group = self.t.tumour.group if finding == "tumour" and self.t.tumour else None
        self.plan.reports.append(ReportPlan(
            f"report-{n}", self.between(offset, 8, 17), biopsy.start, finding, codes, text,
            code_style=style, tumour_group=group,
        ))

    def _pathology(self) -> None:
        t = self.t
        finding, codes, text = self._finding()
        biopsy = self.plan.procedure("biopsy-1")
        latest = min(14, self.therapy - 1) if self.therapy else 14
        if not t.repeat_biopsy:
            earliest = 9 if t.missing_measure in _FAR_BASELINE else 5
            offset = self.rng.randint(earliest, max(earliest, latest))
            self._report(1, biopsy, offset, finding, codes, text)
            self.diagnosis = offset if finding != "insufficient" else None
            return
        first = self.rng.randint(4, 6)
        self._report(1, biopsy, first, "insufficient", (FINDING_INSUFFICIENT,),
                     "Scant material; insufficient for diagnosis. Repeat biopsy advised.")
        redo = first + self.rng.randint(1, 3)
        while redo in self.busy:  # a day case, not inside another stay
            redo += 1
        self._stay("enc-repeat-biopsy", "repeat-biopsy", redo, redo, cls="AMB")
        start = self.between(redo, 9, 12)
        repeat = ProcedurePlan(
            "biopsy-2", "biopsy", start, start.shifted(timedelta(minutes=25)),
            biopsy_codes(self.rng, t.lesion_levels), levels=t.lesion_levels,
            encounter="enc-repeat-biopsy",
        )
        self.plan.procedures.append(repeat)
        last = min(10, self.therapy - 1 - redo) if self.therapy else 10
        offset = redo + self.rng.randint(5, max(5, last))
        if t.repeat_insufficient:
            self._report(2, repeat, offset, "insufficient", (FINDING_INSUFFICIENT,),
                         "Repeat sample again insufficient for diagnosis.")
            return
        self._report(2, repeat, offset, finding, codes, text)
        self.diagnosis = offset

    # ------------------------------------------------------------------ therapy
    def _systemic(self, offset: int) -> None:
        t = self.t
        assert t.tumour is not None  # noqa: S101 - systemic therapy needs a diagnosis
        drugs = list(t.tumour.drugs)
        chosen = [self.rng.choice(drugs)]
        others = [d for d in drugs if d != chosen[0]]
        if others and self.rng.random() < 0.25:
            chosen.append(self.rng.choice(others))
        n = sum(m.key.startswith("medreq-systemic-") for m in self.plan.medications)
        with_bounds = self.rng.random() < 0.75
        for k, drug in enumerate(chosen, start=n + 1):
            if with_bounds:
                authored = self.between(offset - self.rng.randint(0, 4), 10, 16)
                start: When | None = clock.on(self.day(offset))
            else:
                authored, start = self.between(offset, 9, 15), None
            self.plan.medications.append(MedicationPlan(
                f"medreq-systemic-{k}", drug, authored, start,
                status=self.rng.choice(["active", "active", "completed"]),
                with_rxnorm=self.rng.random() < 0.7,
            ))

    def _radiotherapy(self, offset: int) -> None:
        n = sum(p.kind == "radiotherapy" for p in self.plan.procedures) + 1
        codes = PROCEDURE_CODES["radiotherapy"]
        code = self.rng.choices(codes, weights=[50, 15, 20, 15])[0]
        days = self.rng.randint(1, 4) if code.code == "stereotactic-body-radiotherapy" else (
            self.rng.randint(7, 14))
        start = self.between(offset, 8, 12)
        self.plan.procedures.append(ProcedurePlan(
            f"radiotherapy-{n}", "radiotherapy", start, start.shifted(timedelta(days=days)),
            (code,), levels=self.t.lesion_levels,
        ))

    def _surgery(self, kind: str, offset: int) -> None:
        key = f"enc-{kind}"
        self._stay(key, "surgery", offset - 1, offset + self.rng.randint(4, 7))
        start = self.between(offset, 8, 11)
        self.plan.procedures.append(ProcedurePlan(
            f"{kind}-1", kind, start, start.shifted(timedelta(hours=3)),
            (self.rng.choice(PROCEDURE_CODES[kind]),), levels=self.t.lesion_levels,
            encounter=key,
        ))

    def _therapy(self) -> None:
        t, rng, d = self.t, self.rng, self.therapy
        if t.histology == "non-neoplastic" and self.diagnosis is not None:
            # Infection: antibiotics, which are no definitive oncologic therapy.
            self.plan.medications.append(MedicationPlan(
                "medreq-antibiotic-1", "cefazolin", self.between(self.diagnosis, 12, 16),
                clock.on(self.day(self.diagnosis + 1)), status="completed"))
        if d is None or t.modality == "none":
            return
        if t.modality == "sys+rt":
            if rng.random() < 0.7:
                self._systemic(d)
                self._radiotherapy(d + rng.randint(3, 21))
            else:
                self._radiotherapy(d)
                self._systemic(d + rng.randint(5, 25))
        elif t.modality == "sys":
            self._systemic(d)
            if rng.random() < 0.25:  # consolidation radiotherapy, outside the 30-day window
                self._radiotherapy(d + rng.randint(40, 70))
        elif t.modality == "rt":
            self._radiotherapy(d)
        elif t.modality == "neoadjuvant-resection":
            self._systemic(d)
            self._surgery("resection", d + rng.randint(40, 75))
        elif t.modality == "resection":
            self._surgery("resection", d)
            if rng.random() < 0.5:
                self._radiotherapy(d + rng.randint(35, 60))
        elif t.modality == "separation+rt":
            self._surgery("separation", d)
            self._radiotherapy(d + rng.randint(12, 28))
        else:
            raise ValueError(f"unknown modality {t.modality}")

    # ------------------------------------------------------------------ conditions
    def _conditions(self) -> None:
        t = self.t
        if self.diagnosis is None:
            return
        onset = clock.on(self.day(self.diagnosis))
        recorded = self.between(self.diagnosis, 17, 19)
        if t.histology == "non-neoplastic":
            region = t.lesion_levels[0][0]
            code = NON_NEOPLASTIC_CONDITIONS.get(region, NON_NEOPLASTIC_CONDITIONS["fracture"])
            self.plan.conditions.append(ConditionPlan(
                "condition-benign", "benign", "non-neoplastic", code, onset, recorded,
                levels=t.lesion_levels))
            return
        tumour = t.tumour
        assert tumour is not None  # noqa: S101 - a conclusive neoplastic report has one
        lesion_on_primary = tumour.group in ("haematological", "primary-bone")
        self.plan.conditions.append(ConditionPlan(
            "condition-primary", "primary", f"tumour-{tumour.group}", tumour.code, onset,
            recorded, levels=t.lesion_levels if lesion_on_primary else ()))
        if not lesion_on_primary:
            code = LESION_CODES[0] if self.rng.random() < 0.8 else LESION_CODES[1]
            self.plan.conditions.append(ConditionPlan(
                "condition-lesion", "lesion", "secondary-malignancy", code, onset, recorded,
                levels=t.lesion_levels))
        if t.metastatic_outside:
            count = 2 if self.rng.random() < 0.25 else 1
            for k, (code, site) in enumerate(self.rng.sample(METASTASIS_ELSEWHERE, count), 1):
                staged_on = self.between(-self.rng.randint(1, 10), 10, 16)
                self.plan.conditions.append(ConditionPlan(
                    f"condition-metastasis-{k}", "metastasis", "secondary-malignancy", code,
                    clock.on(staged_on.local.date()), staged_on, site=site))

    # ------------------------------------------------------------------ adverse events
    def _adverse_events(self) -> None:
        t = self.t
        if t.revision:
            assert self.therapy is not None  # noqa: S101 - included patients have therapy
            day = self.rng.randint(4, max(4, min(8, self.therapy - 2)))
            self._stay("enc-revision", "revision", day, day + 2)
            start = self.between(day, 9, 12)
            self.plan.procedures.append(ProcedurePlan(
                "revision-1", "revision", start, start.shifted(timedelta(minutes=70)),
                (self.rng.choice(PROCEDURE_CODES["revision"]),), levels=t.lesion_levels,
                encounter="enc-revision"))
        if t.pain_readmission:
            self._pain_readmission()

    def _pain_readmission(self) -> None:
        """An emergency visit or admission for pain between the index stay and therapy."""
        assert self.therapy is not None  # noqa: S101 - included patients have therapy
        candidates = [d for d in range(1, self.therapy - 1)
                      if not ({d - 1, d, d + 1, d + 2} & self.busy)]
        if not candidates:
            raise ValueError(f"{self.plan.pid}: no room for a pain readmission")
        day = self.rng.choice(candidates)
        emergency = self.rng.random() < 0.6
        length = 0 if emergency else 1
        enc = self._stay("enc-readmission-1", "readmission", day, day + length,
                         cls="EMER" if emergency else "IMP", reason=self.rng.choice(PAIN_REASONS))
        enc.start = self.between(day, 17, 19)
        enc.end = enc.start.shifted(timedelta(hours=4)) if emergency else self.between(
            day + length, 10, 13)

    # ------------------------------------------------------------------ no index biopsy
    def _no_biopsy(self) -> None:
        """Screened, admitted, but no completed vertebral biopsy (only a decoy record)."""
        t = self.t
        self._stay("enc-index", "index", 0, self.rng.randint(1, 3), reason=self._admission_reason())
        start = self.between(0, 9, 13)
        end = start.shifted(timedelta(minutes=25))
        if t.biopsy == "non-vertebral":
            # A generic SNOMED biopsy code counts as vertebral only with a vertebral site.
            self.plan.procedures.append(ProcedurePlan(
                "biopsy-lung-1", "other-biopsy", start, end, (PROCEDURE_CODES["biopsy"][2],),
                site=SITE_LUNG, encounter="enc-index"))
            self.plan.variants.add("non-vertebral-biopsy")
        else:
            self.plan.procedures.append(ProcedurePlan(
                "biopsy-1", "biopsy", start, end, biopsy_codes(self.rng, t.lesion_levels),
                status=t.biopsy, levels=t.lesion_levels, encounter="enc-index"))
            self.plan.variants.add(t.biopsy)

    # ------------------------------------------------------------------ observations
    def _observe(self, key: str, measure: str, value: float, when: When, style: str = "default"
                 ) -> None:
        self.plan.observations.append(ObservationPlan(key, measure, value, when, style=style))

    def _proms(self, tag: str, when: When, vas: float | None, sosgoq: dict[str, float] | None
               ) -> None:
        if vas is not None:
            self._observe(f"obs-vas-{tag}", "vas", vas, when)
        for domain, value in (sosgoq or {}).items():
            self._observe(f"obs-sosgoq-{domain}-{tag}", f"sosgoq_{domain}", value, when)

    def _observations(self) -> None:
        t, rng, s = self.t, self.rng, self.t.scores
        missing = t.missing_measure
        with_sosgoq = missing != "no-sosgoq"
        baseline_sosgoq = {d: v[0] for d, v in s.sosgoq.items()} if with_sosgoq else None
        gap = rng.randint(6, 7) if missing in _FAR_BASELINE else rng.randint(1, 7)
        when = self.between(-gap, 8, 17)
        self._proms("baseline", when, None if missing == "baseline-vas-outside-lookback"
                    else s.vas[0], baseline_sosgoq)
        if missing == "baseline-vas-outside-lookback":
            self._observe("obs-vas-preadmission", "vas", s.vas[0],
                          self.between(-rng.randint(100, 130), 9, 16))
        self._baseline_clinical()
        if self.diagnosis is not None:
            self._at_diagnosis()
        self._follow_up()

    def _baseline_clinical(self) -> None:
        s, rng = self.t.scores, self.rng
        imaging = self.between(-rng.randint(1, 7), 8, 18)
        total_style = "quantity" if rng.random() < 0.2 else "integer"
        self._observe("obs-sins-total", "sins_total", sum(s.sins.values()), imaging, total_style)
        for component in ("sins_location", *SINS_COMPONENTS):
            self._observe(f"obs-{component.replace('_', '-')}", component, s.sins[component],
                          imaging, "integer")
        clinic = self.between(-rng.randint(1, 5), 9, 16)
        self._observe("obs-ecog", "ecog", s.ecog, clinic,
                      "code" if rng.random() < 0.5 else "integer")
        self._observe("obs-asa", "asa", s.asa, clinic,
                      "code" if rng.random() < 0.6 else "integer")

    def _at_diagnosis(self) -> None:
        t, s, rng = self.t, self.t.scores, self.rng
        assert self.diagnosis is not None  # noqa: S101 - caller checked
        report = max(self.plan.reports, key=lambda r: r.issued.sort_key())
        lag = rng.randint(0, 3)
        if lag == 0:
            when = report.issued.shifted(timedelta(hours=rng.randint(1, 3)))
        else:
            when = self.between(self.diagnosis + lag, 8, 17)
        vas: float | None = s.vas[1]
        if t.missing_measure == "diagnosis-vas-late":
            vas = None
            self._observe("obs-vas-late", "vas", s.vas[1],
                          self.between(self.diagnosis + rng.randint(20, 25), 9, 16))
        sosgoq = {d: v[1] for d, v in s.sosgoq.items()}
        if t.missing_measure in ("diagnosis-sosgoq-missing", "no-sosgoq"):
            sosgoq = {}
        self._proms("diagnosis", when, vas, sosgoq)

    def _follow_up(self) -> None:
        """Later scores, well outside every window: realistic noise the rules must skip."""
        rng, s = self.rng, self.t.scores
        if rng.random() < 0.3 and self.t.biopsy == "done" and self.t.missing_measure is None:
            when = self.between(-rng.randint(20, 60), 9, 16)
            older = {"total": round(min(100.0, s.sosgoq["total"][0] + rng.uniform(2, 8)), 1)}
            self._proms("earlier", when, round(max(0.0, s.vas[0] - rng.uniform(0.5, 2.0)), 1),
                        older if self.t.missing_measure != "no-sosgoq" else None)
        if rng.random() < 0.5:
            anchor = self.therapy if self.therapy is not None else (self.diagnosis or 0)
            when = self.between(anchor + rng.randint(30, 90), 9, 16)
            later = {"total": round(min(100.0, s.sosgoq["total"][1] + rng.uniform(3, 12)), 1)}
            self._proms("follow-up", when, round(max(0.0, s.vas[1] - rng.uniform(0.5, 2.5)), 1),
                        later if self.t.missing_measure != "no-sosgoq" else None)


def plan_patient(plan: PatientPlan, traits: Traits, rng: random.Random) -> PatientPlan:
    """Fill `plan` with the events its traits imply."""
    return Timeline(plan, traits, rng).build()
