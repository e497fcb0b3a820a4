"""How fhir-spine proves who it is to a FHIR server: none, HTTP basic, a bearer token, or
SMART Backend Services (OAuth 2 client credentials with a signed JWT client assertion).

Secrets come only from environment variables or files. A value given on the command line
shows in `ps` and in shell history for every user of the machine, so the options that
would take one (`--password`, `--token`, `--client-secret`) exist only to refuse it with
a pointer to the safe way (the options are `cli/auth_options.py`'s). Every secret loaded
is registered with `redact` so it cannot come back out through a log line or an error
message.

PyJWT and cryptography are imported where a key is used, not at start-up: every
`fhir-spine` command registers these options, few sign anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fhir_spine.errors import AuthError, ServerError, UsageError
from fhir_spine.redact import redact_url, register_secret, scrub

log = logging.getLogger(__name__)

ENV_USERNAME = "FHIR_SPINE_USERNAME"
ENV_PASSWORD = "FHIR_SPINE_PASSWORD"  # noqa: S105 - the variable's name, not a password
ENV_TOKEN = "FHIR_SPINE_TOKEN"  # noqa: S105
ENV_CLIENT_ID = "FHIR_SPINE_CLIENT_ID"
ENV_PRIVATE_KEY = "FHIR_SPINE_PRIVATE_KEY"
ENV_PRIVATE_KEY_FILE = "FHIR_SPINE_PRIVATE_KEY_FILE"
ENV_PRIVATE_KEY_PASSWORD = "FHIR_SPINE_PRIVATE_KEY_PASSWORD"  # noqa: S105
ENV_KEY_ID = "FHIR_SPINE_KEY_ID"
ENV_SCOPE = "FHIR_SPINE_SCOPE"
ENV_TOKEN_URL = "FHIR_SPINE_TOKEN_URL"  # noqa: S105

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_SCOPE = "system/*.read"
# SMART caps the assertion's lifetime at five minutes.
ASSERTION_LIFETIME_S = 300
# Ask for a new token this long before the old one expires, so a request never
# carries a token that dies in flight.
EXPIRY_MARGIN_S = 60
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


class TokenTransport(Protocol):
    """What SMART auth needs from the HTTP client: unauthenticated calls with retries."""

    base_url: str

    def fetch_json(self, url: str, *, authenticated: bool = True,
                   accept: str = "application/json") -> dict[str, Any]: ...

    def post_form(self, url: str,
                  form: Mapping[str, str] | Callable[[], Mapping[str, str]]) -> Any: ...


class Auth:
    """No authentication. Subclasses add a header and may renew it once after a 401."""

    kind = "none"

    def headers(self, http: TokenTransport) -> dict[str, str]:
        return {}

    def on_unauthorized(self, http: TokenTransport, sent: Mapping[str, str]) -> bool:
        """Called once when a request came back 401; True means "send it again"."""
        return False

    def describe(self) -> str:
        return "no credentials"


@dataclass
class BasicAuth(Auth):
    username: str
    password: str = field(repr=False)
    kind = "basic"

    def __post_init__(self) -> None:
        register_secret(self.password)
        raw = f"{self.username}:{self.password}".encode()
        self._header = "Basic " + base64.b64encode(raw).decode("ascii")
        register_secret(self._header.split(" ", 1)[1])

    def headers(self, http: TokenTransport) -> dict[str, str]:
        return {"Authorization": self._header}

    def describe(self) -> str:
        return f"HTTP basic credentials of user {self.username!r}"


@dataclass
class BearerAuth(Auth):
    """A token obtained elsewhere. From a file it is re-read after a 401, so a sidecar
    that rotates the file keeps a long pull going."""

    token: str = field(repr=False)
    path: Path | None = None
    kind = "bearer"

    def __post_init__(self) -> None:
        register_secret(self.token)

    def headers(self, http: TokenTransport) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def on_unauthorized(self, http: TokenTransport, sent: Mapping[str, str]) -> bool:
        if self.path is None:
            return False
        fresh = read_secret_file(self.path, "--token-file")
        if fresh == self.token:
            return False
        log.info("bearer token file %s changed; retrying with the new token", self.path)
        self.token = fresh
        register_secret(fresh)
        return True

    def describe(self) -> str:
        return "bearer token" + (f" from {self.path}" if self.path else f" from ${ENV_TOKEN}")


@dataclass
class SmartBackendAuth(Auth):
    """SMART Backend Services: trade a signed JWT for a short-lived access token.

    The token is reused until `EXPIRY_MARGIN_S` before it expires and renewed once when
    the server answers 401 anyway (revoked early, clock skew). One lock serialises token
    requests so a pool of workers does not stampede the token endpoint.
    """

    client_id: str
    private_key: Any = field(repr=False)
    algorithm: str = "RS384"
    key_id: str = ""
    scope: str = DEFAULT_SCOPE
    token_url: str | None = None
    clock: Callable[[], float] = time.time
    kind = "smart"

    def __post_init__(self) -> None:
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_issued = 0
        if not self.key_id:
            self.key_id = jwk_thumbprint(self.private_key)

    def headers(self, http: TokenTransport) -> dict[str, str]:
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at - EXPIRY_MARGIN_S:
                self._fetch_token(http)
            return {"Authorization": f"Bearer {self._token}"}

    def on_unauthorized(self, http: TokenTransport, sent: Mapping[str, str]) -> bool:
        with self._lock:
            current = f"Bearer {self._token}" if self._token else None
            if current is not None and sent.get("Authorization") != current:
                return True  # another worker renewed it meanwhile
            log.info("server refused the access token; requesting a new one")
            self._fetch_token(http)
            return True

    def describe(self) -> str:
        return f"SMART backend services client {self.client_id!r}"

    def client_assertion(self, token_url: str) -> str:
        return build_client_assertion(self.client_id, token_url, self.private_key,
                                      self.algorithm, self.key_id, now=self.clock())

    def _fetch_token(self, http: TokenTransport) -> None:
        if self.token_url is None:
            self.token_url = discover_token_url(http)
        token_url = self.token_url

        def form() -> dict[str, str]:
            assertion = self.client_assertion(token_url)
            register_secret(assertion)
            return {"grant_type": "client_credentials", "scope": self.scope,
                    "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}

        where = redact_url(token_url)
        response = http.post_form(token_url, form)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code != 200:
            reason = " ".join(str(body.get(k, "")) for k in ("error", "error_description"))
            reason = reason.strip() or response.reason or "no reason given"
            raise AuthError(scrub(f"token request to {where} refused: {response.status_code} "
                                  f"{reason} (client id {self.client_id!r}, scope "
                                  f"{self.scope!r})"))
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"token endpoint {where} answered without an access_token")
        token_type = str(body.get("token_type", "bearer"))
        if token_type.lower() != "bearer":
            raise AuthError(f"token endpoint {where} gave a {token_type!r} token; "
                            "only bearer tokens are supported")
        register_secret(token)
        try:
            lifetime = float(body.get("expires_in", ASSERTION_LIFETIME_S))
        except (TypeError, ValueError):
            lifetime = float(ASSERTION_LIFETIME_S)
        self._token = token
        self._expires_at = self.clock() + lifetime
        self.tokens_issued += 1
        log.info("got an access token from %s (valid %d s, scope %s)", where, lifetime,
                 body.get("scope", self.scope))


def discover_token_url(http: TokenTransport) -> str:
    """The token endpoint from `.well-known/smart-configuration`, else from the
    CapabilityStatement's oauth-uris extension (older servers)."""
    base = http.base_url.rstrip("/")
    try:
        config = http.fetch_json(f"{base}/.well-known/smart-configuration",
                                 authenticated=False)
        url = config.get("token_endpoint")
        if isinstance(url, str) and url:
            methods = config.get("token_endpoint_auth_methods_supported")
            if isinstance(methods, list) and "private_key_jwt" not in methods:
                log.warning("server's SMART configuration does not list private_key_jwt "
                            "among token_endpoint_auth_methods_supported")
            return url
    except ServerError as exc:
        if exc.status not in (404, 401, 403, 405):
            raise
    try:
        metadata = http.fetch_json(f"{base}/metadata", authenticated=False,
                                   accept="application/fhir+json")
    except ServerError:
        metadata = {}
    for rest in metadata.get("rest") or []:
        for ext in ((rest.get("security") or {}).get("extension") or []):
            if ext.get("url") != OAUTH_URIS:
                continue
            for sub in ext.get("extension") or []:
                if sub.get("url") == "token" and sub.get("valueUri"):
                    return str(sub["valueUri"])
    raise AuthError(f"{redact_url(base)} offers no SMART configuration with a token endpoint; "
                    f"give it with --token-url or ${ENV_TOKEN_URL}")


def build_client_assertion(client_id: str, token_url: str, key: Any, algorithm: str,
                           key_id: str, *, now: float | None = None,
                           lifetime: int = ASSERTION_LIFETIME_S) -> str:
    """The signed JWT of SMART Backend Services: iss = sub = client id, aud = the token
    endpoint, a fresh `jti` each time (servers reject replays), `exp` at most 5 minutes on."""
    import jwt

    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id, "sub": client_id, "aud": token_url,
        "exp": issued + min(lifetime, ASSERTION_LIFETIME_S), "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": key_id, "typ": "JWT"})


def load_private_key(data: bytes, password: str | None = None) -> tuple[Any, str, str]:
    """Key object, algorithm (RS384 or ES384) and key id from a PEM key or a JWK(S).

    The algorithm follows from the key, because SMART allows exactly one per key type:
    RSA signs RS384; ES384 needs an EC key on P-384.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    text = data.strip()
    key_id = ""
    if text.startswith(b"{"):
        key, key_id = _key_from_jwk(text)
    else:
        try:
            key = serialization.load_pem_private_key(
                text, password=password.encode() if password else None)
        except (ValueError, TypeError) as exc:
            # The library's text says whether a passphrase is missing or wrong; it never
            # contains key material.
            raise UsageError(f"private key: cannot load it as PEM ({exc}); set "
                             f"${ENV_PRIVATE_KEY_PASSWORD} if it is encrypted") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise UsageError("private key: RSA keys must be at least 2048 bits")
        return key, "RS384", key_id
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise UsageError(f"private key: ES384 needs an EC key on P-384, not {key.curve.name}")
        return key, "ES384", key_id
    raise UsageError("private key: SMART backend services needs an RSA or EC P-384 key")


def _key_from_jwk(text: bytes) -> tuple[Any, str]:
    import jwt

    try:
        doc = json.loads(text)
    except ValueError:
        raise UsageError("private key: not valid JSON (expected PEM, a JWK or a JWKS)") from None
    keys = doc["keys"] if isinstance(doc, dict) and "keys" in doc else [doc]
    private = [k for k in keys if isinstance(k, dict) and "d" in k]
    if len(private) != 1:
        raise UsageError(f"private key: expected exactly one private JWK, found {len(private)}")
    try:
        jwk = jwt.PyJWK(private[0])
    except (jwt.PyJWTError, ValueError, KeyError) as exc:
        raise UsageError(f"private key: not a usable JWK ({type(exc).__name__})") from None
    return jwk.key, str(private[0].get("kid", ""))


def jwk_thumbprint(key: Any) -> str:
    """RFC 7638 thumbprint of the public key: a stable default `kid` that matches what
    most servers compute for a registered JWKS."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def read_secret_file(path: Path, option: str) -> str:
    """A secret from a file, stripped; warn when other users can read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by other users; chmod 600 it", option, path)
    if not text:
        raise UsageError(f"{option} {path} is empty")
    return text


@dataclass(frozen=True)
class AuthSettings:
    """What the user asked for (`cli/auth_options.py` fills it from the options); the
    environment fills in what is missing here, in `resolve_auth`."""

    kind: str = "auto"                # auto, none, basic, bearer, smart
    username: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None
    client_id: str | None = None
    private_key: Path | None = None
    key_id: str | None = None
    scope: str | None = None
    token_url: str | None = None


def resolve_auth(settings: AuthSettings, env: Mapping[str, str] | None = None) -> Auth:
    """Build the Auth the settings and environment ask for; refuse half-given settings."""
    env = os.environ if env is None else env
    kind = settings.kind or "auto"
    username = settings.username or env.get(ENV_USERNAME)
    client_id = settings.client_id or env.get(ENV_CLIENT_ID)
    key_file = settings.private_key or (
        Path(env[ENV_PRIVATE_KEY_FILE]) if env.get(ENV_PRIVATE_KEY_FILE) else None)
    token_file = settings.token_file
    password_file = settings.password_file
    has_key = key_file is not None or bool(env.get(ENV_PRIVATE_KEY))

    if kind == "auto":
        if client_id and has_key:
            kind = "smart"
        elif token_file is not None or env.get(ENV_TOKEN):
            kind = "bearer"
        elif password_file is not None or env.get(ENV_PASSWORD):
            kind = "basic"
        else:
            kind = "none"
        log.debug("authentication: %s", kind)

    if kind == "none":
        return Auth()
    if kind == "basic":
        if not username:
            raise UsageError(f"basic auth needs --username or ${ENV_USERNAME}")
        if password_file is not None:
            password = read_secret_file(password_file, "--password-file")
        elif env.get(ENV_PASSWORD):
            password = env[ENV_PASSWORD]
        else:
            raise UsageError(f"basic auth needs ${ENV_PASSWORD} or --password-file")
        return BasicAuth(username, password)
    if kind == "bearer":
        if token_file is not None:
            return BearerAuth(read_secret_file(token_file, "--token-file"), token_file)
        if env.get(ENV_TOKEN):
            return BearerAuth(env[ENV_TOKEN].strip())
        raise UsageError(f"bearer auth needs ${ENV_TOKEN} or --token-file")
    # smart
    if not client_id:
        raise UsageError(f"SMART backend services needs --client-id or ${ENV_CLIENT_ID}")
    if key_file is not None:
        try:
            data = key_file.read_bytes()
            mode = key_file.stat().st_mode
        except OSError as exc:
            raise UsageError(f"--private-key {key_file}: cannot read it ({exc.strerror})") \
                from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("--private-key %s is readable by other users; chmod 600 it", key_file)
    elif env.get(ENV_PRIVATE_KEY):
        data = env[ENV_PRIVATE_KEY].encode()
    else:
        raise UsageError(f"SMART backend services needs --private-key FILE or "
                         f"${ENV_PRIVATE_KEY_FILE}")
    register_secret(data)
    register_secret(env.get(ENV_PRIVATE_KEY_PASSWORD))
    key, algorithm, jwk_kid = load_private_key(data, env.get(ENV_PRIVATE_KEY_PASSWORD))
    return SmartBackendAuth(
        client_id=client_id, private_key=key, algorithm=algorithm,
        key_id=settings.key_id or env.get(ENV_KEY_ID) or jwk_kid,
        scope=settings.scope or env.get(ENV_SCOPE) or DEFAULT_SCOPE,
        token_url=settings.token_url or env.get(ENV_TOKEN_URL) or None,
    )
