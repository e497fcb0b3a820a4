"""fhir-spine: reproducible spinal oncology care-pathway analysis from FHIR R4."""

__version__ = "0.1.0"
