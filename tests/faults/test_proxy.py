"""The fault proxy itself, against a tiny paged stub server (no FHIR server needed, ~5 s)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from .proxy import FaultProxy, Rule

PAGES = 3


class _Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server name
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        page = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 1
        links = [{"relation": "self", "url": f"{origin}/fhir/Thing?page={page}"}]
        if page < PAGES:
            links.append({"relation": "next", "url": f"{origin}/fhir/Thing?page={page + 1}"})
        body = json.dumps({"resourceType": "Bundle", "type": "searchset", "link": links,
                           "entry": [{"resource": {"resourceType": "Thing",
                                                   "id": f"{page}-{i}"}} for i in range(50)]})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Location", f"{origin}/fhir/Thing?page={page}")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def get(url: str, timeout: float = 5.0) -> requests.Response:
    return requests.get(url, timeout=(2, timeout))


def follow(base: str) -> list[str]:
    """Ids of every page, following next links (bounded)."""
    url: str | None = f"{base}/Thing?page=1"
    ids: list[str] = []
    for _ in range(10):
        if url is None:
            break
        bundle = get(url).json()
        ids += [e["resource"]["id"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    return ids


def test_forwards_and_rewrites_urls(upstream):
    with FaultProxy(upstream) as proxy:
        assert proxy.base_url != upstream
        response = get(f"{proxy.base_url}/Thing?page=1")
        assert upstream.split("/fhir")[0] not in response.text
        assert response.headers["Content-Location"].startswith(proxy.origin)
        assert len(follow(proxy.base_url)) == PAGES * 50
        assert all(e.target.startswith("/fhir/Thing?page=") for e in proxy.events)
        assert not proxy.injected


def test_status_with_retry_after_first_k(upstream):
    with FaultProxy(upstream, [Rule("status", r"page=2", first=2, status=429,
                                    retry_after="3")]) as proxy:
        for _ in range(2):
            response = get(f"{proxy.base_url}/Thing?page=2")
            assert response.status_code == 429 and response.headers["Retry-After"] == "3"
            assert response.json()["resourceType"] == "OperationOutcome"
        assert get(f"{proxy.base_url}/Thing?page=2").status_code == 200
        assert get(f"{proxy.base_url}/Thing?page=1").status_code == 200
        assert len(proxy.injected) == 2 and proxy.repeats() == 2


def test_reset_mid_body(upstream):
    with FaultProxy(upstream, [Rule("reset", r"page=1")]) as proxy:
        with pytest.raises(requests.exceptions.RequestException):
            get(f"{proxy.base_url}/Thing?page=1")
        assert get(f"{proxy.base_url}/Thing?page=1").status_code == 200
        assert proxy.injected[0].outcome.startswith("reset after")


def test_truncate(upstream):
    with FaultProxy(upstream, [Rule("truncate", r"page=1", fraction=0.3)]) as proxy:
        response = get(f"{proxy.base_url}/Thing?page=1")
        assert response.status_code == 200
        with pytest.raises(ValueError):
            json.loads(response.content)


def test_truncate_short_of_content_length_and_stall(upstream):
    with FaultProxy(upstream, [Rule("truncate", r"page=1", full_length=True)]) as proxy:
        with pytest.raises(requests.exceptions.RequestException):
            get(f"{proxy.base_url}/Thing?page=1")
        assert get(f"{proxy.base_url}/Thing?page=1").status_code == 200
    with FaultProxy(upstream, [Rule("stall", r"page=1", seconds=1.0)]) as proxy:
        with pytest.raises(requests.exceptions.ConnectionError, match="[Rr]ead timed out"):
            get(f"{proxy.base_url}/Thing?page=1", timeout=0.3)
        assert len(get(f"{proxy.base_url}/Thing?page=1").json()["entry"]) == 50


def test_repeat_page_and_loop(upstream):
    with FaultProxy(upstream, [Rule("repeat_page", r"page=2")]) as proxy:
        ids = follow(proxy.base_url)
        assert ids[:50] == ids[50:100]  # page 2 came back as page 1
    with FaultProxy(upstream, [Rule("loop_next", r"page=2")]) as proxy:
        get(f"{proxy.base_url}/Thing?page=1")
        bundle = get(f"{proxy.base_url}/Thing?page=2").json()
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        assert nxt == [f"{proxy.base_url}/Thing?page=1"]


def test_html_and_wrong_type(upstream):
    rules = [Rule("html", r"page=1"), Rule("wrong_type", r"page=2", resource="Patient")]
    with FaultProxy(upstream, rules) as proxy:
        page1 = get(f"{proxy.base_url}/Thing?page=1")
        assert page1.status_code == 200 and page1.text.startswith("<!DOCTYPE html>")
        assert get(f"{proxy.base_url}/Thing?page=2").json()["resourceType"] == "Patient"
        assert len(proxy.injected) == 2


def test_delay_and_hang(upstream):
    with FaultProxy(upstream, [Rule("delay", r"page=1", seconds=1.0)]) as proxy:
        with pytest.raises(requests.exceptions.ReadTimeout):
            get(f"{proxy.base_url}/Thing?page=1", timeout=0.3)
        assert get(f"{proxy.base_url}/Thing?page=1").status_code == 200
    with FaultProxy(upstream, [Rule("hang", r"page=1", seconds=1.0)]) as proxy:
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            get(f"{proxy.base_url}/Thing?page=1", timeout=0.3)
        with pytest.raises(requests.exceptions.ConnectionError):  # still not answering
            get(f"{proxy.base_url}/Thing?page=2", timeout=3)
        assert time.monotonic() - started >= 0.9
        assert get(f"{proxy.base_url}/Thing?page=2").status_code == 200


def test_refuse_then_listen_again(upstream):
    with FaultProxy(upstream, [Rule("refuse", r"page=1", seconds=1.0)]) as proxy:
        with pytest.raises(requests.exceptions.ConnectionError):
            get(f"{proxy.base_url}/Thing?page=1")
        with pytest.raises(requests.exceptions.ConnectionError, match="[Rr]efused"):
            get(f"{proxy.base_url}/Thing?page=2")
        deadline = time.monotonic() + 5
        while True:
            try:
                assert get(f"{proxy.base_url}/Thing?page=2").status_code == 200
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the proxy did not listen again"
                time.sleep(0.1)
    assert not proxy.errors


def test_rules_are_checked():
    with pytest.raises(ValueError):
        Rule("explode")
    with pytest.raises(ValueError):
        Rule("status", nth=2, every=True)
    with pytest.raises(ValueError):
        FaultProxy("http://example.org/fhir")
