"""A hostile FHIR server on 127.0.0.1 for the security tests (issue 15).

`HostileServer(mode, token=...)` listens on a free loopback port and answers like a small
FHIR R4 server (a CapabilityStatement, empty or scripted searchsets, a Bulk Data
`$export` of the demo cohort's NDJSON files), except where its `mode` makes it answer
something hostile. `requests` records every request (method, target, headers), so a
second instance in mode `record` serves as "another host" that must never be asked.

| mode | what it does |
|---|---|
| `ok` | a well-behaved server: empty searches, a system `$export` of the demo files |
| `cohort` | searches answered from the demo cohort's NDJSON (REST extract and refresh) |
| `search-outcome-token` | every search answers 200 with an OperationOutcome quoting the token |
| `kickoff-outcome-token` | `$export` kick-off answers 200 with an OperationOutcome quoting it |
| `bundle-outcome-token` | the Procedure search is a searchset with an outcome entry quoting it |
| `bulk-error-token` | the export has an `error` file whose OperationOutcome quotes it |
| `unauthorized-encoded` | every request: 401 whose body quotes the token percent-encoded |
| `next-token` | page 1 of a search links page 2 with `access_token=<encoded token>` |
| `bulk-endless` | one export file is an endless chunked body |
| `bulk-bomb` | one export file is a gzip bomb (small on the wire, huge inflated) |
| `bulk-bomb-encoded` | the same bomb sent as `Content-Encoding: gzip` |
| `bulk-drip` | one export file drips a byte every `drip` seconds |
| `search-drip` | the Procedure search page drips a byte every `drip` seconds |
| `header-drip` | every answer's status line and headers drip a byte every `drip` seconds |
| `endless-next` | `total` 5, but every page has 5 new matches and a next link |
| `bulk-many` | an export of `files` tiny output files |
| `manifest-url:<url>` | the export manifest lists an output file at `<url>` |
| `manifest-long-type` | an output file whose `type` is 5,000 characters |
| `kickoff-location:<url>` | the kick-off's `Content-Location` is `<url>` |
| `deep-entry` | the Procedure search holds a resource with an element nested 1,000 deep |
| `redirect-<301/302/307/308>` | every FHIR request redirects to `other` (another origin) |
| `record` | "another host": records and answers 200 with a one-Patient searchset |

Every loop is bounded: an endless body stops after `MAX_STREAM_SECONDS` or when the
client goes away, a drip after `MAX_DRIP_BYTES`.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
MAX_STREAM_SECONDS = 30.0
MAX_DRIP_BYTES = 120
BOMB_INFLATED = 256 << 20  # 256 MiB of zeros: about 256 KB compressed


def secret_forms(token: str) -> list[str]:
    """How a server echoes a token back: raw, percent-encoded, base64."""
    return [token, quote(token, safe=""), base64.b64encode(token.encode()).decode()]


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


_BOMB: dict[int, bytes] = {}


def gzip_bomb(size: int = BOMB_INFLATED) -> bytes:
    """`size` zero bytes, gzip-compressed (cached: built once per test session)."""
    if size not in _BOMB:
        squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b"\0" * (1 << 20)
        parts = [squeeze.compress(block) for _ in range(size >> 20)]
        _BOMB[size] = b"".join(parts) + squeeze.flush()
    return _BOMB[size]


def demo_files() -> dict[str, tuple[str, bytes]]:
    """The demo cohort's NDJSON files: name -> (resource type, bytes as stored)."""
    folder = resources.files("fhir_spine") / "demo"
    out: dict[str, tuple[str, bytes]] = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        name = item.name
        if name.endswith((".ndjson", ".ndjson.gz")):
            out[name] = (name.split(".")[0], item.read_bytes())
    return out


class HostileServer:
    """See the module docstring. Use as a context manager; `base` is the FHIR base."""

    def __init__(self, mode: str = "ok", *, token: str = "", other: str = "",
                 drip: float = 0.5, files: int = 1000) -> None:
        self.mode = mode
        self.token = token
        self.other = other.rstrip("/")
        self.drip = drip
        self.file_count = files
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._demo = demo_files()
        self._resources = [r for _, (_, data) in self._demo.items()
                           for r in _ndjson(data)]
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.origin}/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def seen(self, pattern: str = "") -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if pattern in r.target]

    def outcome(self, text: str, severity: str = "error") -> dict[str, Any]:
        return {"resourceType": "OperationOutcome",
                "issue": [{"severity": severity, "code": "processing", "diagnostics": text}]}

    def echo(self) -> str:
        """The token in every form a server might quote it in."""
        forms = secret_forms(self.token)
        return f"invalid token {forms[0]} (url form {forms[1]}, basic form {forms[2]})"


class _Handler(BaseHTTPRequestHandler):
    server_ref: HostileServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body apart: no 40 ms delayed-ACK stall

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        srv = self.server_ref
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        with srv._lock:
            srv.requests.append(Seen(method, self.path, dict(self.headers.items())))
        try:
            self._answer(method)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass

    def _send(self, status: int, body: bytes | dict[str, Any], ctype: str = FHIR_JSON,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _chunks(self, pieces: Iterator[bytes], ctype: str = NDJSON,
                headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        for piece in pieces:
            if self.server_ref._stop.is_set():
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _drip(self, body: bytes, ctype: str) -> None:
        srv = self.server_ref
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body[:MAX_DRIP_BYTES]:
            if srv._stop.wait(srv.drip):
                break
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
        self.close_connection = True

    # ------------------------------------------------------------------ answers

    def _answer(self, method: str) -> None:
        srv = self.server_ref
        mode = srv.mode
        parts = urlsplit(self.path)
        path = parts.path.removeprefix("/fhir").lstrip("/")
        query = parse_qsl(parts.query)
        if mode == "header-drip":
            head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * MAX_DRIP_BYTES + b"\r\n"
            for byte in head:
                if srv._stop.wait(srv.drip):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            self.close_connection = True
            return
        if mode == "record":
            self._send(200, {"resourceType": "Bundle", "type": "searchset", "total": 1,
                             "entry": [{"resource": {"resourceType": "Patient",
                                                     "id": "elsewhere"}}]})
            return
        if mode.startswith("redirect-"):
            self._send(int(mode.split("-")[1]), b"", headers={
                "Location": f"{srv.other}/fhir/{path}" + (f"?{parts.query}" if parts.query
                                                          else "")})
            return
        if mode == "unauthorized-encoded":
            self._send(401, srv.outcome(f"bearer {quote(srv.token, safe='')} rejected; "
                                        f"also {srv.echo()}"),
                       headers={"WWW-Authenticate": "Bearer"})
            return
        if path == "metadata":
            self._send(200, {"resourceType": "CapabilityStatement", "status": "active",
                             "kind": "instance", "fhirVersion": "4.0.1",
                             "format": ["json"], "rest": [{"mode": "server", "operation": [
                                 {"name": "export", "definition": "x"}]}]})
            return
        if path.endswith("$export"):
            self._kickoff()
            return
        if path.startswith("status"):
            if method == "DELETE":
                self._send(202, b"", ctype="text/plain")
            else:
                self._send(200, self._manifest(), ctype="application/json")
            return
        if path.startswith("files/"):
            self._file(path.removeprefix("files/"))
            return
        self._search(path, query)

    def _kickoff(self) -> None:
        srv = self.server_ref
        if srv.mode == "kickoff-outcome-token":
            self._send(200, srv.outcome(srv.echo()))
            return
        location = f"{srv.base}/status/1"
        if srv.mode.startswith("kickoff-location:"):
            location = srv.mode.split(":", 1)[1]
        self._send(202, b"", ctype="text/plain", headers={"Content-Location": location})

    def _manifest(self) -> dict[str, Any]:
        srv = self.server_ref
        mode = srv.mode
        output: list[dict[str, Any]] = []
        if mode == "bulk-many":
            output = [{"type": "Patient", "url": f"{srv.base}/files/many-{i}"}
                      for i in range(srv.file_count)]
        else:
            output = [{"type": rtype, "url": f"{srv.base}/files/{name}"}
                      for name, (rtype, _) in srv._demo.items()]
        error: list[dict[str, Any]] = []
        if mode in ("bulk-endless", "bulk-bomb", "bulk-bomb-encoded", "bulk-drip"):
            output.append({"type": "Observation", "url": f"{srv.base}/files/{mode}"})
        if mode == "bulk-error-token":
            error.append({"type": "OperationOutcome", "url": f"{srv.base}/files/errors"})
        if mode.startswith("manifest-url:"):
            output.append({"type": "Observation", "url": mode.split(":", 1)[1]})
        if mode == "manifest-long-type":
            output.append({"type": "O" * 5000, "url": f"{srv.base}/files/x"})
        return {"transactionTime": "2025-06-01T00:00:00Z", "request": f"{srv.base}/$export",
                "requiresAccessToken": True, "output": output, "error": error}

    def _file(self, name: str) -> None:
        srv = self.server_ref
        if name in srv._demo:
            self._send(200, srv._demo[name][1], ctype=NDJSON)
        elif name.startswith("many-"):
            index = name.removeprefix("many-")
            self._send(200, json.dumps({"resourceType": "Patient", "id": f"m{index}"}).encode()
                       + b"\n", ctype=NDJSON)
        elif name == "errors":
            self._send(200, json.dumps(srv.outcome(srv.echo())).encode() + b"\n", ctype=NDJSON)
        elif name == "bulk-endless":
            line = json.dumps({"resourceType": "Observation", "id": "x" * 40}).encode() + b"\n"
            block = line * (65536 // len(line))
            deadline = time.monotonic() + MAX_STREAM_SECONDS
            self._chunks(block for _ in iter(lambda: time.monotonic() < deadline, False))
        elif name == "bulk-bomb":
            self._send(200, gzip_bomb(), ctype=NDJSON)
        elif name == "bulk-bomb-encoded":
            self._send(200, gzip_bomb(), ctype=NDJSON, headers={"Content-Encoding": "gzip"})
        elif name == "bulk-drip":
            self._drip(b'{"resourceType":"Observation","id":"drip"}\n' * 3, NDJSON)
        else:
            self._send(404, srv.outcome("no such file"))

    def _cohort(self, rtype: str, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The demo resources a simple search asks for: `_id=`, `patient=`, or (the
        candidate search) every Procedure."""
        params = dict(query)
        if "_lastUpdated" in params:  # nothing changes on this server
            return []
        found = [r for r in self.server_ref._resources if r.get("resourceType") == rtype]
        if "_id" in params:
            ids = set(params["_id"].split(","))
            return [r for r in found if r.get("id") in ids]
        if "patient" in params:
            refs = {f"Patient/{p}" for p in params["patient"].split(",")}
            return [r for r in found if ((r.get("subject") or r.get("patient") or {})
                                         .get("reference")) in refs]
        return found if rtype == "Procedure" and "code" in params else []

    def _search(self, path: str, query: list[tuple[str, str]]) -> None:
        srv = self.server_ref
        mode = srv.mode
        rtype = path.split("/")[0]
        if mode == "search-outcome-token":
            self._send(200, srv.outcome(srv.echo()))
            return
        entries: list[dict[str, Any]] = []
        links: list[dict[str, str]] = []
        total: int | None = 0
        page = int(dict(query).get("page", "1"))
        if mode == "cohort":
            entries = [{"resource": r} for r in self._cohort(rtype, query)]
        if rtype == "Procedure" and mode == "bundle-outcome-token":
            entries.append({"resource": srv.outcome(srv.echo()), "search": {"mode": "outcome"}})
        if rtype == "Procedure" and mode == "next-token" and page == 1:
            links.append({"relation": "next", "url": f"{srv.base}/Procedure?page=2&"
                          f"access_token={quote(srv.token, safe='')}&x={srv.token}"})
        if rtype == "Procedure" and mode == "endless-next":
            total = 5
            entries = [{"resource": {"resourceType": "Procedure", "id": f"p{page}-{i}",
                                     "status": "completed",
                                     "subject": {"reference": f"Patient/x{page}-{i}"}}}
                       for i in range(5)]
            links.append({"relation": "next", "url": f"{srv.base}/Procedure?page={page + 1}"})
        if rtype == "Procedure" and mode == "deep-entry":
            entries.append({"resource": {"resourceType": "Procedure", "id": "deep",
                                         "status": "completed",
                                         "subject": {"reference": "Patient/deep"},
                                         "note": [{"text": "DEEP"}]}})
            total = 1
        body = {"resourceType": "Bundle", "type": "searchset", "link": links,
                "entry": entries}
        if total is not None:
            body["total"] = total if mode in ("endless-next", "deep-entry") else len(
                [e for e in entries if e.get("search", {}).get("mode") != "outcome"])
        data = json.dumps(body).encode()
        if rtype == "Procedure" and mode == "deep-entry":  # 1,000 levels: built as text
            data = data.replace(b'"DEEP"', b'{"x":' * 1000 + b'"bottom"' + b"}" * 1000)
        if rtype == "Procedure" and mode == "search-drip":
            self._drip(data, FHIR_JSON)
            return
        self._send(200, data)


def _ndjson(data: bytes) -> list[dict[str, Any]]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def all_output_bytes(*folders: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file under `folders` (for "the secret is in no output byte")."""
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    yield path, path.read_bytes()
