"""The refresh state folder and its `state.json` (the watermark of the last complete run).

Layout, next to the published dataset and never inside it (the dataset folder is
swapped whole on every publish, and readers must not see our working files):

    OUT/                    the published dataset (outputs.publish)
    OUT.state/
        state.json          this file: server, scope, watermark, last run's numbers
        store.sqlite        raw store + per-patient table rows (refresh/store.py)
        refresh.lock        flock + owner record (refresh/lock.py)
        bulk/               the current $export job folder, when --bulk (sources/bulk/)

`state.json` is replaced atomically (temp file, fsync, rename) and only after the new
dataset is published and the store committed, so after a kill -9 at any point it names
a watermark whose changes are all in the store and in the published dataset. A run that
dies after the store commit but before this file is written leaves the older watermark:
the next run asks for those changes again, finds the same versions in the store, and
has nothing to redo.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fhir_spine import __version__
from fhir_spine.errors import ExitCode, SpineError
from fhir_spine.fhir import parse_instant
from fhir_spine.settings import Mappings
from fhir_spine.sources.bulk import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FORMAT = 1


class StateError(SpineError):
    """The state folder cannot be used as it is (corrupt, or from another server)."""

    exit_code = ExitCode.STATE


def state_dir_for(out: Path) -> Path:
    """`OUT.state` beside the published folder `OUT`."""
    out = out.absolute()
    return out.with_name(out.name + ".state")


@dataclass
class RefreshState:
    server: str
    scope: dict[str, Any]
    watermark: str                      # FHIR instant; changes after it are not yet in
    watermark_source: str               # transactionTime | server-date | newest-lastUpdated
    fingerprint: str                    # mappings + settings + tool version
    run: int = 0
    last_run: dict[str, Any] = field(default_factory=dict)
    format: int = STATE_FORMAT
    tool_version: str = __version__

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()


# Each field of state.json and the JSON type it must have (`bool` is no `int` here).
_TYPES: dict[str, type | tuple[type, ...]] = {
    "server": str, "scope": dict, "watermark": str, "watermark_source": str,
    "fingerprint": str, "run": int, "last_run": dict, "format": int, "tool_version": str}
_REQUIRED = ("server", "scope", "watermark", "watermark_source", "fingerprint")


def load_state(state_dir: Path) -> RefreshState | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(f"{path} is unreadable ({exc}); run with --full to rebuild the "
                         "state from the server") from None
    return check_state(raw, path)


def check_state(raw: Any, path: Path) -> RefreshState:
    """`state.json`'s content, its types checked (a list, `null`, a watermark that is
    not an instant, a negative run number: exit 9, never an internal error)."""
    hint = "; run with --full to rebuild the state from the server"
    if not isinstance(raw, dict):
        raise StateError(f"{path} holds {type(raw).__name__}, not a state object{hint}")
    if raw.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: state format {raw.get('format')!r}, this fhir-spine "
                         f"reads {STATE_FORMAT}; run with --full to rebuild the state")
    for name in _REQUIRED:
        if name not in raw:
            raise StateError(f"{path}: no `{name}`{hint}")
    for name, kind in _TYPES.items():
        if name in raw and (not isinstance(raw[name], kind) or isinstance(raw[name], bool)):
            raise StateError(f"{path}: `{name}` is {json.dumps(raw[name])[:80]}, not "
                             f"{getattr(kind, '__name__', kind)}{hint}")
    if raw.get("run", 0) < 0:
        raise StateError(f"{path}: `run` is negative{hint}")
    try:
        parse_instant(raw["watermark"])
    except ValueError:
        raise StateError(f"{path}: watermark {raw['watermark'][:80]!r} is not an "
                         f"instant{hint}") from None
    known = {k: v for k, v in raw.items() if k in RefreshState.__dataclass_fields__}
    return RefreshState(**known)


def save_state(state_dir: Path, state: RefreshState) -> None:
    write_atomic(state_dir / STATE_FILE, state.to_json())


def fingerprint(mappings: Mappings, validation: str) -> str:
    """What the per-patient rows depend on besides the resources: when it changes, every
    patient is recomputed from the raw store (no new pull needed)."""
    settings = {k: sorted(v) if isinstance(v, frozenset) else v
                for k, v in vars(mappings.settings).items()}
    payload = json.dumps({
        "tool": __version__, "validation": validation, "settings": settings,
        "files": [[str(f.path), f.sha256] for f in mappings.files],
        "views": mappings.views,
    }, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
