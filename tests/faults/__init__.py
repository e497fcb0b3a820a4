"""Fault injection for the integration tests: `proxy.FaultProxy` sits between fhir-spine and a
real test FHIR server (127.0.0.1 only) and breaks chosen requests on purpose."""
