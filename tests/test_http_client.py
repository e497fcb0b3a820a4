"""The shared HTTP client: headers, timeouts, retries, Retry-After, readable errors.

Every URL here is intercepted by `responses`; nothing leaves the machine. Sleeping is
faked with a clock that the fake sleep advances, so bounded retry time is tested
without waiting.
"""

from __future__ import annotations

import email.utils
import io
import logging
import time

import pytest
import requests
import responses
import urllib3

from fhir_spine import __version__
from fhir_spine.auth import BearerAuth
from fhir_spine.errors import (
    AuthError,
    ExitCode,
    ServerError,
    ServerUnreachable,
    UsageError,
)
from fhir_spine.redact import redact_url
from fhir_spine.sources.http import (
    FhirClient,
    HttpSettings,
    normalise_base_url,
    outcome_text,
    parse_retry_after,
)

BASE = "https://ehr.example.org/fhir"


class FakeTime:
    """A monotonic clock that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make_client(fake_time: FakeTime, **settings: object) -> FhirClient:
    return FhirClient(BASE, settings=HttpSettings(**settings),  # type: ignore[arg-type]
                      sleep=fake_time.sleep, clock=fake_time.clock)


OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "processing",
               "diagnostics": "HAPI-0389: Failed to call access method:\n  java.lang.NPE"}],
}


@responses.activate
def test_sends_fhir_accept_user_agent_and_timeouts(fake_time):
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client = make_client(fake_time, connect_timeout=3.0, read_timeout=45.0)
    assert client.fetch_json("Patient/1")["id"] == "1"
    request = responses.calls[0].request
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["User-Agent"] == f"fhir-spine/{__version__}"
    assert request.req_kwargs["timeout"] == (3.0, 45.0)
    assert request.req_kwargs["verify"] is not False  # True, or the system bundle from env
    assert client.stats.requests == 1 and client.stats.retries == 0


@responses.activate
def test_session_is_reused_across_requests(fake_time):
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    client = make_client(fake_time)
    session = client.session
    client.fetch_json("metadata")
    client.fetch_json("metadata")
    assert client.session is session and client.stats.requests == 2


@responses.activate
def test_retries_503_then_succeeds_with_growing_jittered_backoff(fake_time):
    url = f"{BASE}/Patient"
    for _ in range(3):
        responses.get(url, status=503)
    responses.get(url, json={"resourceType": "Bundle", "type": "searchset"})
    client = make_client(fake_time, backoff_base=1.0)
    client.fetch_json("Patient")
    assert len(responses.calls) == 4
    first, second, third = fake_time.sleeps
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0 and 2.0 <= third <= 4.0
    assert client.stats.retries == 3
    assert client.stats.as_dict()["by_status"] == {"200": 1, "503": 3}


@pytest.mark.parametrize("status", [429, 502, 503, 504])
@responses.activate
def test_each_transient_status_is_retried(fake_time, status):
    responses.get(f"{BASE}/Patient", status=status)
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    make_client(fake_time).fetch_json("Patient")
    assert len(responses.calls) == 2


@responses.activate
def test_retry_after_seconds_is_honoured(fake_time):
    responses.get(f"{BASE}/Patient", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    make_client(fake_time).fetch_json("Patient")
    assert fake_time.sleeps == [7.0]


@responses.activate
def test_retry_after_http_date_is_honoured(fake_time):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    responses.get(f"{BASE}/Patient", status=503, headers={"Retry-After": when})
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    make_client(fake_time).fetch_json("Patient")
    assert len(fake_time.sleeps) == 1 and 28.0 <= fake_time.sleeps[0] <= 31.0


def test_parse_retry_after_forms():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


@responses.activate
def test_429_storm_exhausts_bounded_time_with_clear_error(fake_time):
    responses.get(f"{BASE}/Observation", status=429, headers={"Retry-After": "10"})
    client = make_client(fake_time, retry_time=35.0)
    with pytest.raises(ServerError) as err:
        client.fetch_json("Observation")
    message = str(err.value)
    assert message.startswith(f"GET {BASE}/Observation: 429")
    assert "after 4 attempts over 30 s" in message
    assert "throttling" in message and "--workers" in message
    assert err.value.exit_code == ExitCode.SERVER_ERROR
    assert sum(fake_time.sleeps) <= 35.0
    assert len(responses.calls) == 4


@responses.activate
def test_retry_after_longer_than_budget_fails_at_once(fake_time):
    responses.get(f"{BASE}/Observation", status=503, headers={"Retry-After": "3600"})
    client = make_client(fake_time, retry_time=300.0)
    with pytest.raises(ServerError, match="asked to wait 3600 s, more than --retry-time 300 s"):
        client.fetch_json("Observation")
    assert fake_time.sleeps == [] and len(responses.calls) == 1


@responses.activate
def test_attempts_are_bounded_even_without_time_passing(fake_time):
    responses.get(f"{BASE}/Patient", status=502, headers={"Retry-After": "0"})
    client = make_client(fake_time, max_attempts=5)
    with pytest.raises(ServerError, match="502"):
        client.fetch_json("Patient")
    assert len(responses.calls) == 5


@responses.activate
def test_connection_errors_are_retried_then_reported_unreachable(fake_time):
    responses.get(f"{BASE}/metadata", body=requests.exceptions.ConnectionError(
        "Failed to establish a new connection: [Errno 111] Connection refused"))
    client = make_client(fake_time, retry_time=20.0)
    with pytest.raises(ServerUnreachable) as err:
        client.fetch_json("metadata")
    assert err.value.exit_code == ExitCode.SERVER_UNREACHABLE
    assert "connection failed" in str(err.value) and "Connection refused" in str(err.value)
    assert len(responses.calls) > 1


@responses.activate
def test_read_timeout_is_retried(fake_time):
    responses.get(f"{BASE}/metadata", body=requests.exceptions.ReadTimeout("read timed out"))
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    assert make_client(fake_time).fetch_json("metadata")["resourceType"] == "CapabilityStatement"


@responses.activate
def test_tls_failure_is_not_retried_and_points_to_ca_bundle(fake_time):
    responses.get(f"{BASE}/metadata", body=requests.exceptions.SSLError(
        "certificate verify failed: self-signed certificate in certificate chain"))
    with pytest.raises(ServerUnreachable, match="--ca-bundle") as err:
        make_client(fake_time).fetch_json("metadata")
    assert "self-signed" in str(err.value)
    assert len(responses.calls) == 1


@responses.activate
def test_500_with_operation_outcome_is_one_readable_line_and_not_retried(fake_time):
    responses.get(f"{BASE}/Observation", status=500, json=OUTCOME)
    client = make_client(fake_time)
    with pytest.raises(ServerError) as err:
        client.fetch_json("Observation", params=[("patient", "1,2")])
    message = str(err.value)
    assert message == (f"GET {BASE}/Observation?patient=1,2: 500 Internal Server Error: "
                       "error: HAPI-0389: Failed to call access method: java.lang.NPE")
    assert "\n" not in message
    assert err.value.status == 500
    assert len(responses.calls) == 1


@pytest.mark.parametrize("status", [400, 404, 410, 422])
@responses.activate
def test_other_client_errors_are_not_retried(fake_time, status):
    responses.get(f"{BASE}/Patient", status=status, json=OUTCOME)
    with pytest.raises(ServerError) as err:
        make_client(fake_time).fetch_json("Patient")
    assert err.value.status == status and len(responses.calls) == 1


@responses.activate
def test_html_error_page_with_status_200_is_a_clear_error(fake_time):
    responses.get(f"{BASE}/Patient", status=200, content_type="text/html",
                  body="<html><head><title>Sign in - Hospital SSO</title></head></html>")
    with pytest.raises(ServerError) as err:
        make_client(fake_time).fetch_json("Patient")
    assert "HTML page ('Sign in - Hospital SSO')" in str(err.value)
    assert "login page or proxy" in str(err.value)


@responses.activate
def test_body_that_is_not_json_is_a_clear_error(fake_time):
    responses.get(f"{BASE}/Patient", status=200, body="{truncated",
                  content_type="application/fhir+json")
    with pytest.raises(ServerError, match="not valid JSON"):
        make_client(fake_time).fetch_json("Patient")


@responses.activate
def test_unauthenticated_401_says_how_to_give_credentials(fake_time):
    responses.get(f"{BASE}/Patient", status=401)
    with pytest.raises(AuthError, match="FHIR_SPINE_TOKEN") as err:
        make_client(fake_time).fetch_json("Patient")
    assert err.value.exit_code == ExitCode.AUTH


@responses.activate
def test_403_is_an_auth_error_naming_scope(fake_time):
    responses.get(f"{BASE}/Patient", status=403, json=OUTCOME)
    with pytest.raises(AuthError, match="scope or permission"):
        make_client(fake_time).fetch_json("Patient")


@responses.activate
def test_credentials_are_never_sent_to_another_host(fake_time):
    client = FhirClient(BASE, auth=BearerAuth("s3cret-token-value"), sleep=fake_time.sleep,
                        clock=fake_time.clock)
    with pytest.raises(ServerError, match="refusing to send credentials") as err:
        client.fetch_json("https://elsewhere.example.net/fhir/Patient?_getpages=x")
    assert "s3cret" not in str(err.value)
    assert len(responses.calls) == 0


@responses.activate
def test_transaction_is_retried_because_it_holds_only_puts(fake_time):
    responses.post(BASE, status=503)
    responses.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response"})
    reply = make_client(fake_time).transaction({"resourceType": "Bundle", "type": "transaction"})
    assert reply["type"] == "transaction-response"
    assert responses.calls[1].request.headers["Content-Type"] == "application/fhir+json"


@responses.activate
def test_insecure_turns_off_verification_and_warns(fake_time, caplog):
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    with caplog.at_level(logging.WARNING):
        client = make_client(fake_time, verify=False)
    assert "verification is OFF" in caplog.text
    client.fetch_json("metadata")
    assert responses.calls[0].request.req_kwargs["verify"] is False


@responses.activate
def test_ca_bundle_is_used_for_verification(fake_time, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    make_client(fake_time, verify=str(bundle)).fetch_json("metadata")
    assert responses.calls[0].request.req_kwargs["verify"] == str(bundle)


def test_base_url_with_credentials_is_refused():
    with pytest.raises(UsageError, match="credentials in the URL") as err:
        normalise_base_url("https://alice:hunter22@ehr.example.org/fhir")
    assert "hunter22" not in str(err.value)
    with pytest.raises(UsageError):
        normalise_base_url("ftp://ehr.example.org/fhir")
    assert normalise_base_url("https://ehr.example.org/fhir/") == BASE


def test_redact_url():
    assert redact_url("https://bob:pw12345@h.example/fhir/Patient?_id=1&access_token=abcdef") \
        == "https://h.example/fhir/Patient?_id=1&access_token=***"
    assert redact_url(f"{BASE}/Procedure?code=http://loinc.org|123") == \
        f"{BASE}/Procedure?code=http://loinc.org|123"


def test_outcome_text_joins_issues_on_one_line():
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "details": {"text": "Unknown\nparam"},
         "expression": ["Observation.foo"]},
        {"severity": "warning", "code": "informational"},
    ]}
    assert outcome_text(outcome) == \
        "error: Unknown param (at Observation.foo); warning: informational"
    assert outcome_text({"resourceType": "Patient"}) == ""


class _BrokenBody(io.RawIOBase):
    """A body whose connection drops after the first ten bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self.sent:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        self.sent = True
        buffer[:10] = self.data[:10]
        return 10


@responses.activate
def test_download_streams_to_disk_and_retries_a_body_broken_midway(fake_time, tmp_path):
    body = b'{"resourceType": "Patient", "id": "p1"}\n' * 3
    responses.get(f"{BASE}/files/p", body=io.BufferedReader(_BrokenBody(body)))
    responses.get(f"{BASE}/files/p", body=body, headers={"Retry-After": "1"})
    client = make_client(fake_time)
    got = client.download(f"{BASE}/files/p", tmp_path / "p.part",
                          accept="application/fhir+ndjson")
    assert got.path.read_bytes() == body and got.size == len(body) and not got.gzip
    assert responses.calls[1].request.headers["Accept"] == "application/fhir+ndjson"
    assert responses.calls[1].request.req_kwargs["stream"] is True
    assert client.stats.retries == 1 and len(fake_time.sleeps) == 1
    assert client.stats.as_dict()["by_status"] == {"200": 1, "no-answer": 1}


@pytest.mark.parametrize("status", [404, 503])
@responses.activate
def test_failed_download_leaves_no_partial_file(fake_time, tmp_path, status):
    responses.get(f"{BASE}/files/p", status=status, json=OUTCOME)
    client = make_client(fake_time, retry_time=5)
    with pytest.raises(ServerError, match="HAPI-0389") as err:
        client.download(f"{BASE}/files/p", tmp_path / "p.part", accept="application/x")
    assert err.value.status == status
    assert not (tmp_path / "p.part").exists()


@responses.activate
def test_download_of_an_html_page_is_a_clear_error(fake_time, tmp_path):
    responses.get(f"{BASE}/files/p", body="<html><title>Sign in</title></html>",
                  content_type="text/html")
    with pytest.raises(ServerError, match="HTML page instead of the file"):
        make_client(fake_time).download(f"{BASE}/files/p", tmp_path / "p.part", accept="x")
    assert not (tmp_path / "p.part").exists()
