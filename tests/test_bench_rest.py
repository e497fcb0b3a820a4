"""The REST benchmark's machinery (not its timing): link rewriting, replay, count check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from rest_clients import bare_loop, check_counts, workload_from  # noqa: E402
from rest_replay import ReplayServer, origin, rewrite_links, serve_in_thread  # noqa: E402

LIVE = "http://127.0.0.1:8080"


def _page(n: int, next_target: str | None) -> bytes:
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "link": [{"relation": "self", "url": f"{LIVE}/fhir/Patient?_count=1"}],
              "entry": [{"fullUrl": f"{LIVE}/fhir/Patient/p{n}",
                         "resource": {"resourceType": "Patient", "id": f"p{n}",
                                      "text": {"div": "see http://127.0.0.1:80801/x"}}}]}
    if next_target:
        bundle["link"].append({"relation": "next", "url": LIVE + next_target})
    return json.dumps(bundle).encode()


def test_origin_of_a_base():
    assert origin("http://127.0.0.1:8080/fhir/Patient?x=1") == LIVE


def test_rewrite_changes_links_and_full_urls_only():
    body = _page(1, "/fhir?_getpages=abc&_getpagesoffset=1")
    out = json.loads(rewrite_links(body, LIVE, "http://127.0.0.1:9999"))
    assert out["link"][0]["url"] == "http://127.0.0.1:9999/fhir/Patient?_count=1"
    assert out["link"][1]["url"] == "http://127.0.0.1:9999/fhir?_getpages=abc&_getpagesoffset=1"
    assert out["entry"][0]["fullUrl"] == "http://127.0.0.1:9999/fhir/Patient/p1"
    # another port that starts with the same digits is not the recorded origin
    assert out["entry"][0]["resource"]["text"]["div"] == "see http://127.0.0.1:80801/x"
    assert rewrite_links(b'{"u":"' + LIVE.encode() + b'"}', LIVE, "http://h:1") == \
        b'{"u":"http://h:1"}'


def test_replay_serves_recorded_pages_with_its_own_links_and_404_otherwise():
    recorded = "http://127.0.0.1:7777"  # the recording proxy's origin, rewritten on load
    store = {
        "/fhir/Patient?_count=1": (200, rewrite_links(
            _page(1, "/fhir?_getpages=abc&_getpagesoffset=1"), LIVE, recorded)),
        "/fhir?_getpages=abc&_getpagesoffset=1": (200, rewrite_links(
            _page(2, None), LIVE, recorded)),
    }
    server = ReplayServer(recorded, store)
    serve_in_thread(server)
    try:
        base = server.base_origin + "/fhir"
        ids = bare_loop(base, [("Patient", [("_count", "1")])])
        assert ids == {("Patient", "p1"), ("Patient", "p2")}
        first = requests.get(f"{base}/Patient?_count=1", timeout=10).json()
        assert first["link"][1]["url"].startswith(server.base_origin + "/fhir?_getpages=")
        missing = requests.get(f"{base}/Patient?_count=2", timeout=10)
        assert missing.status_code == 404
        assert server.misses == ["/fhir/Patient?_count=2"]
    finally:
        server.shutdown()


def test_count_check_names_every_client_when_counts_differ():
    assert check_counts({"floor": 10, "ours": 10, "peer": None}) is None
    problem = check_counts({"floor": 10, "ours": 10, "peer": 9})
    assert problem is not None
    assert "floor 10" in problem and "peer 9" in problem


def test_workload_adds_the_page_size_and_skips_window_searches():
    from fhir_spine.sources.search import SearchRecord

    records = [SearchRecord("Procedure", [("patient", "a,b")], "patient-resources"),
               SearchRecord("Procedure", [("patient", "a,b")], "patient-resources",
                            window=("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"))]
    assert workload_from(records, 200) == [
        ("Procedure", [("patient", "a,b"), ("_count", "200")])]
