"""Keep secrets out of everything a person or a scheduler can read.

Credentials reach fhir-spine through environment variables and files only, but they can
still leak back out through a logged URL (`https://user:pass@host`, `?access_token=`), a
logged header, an exception message that echoes a server's reply, or a manifest. Every
URL that is logged, raised or written goes through this module first, and
every secret value the tool loads is registered here so a logging filter can scrub it
from any record, whoever emitted it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameters that carry credentials in the wild (OAuth, API gateways, SAS tokens).
# Not `code`: in FHIR that is the search parameter for a concept, not an OAuth code.
SENSITIVE_PARAMS = frozenset({
    "access_token", "token", "id_token", "refresh_token", "client_secret",
    "client_assertion", "password", "passwd", "pwd", "secret", "api_key", "apikey",
    "key", "sig", "signature", "assertion", "auth", "authorization",
})

_lock = threading.Lock()
_secrets: set[str] = set()
# Bearer tokens, basic credentials and JWTs that appear in free text.
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


def register_secret(value: str | bytes | None) -> None:
    """Remember a secret so `scrub` (and the log filter) can blank it wherever it shows.

    Very short values are not registered: masking every "a" in a log line helps nobody,
    and a real password or token is longer than four characters.
    """
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    if len(text) < 5:
        return
    with _lock:
        _secrets.add(text)
        # A PEM key also appears line by line in some tracebacks.
        if "\n" in text:
            _secrets.update(line.strip() for line in text.splitlines() if len(line.strip()) > 16
                            and "-----" not in line)


def forget_secrets() -> None:
    """For tests: start from an empty registry."""
    with _lock:
        _secrets.clear()


def scrub(text: str) -> str:
    """Replace every registered secret, bearer/basic credential and JWT in `text`."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _JWT.sub(MASK, text)


def redact_url(url: str) -> str:
    """The URL without user info and with credential-like query values masked.

    Used for logs, error messages, `origin` of resources and the manifest, so a
    dataset says where it came from without saying how to get in.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SENSITIVE_PARAMS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in SENSITIVE_PARAMS else v)
                               for k, v in pairs], safe="|,:/*")
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact_params(params: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Search parameters as `[name, value]` pairs for the manifest's query log."""
    return [[k, MASK if k.lower() in SENSITIVE_PARAMS else scrub(str(v))] for k, v in params]


class RedactingFilter(logging.Filter):
    """Scrub registered secrets from every record a handler emits, ours or a library's."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must still not leak or crash
            return True
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub(text)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the scrubbing filter to the root logger's handlers (idempotent).

    Called once secrets are loaded. Handler filters see records from every logger,
    including urllib3's, which a logger-level filter would not.
    """
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
