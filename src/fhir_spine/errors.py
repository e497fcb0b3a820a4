"""Exit statuses and the one exception family the CLI turns into a one-line message.

Numbers are part of the interface that schedulers branch on: never reuse a retired
number, only add new ones.
"""

from __future__ import annotations

from enum import IntEnum

from fhir_spine.redact import scrub


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
    STATE = 9                # refresh state folder unusable (corrupt, other server): --full
    EMPTY = 10               # nothing read or no patient screened: nothing published
    SHRINK = 11              # far fewer patients than the published dataset: not published


class SpineError(Exception):
    """A failure the user can act on: one line of text and an exit status."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(scrub(message))  # a message may quote a server: never a secret
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SpineError):
    exit_code = ExitCode.USAGE


class ConfigError(SpineError):
    exit_code = ExitCode.CONFIG


class ServerUnreachable(SpineError):
    """No usable answer at all: DNS, refused connection, timeout, TLS failure."""

    exit_code = ExitCode.SERVER_UNREACHABLE


class ServerError(SpineError):
    """The server answered, but not usably: an error status, a broken page, an HTML page.

    `status` is the HTTP status when there was one, so callers can treat a 404 on an
    optional endpoint (for example `.well-known/smart-configuration`) as "not offered".
    """

    exit_code = ExitCode.SERVER_ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None, *,
                 status: int | None = None) -> None:
        super().__init__(message, exit_code)
        self.status = status


class AuthError(SpineError):
    """Credentials missing, refused (401/403) or a token request that failed."""

    exit_code = ExitCode.AUTH


class IncompletePull(SpineError):
    """The server would not give every result of a search even in the smallest window."""

    exit_code = ExitCode.INCOMPLETE


class EmptyResult(SpineError):
    """The run read nothing or screened no patient; publishing it would blank a dataset."""

    exit_code = ExitCode.EMPTY


class ShrinkRefused(SpineError):
    """The new dataset screens far fewer patients than the one it would replace."""

    exit_code = ExitCode.SHRINK
