"""Sources yield raw FHIR resources (plain dicts) with their origin, nothing more."""
