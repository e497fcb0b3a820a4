"""Shared pytest configuration for fhir-spine."""

# --- FHIR test servers (tests/servers, issue 3) ----------------------------------------------
# Session-scoped fixtures hapi_server, sekmet_server and the parametrized fhir_server; see
# tests/servers/fixtures.py and tests/servers/README.md.
try:  # tests/ as a package (tests/__init__.py present) or as a plain directory on sys.path
    from tests.servers.fixtures import fhir_server, hapi_server, sekmet_server  # noqa: F401
except ModuleNotFoundError:
    from servers.fixtures import fhir_server, hapi_server, sekmet_server  # noqa: F401
# --- end FHIR test servers --------------------------------------------------------------------
