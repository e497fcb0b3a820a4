"""Command-line options of Bulk Data export (`extract --bulk`, `refresh --bulk`).

Kept apart from `sources/bulk.py` for the same reason as `server_options.py`: every
`fhir-spine` invocation registers all subcommands, and the HTTP stack should load only
when a command talks to a server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_EXPORT_TIMEOUT_S = 6 * 3600.0


def add_bulk_options(p: argparse.ArgumentParser, *, with_level: bool = True) -> None:
    """`--bulk` and its companions."""
    g = p.add_argument_group("Bulk Data export (with --server --bulk)")
    if with_level:
        g.add_argument("--bulk", metavar="system|patient|group:ID",
                       help="pull with the server's async $export at this level instead of "
                       "REST searches (see docs/refresh.md)")
    g.add_argument("--bulk-dir", type=Path, metavar="DIR",
                   help="job folder of the export (status URL, downloaded NDJSON: the raw "
                   "layer; an interrupted export resumes from it). Default: OUT.bulk beside "
                   "the output (refresh: OUT.state/bulk)")
    g.add_argument("--type-filter", action="append", default=[], metavar="QUERY",
                   help="_typeFilter for the export, e.g. 'Observation?status=final' "
                   "(repeatable; the server must support it)")
    g.add_argument("--export-timeout", type=float, default=DEFAULT_EXPORT_TIMEOUT_S,
                   metavar="SECONDS",
                   help="longest wait for the server to finish the export (default 21600); "
                   "an unfinished export exits 8 and the next run resumes it")
