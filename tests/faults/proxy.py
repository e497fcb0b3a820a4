"""A small fault-injecting HTTP proxy for the integration tests (127.0.0.1 only).

`FaultProxy(upstream_base, rules)` listens on a free port of 127.0.0.1 and forwards every
request to the real test server, rewriting the upstream's absolute URLs (bodies and
`Location` / `Content-Location` / `Link` headers) to its own base, so that a client that
follows `Bundle.link[next]` keeps going through the proxy. Each `Rule` picks requests by
a regular expression on the target (the path and query as sent) and
a counter (`nth`: only the Nth matching request; `first`: the first K; `every`), and
breaks them in one way:

| action        | what the client gets |
|---------------|----------------------|
| `status`      | `status` (429, 503, ...) + `Retry-After` + OperationOutcome, no upstream call |
| `reset`       | the headers and part of the real body, then a TCP reset |
| `truncate`    | the real body cut short, Content-Length matching the cut (invalid JSON); with |
|               | `full_length`, Content-Length of the whole body and the connection closed |
| `delay`       | the real answer, but only after `seconds` (past the client's read timeout) |
| `stall`       | the headers and part of the body, then `seconds` of silence, then the rest |
| `repeat_page` | the previous page's body again (the page whose `next` link led here) |
| `loop_next`   | the real page, its `next` link pointing back to the previous page (or itself) |
| `html`        | an HTML error page with status 200 |
| `wrong_type`  | a `resource` (OperationOutcome, Patient, ...) with status 200 instead; |
|               | `Bundle:Patient`: a searchset whose one match is a Patient |
| `hang`        | for `seconds` from now, every request is accepted, never answered, then closed |
| `refuse`      | listening socket closed for `seconds` (connection refused), then reopened |

Use it as a context manager; `events` records every request (what was injected, what was
sent), `injected` only the broken ones, `repeats()` how many requests asked again for a
target already asked for (the client's retries, as seen from the wire).

Only loopback upstreams are accepted, and every wait is bounded and ends early on `stop()`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

ACTIONS = frozenset({"status", "reset", "truncate", "delay", "stall", "repeat_page", "loop_next",
                     "html", "wrong_type", "hang", "refuse"})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host",
                        "content-length", "accept-encoding", "content-encoding"})
URL_HEADERS = frozenset({"location", "content-location", "link"})
FHIR_JSON = "application/fhir+json;charset=utf-8"
HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Service temporarily unavailable</title>"
             b"</head><body><h1>Service temporarily unavailable</h1><p>The FHIR service is down "
             b"for maintenance. Please try again later.</p></body></html>\n")
LOGIN_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Hospital single sign-on</title></head><body>"
              b"<form method=\"post\" action=\"/sso/login\"><input name=\"username\">"
              b"<input name=\"password\" type=\"password\"><button>Sign in</button></form>"
              b"</body></html>\n")
MAX_HOLD_SECONDS = 120.0


@dataclass
class Rule:
    """Break the requests whose `METHOD target` matches `pattern` (re.search), counted."""

    action: str
    pattern: str = ".*"
    nth: int | None = None          # only the Nth matching request (1-based)
    first: int | None = None        # the first K matching requests
    every: bool = False             # every matching request
    method: str | None = None       # only this HTTP method (None: any)
    status: int = 503               # `status`
    retry_after: str | Callable[[], str] | None = None  # `status`: header value (or maker)
    seconds: float = 0.0            # `delay`, `hang`, `refuse`
    fraction: float = 0.5           # `reset`, `truncate`, `stall`: share of the body sent
    full_length: bool = False       # `truncate`: announce the whole body, close after the cut
    resource: str = "OperationOutcome"  # `wrong_type`
    body: bytes | None = None       # `status`, `html`: the page to send instead of the default
    name: str = ""
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {sorted(ACTIONS)}")
        chosen = [c for c in (self.nth is not None, self.first is not None, self.every) if c]
        if len(chosen) > 1:
            raise ValueError("give at most one of nth, first, every")
        if not chosen:
            self.nth = 1
        if (self.nth is not None and self.nth < 1) or (self.first is not None and self.first < 1):
            raise ValueError("nth and first count from 1")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        if not 0.0 <= self.seconds <= MAX_HOLD_SECONDS:
            raise ValueError(f"seconds must be in [0, {MAX_HOLD_SECONDS:.0f}]")
        self._regex = re.compile(self.pattern)
        self.name = self.name or self.action

    def take(self, method: str, target: str) -> bool:
        """Count a request; True if this one is to be broken. Call under the proxy's lock."""
        if self.method is not None and method != self.method:
            return False
        if not self._regex.search(target):
            return False
        self.matched += 1
        if self.every:
            fire = True
        elif self.first is not None:
            fire = self.matched <= self.first
        else:
            fire = self.matched == self.nth
        return fire

    def describe(self) -> str:
        when = ("every" if self.every else f"first {self.first}" if self.first is not None
                else f"#{self.nth}")
        extra = {"status": f" {self.status}" + (" Retry-After" if self.retry_after else ""),
                 "delay": f" {self.seconds:g} s", "hang": f" {self.seconds:g} s",
                 "stall": f" {self.seconds:g} s at {self.fraction:.0%}",
                 "refuse": f" {self.seconds:g} s", "wrong_type": f" {self.resource}",
                 "reset": f" at {self.fraction:.0%}", "truncate": f" at {self.fraction:.0%}",
                 }.get(self.action, "")
        return f"{self.action}{extra} on {when} of /{self.pattern}/"


@dataclass
class Event:
    """One request the proxy received."""

    seq: int
    t: float                 # seconds since the proxy started
    method: str
    target: str
    rule: str = ""           # name of the rule that fired, "" if none
    outcome: str = ""        # what the client got: "200", "503", "reset", "no answer", ...
    note: str = ""

    @property
    def injected(self) -> bool:
        return bool(self.rule)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.proxy._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.proxy._untrack(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, like a real gateway
    server: _Server

    def _any(self) -> None:
        self.server.proxy._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any  # noqa: N815 - http.server names

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass


class FaultProxy:
    """The proxy: `with FaultProxy(upstream, [Rule(...)]) as proxy: use proxy.base_url`."""

    def __init__(self, upstream: str, rules: Iterable[Rule] = (), *,
                 upstream_timeout: float = 120.0) -> None:
        parts = urlsplit(upstream.rstrip("/"))
        if parts.scheme != "http" or parts.hostname not in LOOPBACK:
            raise ValueError(f"the fault proxy only fronts http servers on 127.0.0.1, "
                             f"not {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self._up_netloc = parts.netloc
        self._path = parts.path
        self.rules = list(rules)
        self.upstream_timeout = upstream_timeout
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.port = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._serve_stop: threading.Event | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._hang_until = 0.0
        self._refusing = False
        self._pages: dict[str, bytes] = {}   # target -> body served (JSON Bundles only)
        self._prev: dict[str, str] = {}      # target -> target of the page linking to it
        self._started = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._path}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._started = time.monotonic()
        self._listen(0)
        return self

    def stop(self) -> None:
        self._closing.set()
        with self._lock:
            server, stop_flag = self._server, self._serve_stop
            self._server = self._serve_stop = None
        if stop_flag is not None:
            stop_flag.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        if server is not None:
            server.server_close()
        self._close_connections()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        """Bind 127.0.0.1:port (0: a free one) and serve in a thread until told to stop."""
        deadline = time.monotonic() + 5
        while True:
            try:
                server = _Server(("127.0.0.1", port), self)
                break
            except OSError as exc:  # the old socket may linger a moment
                if time.monotonic() > deadline or self._closing.is_set():
                    self.errors.append(f"could not listen on port {port} again: {exc}")
                    return
                time.sleep(0.05)
        server.timeout = 0.05
        stop_flag = threading.Event()
        with self._lock:
            if self._closing.is_set():
                server.server_close()
                return
            self._server, self._serve_stop = server, stop_flag
            self.port = server.server_address[1]

        def serve() -> None:
            while not stop_flag.is_set():
                server.handle_request()

        thread = threading.Thread(target=serve, name=f"fault-proxy-{self.port}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _close_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ records

    @property
    def injected(self) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.injected]

    def repeats(self) -> int:
        """Requests for a (method, target) already asked for: retries seen on the wire."""
        seen: set[tuple[str, str]] = set()
        count = 0
        with self._lock:
            for event in self.events:
                key = (event.method, event.target)
                count += key in seen
                seen.add(key)
        return count

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(f"{e.seq:4d} {e.t:7.2f}s {e.method} {e.target[:110]} -> {e.outcome}"
                             + (f" [{e.rule}]" if e.rule else "") + (f" {e.note}" if e.note else "")
                             for e in self.events)

    # ------------------------------------------------------------------ handling

    def _handle(self, h: _Handler) -> None:
        method, target = h.command, h.path
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length > 0 else b""
        with self._lock:
            event = Event(len(self.events) + 1, round(time.monotonic() - self._started, 3),
                          method, target)
            self.events.append(event)
            hang_until, refusing = self._hang_until, self._refusing
            rule = None
            if not refusing and time.monotonic() >= hang_until:
                for candidate in self.rules:
                    if candidate.take(method, target) and rule is None:
                        rule = candidate
                if rule is not None:
                    rule.fired += 1
                    event.rule = rule.name
        if self._closing.is_set() or refusing:
            event.outcome = "reset (refusing)"
            self._drop(h, reset=True)
            return
        if time.monotonic() < hang_until:
            event.outcome = "no answer (not answering)"
            self._hold(h, hang_until)
            return
        if rule is None:
            self._proxy(h, event, method, target, body)
            return
        try:
            self._inject(h, event, rule, method, target, body)
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            event.note += f" client gone ({type(exc).__name__})"
            h.close_connection = True

    def _inject(self, h: _Handler, event: Event, rule: Rule, method: str, target: str,
                body: bytes) -> None:
        action = rule.action
        if action == "status":
            value = rule.retry_after() if callable(rule.retry_after) else rule.retry_after
            headers = [("Retry-After", value)] if value is not None else []
            text = f"fault proxy: injected {rule.status}"
            self._send(h, rule.status, rule.body or _outcome(text, "transient"), FHIR_JSON,
                       headers)
            event.outcome = str(rule.status) + (f" Retry-After: {value}" if value else "")
        elif action == "html":
            self._send(h, 200, rule.body or HTML_PAGE, "text/html; charset=utf-8")
            event.outcome = "200 text/html"
        elif action == "wrong_type":
            self._send(h, 200, _resource(rule.resource), FHIR_JSON)
            event.outcome = f"200 {rule.resource}"
        elif action == "hang":
            until = time.monotonic() + rule.seconds
            with self._lock:
                self._hang_until = max(self._hang_until, until)
            event.outcome = f"no answer (stops answering for {rule.seconds:g} s)"
            self._hold(h, until)
        elif action == "refuse":
            self._blackout(rule.seconds)
            event.outcome = f"reset, then connections refused for {rule.seconds:g} s"
            self._drop(h, reset=True)
        elif action == "delay":
            self._closing.wait(rule.seconds)
            self._proxy(h, event, method, target, body)
            event.outcome = f"answer delayed {rule.seconds:g} s ({event.outcome})"
        else:
            status, headers, data = self._forward(h, method, target, body)
            ctype = dict((k.lower(), v) for k, v in headers).get("content-type", FHIR_JSON)
            if action == "reset":
                cut = int(len(data) * rule.fraction)
                event.outcome = f"reset after {cut} of {len(data)} bytes"
                self._send(h, status, data, ctype, headers, send_bytes=cut)
                h.wfile.flush()
                time.sleep(0.2)  # let the client read the part, then pull the plug
                self._drop(h, reset=True)
            elif action == "truncate" and rule.full_length:
                cut = int(len(data) * rule.fraction)
                event.outcome = f"{status}, {cut} of the announced {len(data)} bytes, closed"
                self._send(h, status, data, ctype, headers, send_bytes=cut)
                self._drop(h, reset=False)
            elif action == "truncate":
                cut = int(len(data) * rule.fraction)
                event.outcome = f"{status}, body cut to {cut} of {len(data)} bytes"
                self._send(h, status, data[:cut], ctype, headers)
            elif action == "stall":
                cut = int(len(data) * rule.fraction)
                event.outcome = f"{status}, stalled {rule.seconds:g} s after {cut} bytes"
                self._send(h, status, data, ctype, headers, send_bytes=cut)
                self._closing.wait(rule.seconds)
                h.wfile.write(data[cut:])
            elif action == "repeat_page":
                previous = self._previous_page(target)
                if previous is None:
                    event.note = "no previous page known: answered unchanged"
                    event.rule = ""
                    self._send(h, status, data, ctype, headers)
                    event.outcome = str(status)
                else:
                    self._send(h, status, self._pages[previous], ctype, headers)
                    event.outcome = f"{status} with the body of {previous[:60]}"
            elif action == "loop_next":
                looped, where = self._loop_next(target, data)
                self._send(h, status, looped, ctype, headers)
                event.outcome = f"{status} with next -> {where[:60]}"

    def _proxy(self, h: _Handler, event: Event, method: str, target: str, body: bytes) -> None:
        try:
            status, headers, data = self._forward(h, method, target, body)
            ctype = dict((k.lower(), v) for k, v in headers).get("content-type", FHIR_JSON)
            self._send(h, status, data, ctype, headers)
            event.outcome = str(status)
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            event.outcome = f"client had gone ({type(exc).__name__})"
            h.close_connection = True

    def _forward(self, h: _Handler, method: str, target: str, body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The upstream's answer, with its URLs rewritten to the proxy's."""
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = self._up_netloc
        headers["Accept-Encoding"] = "identity"
        conn = http.client.HTTPConnection(self._up_host, self._up_port,
                                          timeout=self.upstream_timeout)
        try:
            conn.request(method, target, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            status = response.status
            out_headers = [(k, v) for k, v in response.getheaders()
                           if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"]
            ctype = response.getheader("Content-Type") or FHIR_JSON
        except (OSError, http.client.HTTPException) as exc:
            self.errors.append(f"upstream {method} {target}: {exc}")
            return 502, [], _outcome(f"fault proxy: upstream failed: {exc}", "exception")
        finally:
            conn.close()
        data = self._rewrite(data)
        out_headers = [(k, self._rewrite_text(v) if k.lower() in URL_HEADERS else v)
                       for k, v in out_headers]
        out_headers.append(("Content-Type", ctype))
        if status == 200 and method == "GET":
            self._remember_page(target, data)
        return status, out_headers, data

    # ------------------------------------------------------------------ URL rewriting

    def _upstream_origins(self) -> list[str]:
        port = self._up_port
        return [f"http://{host}:{port}" for host in ("127.0.0.1", "localhost")]

    def _rewrite(self, data: bytes) -> bytes:
        for origin in self._upstream_origins():
            data = data.replace(origin.encode(), self.origin.encode())
        return data

    def _rewrite_text(self, text: str) -> str:
        for origin in self._upstream_origins():
            text = text.replace(origin, self.origin)
        return text

    def _target_of(self, url: str) -> str | None:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            return None
        return parts.path + (f"?{parts.query}" if parts.query else "")

    # ------------------------------------------------------------------ paging memory

    def _remember_page(self, target: str, data: bytes) -> None:
        bundle = _json_object(data)
        if bundle is None or bundle.get("resourceType") != "Bundle":
            return
        with self._lock:
            self._pages[target] = data
            nxt = _next_link(bundle)
            following = self._target_of(nxt) if nxt else None
            if following is not None:
                self._prev.setdefault(following, target)
                self._prev.setdefault(unquote(following), target)

    def _previous_page(self, target: str) -> str | None:
        with self._lock:
            previous = self._prev.get(target) or self._prev.get(unquote(target))
            return previous if previous in self._pages else None

    def _loop_next(self, target: str, data: bytes) -> tuple[bytes, str]:
        bundle = _json_object(data)
        if bundle is None:
            return data, "(not JSON: unchanged)"
        where = self._previous_page(target) or target
        url = self.origin + where
        links = [link for link in bundle.get("link") or []
                 if not (isinstance(link, dict) and link.get("relation") == "next")]
        bundle["link"] = [*links, {"relation": "next", "url": url}]
        return json.dumps(bundle).encode(), where

    # ------------------------------------------------------------------ low level

    def _send(self, h: _Handler, status: int, data: bytes, ctype: str,
              headers: Iterable[tuple[str, str]] = (), *, send_bytes: int | None = None) -> None:
        h.send_response(status)
        for key, value in headers:
            if key.lower() not in ("content-type", "content-length", "server", "date"):
                h.send_header(key, value)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data if send_bytes is None else data[:send_bytes])

    def _drop(self, h: _Handler, *, reset: bool) -> None:
        """Close the client's connection without (the rest of) an answer; RST if `reset`."""
        h.close_connection = True
        with contextlib.suppress(OSError):
            if reset:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            h.connection.close()

    def _hold(self, h: _Handler, until: float) -> None:
        """Accept, never answer: wait until `until` (or stop), then close."""
        self._closing.wait(max(0.0, min(until - time.monotonic(), MAX_HOLD_SECONDS)))
        self._drop(h, reset=False)

    def _blackout(self, seconds: float) -> None:
        """Stop listening now (connections are refused), listen again after `seconds`."""
        with self._lock:
            if self._refusing or self._server is None:
                return
            self._refusing = True
            server, stop_flag, port = self._server, self._serve_stop, self.port
            self._server = self._serve_stop = None
        assert stop_flag is not None
        stop_flag.set()
        time.sleep(0.1)  # the accept loop polls every 0.05 s
        server.server_close()
        self._close_connections()

        def reopen() -> None:
            self._closing.wait(seconds)
            with self._lock:
                self._refusing = False
            if not self._closing.is_set():
                self._listen(port)

        thread = threading.Thread(target=reopen, name="fault-proxy-reopen", daemon=True)
        self._threads.append(thread)
        thread.start()


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None


def _outcome(text: str, code: str) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": text}]}).encode()


def _resource(resource_type: str) -> bytes:
    """A stand-in answer: an OperationOutcome, a bare resource, or with `Bundle:Type` a
    well-formed searchset Bundle whose only match is a `Type` (the answer to some other
    search, as a mixed-up cache would give it)."""
    if resource_type == "OperationOutcome":
        return _outcome("fault proxy: injected OperationOutcome with status 200", "exception")
    resource = {"resourceType": resource_type, "id": "fault-injected",
                "meta": {"lastUpdated": "2025-01-01T00:00:00Z"}}
    if resource_type.startswith("Bundle:"):
        resource["resourceType"] = resource_type.split(":", 1)[1]
        return json.dumps({"resourceType": "Bundle", "type": "searchset", "total": 1,
                           "entry": [{"resource": resource, "search": {"mode": "match"}}],
                           }).encode()
    return json.dumps(resource).encode()
