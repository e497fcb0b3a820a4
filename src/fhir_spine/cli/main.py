"""Entry point: wires the subcommands; each lives in its own module under `cli/`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fhir_spine import __version__
from fhir_spine.errors import ExitCode, SpineError
from fhir_spine.logs import configure_logging
from fhir_spine.redact import install_log_redaction, scrubbed_std_streams

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from fhir_spine.cli import check, extract, load, refresh, report, synth

    parser = argparse.ArgumentParser(
        prog="fhir-spine",
        description="Reconstruct the spinal oncology biopsy -> stabilization -> therapy "
        "pathway from FHIR R4 and write analysis-ready tables.",
    )
    parser.add_argument("--version", action="version", version=f"fhir-spine {__version__}")
    _add_common_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (extract, synth, report, check, load, refresh):
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


def main(argv: Sequence[str] | None = None) -> int:
    # Everything the process prints passes the one scrubber (redact.scrub): the final
    # error line, both log formats, a library's own output.
    with scrubbed_std_streams():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(debug=args.debug, fmt=args.log_format, quiet=args.quiet)
    install_log_redaction()
    try:
        return int(args.func(args))
    except SpineError as exc:
        if args.debug:
            log.exception("failed")
        # One plain line in every log format: the one thing a person or a scheduler's
        # alert must read (JSON log lines carry the details before it).
        print(f"fhir-spine: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("fhir-spine: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep the user's terminal readable
        if args.debug:  # the traceback, and still the internal-error status
            log.exception("internal error")
        print(
            f"fhir-spine: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
