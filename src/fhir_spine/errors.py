"""Exit statuses and the one exception family the CLI turns into a one-line message.

Numbers are part of the interface that schedulers branch on: never reuse a retired
number, only add new ones.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    DATA_ISSUES = 1          # finished, outputs written, but `issues` holds errors
    USAGE = 2                # bad arguments, missing or unreadable source folder
    CONFIG = 3               # invalid mappings / settings / view definitions
    SERVER_UNREACHABLE = 4   # could not talk to the FHIR server
    SERVER_ERROR = 5         # the server answered, but not usably (4xx/5xx, bad bundles)
    AUTH = 6                 # authentication failed
    LOCK_HELD = 7            # another refresh holds the lock
    INCOMPLETE = 8           # pull could not be completed; nothing published
    INTERNAL = 70            # a bug: please report with --debug output


class SpineError(Exception):
    """A failure the user can act on: one line of text and an exit status."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SpineError):
    exit_code = ExitCode.USAGE


class ConfigError(SpineError):
    exit_code = ExitCode.CONFIG
