"""`fhir-spine refresh --server URL --out DIR`: bring a published dataset up to date.

For schedulers (cron, Airflow, a Kubernetes CronJob): the first run pulls the whole
scope; every later run asks only for what changed since the last complete run, updates
the raw store kept in `DIR.state/`, recomputes the patients touched and publishes the
new dataset atomically. Exit statuses are documented in docs/refresh.md; with
`--log-format json` every step is one JSON event on stderr, and the last one is
`refresh.finished` (or `refresh.failed`) with the exit status and the counts (written by
`cli.main` for every command, so `--quiet` does not hide it).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.cli.bulk_options import add_bulk_options
from fhir_spine.cli.extract import (
    add_pathway_options,
    add_privacy_options,
    add_publish_options,
    deid_options,
    log_warnings,
    pathway_overrides,
    publish_policy_from,
    report_outside,
    timezone_warnings,
)
from fhir_spine.cli.server_options import add_server_options
from fhir_spine.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from fhir_spine.refresh.run import RefreshOptions

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "refresh", help="bring a dataset up to date with what changed on the server",
        description="Incremental refresh for schedulers: pull only what changed on the "
        "server since the last complete run (REST _lastUpdated, or $export _since with "
        "--bulk), merge it into the raw store beside the dataset (OUT.state/), recompute "
        "the patients touched and publish the new dataset atomically. One run at a time "
        "(exit 7 when another holds the lock). See docs/refresh.md.",
    )
    p.add_argument("--server", required=True, help="FHIR base URL")
    p.add_argument("--out", type=Path, required=True,
                   help="the published dataset folder; its state lives in OUT.state/")
    p.add_argument("--bulk", metavar="system|patient|group:ID",
                   help="pull with $export at this level (_since for changes) instead of "
                   "REST searches")
    p.add_argument("--full", action="store_true",
                   help="pull the whole scope again and rebuild the raw store")
    p.add_argument("--full-reconcile", action="store_true",
                   help="also check every stored id against the server and drop the ones "
                   "it no longer has (deletions on servers without _history)")
    p.add_argument("--no-history", action="store_true",
                   help="do not read _history for deletions (it carries every change on "
                   "the server since the watermark, not only the cohort's)")
    p.add_argument("--overlap", type=float, default=60.0, metavar="SECONDS",
                   help="ask for changes from this long before the watermark, for writes "
                   "that were in flight during the last run (default 60)")
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="state folder (default: OUT.state beside the dataset)")
    add_pathway_options(p)
    p.add_argument("--no-csv", action="store_true", help="write Parquet only")
    p.add_argument("--validation", choices=["off", "warn", "strict"], default="warn",
                   help="FHIR model validation (as for extract)")
    add_publish_options(p, scheduled=True)
    add_bulk_options(p, with_level=False)
    add_server_options(p)
    add_privacy_options(p)
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> RefreshOptions:
    from fhir_spine.outputs import check_apart, check_target
    from fhir_spine.refresh.run import RefreshOptions
    from fhir_spine.refresh.state import state_dir_for
    from fhir_spine.sources.bulk import parse_level
    from fhir_spine.sources.rest import RestOptions, read_patient_list

    deid = deid_options(args)  # a missing key is exit 2 before any work
    for name in ("workers", "batch_size", "page_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.overlap < 0 or args.export_timeout <= 0:
        raise UsageError("--overlap must be >= 0 and --export-timeout > 0")
    level, group_id = parse_level(args.bulk) if args.bulk else (None, None)
    if args.patients is not None and level is not None:
        raise UsageError("--patients is for REST refreshes; with --bulk use group:ID")
    if args.type_filter and level is None:
        raise UsageError("--type-filter needs --bulk")
    out = args.out.absolute()
    state_dir = (args.state_dir or state_dir_for(out)).absolute()
    if state_dir == out or out in state_dir.parents:
        raise UsageError("--state-dir must not be inside the published dataset (it is "
                         "replaced whole on every publish)")
    check_apart(out, state_dir=state_dir, bulk_dir=args.bulk_dir)
    check_target(out)
    patients = tuple(read_patient_list(args.patients)) if args.patients is not None else None
    return RefreshOptions(
        out=out, state_dir=state_dir, bulk_level=level, group_id=group_id,
        type_filters=tuple(args.type_filter or ()), patients=patients,
        patients_file=str(args.patients) if args.patients is not None else None,
        overlap_s=args.overlap, history=not args.no_history,
        full_reconcile=args.full_reconcile, full=args.full, validation=args.validation,
        csv=not args.no_csv, export_timeout=args.export_timeout, bulk_dir=args.bulk_dir,
        rest=RestOptions(page_size=args.page_size, batch_size=args.batch_size,
                         max_pages=max(1, args.max_pages),
                         workers=args.workers, cap=args.search_cap or None),
        deid=deid, keep_raw=args.keep_raw)


def run(args: argparse.Namespace) -> int:
    from fhir_spine.cli.server_options import client_from_args
    from fhir_spine.outputs import publish_policy
    from fhir_spine.refresh.run import Refresh
    from fhir_spine.settings import load_mappings
    from fhir_spine.summary import note, summary_lines, timezone_line

    options = options_from_args(args)
    mappings = load_mappings(args.mappings, pathway_overrides(args))
    timezone = mappings.settings.timezone
    tz_warnings = timezone_warnings(args, timezone)
    note(out=str(options.out), timezone=timezone, timezone_assumed=bool(tz_warnings))
    policy = publish_policy_from(args, tz_warnings)
    report_outside(args)
    client = client_from_args(args, workers=args.workers)
    try:
        with publish_policy(policy):
            report = Refresh(client, mappings, options).run()
    finally:
        client.close()
    log_warnings(tz_warnings)
    status = ExitCode.DATA_ISSUES if report.exit_issues.get("error") else ExitCode.OK
    assert report.tables is not None
    note(**final_counts(report, options.out))
    if not args.quiet:
        for line in summary_lines(report.tables.patients):
            print(line)
    requests = report.requests.get("requests", 0)
    what = "full pull" if report.full else f"changes since {report.watermark_before}"
    print(f"refresh ({what}): fetched {report.fetched} resources in {requests} requests, "
          f"{report.seconds:.1f} s; added {report.added}, updated {report.updated}, "
          f"deleted {report.deleted}; recomputed {report.patients_touched} patient(s), "
          f"carried over {report.units_carried_over}")
    print(timezone_line(timezone, bool(tz_warnings)))
    print(f"wrote {options.out} (watermark {report.watermark_after})")
    return int(status)


def final_counts(report: Any, out: Path) -> dict[str, Any]:
    """The refresh's numbers and the dataset's counts, for the final event."""
    import json

    from fhir_spine.summary import dataset_counts

    try:
        accounting = json.loads((out / "manifest.json").read_text()).get("accounting")
    except (OSError, ValueError):
        accounting = None
    fields = {k: v for k, v in report.as_dict().items() if k != "export"}
    fields.update(dataset_counts(report.tables.patients, report.tables.issues, accounting))
    return fields
