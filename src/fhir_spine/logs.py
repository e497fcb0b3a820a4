"""Logging set-up: rich on a terminal, one JSON object per line for schedulers.

With `--log-format json` every line a run writes is one JSON object: log records on
stderr, anything a command prints on stdout wrapped as an `output` event
(`JsonLines`), and last the command's final event (`final_event`), success or failure,
which `--quiet` never hides.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time of the record, not at set-up: a
    program embedding the CLI (or a test capturing output) may swap it in between."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(*, debug: bool = False, fmt: str = "text", quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if fmt == "json":
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=debug)
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    _state["json"] = fmt == "json"
    logging.getLogger(FINAL_LOGGER).setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(fmt == "json")
    # urllib3 logs full URLs at debug level; keep it quiet unless asked.
    logging.getLogger("urllib3").setLevel(logging.DEBUG if debug else logging.WARNING)


_state: dict[str, Any] = {"json": False}
FINAL_LOGGER = "fhir_spine.final"


def json_mode() -> bool:
    """True under `--log-format json`: no progress bar, no plain text lines."""
    return bool(_state["json"])


def _json_line(fields: dict[str, Any]) -> str:
    return json.dumps({"time": datetime.now(UTC).isoformat(), **fields}, default=str)


class JsonLines:
    """A stdout stand-in that turns each printed line into one `output` JSON event."""

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet  # --quiet: the final event carries the summary
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            if self.quiet:
                continue
            self.stream.write(_json_line({"level": "info", "logger": "fhir_spine.output",
                                          "event": "output", "message": line}) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.write("\n")
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def final_event(message: str, fields: dict[str, Any], *, failed: bool = False) -> None:
    """The run's last line: its outcome, exit status and counts. Logged on its own logger
    at INFO, which `--quiet` (WARNING for everything else) does not raise."""
    logging.getLogger(FINAL_LOGGER).log(logging.ERROR if failed else logging.INFO, message,
                                        extra={"fields": fields})


def plain_json_error(message: str, fields: dict[str, Any]) -> None:
    """One JSON error line on stderr, for failures before logging is set up (argparse)."""
    sys.stderr.write(_json_line({"level": "error", "logger": FINAL_LOGGER,
                                 "message": message, **fields}) + "\n")
