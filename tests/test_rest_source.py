"""REST cohort pull: paging, loops, includes, cap windows, cohort search, batching.

`FakeFhir` is a few dozen lines of FHIR search semantics behind `responses` (nothing
leaves the machine): `_id`, `patient`, `code`, `_lastUpdated`, `_count`, HAPI-style
`_getpages` or `_offset` next links, and an optional paging cap like servers that stop
after N results. The real servers are exercised in tests/integration.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import responses

from fhir_spine.cli.server_options import add_server_options, server_source
from fhir_spine.errors import IncompletePull, ServerError, UsageError
from fhir_spine.fhir import reference_id
from fhir_spine.settings import load_mappings
from fhir_spine.sources.files import RawResource, ReadProblem
from fhir_spine.sources.http import FhirClient
from fhir_spine.sources.rest import RestSource, index_code_tokens, read_patient_list
from fhir_spine.sources.search import QueryLog, RestOptions, Searcher

BASE = "https://ehr.example.org/fhir"
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
SCT = "http://snomed.info/sct"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def no_sleep(seconds: float) -> None:
    pass


@pytest.fixture(scope="module")
def mappings():
    return load_mappings()


def client() -> FhirClient:
    return FhirClient(BASE, sleep=no_sleep)


def stamp(minute: int) -> str:
    return f"2025-01-01T10:{minute:02d}:00.000+00:00"


def resource(rtype: str, rid: str, minute: int = 0, **fields) -> dict:
    return {"resourceType": rtype, "id": rid, "meta": {"lastUpdated": stamp(minute)}, **fields}


def procedure(rid: str, patient: str, system: str, code: str, minute: int = 0) -> dict:
    return resource("Procedure", rid, minute, status="completed",
                    subject={"reference": f"Patient/{patient}"},
                    code={"coding": [{"system": system, "code": code}]})


def cohort() -> list[dict]:
    """p1 (local biopsy code), p2 (generic SNOMED biopsy: a `requires` code), p3 (none)."""
    out = [resource("Patient", p, i) for i, p in enumerate(("p1", "p2", "p3"))]
    out += [
        procedure("bx1", "p1", LOCAL, "vertebral-core-biopsy", 1),
        procedure("st1", "p1", LOCAL, "percutaneous-pedicle-screw-fixation", 2),
        procedure("bx2", "p2", SCT, "86273004", 3),
        procedure("ap3", "p3", SCT, "80146002", 4),
    ]
    for i, p in enumerate(("p1", "p2", "p3")):
        out.append(resource("Observation", f"vas-{p}", 10 + i, status="final",
                            subject={"reference": f"Patient/{p}"}))
        out.append(resource("Encounter", f"enc-{p}", 20 + i, status="finished",
                            subject={"reference": f"Patient/{p}"}))
    out += [
        resource("MedicationRequest", "mr1", 30, subject={"reference": "Patient/p1"},
                 medicationReference={"reference": "Medication/m1"}),
        resource("MedicationAdministration", "ma2", 31, subject={"reference": "Patient/p2"},
                 medicationReference={"reference": f"{BASE}/Medication/m2/_history/3"}),
        resource("MedicationRequest", "mr2", 32, subject={"reference": "Patient/p2"},
                 medicationReference={"reference": "Medication/m1"}),
        resource("Medication", "m1", 40), resource("Medication", "m2", 41),
        resource("Medication", "m3-unused", 42),
        resource("Condition", "c1", 50, subject={"reference": "Patient/p1"}),
        resource("DiagnosticReport", "dr1", 51, subject={"reference": "Patient/p1"}),
    ]
    return out


class FakeFhir:
    def __init__(self, resources: list[dict], *, style: str = "getpages",
                 cap: int | None = None, with_total: bool = True) -> None:
        self.resources = resources
        self.style = style
        self.cap = cap
        self.with_total = with_total
        self.pages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def install(self, rsps: responses.RequestsMock) -> None:
        rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"(/.*|\?.*)?$"),
                          callback=self.handle)

    def handle(self, request):
        with self.lock:
            self.requests.append(request.url)
        parts = urlsplit(request.url)
        path = parts.path.removeprefix(urlsplit(BASE).path).strip("/")
        params = parse_qsl(parts.query, keep_blank_values=True)
        if path == "metadata":
            return 200, {}, json.dumps({"resourceType": "CapabilityStatement",
                                        "fhirVersion": "4.0.1"})
        if path == "" and params and params[0][0] == "_getpages":
            query = dict(params)
            rtype, original = self.pages[query["_getpages"]]
            return self.page(rtype, original, int(query["_getpagesoffset"]))
        return self.page(path, params, int(dict(params).get("_offset", 0)))

    def page(self, rtype: str, params: list[tuple[str, str]], offset: int):
        matches = [r for r in self.resources if r["resourceType"] == rtype
                   and all(self.matches(r, k, v) for k, v in params)]
        if ("_sort", "_lastUpdated") in params:
            matches.sort(key=lambda r: r["meta"]["lastUpdated"])
        count = int(dict(params).get("_count", 20))
        reachable = matches if self.cap is None else matches[: self.cap]
        chunk = reachable[offset: offset + count]
        bundle: dict = {"resourceType": "Bundle", "type": "searchset", "link": [],
                        "entry": [{"fullUrl": f"{BASE}/{rtype}/{r['id']}", "resource": r,
                                   "search": {"mode": "match"}} for r in chunk]}
        if self.with_total:
            bundle["total"] = len(matches)
        if offset + count < len(reachable):
            bundle["link"].append({"relation": "next",
                                   "url": self.next_url(rtype, params, offset + count)})
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(bundle)

    def next_url(self, rtype: str, params: list[tuple[str, str]], offset: int) -> str:
        if self.style == "getpages":
            key = f"s{len(self.pages)}"
            self.pages[key] = (rtype, params)
            return f"{BASE}?_getpages={key}&_getpagesoffset={offset}&_count=" \
                   f"{dict(params).get('_count', 20)}&_bundletype=searchset"
        kept = [(k, v) for k, v in params if k != "_offset"] + [("_offset", str(offset))]
        return f"{rtype}?{urlencode(kept)}"  # relative, as some servers give it

    @staticmethod
    def matches(r: dict, key: str, value: str) -> bool:
        if key in ("_count", "_offset", "_elements", "_sort"):
            return True
        if key == "_id":
            return r["id"] in value.split(",")
        if key == "patient":
            ref = (r.get("subject") or {}).get("reference", "")
            return ref.removeprefix("Patient/") in value.split(",")
        if key == "code":
            codings = (r.get("code") or {}).get("coding") or []
            return any(f"{c['system']}|{c['code']}" == t or f"{c['system']}|" == t
                       for c in codings for t in value.split(","))
        if key == "_lastUpdated":
            when = datetime.fromisoformat(r["meta"]["lastUpdated"])
            bound = datetime.fromisoformat(value[2:].replace("Z", "+00:00"))
            return when >= bound if value.startswith("ge") else when < bound
        raise AssertionError(f"FakeFhir does not know search parameter {key}")


def run_source(source: RestSource) -> list:
    return list(source.items())


def keys(items) -> list[str]:
    return [f"{i.resource['resourceType']}/{i.resource['id']}" for i in items
            if isinstance(i, RawResource)]


# ----------------------------------------------------------------- cohort pull

@pytest.mark.parametrize("style", ["getpages", "offset"])
@responses.activate
def test_cohort_pull_fetches_candidates_resources_and_medications(mappings, style):
    fake = FakeFhir(cohort(), style=style)
    fake.install(responses.mock)
    source = RestSource(client(), mappings, options=RestOptions(page_size=2, batch_size=1))
    items = run_source(source)
    got = keys(items)
    assert sorted(got) == sorted([
        "Patient/p1", "Patient/p2", "Procedure/bx1", "Procedure/st1", "Procedure/bx2",
        "Observation/vas-p1", "Observation/vas-p2", "Encounter/enc-p1", "Encounter/enc-p2",
        "MedicationRequest/mr1", "MedicationRequest/mr2", "MedicationAdministration/ma2",
        "Medication/m1", "Medication/m2", "Condition/c1", "DiagnosticReport/dr1"])
    assert len(got) == len(set(got)), "each resource once"
    assert got[-2:] == ["Medication/m1", "Medication/m2"]
    assert not [i for i in items if isinstance(i, ReadProblem)]
    origin = next(i.origin for i in items if isinstance(i, RawResource)
                  and i.resource["id"] == "bx1")
    assert origin.startswith(f"{BASE}/Procedure?patient=p1&_count=2") and "#entry[" in origin

    info = source.info
    assert info["source"] == {"kind": "server", "location": BASE, "auth": "none"}
    assert info["fhir_version"] == "4.0.1"
    query = info["query"]
    assert query["complete"] is True and query["patients"] == 2
    assert query["resources"] == len(got)
    assert query["requests"]["requests"] == len(fake.requests)
    purposes = [s["purpose"] for s in query["searches"]]
    assert purposes[0] == "candidates" and purposes.count("medications") == 2
    candidate = query["searches"][0]
    assert candidate["resource_type"] == "Procedure"
    codes = dict(candidate["params"])["code"].split(",")
    assert f"{LOCAL}|vertebral-core-biopsy" in codes and f"{SCT}|86273004" in codes
    assert query["index_codes"] == codes
    json.dumps(info)  # the manifest can hold it as is


def test_index_codes_include_qualified_codes(mappings):
    tokens = index_code_tokens(mappings)
    assert len(tokens) == 8
    assert "http://www.ama-assn.org/go/cpt|20225" in tokens
    assert f"{SCT}|50590007" in tokens  # counts only with a vertebral bodySite


@responses.activate
def test_patient_list_skips_the_candidate_search(mappings, tmp_path):
    fake = FakeFhir(cohort())
    fake.install(responses.mock)
    path = tmp_path / "patients.txt"
    path.write_text("# study cohort\nPatient/p3\np1  # second\n\n")
    ids = read_patient_list(path)
    assert ids == ["p3", "p1"]
    source = RestSource(client(), mappings, patients=ids, patients_file=path,
                        options=RestOptions(batch_size=10))
    got = keys(run_source(source))
    assert "Patient/p3" in got and "Procedure/ap3" in got and "Patient/p2" not in got
    assert not any("code=" in url for url in fake.requests)
    assert source.info["query"]["cohort"] == "patient-list"
    assert any("/Procedure?patient=p3,p1&" in url for url in fake.requests)


def test_patient_list_rejects_garbage(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("Observation/1\n")
    with pytest.raises(UsageError, match=":1"):
        read_patient_list(path)
    path.write_text("# nothing\n")
    with pytest.raises(UsageError, match="no patient ids"):
        read_patient_list(path)


@responses.activate
def test_workers_do_not_change_what_or_in_which_order(mappings):
    FakeFhir(cohort()).install(responses.mock)
    one = keys(run_source(RestSource(client(), mappings,
                                     options=RestOptions(batch_size=1, workers=1))))
    four = keys(run_source(RestSource(client(), mappings,
                                      options=RestOptions(batch_size=1, workers=4))))
    assert one == four


@responses.activate
def test_missing_patient_is_noted(mappings):
    data = [r for r in cohort() if r["id"] != "p2"]
    FakeFhir(data).install(responses.mock)
    source = RestSource(client(), mappings)
    run_source(source)
    assert source.info["query"]["not_found"] == {"Patient": ["p2"]}


@responses.activate
def test_a_failing_search_stops_the_pull_with_the_error(mappings):
    fake = FakeFhir(cohort())
    responses.get(re.compile(re.escape(f"{BASE}/Observation") + r"\?.*"), status=500, json={
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}]})
    fake.install(responses.mock)
    source = RestSource(client(), mappings, options=RestOptions(workers=3, batch_size=1))
    with pytest.raises(ServerError, match=r"GET .*/Observation\?patient=.*: 500 .*disk full"):
        run_source(source)
    assert source.info["query"]["complete"] is False
    assert source.info["query"]["searches"]


@responses.activate
def test_non_r4_server_is_refused(mappings):
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement",
                                            "fhirVersion": "5.0.0"})
    with pytest.raises(ServerError, match="FHIR 5.0.0"):
        run_source(RestSource(client(), mappings))


@responses.activate
def test_server_source_from_arguments_keeps_secrets_out_of_info(mappings, monkeypatch):
    FakeFhir(cohort()).install(responses.mock)
    monkeypatch.setenv("FHIR_SPINE_TOKEN", "tok-SECRET-0042")
    parser = argparse.ArgumentParser()
    parser.add_argument("--server")
    add_server_options(parser)
    args = parser.parse_args(["--server", BASE + "/", "--batch-size", "2", "--workers", "1"])
    args.mappings = None
    items, info = server_source(args, mappings)
    got = keys(items)
    assert "Patient/p1" in got
    assert responses.calls[1].request.headers["Authorization"] == "Bearer tok-SECRET-0042"
    assert info["source"]["auth"] == "bearer"
    assert "SECRET" not in json.dumps(info)
    assert info["query"]["complete"] is True


def test_reference_ids():
    assert reference_id("Medication/m1", "Medication") == "m1"
    assert reference_id(f"{BASE}/Medication/m2/_history/3", "Medication") == "m2"
    assert reference_id("#contained", "Medication") is None
    assert reference_id("Patient/p1", "Medication") is None
    assert reference_id(None, "Patient") is None


# ---------------------------------------------------------------------- paging

def searcher(**options) -> tuple[Searcher, QueryLog]:
    log = QueryLog()
    return Searcher(client(), RestOptions(**options), log, now=lambda: NOW), log


def bundle(entries: list[dict], next_url: str | None = None, total: int | None = None) -> dict:
    out: dict = {"resourceType": "Bundle", "type": "searchset", "entry": entries,
                 "link": [{"relation": "self", "url": "ignored"}]}
    if next_url is not None:
        out["link"].append({"relation": "next", "url": next_url})
    if total is not None:
        out["total"] = total
    return out


def match(rtype: str, rid: str, mode: str = "match") -> dict:
    return {"resource": {"resourceType": rtype, "id": rid}, "search": {"mode": mode}}


FIRST = f"{BASE}/Observation?patient=1&_count=200"


@responses.activate
def test_next_links_are_followed_exactly_as_given():
    page2 = (f"{BASE}?_getpages=abc-123&_getpagesoffset=2&_count=2&_pretty=true"
             "&_bundletype=searchset")
    responses.get(FIRST, json=bundle([match("Observation", "1"), match("Observation", "2")],
                                     page2))
    responses.get(page2, json=bundle([match("Observation", "3")]))
    search, log = searcher()
    got = [i.resource["id"] for i in search.search("Observation", [("patient", "1")], "t")]
    assert got == ["1", "2", "3"]
    assert responses.calls[1].request.url == page2
    assert log.records[0].pages == 2 and log.records[0].matches == 3


@responses.activate
def test_include_entries_are_counted_separately():
    responses.get(FIRST, json=bundle([
        match("Observation", "1"), match("Observation", "2"),
        match("Patient", "1", mode="include"), match("Encounter", "e", mode="include")]))
    search, log = searcher()
    items = list(search.search("Observation", [("patient", "1")], "t"))
    assert len(items) == 4 and all(isinstance(i, RawResource) for i in items)
    record = log.records[0]
    assert (record.matches, record.includes) == (2, 2)
    assert log.as_list()[0]["includes"] == 2


@responses.activate
def test_paging_loop_is_detected():
    page2 = f"{BASE}/Observation?patient=1&_count=200&_offset=200"
    responses.get(FIRST, json=bundle([match("Observation", "1")], page2))
    responses.get(page2, json=bundle([match("Observation", "2")], FIRST))
    search, _ = searcher()
    with pytest.raises(ServerError, match="paging loop"):
        list(search.search("Observation", [("patient", "1")], "t"))


@responses.activate
def test_repeated_page_is_detected():
    page2 = f"{BASE}?_getpages=x&_getpagesoffset=1"
    page3 = f"{BASE}?_getpages=x&_getpagesoffset=2"
    responses.get(FIRST, json=bundle([match("Observation", "1")], page2))
    responses.get(page2, json=bundle([match("Observation", "2")], page3))
    responses.get(page3, json=bundle([match("Observation", "2")], f"{BASE}?_getpages=x&o=3"))
    search, _ = searcher()
    with pytest.raises(ServerError, match="same page"):
        list(search.search("Observation", [("patient", "1")], "t"))


@pytest.mark.parametrize("link", [None, 42, "", "not a url with spaces"])
@responses.activate
def test_broken_next_link_is_an_error(link):
    page = bundle([match("Observation", "1")])
    page["link"].append({"relation": "next", "url": link})
    responses.get(FIRST, json=page)
    search, _ = searcher()
    with pytest.raises(ServerError, match="broken next link"):
        list(search.search("Observation", [("patient", "1")], "t"))


@responses.activate
def test_expired_paging_link_names_the_request():
    page2 = f"{BASE}?_getpages=gone&_getpagesoffset=1"
    responses.get(FIRST, json=bundle([match("Observation", "1")], page2))
    responses.get(page2, status=410, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "not-found",
         "diagnostics": "Search id gone does not exist and may have expired"}]})
    search, _ = searcher()
    with pytest.raises(ServerError, match=r"GET .*_getpages=gone.*410.*expired"):
        list(search.search("Observation", [("patient", "1")], "t"))


@responses.activate
def test_endless_empty_pages_stop():
    url = FIRST
    for n in range(1, 5):
        nxt = f"{BASE}/Observation?patient=1&_offset={n}"
        responses.get(url, json=bundle([], nxt))
        url = nxt
    search, _ = searcher()
    with pytest.raises(ServerError, match="empty pages"):
        list(search.search("Observation", [("patient", "1")], "t"))


@responses.activate
def test_bad_entries_become_read_problems_and_outcomes_are_recorded():
    responses.get(FIRST, json=bundle([
        match("Observation", "1"),
        {"fullUrl": "x"},
        {"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "processing",
             "diagnostics": "Unknown search parameter ignored"}]},
         "search": {"mode": "outcome"}},
    ]))
    search, log = searcher()
    items = list(search.search("Observation", [("patient", "1")], "t"))
    problems = [i for i in items if isinstance(i, ReadProblem)]
    assert [p.code for p in problems] == ["not-a-resource"]
    assert log.as_list()[0]["server_messages"] == [
        "warning: Unknown search parameter ignored"]


@responses.activate
def test_a_match_of_another_type_stops_the_pull():
    """Found by the fault proxy: such an answer silently lost a search's results."""
    responses.get(FIRST, json=bundle([match("Observation", "1"), match("Patient", "intruder")]))
    search, _ = searcher()
    with pytest.raises(ServerError, match="searched Observation, the server returned a Patient"):
        list(search.search("Observation", [("patient", "1")], "t"))


@responses.activate
def test_html_page_instead_of_bundle_is_a_clear_error():
    responses.get(FIRST, body="<html><title>502 Bad Gateway</title></html>",
                  content_type="text/html")
    search, _ = searcher()
    with pytest.raises(ServerError, match="HTML page"):
        list(search.search("Observation", [("patient", "1")], "t"))


@responses.activate
def test_operation_outcome_instead_of_bundle_is_an_error():
    responses.get(FIRST, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "too-costly", "diagnostics": "Search too broad"}]})
    search, _ = searcher()
    with pytest.raises(ServerError, match="too-costly|Search too broad"):
        list(search.search("Observation", [("patient", "1")], "t"))


# ----------------------------------------------------------------- cap windows

def many_observations(n: int) -> list[dict]:
    return [resource("Observation", f"o{i:03d}", i % 60, subject={"reference": "Patient/p1"})
            for i in range(n)]


@responses.activate
def test_cap_with_total_splits_into_last_updated_windows():
    data = many_observations(25)
    fake = FakeFhir(data, cap=8, style="offset")
    fake.install(responses.mock)
    search, log = searcher(page_size=5)
    items = list(search.search("Observation", [("patient", "p1")], "patient-resources"))
    ids = {i.resource["id"] for i in items if isinstance(i, RawResource)}
    assert ids == {r["id"] for r in data}
    records = log.as_list()
    assert records[0]["split_into_windows"] is True and records[0]["total"] == 25
    windows = [r for r in records if "window" in r]
    assert windows and all(r["matches"] <= 8 for r in windows if not r.get("split_into_windows"))
    # the windows partition [oldest, now]: the first starts at the oldest lastUpdated
    assert windows[0]["window"]["_lastUpdated_ge"] == "2025-01-01T10:00:00Z"
    assert any("_lastUpdated=ge" in u and "_lastUpdated=lt" in u for u in fake.requests)


@responses.activate
def test_configured_cap_without_total_also_splits():
    data = many_observations(12)
    FakeFhir(data, cap=6, with_total=False).install(responses.mock)
    search, log = searcher(page_size=3, cap=6)
    items = list(search.search("Observation", [("patient", "p1")], "t"))
    assert {i.resource["id"] for i in items} == {r["id"] for r in data}
    assert log.records[0].split


@responses.activate
def test_window_that_cannot_be_split_further_is_an_incomplete_pull():
    data = [resource("Observation", f"o{i}", 5, subject={"reference": "Patient/p1"})
            for i in range(10)]  # all in the same second
    FakeFhir(data, cap=4).install(responses.mock)
    search, _ = searcher(page_size=2)
    with pytest.raises(IncompletePull, match="only 4 of 10") as err:
        list(search.search("Observation", [("patient", "p1")], "t"))
    assert err.value.exit_code == 8


@responses.activate
def test_cohort_pull_reports_windowing_in_the_manifest(mappings):
    data = cohort() + many_observations(30)
    FakeFhir(data, cap=10).install(responses.mock)
    source = RestSource(client(), mappings, options=RestOptions(page_size=5, batch_size=2))
    got = keys(run_source(source))
    assert sum(1 for k in got if k.startswith("Observation/o")) == 30
    assert len(got) == len(set(got))
    assert source.info["query"]["windowed"] is True
    assert source.info["query"]["duplicates_skipped"] > 0


# ------------------------------------------------------ load and check commands

def test_load_orders_referenced_resources_first_and_relativises_own_references():
    from fhir_spine.cli.load import dependency_order, relativise_references

    resources = [
        resource("Procedure", "pr", subject={"reference": f"{BASE}/Patient/p1"},
                 encounter={"reference": "Encounter/e1/_history/2"},
                 partOf=[{"reference": "Procedure/pr0"}]),
        resource("Procedure", "pr0", subject={"reference": "Patient/p1"}),
        resource("Encounter", "e1", subject={"reference": "Patient/p1"},
                 serviceProvider={"reference": "https://other.example/fhir/Organization/o9"}),
        resource("Patient", "p1"),
        resource("Observation", "loop-a", hasMember=[{"reference": "Observation/loop-b"}]),
        resource("Observation", "loop-b", hasMember=[{"reference": "Observation/loop-a"}]),
    ]
    assert relativise_references(resources) == 1
    assert resources[0]["subject"] == {"reference": "Patient/p1"}
    assert resources[2]["serviceProvider"]["reference"].startswith("https://other.example")
    order = [f"{r['resourceType']}/{r['id']}" for r in dependency_order(resources)]
    assert order.index("Patient/p1") < order.index("Encounter/e1") < order.index("Procedure/pr")
    assert order.index("Procedure/pr0") < order.index("Procedure/pr")
    assert sorted(order) == sorted(f"{r['resourceType']}/{r['id']}" for r in resources)


@responses.activate
def test_load_puts_transaction_bundles_in_batches():
    from fhir_spine.cli.load import load

    sent: list[dict] = []

    def reply(request):
        bundle = json.loads(request.body)
        sent.append(bundle)
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "transaction-response",
                                    "entry": [{"response": {"status": "201 Created"}}
                                              for _ in bundle["entry"]]})

    responses.add_callback(responses.POST, BASE, callback=reply)
    data = [r for r in cohort() if r["resourceType"] in ("Patient", "Procedure")]
    statuses, bundles = load(client(), data, batch_size=3)
    assert bundles == 3 and statuses == {"created": 7}
    entries = [e for b in sent for e in b["entry"]]
    assert all(b["type"] == "transaction" for b in sent)
    assert entries[0]["request"] == {"method": "PUT", "url": "Patient/p1"}
    assert entries[0]["fullUrl"] == f"{BASE}/Patient/p1"
    assert [e["request"]["url"] for e in entries][:3] == ["Patient/p1", "Patient/p2",
                                                          "Patient/p3"]


def capability(procedure_params=("patient", "code"), export=True) -> dict:
    types = ["Patient", "Condition", "DiagnosticReport", "Encounter", "Medication",
             "MedicationAdministration", "MedicationRequest", "Observation", "Procedure"]
    resources = []
    for t in types:
        params = ["_id"] if t in ("Patient", "Medication") else (
            list(procedure_params) if t == "Procedure" else ["patient"])
        entry = {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [{"name": n, "type": "token"} for n in params]}
        if t == "Patient" and export:
            entry["operation"] = [{"name": "export", "definition": "x"}]
        resources.append(entry)
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "software": {"name": "Test FHIR", "version": "1"},
            "rest": [{"mode": "server", "resource": resources,
                      "interaction": [{"code": "transaction"}],
                      "operation": [{"name": "export", "definition": "y"}] if export else []}]}


@responses.activate
def test_check_reports_capabilities_and_passes(mappings):
    from fhir_spine.cli.check import _check

    responses.get(f"{BASE}/metadata", json=capability())
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)
    responses.get(re.compile(re.escape(f"{BASE}/Procedure?") + ".*_summary=count"),
                  json={"resourceType": "Bundle", "type": "searchset", "total": 12})
    lines: list[str] = []
    assert _check(client(), mappings, lines.append) == 0
    text = "\n".join(lines)
    assert "FHIR version  4.0.1  ok" in text
    assert "SMART         not offered (.well-known/smart-configuration: 404)" in text
    assert "$export       system, Patient" in text
    assert "12 matching procedures" in text
    assert re.search(r"Procedure\s+yes\s+patient yes, code yes, _lastUpdated assumed", text)


@responses.activate
def test_check_fails_naming_what_is_missing(mappings):
    from fhir_spine.cli.check import _check

    responses.get(f"{BASE}/metadata", json=capability(procedure_params=("patient",),
                                                      export=False))
    responses.get(f"{BASE}/.well-known/smart-configuration", json={
        "token_endpoint": "https://auth.example.org/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"]})
    responses.get(re.compile(re.escape(f"{BASE}/Procedure?") + ".*"), status=400, json={
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Unknown param code"}]})
    lines: list[str] = []
    with pytest.raises(ServerError, match=r"lacks what extract --server needs: Procedure\?code"):
        _check(client(), mappings, lines.append)
    text = "\n".join(lines)
    assert "$export       not offered" in text
    assert "backend services (private_key_jwt) yes" in text
    assert "search        FAILED" in text and "Unknown param code" in text


@pytest.mark.parametrize("declared", [True, False])
@responses.activate
def test_medication_statements_are_read_when_the_server_offers_them(mappings, declared):
    """MedicationStatement is optional evidence: searched (and its Medication fetched) when
    the CapabilityStatement declares it, never a failed pull when it does not."""
    statement = resource("MedicationStatement", "ms1", 40, subject={"reference": "Patient/p1"},
                         medicationReference={"reference": "Medication/m9"}, status="active")
    drug = resource("Medication", "m9", 41)
    fake = FakeFhir(cohort() + [statement, drug])
    plain = fake.handle

    def handle(request):
        if declared and urlsplit(request.url).path.endswith("/metadata"):
            return 200, {}, json.dumps({"resourceType": "CapabilityStatement",
                                        "fhirVersion": "4.0.1", "rest": [{"mode": "server",
                                        "resource": [{"type": "MedicationStatement"}]}]})
        return plain(request)

    fake.handle = handle
    fake.install(responses.mock)
    got = keys(run_source(RestSource(client(), mappings)))
    assert ("MedicationStatement/ms1" in got) is declared
    assert ("Medication/m9" in got) is declared
    assert any("MedicationStatement?" in u for u in fake.requests) is declared


@responses.activate
def test_check_names_an_absent_optional_type_without_failing(mappings):
    from fhir_spine.cli.check import _check

    responses.get(f"{BASE}/metadata", json=capability())
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)
    responses.get(re.compile(re.escape(f"{BASE}/Procedure?") + ".*_summary=count"),
                  json={"resourceType": "Bundle", "type": "searchset", "total": 3})
    lines: list[str] = []
    assert _check(client(), mappings, lines.append) == 0
    assert re.search(r"MedicationStatement\s+ABSENT\s+optional: not read", "\n".join(lines))
