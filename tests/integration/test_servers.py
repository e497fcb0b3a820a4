"""The FHIR test servers themselves, over plain HTTP: what the adapter relies on works on both.

Each test runs once against HAPI FHIR JPA and once against sekmet-fhir (``fhir_server``).
Every test makes its own data (a fresh Patient and a unique Observation code), so tests do not
depend on each other or on an empty server.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

pytestmark = pytest.mark.integration

FHIR_JSON = "application/fhir+json"
HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
LOINC = "http://loinc.org"
TIMEOUT = 60
EXPORT_TIMEOUT = 180  # seconds for one $export to complete
MAX_RETRY_AFTER = 10  # honour Retry-After, but never sleep longer than this per poll


# -- helpers -----------------------------------------------------------------------------------
def _uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _unique_code() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _observation(patient_ref: str, code: str, day: int) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": "test observation"}]},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": f"2024-03-{day:02d}T10:00:00Z",
        "valueQuantity": {
            "value": day,
            "unit": "mg",
            "system": "http://unitsofmeasure.org",
            "code": "mg",
        },
    }


def load_patient_with_observations(base: str, n_obs: int, code: str, family: str = "Spine") -> dict:
    """POST one transaction Bundle: a Patient plus n_obs Observations that reference it."""
    patient_full_url = _uuid()
    entries = [
        {
            "fullUrl": patient_full_url,
            "resource": {
                "resourceType": "Patient",
                "name": [{"family": family, "given": ["Test"]}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(n_obs):
        entries.append(
            {
                "fullUrl": _uuid(),
                "resource": _observation(patient_full_url, code, (i % 28) + 1),
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = requests.post(base, json=bundle, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:2000]
    response = r.json()
    assert response["resourceType"] == "Bundle"
    assert response["type"] == "transaction-response"
    assert len(response["entry"]) == n_obs + 1
    ids = []
    for entry in response["entry"]:
        assert entry["response"]["status"].startswith("201"), entry["response"]
        # "Observation/123/_history/1" (HAPI) or an absolute URL (allowed by the spec)
        location = entry["response"]["location"]
        parts = location.split("/_history")[0].split("/")
        ids.append((parts[-2], parts[-1]))
    assert ids[0][0] == "Patient"
    assert all(rtype == "Observation" for rtype, _ in ids[1:])
    return {"patient_id": ids[0][1], "observation_ids": [i for _, i in ids[1:]]}


def search_all_pages(
    url: str, params: dict | None = None, max_pages: int = 100
) -> tuple[list[dict], int]:
    """GET a search and follow its ``next`` links to the end; return (entries, pages)."""
    entries: list[dict] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        r = requests.get(
            next_url, params=params if pages == 0 else None, headers=HEADERS, timeout=TIMEOUT
        )
        assert r.status_code == 200, r.text[:2000]
        bundle = r.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        entries += bundle.get("entry", [])
        pages += 1
        assert pages <= max_pages, "too many pages: the next links do not end"
        next_url = next(
            (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None
        )
    return entries, pages


def ids_of(entries: list[dict], resource_type: str) -> list[str]:
    return [e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == resource_type]


def server_instant(base: str, resource_type: str, rid: str) -> datetime:
    r = requests.get(f"{base}/{resource_type}/{rid}", headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:500]
    return datetime.fromisoformat(r.json()["meta"]["lastUpdated"].replace("Z", "+00:00"))


def fhir_instant(t: datetime) -> str:
    """UTC instant with milliseconds and a Z, e.g. 2024-03-01T10:00:00.000Z."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def bulk_export(base: str, path: str, params: dict[str, str]) -> dict[str, list[dict]]:
    """Kick off an async $export, poll its status (honouring Retry-After), download the NDJSON.

    Returns the exported resources by type.
    """
    kick = requests.get(
        f"{base}/{path}",
        params=params,
        headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
        timeout=TIMEOUT,
    )
    assert kick.status_code == 202, kick.text[:2000]
    status_url = kick.headers["Content-Location"]
    assert status_url.startswith(base.split("/fhir")[0])

    deadline = time.monotonic() + EXPORT_TIMEOUT
    while True:
        status = requests.get(status_url, headers={"Accept": "application/json"}, timeout=TIMEOUT)
        if status.status_code != 202:
            break
        assert time.monotonic() < deadline, f"$export not complete after {EXPORT_TIMEOUT} s"
        retry_after = status.headers.get("Retry-After", "1")
        delay = float(retry_after) if retry_after.strip().isdigit() else 1.0
        time.sleep(min(max(delay, 0.2), MAX_RETRY_AFTER))
    assert status.status_code == 200, status.text[:2000]
    manifest = status.json()
    assert manifest["transactionTime"]
    assert manifest["request"]
    assert isinstance(manifest["output"], list)

    exported: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        f = requests.get(
            item["url"], headers={"Accept": "application/fhir+ndjson"}, timeout=TIMEOUT
        )
        assert f.status_code == 200, f.text[:500]
        assert "ndjson" in f.headers.get("Content-Type", ""), f.headers.get("Content-Type")
        lines = [line for line in f.text.splitlines() if line.strip()]
        resources = [json.loads(line) for line in lines]
        assert all(res["resourceType"] == item["type"] for res in resources)
        exported.setdefault(item["type"], []).extend(resources)
    return exported


# -- tests -------------------------------------------------------------------------------------
def test_capability_statement(fhir_server):
    r = requests.get(fhir_server.url("metadata"), headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    types = {res["type"] for rest in cs["rest"] for res in rest.get("resource", [])}
    assert {"Patient", "Observation", "Group"} <= types


def test_transaction_then_paged_search_follows_next_links(fhir_server):
    base = fhir_server.base_url
    code = _unique_code()
    loaded = load_patient_with_observations(base, n_obs=27, code=code)
    # Observations of another code for the same patient must not show up.
    other = _unique_code()
    r = requests.post(
        f"{base}/Observation",
        json=_observation(f"Patient/{loaded['patient_id']}", other, 1),
        headers=HEADERS,
        timeout=TIMEOUT,
    )
    assert r.status_code == 201, r.text[:1000]

    entries, pages = search_all_pages(
        f"{base}/Observation",
        {"patient": f"Patient/{loaded['patient_id']}", "code": f"{LOINC}|{code}", "_count": "5"},
    )
    seen = ids_of(entries, "Observation")
    assert pages == 6  # 27 results, 5 per page
    assert len(seen) == len(set(seen)), "an id was returned twice"
    assert sorted(seen) == sorted(loaded["observation_ids"])


def test_search_by_date_last_updated_and_include(fhir_server):
    base = fhir_server.base_url
    before = datetime.now(UTC) - timedelta(minutes=5)
    code = _unique_code()
    loaded = load_patient_with_observations(base, n_obs=10, code=code)
    token = f"{LOINC}|{code}"

    # date: days 1..10 of March 2024; ge2024-03-06 keeps 6..10
    entries, _ = search_all_pages(
        f"{base}/Observation", {"code": token, "date": "ge2024-03-06", "_count": "50"}
    )
    assert len(ids_of(entries, "Observation")) == 5

    # _lastUpdated: all ten were written after `before`, none after tomorrow
    entries, _ = search_all_pages(
        f"{base}/Observation", {"code": token, "_lastUpdated": f"ge{fhir_instant(before)}"}
    )
    assert len(ids_of(entries, "Observation")) == 10
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    entries, _ = search_all_pages(
        f"{base}/Observation", {"code": token, "_lastUpdated": f"ge{fhir_instant(tomorrow)}"}
    )
    assert ids_of(entries, "Observation") == []

    # _include brings the referenced Patient along
    entries, _ = search_all_pages(
        f"{base}/Observation",
        {
            "subject": f"Patient/{loaded['patient_id']}",
            "_include": "Observation:subject",
            "_count": "50",
        },
    )
    assert len(ids_of(entries, "Observation")) == 10
    assert ids_of(entries, "Patient") == [loaded["patient_id"]]


def test_bulk_export_system_patient_and_group_level(fhir_server):
    base = fhir_server.base_url
    code_a, code_b = _unique_code(), _unique_code()
    first = load_patient_with_observations(base, n_obs=3, code=code_a, family="ExportA")
    # _since: a moment after the first batch, on the server's clock
    since = server_instant(base, "Patient", first["patient_id"]) + timedelta(milliseconds=500)
    time.sleep(1.2)
    second = load_patient_with_observations(base, n_obs=4, code=code_b, family="ExportB")
    assert server_instant(base, "Patient", second["patient_id"]) > since

    # System level, with _type and _since: the second batch only.
    exported = bulk_export(
        base, "$export", {"_type": "Patient,Observation", "_since": fhir_instant(since)}
    )
    obs_ids = {o["id"] for o in exported.get("Observation", [])}
    patient_ids = {p["id"] for p in exported.get("Patient", [])}
    assert set(second["observation_ids"]) <= obs_ids
    assert second["patient_id"] in patient_ids
    assert not set(first["observation_ids"]) & obs_ids
    assert first["patient_id"] not in patient_ids
    exported_codes = {o["code"]["coding"][0]["code"] for o in exported["Observation"]}
    assert code_a not in exported_codes and code_b in exported_codes

    # Patient level, _type=Observation: every patient's Observations, ours included.
    exported = bulk_export(base, "Patient/$export", {"_type": "Observation"})
    assert set(exported) == {"Observation"}
    obs_ids = {o["id"] for o in exported["Observation"]}
    assert set(first["observation_ids"]) | set(second["observation_ids"]) <= obs_ids

    # Group level: only the members' data.
    group = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{first['patient_id']}"}}],
    }
    r = requests.post(f"{base}/Group", json=group, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 201, r.text[:1000]
    group_id = r.headers["Location"].split("/_history")[0].rstrip("/").split("/")[-1]
    exported = bulk_export(base, f"Group/{group_id}/$export", {"_type": "Patient,Observation"})
    assert {p["id"] for p in exported["Patient"]} == {first["patient_id"]}
    assert {o["id"] for o in exported["Observation"]} == set(first["observation_ids"])
    for obs in exported["Observation"]:
        assert obs["subject"]["reference"].endswith(f"Patient/{first['patient_id']}")
