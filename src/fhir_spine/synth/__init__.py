"""Deterministic synthetic cohort generator (`fhir-spine synth`).

Pipeline, one module per step: `cohort` (who is included, calibrated traits) and
`excluded` (who fails which rule) -> `timeline` (dated clinical plan) -> `variants`
(messy records and decoys) -> `truth` (the profile's rules on the plan) -> `build`
(validated FHIR R4 JSON) -> `write` (NDJSON / Bundle / ground truth files).
"""

from fhir_spine.synth.generate import Cohort, GenerationError, generate
from fhir_spine.synth.write import FILES, render_files, write_cohort

__all__ = ["FILES", "Cohort", "GenerationError", "generate", "render_files", "write_cohort"]
