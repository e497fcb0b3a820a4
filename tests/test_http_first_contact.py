"""Issue 14, points 4 and 7: a wrong URL fails in seconds with a hint, not after the
long retry budget; TLS to a plain-http port and a base URL without its path say what to
do. Mocked URLs are intercepted by `responses`; the real ones are on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import responses

from fhir_spine.errors import ExitCode, ServerError, ServerUnreachable
from fhir_spine.sources.http import FhirClient, HttpSettings

BASE = "https://ehr.example.org/fhir"
REFUSED = "Failed to establish a new connection: [Errno 111] Connection refused"
UNKNOWN = "Failed to resolve 'ehr.example.org' ([Errno -2] Name or service not known)"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def client(fake: FakeTime, **settings: object) -> FhirClient:
    return FhirClient(BASE, settings=HttpSettings(**settings),  # type: ignore[arg-type]
                      sleep=fake.sleep, clock=fake.clock)


@responses.activate
@pytest.mark.parametrize("reason", [REFUSED, UNKNOWN])
def test_first_contact_fails_in_seconds_with_a_hint(reason):
    fake = FakeTime()
    responses.get(f"{BASE}/metadata", body=requests.exceptions.ConnectionError(reason))
    started = fake.now
    with pytest.raises(ServerUnreachable, match="check the host and port of --server"):
        client(fake).fetch_json("metadata")
    assert fake.now - started <= 5.0
    assert 1 < len(responses.calls) <= 4


@responses.activate
def test_once_the_server_has_answered_the_long_budget_applies():
    fake = FakeTime()
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    responses.get(f"{BASE}/Patient", body=requests.exceptions.ConnectionError(REFUSED))
    c = client(fake, retry_time=120.0)
    c.fetch_json("metadata")
    started = fake.now
    with pytest.raises(ServerUnreachable) as err:
        c.fetch_json("Patient")
    assert fake.now - started > 30
    assert "check the host and port" not in str(err.value)


@responses.activate
def test_tls_to_a_plain_http_port_suggests_http():
    fake = FakeTime()
    responses.get(f"{BASE}/metadata", body=requests.exceptions.SSLError(
        "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"))
    with pytest.raises(ServerUnreachable) as err:
        client(fake).fetch_json("metadata")
    assert "try --server http://ehr.example.org/fhir" in str(err.value)
    assert "--ca-bundle" not in str(err.value)


@responses.activate
def test_a_base_url_without_its_path_gets_a_hint():
    fake = FakeTime()
    base = "https://ehr.example.org"
    responses.get(f"{base}/metadata", status=404, body="<html><title>Not Found</title></html>",
                  content_type="text/html")
    c = FhirClient(base, sleep=fake.sleep, clock=fake.clock)
    with pytest.raises(ServerError, match=r"base URL has no path.*try https://ehr.example.org/fhir"):
        c.fetch_json("metadata")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fhir_spine.cli.main", *args],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
    return done, time.monotonic() - started


def test_a_wrong_port_fails_fast_end_to_end():
    port = closed_port()
    done, seconds = cli("check", "--server", f"http://127.0.0.1:{port}/fhir")
    assert done.returncode == ExitCode.SERVER_UNREACHABLE
    errors = [line for line in done.stderr.splitlines() if line.startswith("fhir-spine:")]
    assert len(errors) == 1 and "check the host and port of --server" in errors[0]
    assert seconds < 15, seconds  # the retry budget alone is 300 s


@pytest.fixture
def plain_http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_https_to_a_plain_http_port_end_to_end(plain_http_server):
    done, _ = cli("check", "--server", f"https://127.0.0.1:{plain_http_server}/fhir")
    assert done.returncode == ExitCode.SERVER_UNREACHABLE
    assert f"try --server http://127.0.0.1:{plain_http_server}/fhir" in done.stderr
