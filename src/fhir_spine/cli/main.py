"""Entry point: wires the subcommands; each lives in its own module under `cli/`."""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from fhir_spine import __version__
from fhir_spine.errors import ExitCode, SpineError
from fhir_spine.logs import JsonLines, configure_logging, final_event, plain_json_error
from fhir_spine.redact import install_log_redaction, scrubbed_std_streams

log = logging.getLogger(__name__)


class SpineParser(argparse.ArgumentParser):
    """argparse with "did you mean" for option typos and a JSON error line under
    `--log-format json` (set on the class before parsing: the choice is in argv)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        message += _suggestion(self, message)
        if SpineParser.json_errors:
            plain_json_error(f"fhir-spine: error: {message}", {
                "event": "cli.failed", "command": self.prog.removeprefix("fhir-spine").strip()
                or None, "outcome": "usage", "exit_code": int(ExitCode.USAGE),
                "error": message, "error_type": "UsageError"})
            sys.exit(int(ExitCode.USAGE))
        super().error(message)


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """`; did you mean --out?` for unknown options, from every option of every command."""
    unknown = re.findall(r"(--?[A-Za-z][\w-]*)", message.split(":", 1)[-1]) \
        if "unrecognized arguments" in message else []
    if not unknown:
        return ""
    options: set[str] = set(parser._option_string_actions)  # noqa: SLF001
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                options.update(sub._option_string_actions)  # noqa: SLF001
    hints = []
    for word in unknown:
        close = difflib.get_close_matches(word.split("=", 1)[0], sorted(options), n=1,
                                          cutoff=0.6)
        if close:
            hints.append(f"{word} -> {close[0]}")
    return f"; did you mean {', '.join(hints)}?" if hints else ""


def build_parser() -> argparse.ArgumentParser:
    from fhir_spine.cli import check, codes, extract, load, refresh, report, synth, validate

    parser = SpineParser(
        prog="fhir-spine",
        description="Reconstruct the spinal oncology biopsy -> stabilization -> therapy "
        "pathway from FHIR R4 and write analysis-ready tables.",
    )
    parser.add_argument("--version", action="version", version=f"fhir-spine {__version__}")
    _add_common_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (extract, synth, report, check, load, refresh, codes, validate):
        module.register(sub)
    for subparser in sub.choices.values():
        # The same options after the command name (`fhir-spine extract --quiet`) too.
        _add_common_options(subparser, defaults=False)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=default("text"),
        help="json: one JSON object per log line, for schedulers",
    )
    parser.add_argument("--quiet", action="store_true", default=default(False),
                        help="warnings and errors only, no progress bar")


def _wants_json(argv: Sequence[str]) -> bool:
    for i, word in enumerate(argv):
        if word == "--log-format=json" or (word == "--log-format" and i + 1 < len(argv)
                                           and argv[i + 1] == "json"):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    # Everything the process prints passes the one scrubber (redact.scrub): the final
    # error line, both log formats, a library's own output.
    with scrubbed_std_streams():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    SpineParser.json_errors = _wants_json(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(debug=args.debug, fmt=args.log_format, quiet=args.quiet)
    install_log_redaction()
    json_mode = args.log_format == "json"
    stdout = sys.stdout
    if json_mode:
        sys.stdout = JsonLines(stdout, quiet=args.quiet)  # type: ignore[assignment]
    started = time.monotonic()
    try:
        code, error = _run(args)
    finally:
        sys.stdout.flush()
        sys.stdout = stdout
    if json_mode:
        _final(args, code, error, time.monotonic() - started)
    elif error is not None:
        print(error, file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> tuple[int, str | None]:
    """The command's exit status and, when it failed, its one error line."""
    from fhir_spine import summary

    summary.reset()
    try:
        return int(args.func(args)), None
    except SpineError as exc:
        if args.debug:
            log.exception("failed")
        summary.note(error=_shown(args, exc), error_type=type(exc).__name__)
        # One line, the one thing a person or a scheduler's alert must read (JSON log
        # lines carry the details before it).
        return int(exc.exit_code), f"fhir-spine: error: {_shown(args, exc)}"
    except KeyboardInterrupt:
        summary.note(error="interrupted", error_type="KeyboardInterrupt")
        return 130, "fhir-spine: interrupted"
    except Exception as exc:  # a bug: keep the user's terminal readable
        if args.debug:  # the traceback, and still the internal-error status
            log.exception("internal error")
        summary.note(error=f"{type(exc).__name__}: {_shown(args, exc)}", error_type="InternalError")
        return int(ExitCode.INTERNAL), (
            f"fhir-spine: internal error: {type(exc).__name__}: {_shown(args, exc)} "
            "(rerun with --debug)")


def _final(args: argparse.Namespace, code: int, error: str | None, seconds: float) -> None:
    from fhir_spine import summary

    fields: dict[str, Any] = summary.taken()
    outcome = {0: "ok", 1: "data-issues"}.get(code, "failed")
    name = f"{args.command}.{'finished' if code in (0, 1) else 'failed'}"
    fields = {"event": name, "command": args.command, "outcome": outcome, "exit_code": code,
              **fields, "seconds": round(fields.get("seconds", seconds), 3)}
    if code not in (0, 1):
        known = {int(e): e.name.lower() for e in ExitCode}
        fields["exit_status"] = known.get(code, str(code))
    final_event(error or f"fhir-spine {args.command}: {outcome} (exit {code})", fields,
                failed=error is not None)


def _shown(args: argparse.Namespace, exc: BaseException) -> str:
    """An error's message; under --pseudonymise (without --debug) scrubbed as log lines are,
    since it may quote ids or a server's text."""
    if getattr(args, "pseudonymise", False) and not args.debug:
        from fhir_spine.log_scrub import scrub_log_text

        return scrub_log_text(str(exc))
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
