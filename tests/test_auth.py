"""Authentication: basic, bearer, SMART Backend Services, and secrets that never leak.

All endpoints are intercepted by `responses`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from urllib.parse import parse_qs

import jwt
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_spine.auth import (
    Auth,
    BasicAuth,
    BearerAuth,
    SmartBackendAuth,
    build_client_assertion,
    load_private_key,
)
from fhir_spine.cli.auth_options import add_auth_options, auth_from_args
from fhir_spine.errors import AuthError, ExitCode, ServerError, UsageError
from fhir_spine.redact import (
    RedactingFilter,
    forget_secrets,
    install_log_redaction,
    register_secret,
    scrub,
)
from fhir_spine.sources.http import FhirClient

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/oauth2/token"
SMART_CONFIG = {
    "token_endpoint": TOKEN_URL,
    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
}


@pytest.fixture(autouse=True)
def _clean_registry():
    forget_secrets()
    yield
    forget_secrets()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP384R1())


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def no_sleep(seconds: float) -> None:
    pass


def client_with(auth: Auth) -> FhirClient:
    return FhirClient(BASE, auth=auth, sleep=no_sleep)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_auth_options(parser)
    return parser.parse_args(argv)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def smart(key, algorithm="RS384", clock=None, **kw) -> SmartBackendAuth:
    return SmartBackendAuth(client_id="spine-etl", private_key=key, algorithm=algorithm,
                            clock=clock or time.time, **kw)


def token_reply(token: str, expires_in: int = 300) -> dict:
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in,
            "scope": "system/*.read"}


# ------------------------------------------------------------------ basic / bearer

@responses.activate
def test_basic_auth_header():
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    client_with(BasicAuth("etl", "pa55word!")).fetch_json("Patient")
    assert responses.calls[0].request.headers["Authorization"] == "Basic ZXRsOnBhNTV3b3JkIQ=="


@responses.activate
def test_bearer_401_is_auth_error_without_the_token(caplog):
    token = "tok-9f8e7d6c5b4a"
    responses.get(f"{BASE}/Patient", status=401, json={
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login",
                   "diagnostics": f"token {token} is expired"}]})
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as err:
        client_with(BearerAuth(token)).fetch_json("Patient")
    assert err.value.exit_code == ExitCode.AUTH
    assert "401" in str(err.value) and "refused the bearer token" in str(err.value)
    assert token not in str(err.value)
    assert token not in caplog.text
    assert len(responses.calls) == 1  # a token from the environment cannot be renewed


@responses.activate
def test_bearer_token_file_is_reread_after_401(tmp_path):
    path = tmp_path / "token"
    path.write_text("old-token-123\n")
    path.chmod(0o600)
    auth = auth_from_args(parse(["--token-file", str(path)]), env={})
    assert isinstance(auth, BearerAuth)
    responses.get(f"{BASE}/Patient", status=401)
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    path.write_text("new-token-456\n")
    client_with(auth).fetch_json("Patient")
    assert [c.request.headers["Authorization"] for c in responses.calls] == [
        "Bearer old-token-123", "Bearer new-token-456"]


def test_auto_picks_auth_from_environment(tmp_path, rsa_key):
    assert type(auth_from_args(parse([]), env={})) is Auth
    assert isinstance(auth_from_args(parse([]), env={"FHIR_SPINE_TOKEN": "abc12345"}),
                      BearerAuth)
    basic = auth_from_args(parse(["--username", "etl"]), env={"FHIR_SPINE_PASSWORD": "pw123456"})
    assert isinstance(basic, BasicAuth) and basic.username == "etl"
    key = tmp_path / "key.pem"
    key.write_bytes(pem(rsa_key))
    key.chmod(0o600)
    auth = auth_from_args(parse(["--client-id", "c1", "--private-key", str(key)]), env={})
    assert isinstance(auth, SmartBackendAuth) and auth.algorithm == "RS384"
    assert auth.scope == "system/*.read" and auth.key_id


def test_half_given_settings_are_usage_errors():
    with pytest.raises(UsageError, match="FHIR_SPINE_PASSWORD"):
        auth_from_args(parse(["--auth", "basic", "--username", "x"]), env={})
    with pytest.raises(UsageError, match="--username"):
        auth_from_args(parse(["--auth", "basic"]), env={"FHIR_SPINE_PASSWORD": "p"})
    with pytest.raises(UsageError, match="--private-key"):
        auth_from_args(parse(["--auth", "smart", "--client-id", "c"]), env={})
    with pytest.raises(UsageError, match="FHIR_SPINE_TOKEN"):
        auth_from_args(parse(["--auth", "bearer"]), env={})


@pytest.mark.parametrize("option", ["--token", "--password", "--client-secret"])
def test_secrets_on_the_command_line_are_refused_without_echo(option, capsys):
    with pytest.raises(SystemExit):
        parse([option, "Sup3rSecretValue"])
    err = capsys.readouterr().err
    assert "not accepted" in err and "process lists" in err
    assert "Sup3rSecretValue" not in err


def test_world_readable_secret_file_is_warned_about(tmp_path, caplog):
    path = tmp_path / "token"
    path.write_text("abcdefgh")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        auth_from_args(parse(["--token-file", str(path)]), env={})
    assert "readable by other users" in caplog.text


# ------------------------------------------------------------------------- SMART

@responses.activate
def test_smart_discovers_endpoint_and_signs_an_rs384_assertion(rsa_key):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=SMART_CONFIG)
    responses.post(TOKEN_URL, json=token_reply("access-AAA"))
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    auth = smart(rsa_key, scope="system/Patient.rs system/Procedure.rs")
    before = int(time.time())
    client_with(auth).fetch_json("Patient")

    form = parse_qs(responses.calls[1].request.body)
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["system/Patient.rs system/Procedure.rs"]
    assert form["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assertion = form["client_assertion"][0]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "RS384" and header["kid"] == auth.key_id and header["typ"] == "JWT"
    claims = jwt.decode(assertion, rsa_key.public_key(), algorithms=["RS384"],
                        audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "spine-etl"
    assert claims["jti"]
    # exp = the second of signing + 300 s; that second lies between `before` and now
    assert before + 300 <= claims["exp"] <= int(time.time()) + 300
    assert responses.calls[2].request.headers["Authorization"] == "Bearer access-AAA"
    # the token request itself carries no FHIR credentials
    assert "Authorization" not in responses.calls[1].request.headers


def test_es384_assertion_and_unique_jti(ec_key):
    key, algorithm, _ = load_private_key(pem(ec_key))
    assert algorithm == "ES384"
    one = build_client_assertion("c", TOKEN_URL, key, algorithm, "kid1")
    two = build_client_assertion("c", TOKEN_URL, key, algorithm, "kid1")
    first = jwt.decode(one, ec_key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    second = jwt.decode(two, ec_key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    assert first["jti"] != second["jti"]
    assert jwt.get_unverified_header(one)["alg"] == "ES384"


def test_assertion_lifetime_is_capped_at_five_minutes(rsa_key):
    token = build_client_assertion("c", TOKEN_URL, rsa_key, "RS384", "k", now=1000,
                                   lifetime=3600)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] == 1300


def test_unsuitable_keys_are_refused():
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UsageError, match="P-384"):
        load_private_key(pem(p256))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(UsageError, match="2048"):
        load_private_key(pem(small))
    with pytest.raises(UsageError, match="PEM"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----")


def test_jwk_private_key_with_kid(ec_key):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key))
    jwk["kid"] = "site-key-1"
    key, algorithm, kid = load_private_key(json.dumps({"keys": [jwk]}).encode())
    assert algorithm == "ES384" and kid == "site-key-1"


@responses.activate
def test_token_is_reused_until_shortly_before_expiry(rsa_key):
    clock = Clock()
    responses.get(f"{BASE}/.well-known/smart-configuration", json=SMART_CONFIG)
    responses.post(TOKEN_URL, json=token_reply("tok-1", expires_in=300))
    responses.post(TOKEN_URL, json=token_reply("tok-2", expires_in=300))
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    auth = smart(rsa_key, clock=clock)
    client = client_with(auth)
    client.fetch_json("Patient")
    clock.now += 200
    client.fetch_json("Patient")          # 100 s left: still reused
    clock.now += 50
    client.fetch_json("Patient")          # 50 s left: inside the margin, renewed
    sent = [c.request.headers.get("Authorization") for c in responses.calls
            if c.request.url.startswith(f"{BASE}/Patient")]
    assert sent == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert auth.tokens_issued == 2


@responses.activate
def test_expired_token_is_refreshed_once_on_401(rsa_key):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=SMART_CONFIG)
    responses.post(TOKEN_URL, json=token_reply("tok-old"))
    responses.post(TOKEN_URL, json=token_reply("tok-new"))
    responses.get(f"{BASE}/Patient", status=401)
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    auth = smart(rsa_key)
    client_with(auth).fetch_json("Patient")
    sent = [c.request.headers.get("Authorization") for c in responses.calls
            if c.request.url.startswith(f"{BASE}/Patient")]
    assert sent == ["Bearer tok-old", "Bearer tok-new"]


@responses.activate
def test_second_401_after_refresh_is_an_auth_error(rsa_key):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=SMART_CONFIG)
    responses.post(TOKEN_URL, json=token_reply("tok-a"))
    responses.post(TOKEN_URL, json=token_reply("tok-b"))
    responses.get(f"{BASE}/Patient", status=401)
    with pytest.raises(AuthError, match="refused the SMART backend services client"):
        client_with(smart(rsa_key)).fetch_json("Patient")
    assert sum(1 for c in responses.calls if c.request.url == TOKEN_URL) == 2


@responses.activate
def test_token_endpoint_refusal_is_readable_and_leaks_nothing(rsa_key, caplog):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=SMART_CONFIG)
    responses.post(TOKEN_URL, status=400, json={
        "error": "invalid_client", "error_description": "unknown key id"})
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as err:
        client_with(smart(rsa_key)).fetch_json("Patient")
    message = str(err.value)
    assert message.startswith(f"token request to {TOKEN_URL} refused: 400 invalid_client "
                              "unknown key id")
    assertion = parse_qs(responses.calls[1].request.body)["client_assertion"][0]
    assert assertion not in message and assertion not in caplog.text


@responses.activate
def test_token_endpoint_from_capability_statement_when_no_smart_configuration(rsa_key):
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)
    responses.get(f"{BASE}/metadata", json={
        "resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": {
            "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                                  "oauth-uris",
                           "extension": [{"url": "token", "valueUri": TOKEN_URL}]}]}}]})
    responses.post(TOKEN_URL, json=token_reply("tok-cs"))
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    client_with(smart(rsa_key)).fetch_json("Patient")
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer tok-cs"


@responses.activate
def test_no_token_endpoint_anywhere_is_an_auth_error(rsa_key):
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    with pytest.raises(AuthError, match="--token-url"):
        client_with(smart(rsa_key)).fetch_json("Patient")


@responses.activate
def test_token_request_is_retried_with_a_fresh_jti(rsa_key):
    responses.post(TOKEN_URL, status=503)
    responses.post(TOKEN_URL, json=token_reply("tok-r"))
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    client_with(smart(rsa_key, token_url=TOKEN_URL)).fetch_json("Patient")
    jtis = [jwt.decode(parse_qs(c.request.body)["client_assertion"][0],
                       options={"verify_signature": False})["jti"]
            for c in responses.calls if c.request.url == TOKEN_URL]
    assert len(jtis) == 2 and jtis[0] != jtis[1]


# ------------------------------------------------------------------- no leaks

@responses.activate
def test_no_secret_reaches_debug_logs_or_errors(rsa_key, caplog, tmp_path):
    """A whole SMART flow at DEBUG, including a failure: no token, assertion or key."""
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem(rsa_key))
    key_file.chmod(0o600)
    responses.get(f"{BASE}/.well-known/smart-configuration", json=SMART_CONFIG)
    responses.post(TOKEN_URL, json=token_reply("eyJsecret.access.token"))
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle"})
    responses.get(f"{BASE}/Observation", status=500, json={
        "resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "exception",
            "diagnostics": "request had Authorization: Bearer eyJsecret.access.token"}]})
    root = logging.getLogger()
    with caplog.at_level(logging.DEBUG):
        install_log_redaction()
        auth = auth_from_args(parse(["--client-id", "spine-etl", "--private-key",
                                     str(key_file)]), env={})
        client = client_with(auth)
        client.fetch_json("Patient")
        with pytest.raises(ServerError) as err:
            client.fetch_json("Observation")
        # a library logging the header would be scrubbed as well
        logging.getLogger("urllib3.connectionpool").debug(
            "sent header Authorization: Bearer %s", "eyJsecret.access.token")
    assertion = parse_qs(responses.calls[1].request.body)["client_assertion"][0]
    key_lines = [line for line in pem(rsa_key).decode().splitlines() if "-----" not in line]
    for secret in ["eyJsecret.access.token", assertion, *key_lines]:
        assert secret not in caplog.text
        assert secret not in str(err.value)
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(f)


def test_scrub_masks_registered_secrets_bearer_values_and_jwts():
    register_secret("correct-horse-battery")
    text = scrub("pw correct-horse-battery; Authorization: Bearer abcdefghijk; "
                 "jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl")
    assert "correct-horse" not in text and "abcdefghijk" not in text
    assert "eyJhbGciOi" not in text
