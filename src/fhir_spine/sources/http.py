"""The HTTP client every server-facing command shares: one `requests.Session`, FHIR JSON,
timeouts, authentication, bounded retries, readable errors and request counts.

Hospital FHIR endpoints sit behind gateways that throttle (429), restart (502/503/504)
and drop connections; a nightly pull must ride that out without hammering them and
without hanging forever. So transient failures are retried with exponential backoff and
jitter, a server's `Retry-After` is obeyed, and the total time spent retrying one
request is bounded (`retry_time`). Everything else (400, 404, 500, ...) fails at once
with a one-line message naming the request, because retrying it cannot help. Bulk
export files go through the same policy: `FhirClient.download` streams a body to disk
inside the same retry loop.

This module stays long on purpose: that one policy (retries, `Retry-After`, credential
renewal, the error messages) is kept in one place for every request fhir-spine sends.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import hashlib
import logging
import os
import random
import re
import shutil
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from fhir_spine import __version__
from fhir_spine.auth import Auth
from fhir_spine.errors import (
    AuthError,
    ExitCode,
    ServerError,
    ServerUnreachable,
    SpineError,
    UsageError,
)
from fhir_spine.redact import redact_url, scrub

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
USER_AGENT = f"fhir-spine/{__version__}"
FormArg = Mapping[str, str] | Callable[[], Mapping[str, str]]
# Reads an answer's body (inside the retries: a body can break too); returns its size.
BodyReader = Callable[[requests.Response], int]
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Characters kept readable in the query strings we build; `|` is escaped because some
# servlet containers reject it unescaped.
QUERY_SAFE = ",:/"
CHUNK = 1 << 20
GIB = 1 << 30
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    verify: bool | str = True          # False only with --insecure; a path = CA bundle
    retry_time: float = 300.0          # total seconds one request may spend retrying
    # Until the server has answered once, "connection refused" and "unknown host" are
    # far more likely a typo in --server than an outage: give up after this long.
    first_contact_time: float = 5.0
    max_attempts: int = 12
    backoff_base: float = 1.0          # first backoff in seconds, doubled per attempt
    backoff_max: float = 60.0
    pool_size: int = 10
    # Limits on what a server can make the client do (issue 15); each has an option.
    deadline: float = 600.0            # whole request (headers + body) in seconds, ...
    min_rate: float = 64 * 1024        # ... unless a download still averages this (B/s)
    max_file_bytes: int = 64 * GIB     # per downloaded file, decompressed bytes too
    max_gzip_ratio: float = 200.0      # decompressed / compressed bytes of a gzip body
    min_free_bytes: int = 1 * GIB      # free space left on the job folder's disk


@dataclass
class RequestStats:
    """Counts for the manifest and for comparing a refresh with a full pull."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, method: str, status: int | str, size: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            self.by_status[str(status)] += 1
            self.bytes_received += size

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "retries": self.retries,
                    "bytes_received": self.bytes_received,
                    "by_status": dict(sorted(self.by_status.items())),
                    "by_method": dict(sorted(self.by_method.items()))}


@dataclass(frozen=True)
class Download:
    """A body streamed to a file by `FhirClient.download`."""

    path: Path
    size: int
    sha256: str
    gzip: bool      # the bytes on disk are gzip (a server that sends .ndjson.gz files)


class _Transient(Exception):  # noqa: N818 - internal signal, never shown
    """One attempt failed in a way worth retrying."""

    def __init__(self, reason: str, *, status: int | None = None,
                 retry_after: float | None = None, response: Any = None,
                 unreachable: bool = False, no_server: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.response = response
        self.unreachable = unreachable
        self.no_server = no_server  # "refused" / "unknown host": nothing listens there


_NO_SERVER = (
    (re.compile(r"refused", re.IGNORECASE), "refused"),
    (re.compile(r"name or service not known|nodename nor servname|name resolution|"
                r"failed to resolve|no address associated|getaddrinfo failed|"
                r"NameResolutionError", re.IGNORECASE), "unknown host"),
)


def no_server_kind(exc: BaseException) -> str:
    """"refused" or "unknown host" when a connection error says nothing listens at the
    address (a typo in host or port, not a busy server); "" otherwise."""
    text = f"{exc} {_root_cause(exc)}"
    for pattern, kind in _NO_SERVER:
        if pattern.search(text):
            return kind
    return ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def outcome_text(body: Any) -> str:
    """An OperationOutcome as one line: `severity: diagnostics; severity: ...`."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") or {}
        codings = details.get("coding") or [{}]
        text = (issue.get("diagnostics") or details.get("text")
                or (codings[0] or {}).get("display") or issue.get("code") or "")
        where = ", ".join(issue.get("expression") or issue.get("location") or [])
        severity = issue.get("severity", "error")
        parts.append(f"{severity}: {text}" + (f" (at {where})" if where else ""))
    return one_line("; ".join(parts))


def one_line(text: str, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _html_title(text: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    return one_line(match.group(1), 120) if match else ""


def origin_of(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def normalise_base_url(url: str) -> str:
    """The server base URL as given, checked: http(s), no credentials, no query."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {redact_url(url)!r}: expected an http(s) URL such as "
                         "https://host/fhir")
    if parts.username or parts.password:
        raise UsageError("--server: credentials in the URL are not accepted (they show in "
                         "process lists); use FHIR_SPINE_USERNAME / FHIR_SPINE_PASSWORD")
    if parts.query or parts.fragment:
        raise UsageError(f"--server {redact_url(url)}: give the base URL without ?query or #")
    return url.strip().rstrip("/")


class FhirClient:
    """A FHIR REST client bound to one server base URL.

    Thread-safe for the small worker pools of `sources.rest`: the session's connection
    pool is sized for them, and the counters and the token cache carry their own locks.
    `sleep` and `clock` are injectable so the retry timing can be tested without waiting.
    """

    def __init__(self, base_url: str, *, auth: Auth | None = None,
                 settings: HttpSettings | None = None,
                 session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = normalise_base_url(base_url)
        self.auth = auth or Auth()
        self.settings = settings or HttpSettings()
        self.stats = RequestStats()
        self._sleep = sleep
        self._clock = clock
        self._origin = origin_of(self.base_url)
        self.answered = False  # the server has answered at least once (any status)
        self.session = session or requests.Session()
        adapter = _TrackingAdapter(pool_connections=4, pool_maxsize=self.settings.pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": FHIR_JSON})
        self.session.verify = self.settings.verify
        if self.settings.verify is False:
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("TLS certificate verification is OFF (--insecure): anyone on the "
                        "network path can read and alter this traffic")
        if self.auth.kind != "none" and self._origin[0] == "http" \
                and self._origin[1] not in ("localhost", "127.0.0.1", "::1"):
            log.warning("sending %s over plain http to %s", self.auth.describe(),
                        self._origin[1])

    # ------------------------------------------------------------------ URLs

    def url(self, path_or_url: str, params: Sequence[tuple[str, str]] | None = None) -> str:
        """An absolute URL: relative paths resolve against the base, params are encoded."""
        if path_or_url.startswith(("http://", "https://")):
            url = path_or_url
        else:
            url = urljoin(self.base_url + "/", path_or_url.lstrip("/"))
        if params:
            url += ("&" if "?" in url else "?") + urlencode(list(params), safe=QUERY_SAFE)
        return url

    def same_origin(self, url: str) -> bool:
        return origin_of(url) == self._origin

    def close(self) -> None:
        self.session.close()

    # -------------------------------------------------------------- requests

    def request(self, method: str, url: str, *, body: bytes | None = None,
                form: FormArg | None = None, headers: Mapping[str, str] | None = None,
                authenticated: bool = True, retry: bool = True,
                raise_for_status: bool = True) -> requests.Response:
        """Send one request, retrying transient failures; renew credentials once on 401.

        `url` is used exactly as given (a `next` link is followed verbatim). With
        `raise_for_status` an error status becomes `AuthError` / `ServerError`.
        """
        return self._send(method, url, body, form, headers, authenticated, retry,
                          raise_for_status, None)

    def download(self, url: str, path: Path, *, accept: str,
                 authenticated: bool = True) -> Download:
        """GET `url` streamed into `path`, never whole in memory (an export file can be
        gigabytes), under the same rules as `request`: transient failures retried (a
        connection dropped mid-body too), `Retry-After` obeyed, credentials renewed once
        on 401, an error status raised. An HTML answer is a `ServerError`. `path` is
        removed when the download fails."""
        got: list[Download] = []
        settings = self.settings

        def read(response: requests.Response) -> int:
            if response.status_code >= 400 or "html" in response.headers.get(
                    "Content-Type", "").lower():
                return len(response.content)
            check_free_space(path.parent, _content_length(response), settings, url)
            got.append(_stream_to(response, path, settings, url))
            return got[-1].size

        check_free_space(path.parent, 0, settings, url)  # before asking at all
        try:
            response = self._send("GET", url, None, None, {"Accept": accept}, authenticated,
                                  True, True, read)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if not got:
            raise ServerError(f"GET {redact_url(url)}: answered {response.status_code} with "
                              "an HTML page instead of the file; is a login page or proxy in "
                              "the way?", status=response.status_code)
        return got[-1]

    def fetch_json(self, url: str, *, params: Sequence[tuple[str, str]] | None = None,
                   authenticated: bool = True, accept: str = FHIR_JSON) -> dict[str, Any]:
        """GET a JSON object; an HTML page or non-JSON body is a `ServerError`."""
        full = self.url(url, params)
        response = self.request("GET", full, headers={"Accept": accept},
                                authenticated=authenticated)
        return self.json_of(response, f"GET {redact_url(full)}")

    def post_form(self, url: str, form: FormArg) -> requests.Response:
        """POST a form without FHIR credentials (the OAuth token request); the caller
        reads the status, since an OAuth error body explains itself. `form` may be a
        function, called per attempt: a retried token request needs a fresh `jti`."""
        return self.request("POST", url, form=form, headers={"Accept": "application/json"},
                            authenticated=False, raise_for_status=False)

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle to the base. Retried: our bundles hold only PUTs,
        which are idempotent, so replaying one the server may have applied is safe."""
        response = self.request("POST", self.base_url, body=orjson.dumps(bundle),
                                headers={"Content-Type": FHIR_JSON})
        return self.json_of(response, f"POST {redact_url(self.base_url)} (transaction)")

    @staticmethod
    def json_of(response: requests.Response, shown: str) -> dict[str, Any]:
        text_start = response.content[:512].lstrip()
        ctype = response.headers.get("Content-Type", "")
        if text_start.startswith(b"<") or "html" in ctype.lower():
            title = _html_title(response.content[:4096].decode("utf-8", "replace"))
            raise ServerError(scrub(
                f"{shown}: answered {response.status_code} with an HTML page"
                + (f" ({title!r})" if title else "") + " instead of FHIR JSON; is the base "
                "URL right, or is a login page or proxy in the way?"),
                status=response.status_code)
        try:
            value = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ServerError(f"{shown}: answer is not valid JSON ({exc})",
                              status=response.status_code) from None
        if not isinstance(value, dict):
            raise ServerError(f"{shown}: expected a JSON object, got {type(value).__name__}",
                              status=response.status_code)
        return value

    # ------------------------------------------------------------- internals

    def _send(self, method: str, url: str, body: bytes | None, form: FormArg | None,
              headers: Mapping[str, str] | None, authenticated: bool, retry: bool,
              raise_for_status: bool, read: BodyReader | None) -> requests.Response:
        url = self.url(url)
        shown = f"{method} {redact_url(url)}"
        sent = self._headers(url, headers, authenticated)
        response = self._with_retries(method, url, shown, body, form, sent, retry, read)
        if response.status_code == 401 and authenticated and self.auth.kind != "none" \
                and self.auth.on_unauthorized(self, sent):
            sent = self._headers(url, headers, authenticated)
            response = self._with_retries(method, url, shown, body, form, sent, retry, read)
        if raise_for_status and response.status_code >= 400:
            raise self._status_error(shown, response, authenticated)
        return response

    def _headers(self, url: str, extra: Mapping[str, str] | None,
                 authenticated: bool) -> dict[str, str]:
        headers = dict(extra or {})
        if authenticated and self.auth.kind != "none":
            if not self.same_origin(url):
                raise ServerError(
                    f"{redact_url(url)} is not on the server {redact_url(self.base_url)}; "
                    "refusing to send credentials to another host (does the server know "
                    "its own public base URL? HAPI: hapi.fhir.server_address)")
            headers.update(self.auth.headers(self))
        return headers

    def _with_retries(self, method: str, url: str, shown: str, body: bytes | None,
                      form: FormArg | None, headers: dict[str, str], retry: bool,
                      read: BodyReader | None) -> requests.Response:
        start = self._clock()
        settings = self.settings

        def stop(state: RetryCallState) -> bool:
            if not retry or state.attempt_number >= settings.max_attempts:
                return True
            spent = self._clock() - start
            exc = state.outcome.exception() if state.outcome else None
            if not self.answered and isinstance(exc, _Transient) and exc.no_server:
                return spent + state.upcoming_sleep > settings.first_contact_time
            return spent + state.upcoming_sleep > settings.retry_time

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return exc.retry_after
            ceiling = min(settings.backoff_max,
                          settings.backoff_base * 2 ** (state.attempt_number - 1))
            return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter only

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.stats.retried()
            log.warning("%s: %s; retrying in %.1f s (attempt %d of at most %d)", shown,
                        getattr(exc, "reason", exc), state.upcoming_sleep,
                        state.attempt_number + 1, settings.max_attempts)

        retrying = Retrying(stop=stop, wait=wait, retry=retry_if_exception_type(_Transient),
                            sleep=self._sleep, before_sleep=before_sleep, reraise=True)
        try:
            return retrying(self._attempt, method, url, shown, body, form, headers, read)
        except _Transient as exc:
            spent = self._clock() - start
            attempts = retrying.statistics.get("attempt_number", 1)
            tried = f"after {attempts} attempt{'s' if attempts != 1 else ''} " \
                    f"over {spent:.0f} s"
            if exc.unreachable:
                hint = ""
                if exc.no_server and not self.answered:
                    hint = (f"; nothing answers at {self._origin[1]}:{self._origin[2]}: "
                            "check the host and port of --server")
                raise ServerUnreachable(scrub(f"{shown}: {exc.reason} ({tried}){hint}")) \
                    from None
            hint = ""
            if exc.status == 429:
                hint = "; the server is throttling: try fewer --workers or a later time"
            if exc.retry_after is not None and exc.retry_after > settings.retry_time:
                hint += f"; it asked to wait {exc.retry_after:.0f} s, more than " \
                        f"--retry-time {settings.retry_time:.0f} s"
            detail = _suffix(error_detail(exc.response)) if exc.response is not None else ""
            raise ServerError(scrub(f"{shown}: {exc.reason}{detail} ({tried}){hint}"),
                              status=exc.status) from None

    def _attempt(self, method: str, url: str, shown: str, body: bytes | None,
                 form: FormArg | None, headers: dict[str, str],
                 read: BodyReader | None) -> requests.Response:
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        if callable(form):
            form = form()
        started = time.monotonic()
        try:
            # `verify` per request: a session-level value loses to $REQUESTS_CA_BUNDLE,
            # which would silently ignore --ca-bundle and --insecure.
            # the whole request, headers and body, under the deadline: a server that
            # drips a byte per read timeout cannot hold us (the body is read inside the
            # try: it can break too)
            with _Deadline(started, self.settings, read is not None, shown) as watch:
                response = self.session.request(
                    method, url, data=form if form is not None else body, headers=headers,
                    timeout=timeout, verify=self.settings.verify, stream=True,
                    hooks={"response": self._redirect_guard})
                watch.response = response
                with response:
                    size = read(response) if read is not None else len(response.content)
        except _DeadlinePassed as exc:
            self.stats.record(method, "deadline", 0)
            raise ServerUnreachable(scrub(str(exc))) from None
        except requests.exceptions.SSLError as exc:
            self.stats.record(method, "tls-error", 0)
            raise ServerUnreachable(scrub(f"{shown}: TLS failed ({_root_cause(exc)}); "
                                          + tls_hint(exc, self.base_url))) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) \
                else "connection failed"
            self.stats.record(method, "no-answer", 0)
            no_server = "" if isinstance(exc, requests.exceptions.Timeout) \
                else no_server_kind(exc)
            raise _Transient(f"{kind}: {_root_cause(exc)}", unreachable=True,
                             no_server=no_server) from None
        except requests.exceptions.RequestException as exc:  # too many redirects, bad URL
            self.stats.record(method, "refused", 0)
            raise ServerError(scrub(f"{shown}: {type(exc).__name__}: "
                                    f"{_root_cause(exc)}")) from None
        self.answered = True
        self.stats.record(method, response.status_code, size)
        log.debug("%s -> %d (%d bytes, %.0f ms)", shown, response.status_code, size,
                  (time.monotonic() - started) * 1000)
        if response.status_code in RETRY_STATUSES:
            raise _Transient(f"{response.status_code} {response.reason or ''}".strip(),
                             status=response.status_code,
                             retry_after=parse_retry_after(response.headers.get("Retry-After")),
                             response=response)
        return response

    def _redirect_guard(self, response: requests.Response, *args: Any,
                        **kwargs: Any) -> None:
        """A redirect to another origin is refused before it is followed, like a `next`
        link to another host: the other origin's answer would be published as the
        server's (and requests drops the credentials on the way, hiding why)."""
        if response.status_code not in REDIRECTS or "Location" not in response.headers:
            return
        target = urljoin(response.url, response.headers["Location"])
        try:
            foreign = origin_of(target) != self._origin
        except ValueError:
            foreign = True
        if foreign:
            response.close()
            raise ServerError(scrub(
                f"{response.request.method} {redact_url(response.url)}: answered "
                f"{response.status_code} redirecting to {redact_url(target)}, another "
                "origin; refusing to follow a redirect off the server (check the base URL, "
                "or the server's configured public address)"), status=response.status_code)

    def _status_error(self, shown: str, response: requests.Response,
                      authenticated: bool) -> Exception:
        status = response.status_code
        head = f"{shown}: {status} {response.reason or ''}".rstrip()
        detail = _suffix(error_detail(response))
        if status == 401:
            if self.auth.kind == "none" or not authenticated:
                hint = "; the server wants credentials: see docs/server.md (FHIR_SPINE_TOKEN, " \
                       "--private-key, ...)"
            else:
                hint = f"; the server refused the {self.auth.describe()}"
            return AuthError(scrub(head + detail + hint))
        if status == 403:
            return AuthError(scrub(head + detail + f"; the {self.auth.describe()} may lack "
                                   "the scope or permission for this request"))
        return ServerError(scrub(head + detail + self._not_found_hint(status, response)),
                           status=status)

    def _not_found_hint(self, status: int, response: requests.Response) -> str:
        """A 404 HTML page for the base URL's own requests: the base URL lacks its path."""
        if status != 404 or "html" not in response.headers.get("Content-Type", "").lower() \
                and not (response.content or b"").lstrip().startswith(b"<"):
            return ""
        path = urlsplit(self.base_url).path.strip("/")
        if path:
            return (f"; is {redact_url(self.base_url)} the FHIR base URL (the one whose "
                    "/metadata answers with a CapabilityStatement)?")
        return ("; the base URL has no path, and FHIR servers usually live under one: try "
                f"{redact_url(self.base_url)}/fhir (HAPI) or the path the server documents")


def tls_hint(exc: BaseException, url: str) -> str:
    """What to do about a TLS failure: a plain-http port, or a CA to trust."""
    cause = f"{exc} {_root_cause(exc)}".lower()
    if any(text in cause for text in ("wrong version number", "record layer failure",
                                      "unknown protocol", "http request", "packet length")):
        plain = "http://" + url.split("://", 1)[-1]
        return (f"the port seems to speak plain http, not TLS: try --server "
                f"{redact_url(plain.split('?', 1)[0]).rstrip('/')} if the server has no TLS")
    return "give the server's CA with --ca-bundle FILE (or --insecure, for a test server only)"


def error_detail(response: requests.Response) -> str:
    """What an error answer's body says, on one line: an OperationOutcome's issues, an
    OAuth error, the title of an HTML page, or the start of a plain text; else ""."""
    content = response.content or b""
    if not content.strip():
        return ""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content[:4096].decode("utf-8", "replace")
        if text.lstrip().startswith("<"):
            title = _html_title(text)
            return f"HTML page {title!r}" if title else "HTML page"
        return one_line(text, 200)
    text = outcome_text(body)
    if text:
        return text
    if isinstance(body, dict) and ("error" in body or "error_description" in body):
        return one_line(f"{body.get('error', '')} {body.get('error_description', '')}")
    return ""


def _suffix(detail: str) -> str:
    return f": {detail}" if detail else ""


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 exception, without its repr noise."""
    seen = exc
    while True:
        inner = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args and isinstance(
            seen.args[0], BaseException) else None)
        if inner is None or inner is seen:
            break
        seen = inner
    reason = getattr(seen, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else seen)
    text = re.sub(r"<urllib3\.[^>]*>:?\s*", "", text)
    text = re.sub(r"HTTP(S)?ConnectionPool\([^)]*\):\s*", "", text)
    return one_line(text, 200) or type(exc).__name__


def _stream_to(response: requests.Response, path: Path, settings: HttpSettings,
               url: str) -> Download:
    """Body to `path` (a Content-Encoding is undone by requests), synced to disk, within
    the size and ratio limits and the free-space reserve."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    checked = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        for chunk in response.iter_content(CHUNK):
            if not chunk:
                continue
            if len(head) < 2:
                head += chunk[:2]
            size += len(chunk)
            check_size(size, _wire_bytes(response), settings, url)
            if size - checked >= 64 * CHUNK:
                check_free_space(path.parent, 0, settings, url)
                checked = size
            handle.write(chunk)
            digest.update(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return Download(path, size, digest.hexdigest(), head[:2] == b"\x1f\x8b")


class LimitExceeded(ServerError):
    """A server's answer passed a configured limit (size, ratio): not retried."""


class NoSpace(SpineError):
    """The job folder's disk would fall under the free-space reserve: nothing published."""

    exit_code = ExitCode.INCOMPLETE


def check_size(size: int, compressed: int | None, settings: HttpSettings, url: str) -> None:
    """`size` decompressed bytes of one file (from `compressed` bytes, when that is what
    was on the wire) against `--max-file-size` and `--max-gzip-ratio`."""
    if size > settings.max_file_bytes:
        raise LimitExceeded(scrub(
            f"{redact_url(url)}: larger than --max-file-size {settings.max_file_bytes} "
            "bytes; stopped (raise the limit if the export is really that large)"))
    if compressed and size > 16 * CHUNK and size > settings.max_gzip_ratio * compressed:
        raise LimitExceeded(scrub(
            f"{redact_url(url)}: {compressed} compressed bytes expand past "
            f"{settings.max_gzip_ratio:g} times their size (--max-gzip-ratio); stopped: a "
            "decompression bomb or a broken file"))


def check_free_space(folder: Path, need: int, settings: HttpSettings, url: str) -> None:
    """Refuse to write `need` more bytes when the disk would keep under
    `--min-free-space` (checked before a download and every 64 MiB during it)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free - need < settings.min_free_bytes:
        raise NoSpace(scrub(
            f"{redact_url(url)}: not enough free space in {folder}: {free} bytes free, "
            f"{need} needed plus the --min-free-space reserve of {settings.min_free_bytes}; "
            "nothing published"))


def check_gzip_file(path: Path, settings: HttpSettings, url: str) -> None:
    """A downloaded `.gz` file decompressed once, counting, before anything reads it:
    within `--max-file-size` and `--max-gzip-ratio` (a 1 MB bomb never becomes 1 GiB).
    A corrupt file is left to the reader, which reports it as unreadable."""
    compressed = path.stat().st_size
    size = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                size += len(chunk)
                check_size(size, compressed, settings, url)
    except (OSError, EOFError, zlib.error):
        return


MAX_URL_CHARS = 8192
MAX_NAME_CHARS = 64


def checked_link(target: object, current: str, shown: str, what: str) -> str:
    """A URL a server handed us (a `next` link, a manifest file, a status URL), made
    absolute against `current` and checked: a string, no spaces, at most 8192
    characters, parseable, http(s) with a host. Anything else is a one-line
    `ServerError` (`file://`, `javascript:`, `http://[::1`...)."""
    if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
        raise ServerError(scrub(f"{shown}: broken {what} {str(target)[:200]!r}"))
    if len(target) > MAX_URL_CHARS:
        raise ServerError(f"{shown}: {what} is {len(target)} characters long (at most "
                          f"{MAX_URL_CHARS})")
    try:
        absolute = urljoin(current, target)  # an absolute link is kept exactly as given
        parts = urlsplit(absolute)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ServerError(scrub(f"{shown}: {what} {redact_url(target)[:200]!r} is not a "
                                f"valid URL ({exc})")) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ServerError(scrub(f"{shown}: {what} {redact_url(target)[:200]!r} is not an "
                                "http(s) URL"))
    return absolute


def checked_name(value: object, shown: str, what: str) -> str:
    """A short name a server gives (a resource type in a manifest): at most 64 letters,
    digits, `-` or `_`, or a one-line `ServerError`."""
    text = "" if value is None else str(value)
    if len(text) > MAX_NAME_CHARS or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ServerError(scrub(f"{shown}: {what} {text[:40]!r}"
                                + ("..." if len(text) > 40 else "")
                                + f" is not a resource type (letters, at most "
                                f"{MAX_NAME_CHARS})"))
    return text


def _content_length(response: requests.Response) -> int:
    try:
        return max(0, int(response.headers.get("Content-Length", "0")))
    except ValueError:
        return 0


def _wire_bytes(response: requests.Response) -> int | None:
    """Bytes read off the wire when the body is Content-Encoded (None otherwise)."""
    if not response.headers.get("Content-Encoding", "").strip():
        return None
    try:
        return int(response.raw.tell())
    except (AttributeError, TypeError, ValueError, OSError):
        return None


class _DeadlinePassed(Exception):  # noqa: N818 - internal signal
    pass


class _Deadline:
    """Ends a request that passes `--request-deadline` (seconds since it was sent),
    unless it is a download still averaging `--min-rate` bytes a second.

    A timer thread shuts the connection's socket down, which wakes the blocked read of
    the headers or the body; the reader's error then becomes `_DeadlinePassed` (not
    retried). The connection is known from the moment the request is sent
    (`_TrackingAdapter`), or from the response."""

    def __init__(self, started: float, settings: HttpSettings, download: bool,
                 shown: str) -> None:
        self.response: requests.Response | None = None
        self.connection: Any = None
        self.started = started
        self.settings = settings
        self.download = download
        self.shown = shown
        self.fired = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> _Deadline:
        _tracking.deadline = self
        if self.settings.deadline > 0:
            self._arm(max(0.0, self.started + self.settings.deadline - time.monotonic()))
        return self

    def _arm(self, delay: float) -> None:
        timer = threading.Timer(delay, self._fire)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:
                return
            elapsed = time.monotonic() - self.started
            if self.download and self.response is not None and self.settings.min_rate > 0 \
                    and self._got() >= self.settings.min_rate * elapsed:
                self._arm(min(60.0, self.settings.deadline))  # still moving: look again
                return
            self.fired = True
            raw = getattr(self.response, "raw", None)
            for connection in (self.connection, getattr(raw, "connection", None)):
                sock = getattr(connection, "sock", None)
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def _got(self) -> int:
        try:
            return int(self.response.raw.tell()) if self.response is not None else 0
        except (AttributeError, TypeError, ValueError, OSError):
            return 0

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        _tracking.deadline = None
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self.fired:
            elapsed = time.monotonic() - self.started
            raise _DeadlinePassed(
                f"{self.shown}: no complete answer within --request-deadline "
                f"{self.settings.deadline:g} s ({self._got()} bytes in {elapsed:.0f} s"
                + (f", under --min-rate {self.settings.min_rate:g} bytes/s"
                   if self.download else "") + "); stopped")


# The deadline of the request this thread is sending, for the connection to register on.
_tracking = threading.local()


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        deadline = getattr(_tracking, "deadline", None)
        if deadline is not None:
            deadline.connection = self
        super().request(*args, **kwargs)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        deadline = getattr(_tracking, "deadline", None)
        if deadline is not None:
            deadline.connection = self
        super().request(*args, **kwargs)


class _TrackedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _TrackingAdapter(HTTPAdapter):
    """requests' adapter whose connections tell the request's `_Deadline` who they are,
    so a server dripping its headers is cut off at the deadline too."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedPool,
                                                   "https": _TrackedHTTPSPool}
