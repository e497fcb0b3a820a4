"""Deterministic synthetic cohort generator (`fhir-spine synth`).

Pipeline, one module per step: `cohort` (who is included, calibrated traits) and
`excluded` (who fails which rule) -> `timeline` (dated clinical plan) -> `variants`
(messy records and decoys) -> `truth` (the profile's rules on the plan) -> `build`
(validated FHIR R4 JSON) -> `write` (NDJSON / Bundle / ground truth files).
"""

from fhir_spine.synth.generate import Cohort, CohortPlan, GenerationError, generate, plan_cohort
from fhir_spine.synth.write import BACKGROUND_FILES, FILES, render_files, write_cohort

__all__ = ["BACKGROUND_FILES", "FILES", "Cohort", "CohortPlan", "GenerationError", "generate",
           "plan_cohort", "render_files", "write_cohort"]
