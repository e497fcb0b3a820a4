"""Keep secrets out of everything a person or a scheduler can read.

Credentials reach fhir-spine through environment variables and files only, but they can
still leak back out through a logged URL (`https://user:pass@host`, `?access_token=`), a
logged header, an exception message that echoes a server's reply, or a manifest. Every
URL that is logged, raised or written goes through this module first, and
every secret value the tool loads is registered here so a logging filter can scrub it
from any record, whoever emitted it.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

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
_pattern: re.Pattern[str] | None = None   # every form of every secret, rebuilt on change
_HEX = re.compile(r"%[0-9A-Fa-f]{2}")
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
    global _pattern
    with _lock:
        _secrets.add(text)
        # A PEM key also appears line by line in some tracebacks.
        if "\n" in text:
            _secrets.update(line.strip() for line in text.splitlines() if len(line.strip()) > 16
                            and "-----" not in line)
        _pattern = None


def forget_secrets() -> None:
    """For tests: start from an empty registry."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def secret_forms(secret: str) -> set[str]:
    """The ways a secret comes back from a server or a library: as it is, URL-encoded
    (path or query style, `+` or `%20` for a space) and base64 (standard and URL-safe,
    with and without padding)."""
    forms = {secret, quote(secret, safe=""), quote(secret, safe="/"), quote_plus(secret),
             quote_plus(secret, safe="/")}
    raw = secret.encode("utf-8")
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms.update({text, text.rstrip("=")})
    return {f for f in forms if len(f) >= 5}


def _form_regex(form: str) -> str:
    """A form as a regex; percent escapes match in either case (`%2B` or `%2b`)."""
    out, last = [], 0
    for match in _HEX.finditer(form):
        out.append(re.escape(form[last:match.start()]))
        out.append("%(?i:" + match.group(0)[1:] + ")")
        last = match.end()
    out.append(re.escape(form[last:]))
    return "".join(out)


def _secret_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _secrets:
            forms = {f for s in _secrets for f in secret_forms(s)}
            _pattern = re.compile("|".join(
                _form_regex(f) for f in sorted(forms, key=len, reverse=True)))
        return _pattern


def scrub(text: str) -> str:
    """Replace every registered secret (in each of its `secret_forms`), bearer/basic
    credential and JWT in `text`. The one scrubber: logs, the final error line, tables,
    manifests and reports all go through it."""
    if not text:
        return text
    pattern = _secret_pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _JWT.sub(MASK, text)


def scrub_json(value: Any) -> Any:
    """A copy of JSON-like data (a manifest) with every string scrubbed, keys too."""
    stack: list[tuple[Any, Any, Any]] = []
    root: list[Any] = [None]
    stack.append((value, root, 0))
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, str):
            parent[key] = scrub(item)
        elif isinstance(item, Mapping):
            out: dict[Any, Any] = {}
            parent[key] = out
            for k, v in item.items():
                k2 = scrub(k) if isinstance(k, str) else k
                out[k2] = None
                stack.append((v, out, k2))
        elif isinstance(item, (list, tuple)):
            seq: list[Any] = [None] * len(item)
            parent[key] = seq
            for i, v in enumerate(item):
                stack.append((v, seq, i))
        else:
            parent[key] = item
    return root[0]


def needs_scrub(texts: Iterable[str]) -> bool:
    """Whether any of `texts` holds something `scrub` would change (a fast pre-check
    for whole table columns)."""
    joined = "\n".join(texts)
    return scrub(joined) != joined


class ScrubbingStream(io.TextIOBase):
    """A text stream that scrubs what it writes, line by line, into another stream.

    `main` puts one over stdout and stderr, so that everything the process prints (the
    final error line, every log format, a library's warning) passes the scrubber.
    Text is held until a newline (or `flush`) so a secret split over two writes is
    still seen whole."""

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self.inner = inner
        self._pending = ""

    def write(self, text: str) -> int:  # type: ignore[override]
        self._pending += text
        if "\n" in self._pending:
            done, self._pending = self._pending.rsplit("\n", 1)
            self.inner.write(scrub(done) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.inner.write(scrub(self._pending))
            self._pending = ""
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


@contextmanager
def scrubbed_std_streams() -> Iterator[None]:
    """stdout and stderr through `ScrubbingStream` for the duration (restored after)."""
    saved = sys.stdout, sys.stderr
    out = ScrubbingStream(sys.stdout)
    err = ScrubbingStream(sys.stderr)
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (out, err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved


def redact_url(url: str) -> str:
    """The URL without user info and with credential-like query values masked.

    Used for logs, error messages, `origin` of resources and the manifest, so a
    dataset says where it came from without saying how to get in.
    """
    url = scrub(url)  # before any re-encoding: a raw secret is recognised as sent
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
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
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):  # the JSON log's extra keys (`error`, ...)
            record.fields = scrub_json(fields)
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


def scrub_frame(df: Any) -> Any:
    """A pandas DataFrame with every text cell scrubbed (the frame itself when nothing
    needs it: the common case costs one pass over each text column's distinct values)."""
    out = df
    for column in df.columns:
        series = df[column]
        if str(series.dtype) not in ("object", "string", "str"):
            continue
        values = [v for v in series.dropna().unique() if isinstance(v, str)]
        if not values or not needs_scrub(values):
            continue
        cleaned = {v: scrub(v) for v in values}
        if out is df:
            out = df.copy()
        out[column] = series.map(lambda v, c=cleaned: c.get(v, v) if isinstance(v, str) else v
                                 ).astype(series.dtype)
    return out
