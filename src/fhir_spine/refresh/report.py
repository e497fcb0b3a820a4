"""What a refresh run is asked to do (`RefreshOptions`), what it did (`RefreshReport`),
and how it says so: JSON events for schedulers and the named checkpoints the kill tests
pause at (see run.py's docstring)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.sources.search import RestOptions
from fhir_spine.tables import Tables
from fhir_spine.validate import Mode

if TYPE_CHECKING:
    from fhir_spine.pseudonymise import DeidOptions

log = logging.getLogger("fhir_spine.refresh.run")

PAUSE_ENV = "FHIR_SPINE_PAUSE_AT"
PAUSE_SECONDS_ENV = "FHIR_SPINE_PAUSE_SECONDS"


def checkpoint(name: str) -> None:
    """A named point of the run (see run.py's docstring); a test may pause here."""
    log.debug("checkpoint %s", name, extra={"fields": {"event": "refresh.checkpoint",
                                                        "checkpoint": name}})
    wanted = {p.strip() for p in os.environ.get(PAUSE_ENV, "").split(",") if p.strip()}
    if name in wanted:
        seconds = float(os.environ.get(PAUSE_SECONDS_ENV, "30"))
        print(f"fhir-spine: paused at checkpoint {name} (pid {os.getpid()})", file=sys.stderr,
              flush=True)
        time.sleep(seconds)


def event(message: str, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """A log line that is also one JSON event (`--log-format json`) for schedulers."""
    log.log(level, message, extra={"fields": {"event": name, **fields}})


@dataclass
class RefreshOptions:
    out: Path
    state_dir: Path
    bulk_level: str | None = None        # None: REST search
    group_id: str | None = None
    type_filters: tuple[str, ...] = ()
    patients: tuple[str, ...] | None = None
    patients_file: str | None = None
    overlap_s: float = 60.0
    history: bool = True
    full_reconcile: bool = False
    full: bool = False
    validation: Mode = "warn"
    csv: bool = True
    export_timeout: float = 6 * 3600.0
    bulk_dir: Path | None = None
    rest: RestOptions = field(default_factory=RestOptions)
    deid: DeidOptions | None = None      # --pseudonymise: what is published is de-identified
    keep_raw: bool = False               # with deid and --bulk: keep the raw export


@dataclass
class RefreshReport:
    """What one run did: for stdout, the manifest and the JSON log."""

    full: bool
    watermark_before: str | None
    watermark_after: str = ""
    watermark_source: str = ""
    fetched: int = 0
    fetched_by_type: Counter[str] = field(default_factory=Counter)
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    older_than_since: int = 0
    reconciled_ids: int = 0
    history_pages: int = 0
    history: str = "not used"
    patients_touched: int = 0
    units_recomputed: int = 0
    units_carried_over: int = 0
    cohort_added: list[str] = field(default_factory=list)
    cohort_removed: list[str] = field(default_factory=list)
    problems: int = 0
    requests: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    recompute_seconds: float = 0.0
    export: dict[str, Any] | None = None
    searches: list[dict[str, Any]] = field(default_factory=list)
    stale_lock: dict[str, Any] | None = None
    tables: Tables | None = None
    exit_issues: dict[str, int] = field(default_factory=dict)

    def deletions_from(self, how: str) -> None:
        """Record one more way deletions were learnt (`deletions_from` in the manifest)."""
        self.history = how if self.history == "not used" else f"{self.history} + {how}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "full": self.full, "watermark_before": self.watermark_before,
            "watermark_after": self.watermark_after,
            "watermark_source": self.watermark_source,
            "resources_fetched": self.fetched,
            "resources_fetched_by_type": dict(sorted(self.fetched_by_type.items())),
            "added": self.added, "updated": self.updated, "deleted": self.deleted,
            "unchanged": self.unchanged, "reconciled_ids": self.reconciled_ids,
            **({"export_ignored_since": self.older_than_since}
               if self.older_than_since else {}),
            "deletions_from": self.history, "history_pages": self.history_pages,
            "patients_touched": self.patients_touched,
            "units_recomputed": self.units_recomputed,
            "units_carried_over": self.units_carried_over,
            "cohort_added": len(self.cohort_added), "cohort_removed": len(self.cohort_removed),
            "read_problems": self.problems, "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "recompute_seconds": round(self.recompute_seconds, 3),
            **({"export": self.export} if self.export else {}),
            **({"previous_run_killed": self.stale_lock} if self.stale_lock else {}),
        }
