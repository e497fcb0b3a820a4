"""sources/capabilities.py: the one reader of a server's CapabilityStatement."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import responses

from fhir_spine.errors import ServerError
from fhir_spine.sources.capabilities import parse_capabilities, read_capabilities
from fhir_spine.sources.http import FhirClient

BASE = "https://ehr.example.org/fhir"


def statement(**extra) -> dict:
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "software": {"name": "HAPI FHIR Server", "version": "8.8.0"},
            "rest": [{"mode": "client", "interaction": [{"code": "history-system"}]},
                     {"mode": "server", "interaction": [{"code": "transaction"}],
                      "searchParam": [{"name": "_lastUpdated"}],
                      "operation": [{"name": "$export", "definition": "x"}],
                      "resource": [
                          {"type": "Patient", "interaction": [{"code": "search-type"},
                                                              {"code": "history-type"}],
                           "searchParam": [{"name": "_id"}],
                           "operation": [{"name": "export"}]},
                          {"type": "Procedure", "interaction": [{"code": "search-type"}],
                           "searchParam": [{"name": "patient"}, {"name": "code"}]}]}],
            **extra}


def test_parse_reads_only_the_server_rest_entries():
    caps = parse_capabilities(statement())
    assert caps.is_r4 and caps.software == "HAPI FHIR Server 8.8.0"
    assert caps.interactions == {"transaction"}
    assert not caps.history_system  # declared for mode client only
    assert caps.history_types == {"Patient"}
    assert caps.offers_history(("Patient",)) and not caps.offers_history(("Patient",
                                                                           "Procedure"))
    assert caps.export_levels == ["system", "patient"]
    assert caps.search_params_of("Procedure") == {"patient", "code", "_lastUpdated"}
    assert caps.search_params_of("Observation") == {"_lastUpdated"}


@responses.activate
def test_read_takes_the_server_clock_and_refuses_non_r4():
    responses.get(f"{BASE}/metadata", json=statement(),
                  headers={"Date": "Sun, 01 Jun 2025 12:00:00 GMT"})
    caps = read_capabilities(FhirClient(BASE))
    assert caps.server_time == datetime(2025, 6, 1, 12, tzinfo=UTC)
    responses.replace(responses.GET, f"{BASE}/metadata", json=statement(fhirVersion="5.0.0"))
    with pytest.raises(ServerError, match="speaks FHIR 5.0.0"):
        read_capabilities(FhirClient(BASE))
    assert read_capabilities(FhirClient(BASE), r4_only=False).fhir_version == "5.0.0"
    responses.replace(responses.GET, f"{BASE}/metadata", json={"resourceType": "Bundle"})
    with pytest.raises(ServerError, match="not a CapabilityStatement"):
        read_capabilities(FhirClient(BASE))
