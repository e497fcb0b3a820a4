"""The HTTP client's limits, in process (issue 15): redirects, URLs, gzip, deadline."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest

from fhir_spine.errors import ServerError, ServerUnreachable
from fhir_spine.sources.http import (
    FhirClient,
    HttpSettings,
    LimitExceeded,
    check_gzip_file,
    checked_link,
    checked_name,
)

try:
    from faults.hostile import HostileServer, gzip_bomb
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.faults.hostile import HostileServer, gzip_bomb


@pytest.mark.parametrize("target", ["file:///etc/passwd", "javascript:alert(1)",
                                    "http://[::1", "http://h:99999/x", "x" * 9000,
                                    "http:///nohost", None, 5, "a b"])
def test_checked_link_refuses(target):
    with pytest.raises(ServerError):
        checked_link(target, "https://ehr.example.org/fhir/", "GET x", "next link")


def test_checked_link_resolves_relative_links():
    assert checked_link("Patient?page=2", "https://h/fhir/", "GET x", "next link") \
        == "https://h/fhir/Patient?page=2"


def test_checked_name():
    assert checked_name("Observation", "GET x", "type") == "Observation"
    for bad in ("O" * 65, "../etc", "a/b"):
        with pytest.raises(ServerError):
            checked_name(bad, "GET x", "type")


def test_gzip_ratio_and_size(tmp_path: Path):
    settings = HttpSettings(max_gzip_ratio=50)
    bomb = tmp_path / "bomb.ndjson.gz"
    bomb.write_bytes(gzip_bomb(64 << 20))
    with pytest.raises(LimitExceeded, match="--max-gzip-ratio"):
        check_gzip_file(bomb, settings, "http://h/f")
    normal = tmp_path / "ok.ndjson.gz"
    normal.write_bytes(gzip.compress(b'{"resourceType": "Patient", "id": "p"}\n' * 1000))
    check_gzip_file(normal, settings, "http://h/f")
    with pytest.raises(LimitExceeded, match="--max-file-size"):
        check_gzip_file(normal, HttpSettings(max_file_bytes=1000), "http://h/f")


def test_same_origin_redirect_loop_is_a_server_error_not_a_crash():
    with HostileServer("redirect-307") as server:
        server.other = server.origin  # redirects to itself, for ever
        client = FhirClient(server.base, settings=HttpSettings(retry_time=0))
        with pytest.raises(ServerError, match="TooManyRedirects"):
            client.fetch_json("metadata")
        assert len(server.seen()) <= 31
        client.close()


def test_deadline_ends_a_dripping_answer_in_time():
    with HostileServer("search-drip", drip=0.2) as server:
        client = FhirClient(server.base, settings=HttpSettings(deadline=1.0, retry_time=0,
                                                               read_timeout=5))
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="--request-deadline 1"):
            client.fetch_json("Procedure", params=[("code", "x")])
        assert time.monotonic() - started < 5
        client.close()


def test_deadline_ends_dripping_headers_in_time():
    with HostileServer("header-drip", drip=0.2) as server:
        client = FhirClient(server.base, settings=HttpSettings(deadline=1.0, retry_time=0,
                                                               read_timeout=5))
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="--request-deadline 1"):
            client.fetch_json("metadata")
        assert time.monotonic() - started < 5
        client.close()


def test_manifest_urls_resolve_against_the_base_and_are_checked():
    from fhir_spine.sources.bulk.status import manifest_files

    client = FhirClient("https://ehr.example.org/fhir")
    manifest = {"transactionTime": "2025-01-01T00:00:00Z", "output": [
        {"type": "Patient", "url": "files/1.ndjson"},
        {"type": "Patient", "url": "/files/2.ndjson"},
        {"type": "Patient", "url": "https://ehr.example.org/fhir/files/3.ndjson"}]}
    urls = [f.url for f in manifest_files(client, manifest, "GET status")]
    assert urls == ["https://ehr.example.org/fhir/files/1.ndjson",
                    "https://ehr.example.org/fhir/files/2.ndjson",
                    "https://ehr.example.org/fhir/files/3.ndjson"]
    for bad in ("file:///etc/passwd", "javascript:alert(1)", "http://[::1", 7, ""):
        with pytest.raises(ServerError):
            manifest_files(client, {**manifest, "output": [{"type": "P", "url": bad}]},
                           "GET status")
    client.close()
