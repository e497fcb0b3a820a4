"""Command-line options of Bulk Data export (`extract --bulk`, `refresh --bulk`) and the
`extract --bulk` source built from them.

Kept apart from `sources/bulk/` for the same reason as `server_options.py`: every
`fhir-spine` invocation registers all subcommands, and the HTTP stack should load only
when a command talks to a server.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.cli.server_options import client_from_args
from fhir_spine.errors import UsageError

if TYPE_CHECKING:
    from fhir_spine.settings import Mappings
    from fhir_spine.sources.files import SourceItem

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


def bulk_source(args: argparse.Namespace, mappings: Mappings
                ) -> tuple[Iterator[SourceItem], dict[str, Any]]:
    """Items of a `$export` (`extract --server URL --bulk LEVEL`) and the manifest's
    `source` / `fhir_version` / `query` info, filled while the items are read."""
    from fhir_spine.fhir import export_types
    from fhir_spine.redact import redact_url
    from fhir_spine.sources.bulk import BulkExporter, BulkRequest, parse_level
    from fhir_spine.sources.capabilities import read_capabilities
    from fhir_spine.sources.search import QueryLog

    if not getattr(args, "server", None):
        raise UsageError("--bulk needs --server URL")
    level, group_id = parse_level(args.bulk)
    if getattr(args, "patients", None) is not None:
        raise UsageError("--patients is for REST pulls; with --bulk export a Group of "
                         "those patients (--bulk group:ID)")
    if args.export_timeout <= 0:
        raise UsageError("--export-timeout must be > 0")
    request = BulkRequest(level, group_id, export_types(mappings, level),
                          type_filters=tuple(args.type_filter or ()))
    out = Path(getattr(args, "out", None) or "fhir-spine-out")
    job_dir = args.bulk_dir or out.with_name(out.name + ".bulk")
    client = client_from_args(args)
    exporter = BulkExporter(client, job_dir, timeout=args.export_timeout)
    query: dict[str, Any] = {"kind": "bulk-export", "complete": False}
    info: dict[str, Any] = {
        "source": {"kind": "server", "location": redact_url(client.base_url),
                   "auth": client.auth.kind},
        "fhir_version": "", "query": query,
    }

    def items() -> Iterator[SourceItem]:
        try:
            info["fhir_version"] = read_capabilities(client).fhir_version
            result = exporter.run(request)
            query_log = QueryLog()
            if level != "system":
                exporter.fetch_medications(query_log=query_log)
            query.update(result.summary())
            if query_log.records:
                query["searches"] = query_log.as_list()
            yield from result.items()
            exporter.mark_consumed()
            query["complete"] = True
        finally:
            query["requests"] = client.stats.as_dict()
            client.close()

    return items(), info
