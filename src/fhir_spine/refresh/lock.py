"""One refresh at a time per dataset: an advisory `flock` on `<state>/refresh.lock`.

Why `fcntl.flock` and not a lock file created with `O_EXCL`: an `O_EXCL` file is a lock
only until its owner is killed (kill -9, OOM killer, a node drained by Kubernetes); then
the file stays and the next run has to guess whether it is stale from a pid, which can
be reused by an unrelated process, and two runs that both decide "stale" at once can
both remove it and both run. A `flock` belongs to the open file: the kernel releases it
when the owning process dies, however it dies, so a killed refresh can never leave a
lock that blocks the next one, and there is nothing to break by hand. (The `filelock`
package does the same on Unix; calling `fcntl` directly keeps the file in place and lets
us read and write the owner record through the same descriptor.)

The file also holds a JSON owner record: pid, the process start time (from
/proc/<pid>/stat, so a reused pid is recognised), host, the time the lock was taken
and the command. A refresh that finds the lock held exits with `LOCK_HELD` (7) and
names the holder and how long it has run. A refresh that gets the lock but finds an
owner record left behind knows the previous run died without finishing (stale lock
detection); it logs that and carries on, since the state and the published dataset are
only ever replaced atomically. The file itself is never deleted: unlinking a lock file
while another process waits on it lets two processes lock two different files.

Use one state folder on a local file system (or NFSv4, where flock maps to POSIX locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_spine.errors import ExitCode, SpineError

log = logging.getLogger(__name__)

LOCK_NAME = "refresh.lock"


class LockHeld(SpineError):
    """Another refresh of the same dataset is running."""

    exit_code = ExitCode.LOCK_HELD

    def __init__(self, message: str, owner: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.owner = owner or {}


@dataclass(frozen=True)
class Owner:
    pid: int
    process_start: str     # clock ticks since boot, from /proc/<pid>/stat (field 22)
    host: str
    started_at: str        # when this run took the lock (UTC)
    command: str

    @classmethod
    def me(cls) -> Owner:
        return cls(os.getpid(), process_start_ticks(os.getpid()), socket.gethostname(),
                   datetime.now(UTC).isoformat(timespec="seconds"),
                   " ".join(os.path.basename(a) if i == 0 else a
                            for i, a in enumerate(sys.argv))[:300])


def process_start_ticks(pid: int) -> str:
    """The start time of a process in clock ticks since boot ('' when unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """Is the recorded owner still running? None when it cannot be told (another host)."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = owner.get("process_start") or ""
    return not started or process_start_ticks(pid) == started


class RefreshLock:
    """`with RefreshLock(state_dir) as lock:` holds the lock for the block.

    `previous_owner` is the owner record a dead run left behind (or None)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None
        self.previous_owner: dict[str, Any] | None = None
        self.owner: Owner | None = None

    def acquire(self) -> RefreshLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockHeld(self._held_message(holder), holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        left = _read(fd)
        if left:
            self.previous_owner = left
            log.warning("the previous refresh (pid %s on %s, started %s) did not finish: it "
                        "was killed or crashed; what it had not committed is done again now",
                        left.get("pid"), left.get("host"), left.get("started_at"),
                        extra={"fields": {"event": "refresh.stale_lock",
                                          "previous_owner": left}})
        self.owner = Owner.me()
        _write(fd, json.dumps(asdict(self.owner)).encode())
        return self

    def release(self) -> None:
        """Clear the owner record, then unlock (a clean finish leaves no record)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _write(fd, b"")
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RefreshLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _held_message(self, holder: dict[str, Any]) -> str:
        if not holder:
            return (f"another refresh holds the lock {self.path} (it has not written its "
                    "owner record yet); not starting a second one")
        alive = owner_alive(holder)
        since = holder.get("started_at", "?")
        age = ""
        with contextlib.suppress(ValueError, TypeError):
            seconds = (datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds()
            age = f", running for {seconds / 60:.0f} min" if seconds >= 60 \
                else f", running for {seconds:.0f} s"
        text = (f"another refresh is running (pid {holder.get('pid')} on "
                f"{holder.get('host')}, started {since}{age}); not starting a second one")
        if alive is False:
            text += (f". Its recorded process is gone but the lock is still held: another "
                     f"process has inherited it, or {self.path} is on a file system whose "
                     "locks outlive their owner")
        return text


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
    except OSError:
        return {}
    if not data.strip():
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {"unreadable": data[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {}


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    if data:
        os.write(fd, data)
    os.fsync(fd)
