"""Command-line options shared by `check`, `load`, `extract --server` and `refresh`, and
what turns them into a client and a REST source: the `argparse` side of `sources/`.

Registering the options costs nothing: every `fhir-spine` invocation builds all
subparsers, and `requests`, `tenacity` and the crypto libraries load only when a command
actually talks to a server (the functions below import them when called).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.cli.auth_options import add_auth_options
from fhir_spine.errors import UsageError

if TYPE_CHECKING:
    from fhir_spine.settings import Mappings
    from fhir_spine.sources.files import SourceItem
    from fhir_spine.sources.http import FhirClient


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
    add_limit_options(p)
    add_auth_options(p)


def byte_size(text: str) -> int:
    """`1048576`, `512K`, `64M`, `20G`, `1T` (powers of 1024) as bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 20G)") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return int(number * units[unit])


def add_limit_options(p: argparse.ArgumentParser) -> None:
    """What a server can make the client do: time per request, bytes per file, disk."""
    g = p.add_argument_group("limits (what a server may make fhir-spine do)")
    g.add_argument("--request-deadline", type=float, default=600.0, metavar="SECONDS",
                   help="whole time one request may take, headers and body, however the "
                   "server drips it (default 600; 0: none)")
    g.add_argument("--min-rate", type=byte_size, default=64 * 1024, metavar="BYTES",
                   help="a Bulk file download may pass --request-deadline while it "
                   "averages at least this many bytes a second (default 64K)")
    g.add_argument("--max-file-size", type=byte_size, default=64 << 30, metavar="BYTES",
                   help="largest Bulk file, on the wire and decompressed (default 64G)")
    g.add_argument("--max-gzip-ratio", type=float, default=200.0, metavar="N",
                   help="largest decompressed / compressed size of a gzip file or body "
                   "(default 200: NDJSON compresses 5-30 times; a bomb 1000)")
    g.add_argument("--min-free-space", type=byte_size, default=1 << 30, metavar="BYTES",
                   help="free space a download must leave on the job folder's disk "
                   "(default 1G; checked before and during each download)")


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
    g.add_argument("--max-pages", type=int, default=10_000, metavar="N",
                   help="pages one search may take; a search also stops when its matches "
                   "pass the server's own total by more than a page (default 10000)")
    g.add_argument("--search-cap", type=int, default=10_000, metavar="N",
                   help="results after which a server may silently stop paging; a search "
                   "reaching it is repeated in _lastUpdated windows (default 10000, 0: off)")
    add_http_options(p)


def client_from_args(args: argparse.Namespace, workers: int = 2) -> FhirClient:
    """The HTTP client of `--server` and the connection and authentication options."""
    from fhir_spine.cli.auth_options import auth_from_args
    from fhir_spine.redact import install_log_redaction
    from fhir_spine.sources.http import FhirClient, HttpSettings

    if args.ca_bundle is not None and args.insecure:
        raise UsageError("--ca-bundle and --insecure contradict each other")
    verify: bool | str = True
    if args.ca_bundle is not None:
        if not args.ca_bundle.is_file():
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
        verify = str(args.ca_bundle)
    elif args.insecure:
        verify = False
    if args.timeout <= 0 or args.retry_time < 0:
        raise UsageError("--timeout must be > 0 and --retry-time >= 0")
    auth = auth_from_args(args)
    install_log_redaction()
    settings = HttpSettings(read_timeout=args.timeout, retry_time=args.retry_time,
                            verify=verify, pool_size=max(10, workers * 2),
                            **limit_settings(args))
    return FhirClient(args.server, auth=auth, settings=settings)


def limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """`HttpSettings` fields of the limit options (defaults when a command has none)."""
    from fhir_spine.sources.http import HttpSettings

    d = HttpSettings()
    values = {"deadline": getattr(args, "request_deadline", d.deadline),
              "min_rate": getattr(args, "min_rate", d.min_rate),
              "max_file_bytes": getattr(args, "max_file_size", d.max_file_bytes),
              "max_gzip_ratio": getattr(args, "max_gzip_ratio", d.max_gzip_ratio),
              "min_free_bytes": getattr(args, "min_free_space", d.min_free_bytes)}
    if values["deadline"] < 0 or values["max_gzip_ratio"] <= 1:
        raise UsageError("--request-deadline must be >= 0 and --max-gzip-ratio > 1")
    return values


def server_source(args: argparse.Namespace, mappings: Mappings | None = None
                  ) -> tuple[Iterator[SourceItem], dict[str, Any]]:
    """Items from `--server` (REST search) and the manifest's `source` / `fhir_version` /
    `query` info. The info dict is filled while the items are consumed: read it after the
    stream ends."""
    from fhir_spine.sources.rest import RestSource, read_patient_list
    from fhir_spine.sources.search import RestOptions

    for name in ("workers", "batch_size", "page_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if mappings is None:
        from fhir_spine.settings import load_mappings

        mappings = load_mappings(getattr(args, "mappings", None))
    patients = read_patient_list(args.patients) if args.patients is not None else None
    options = RestOptions(page_size=args.page_size, batch_size=args.batch_size,
                          workers=args.workers, cap=args.search_cap or None,
                          max_pages=max(1, args.max_pages))
    client = client_from_args(args, workers=args.workers)
    source = RestSource(client, mappings, options=options, patients=patients,
                        patients_file=args.patients)

    def items() -> Iterator[SourceItem]:
        try:
            yield from source.items()
        finally:
            client.close()

    return items(), source.info
