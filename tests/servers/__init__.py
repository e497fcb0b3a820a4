"""Real FHIR servers for the test suite (issue 3): HAPI FHIR JPA and sekmet-fhir."""
