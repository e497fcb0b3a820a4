"""Record a FHIR server's answers once, then serve them from memory on 127.0.0.1.

The REST benchmark (`bench_rest.py`) times clients against a replay so that what it
measures is the client's own cost, not the server's: a recording proxy in front of the
live server stores every answer by the exact request target (path and query) it was asked
for, with the live server's origin in `next` links and `fullUrl`s rewritten to the
proxy's, so that a client follows its pages through the proxy. The store is then served
by a separate process (`python rest_replay.py serve STORE`), which rewrites the recorded
origin to its own as it loads. A request that was not recorded gets a 404 naming it, and
the benchmark fails the point.

Loopback only: both servers bind 127.0.0.1, and the proxy forwards only to an upstream on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

HOST = "127.0.0.1"
Store = dict[str, tuple[int, bytes]]  # request target -> (status, body)


def origin(url: str) -> str:
    """`http://127.0.0.1:8080/fhir/x` -> `http://127.0.0.1:8080`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def rewrite_links(body: bytes, old_origin: str, new_origin: str) -> bytes:
    """Every occurrence of `old_origin` followed by `/`, `?` or `"` becomes `new_origin`.

    A plain byte replacement is enough for JSON from a FHIR server: its links and
    `fullUrl`s are absolute URLs on its own origin; requiring the next character to end
    the origin keeps `:8080` from matching inside `:80801`.
    """
    old, new = old_origin.encode(), new_origin.encode()
    out = bytearray()
    start = 0
    while (at := body.find(old, start)) >= 0:
        end = at + len(old)
        out += body[start:at]
        out += new if body[end:end + 1] in (b"/", b"?", b'"') else old
        start = end
    out += body[start:]
    return bytes(out)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: a client's session reuses its connection
    # Headers and body leave in two writes: without TCP_NODELAY the second waits for the
    # client's delayed ACK (~40 ms a request on Linux), which would make every client on a
    # kept-alive connection look slow and one that reconnects each time look fast.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, body = self.server.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json;charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per request would cost more than serving it


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Handler)
        self.base_origin = f"http://{HOST}:{self.server_address[1]}"

    def answer(self, target: str) -> tuple[int, bytes]:
        raise NotImplementedError


class RecordingProxy(_Server):
    """Forwards each GET to `upstream`, stores and returns the answer (links rewritten)."""

    def __init__(self, upstream_base: str) -> None:
        if urlsplit(upstream_base).hostname != HOST:
            raise ValueError(f"upstream {upstream_base} is not on {HOST}")
        super().__init__()
        self.upstream_origin = origin(upstream_base)
        self.store: Store = {}
        self.failures: list[str] = []  # requests the upstream did not answer
        self._lock = threading.Lock()
        self._session = threading.local()

    def answer(self, target: str) -> tuple[int, bytes]:
        session = getattr(self._session, "s", None)
        if session is None:
            session = self._session.s = requests.Session()
        try:
            response = session.get(self.upstream_origin + target, timeout=600,
                                   headers={"Accept": "application/fhir+json"})
        except requests.RequestException as exc:  # the client sees why, not a reset
            self.failures.append(f"{target}: {type(exc).__name__}")
            return 502, (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                         b'"code":"transient","diagnostics":"upstream unreachable"}]}')
        body = rewrite_links(response.content, self.upstream_origin, self.base_origin)
        with self._lock:
            self.store[target] = (response.status_code, body)
        return response.status_code, body

    def save(self, path: Path) -> None:
        """The store, with the proxy's origin kept in it (`serve` rewrites it)."""
        with self._lock:
            data = {"origin": self.base_origin, "store": dict(self.store)}
        path.write_bytes(pickle.dumps(data))


class ReplayServer(_Server):
    """Serves a recorded store from memory; 404 (naming the target) for anything else."""

    def __init__(self, recorded_origin: str, store: Store) -> None:
        super().__init__()
        self.store = {k: (s, rewrite_links(b, recorded_origin, self.base_origin))
                      for k, (s, b) in store.items()}
        self.misses: list[str] = []

    def answer(self, target: str) -> tuple[int, bytes]:
        found = self.store.get(target)
        if found is None:
            self.misses.append(target)
            return 404, (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                         b'"code":"not-found","diagnostics":"not recorded"}]}')
        return found


def serve_in_thread(server: _Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a recorded store on 127.0.0.1")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("store", type=Path)
    args = parser.parse_args()
    data = pickle.loads(args.store.read_bytes())  # noqa: S301 - our own file
    server = ReplayServer(data["origin"], data["store"])
    print(server.base_origin + "/fhir", flush=True)  # the only line on stdout
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server.misses:
            print(f"replay: {len(server.misses)} requests not recorded, first "
                  f"{server.misses[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
