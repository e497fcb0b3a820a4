"""Start and stop the FHIR test servers of ``tests/servers`` from Python.

``ServerProcess`` runs ``tests/servers/start.sh hapi|sekmet`` in a subprocess, reads the base
URL it prints, writes the server's output to ``tests/servers/.cache/<kind>-<time>.log`` and
stops the server (SIGTERM, then SIGKILL after a grace period) on ``stop()``.

The pytest fixtures ``hapi_server``, ``sekmet_server`` (session scoped: one server of each
kind per test run, started on first use) and ``fhir_server`` (parametrized over both) yield a
``RunningServer`` with ``kind``, ``base_url`` and ``log_path``.

Set ``FHIR_SPINE_HAPI_URL`` / ``FHIR_SPINE_SEKMET_URL`` to a base URL on 127.0.0.1 to use a
server that is already running instead of starting one (handy while developing tests).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SERVERS_DIR = Path(__file__).resolve().parent
START_SCRIPT = SERVERS_DIR / "start.sh"
CACHE_DIR = SERVERS_DIR / ".cache"
KINDS = ("hapi", "sekmet")
# HAPI may need a Maven build first (about 3 min cold) and then 40 s (idle machine) to several
# minutes (busy machine) to start.
DEFAULT_START_TIMEOUT = {"hapi": 1200.0, "sekmet": 120.0}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class RunningServer:
    kind: str
    base_url: str
    log_path: Path | None = None
    pid: int | None = None  # the server process itself (java / python), when started here

    def url(self, path: str = "") -> str:
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"test servers must be on 127.0.0.1, not {url!r}")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    if not task_dir.is_dir():
        return out
    for task in task_dir.iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (Linux /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """One FHIR test server started by ``start.sh``."""

    def __init__(self, kind: str, start_timeout: float | None = None, log_dir: Path = CACHE_DIR):
        if kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.start_timeout = start_timeout or float(
            os.environ.get("FHIR_SPINE_SERVER_START_TIMEOUT", DEFAULT_START_TIMEOUT[kind])
        )
        self.log_dir = log_dir
        self.log_path: Path | None = None
        self.base_url: str | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> RunningServer:
        if self._proc is not None:
            raise RuntimeError("already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = self.log_dir / f"{self.kind}-{stamp}-{os.getpid()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            ["bash", str(START_SCRIPT), self.kind],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            # start.sh stops the server by itself if this process dies without stopping it
            env={**os.environ, "FHIR_SPINE_STOP_WITH_PID": str(os.getpid())},
            stderr=self._log,
            start_new_session=True,  # its own process group: Ctrl-C in pytest does not reach it
        )
        try:
            line = self._read_line(t0 + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        _require_loopback(line)
        self.base_url = line.rstrip("/")
        return self.running()

    def _read_line(self, deadline: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.kind} server did not start within {self.start_timeout:.0f} s; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: start.sh exited
                    self._proc.wait(timeout=30)
                    raise RuntimeError(
                        f"{self.kind} server failed to start (exit {self._proc.returncode}); "
                        f"log: {self.log_path}\n{self.log_tail()}"
                    )
                buf += chunk
        return buf.split(b"\n", 1)[0].decode().strip()

    def running(self) -> RunningServer:
        if self.base_url is None:
            raise RuntimeError("not started")
        return RunningServer(self.kind, self.base_url, self.log_path, self.server_pid())

    def server_pid(self) -> int | None:
        """PID of the server itself (the child of start.sh), if it is running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        kids = _children(self._proc.pid)
        return kids[0] if kids else None

    def stop(self, grace: float = 45.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # start.sh stops the server and cleans up
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group start.sh leads, nothing else
                    proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode if proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server(kind: str) -> Iterator[RunningServer]:
    preset = os.environ.get(f"FHIR_SPINE_{kind.upper()}_URL")
    if preset:
        _require_loopback(preset)
        yield RunningServer(kind, preset.rstrip("/"))
        return
    server = ServerProcess(kind)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hapi_server() -> Iterator[RunningServer]:
    """HAPI FHIR JPA 8.8.0 (R4, in-memory H2) on 127.0.0.1, one per test session."""
    yield from _server("hapi")


@pytest.fixture(scope="session")
def sekmet_server() -> Iterator[RunningServer]:
    """sekmet-fhir (FastAPI + SQLite) on 127.0.0.1, one per test session."""
    yield from _server("sekmet")


@pytest.fixture(scope="session", params=KINDS)
def fhir_server(request: pytest.FixtureRequest) -> RunningServer:
    """Each test server in turn (the test runs once per server)."""
    return request.getfixturevalue(f"{request.param}_server")
