"""Command-line options shared by `check`, `load` and `extract --server`.

Kept apart from the HTTP client so that registering them costs nothing: every
`fhir-spine` invocation builds all subparsers, and `requests`, `tenacity` and the
crypto libraries load only when a command actually talks to a server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fhir_spine.auth import add_auth_options


def add_http_options(p: argparse.ArgumentParser) -> None:
    """TLS, timeout and retry options, plus the authentication group."""
    g = p.add_argument_group("connection")
    g.add_argument("--ca-bundle", type=Path, metavar="FILE",
                   help="PEM file of CA certificates to trust (a hospital's internal CA)")
    g.add_argument("--insecure", action="store_true",
                   help="do not verify TLS certificates (test servers only; logs a warning)")
    g.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="read timeout per request (default 120)")
    g.add_argument("--retry-time", type=float, default=300.0, metavar="SECONDS",
                   help="longest time to keep retrying one request on 429/502/503/504 or a "
                   "dropped connection (default 300)")
    add_auth_options(p)


def add_server_options(p: argparse.ArgumentParser) -> None:
    """Options of `extract --server` (the caller adds `--server` itself)."""
    g = p.add_argument_group("server pull (with --server)")
    g.add_argument("--patients", type=Path, metavar="FILE",
                   help="pull exactly these patient ids (one a line) instead of searching "
                   "the cohort by index-procedure codes")
    g.add_argument("--workers", type=int, default=2,
                   help="searches run at once (default 2: polite to a shared server)")
    g.add_argument("--batch-size", type=int, default=50,
                   help="patient ids per search (default 50)")
    g.add_argument("--page-size", type=int, default=200, help="_count per page (default 200)")
    g.add_argument("--search-cap", type=int, default=10_000, metavar="N",
                   help="results after which a server may silently stop paging; a search "
                   "reaching it is repeated in _lastUpdated windows (default 10000, 0: off)")
    add_http_options(p)
