"""`fhir-spine extract`: FHIR source -> pathway tables in an output folder."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from fhir_spine.cli.bulk_options import add_bulk_options
from fhir_spine.cli.server_options import add_server_options
from fhir_spine.errors import ExitCode
from fhir_spine.progress import counter
from fhir_spine.settings import DEMO_COHORT, load_mappings
from fhir_spine.sources.files import FileSource, check_folder

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "extract", help="extract pathway tables from a FHIR source",
        description="Read FHIR R4 resources, reconstruct each patient's biopsy -> "
        "stabilization -> definitive therapy pathway and write the tables of the data "
        "contract (Parquet + CSV, manifest.json, codebook). Without --source the bundled "
        "demo cohort is used.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--source", type=Path, help="folder of FHIR NDJSON / JSON files "
                       "(default: the bundled demo cohort)")
    where.add_argument("--server", help="FHIR base URL to pull the cohort from by REST "
                       "search (see docs/server.md)")
    p.add_argument("--out", type=Path, default=Path("fhir-spine-out"),
                   help="output folder, replaced atomically (default: ./fhir-spine-out)")
    add_pathway_options(p)
    p.add_argument("--no-csv", action="store_true", help="write Parquet only")
    p.add_argument("--validation", choices=["off", "warn", "strict"], default="warn",
                   help="FHIR model validation: warn = issues row and keep the resource "
                   "(default); strict = set invalid resources aside; off = skip")
    add_server_options(p)
    add_bulk_options(p)
    add_privacy_options(p)
    p.set_defaults(func=run)


def add_privacy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pseudonymised output")
    g.add_argument("--pseudonymise", action="store_true",
                   help="replace patient, encounter and resource ids by keyed HMAC-SHA256 "
                   "pseudonyms; the key comes from $FHIR_SPINE_PSEUDONYM_KEY or "
                   "--pseudonym-key-file and is never stored")
    g.add_argument("--pseudonym-key-file", type=Path, help="file holding the pseudonym key")
    g.add_argument("--date-shift-days", type=int, default=0,
                   help="with --pseudonymise: shift each patient's dates by a keyed offset "
                   "in [-N, N] days (intervals unchanged)")


def pseudonym_key(args: argparse.Namespace) -> bytes | None:
    """The key, checked before any work is done (a missing key is exit status 2)."""
    import os

    from fhir_spine.errors import UsageError
    from fhir_spine.pseudonymise import load_key

    if not args.pseudonymise:
        if args.pseudonym_key_file or args.date_shift_days:
            raise UsageError("--pseudonym-key-file and --date-shift-days need --pseudonymise")
        return None
    return load_key(os.environ, args.pseudonym_key_file)


def add_pathway_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mappings", type=Path, help="site mappings folder layered over the "
                   "defaults (concepts.yaml, settings.yaml, views/)")
    p.add_argument("--timezone", help="site time zone for calendar days (default UTC)")
    p.add_argument("--same-session-gap-hours", type=float,
                   help="biopsy and stabilization this close count as one session (default 6)")
    p.add_argument("--terminology", metavar="URL",
                   help="FHIR terminology server that expands the intensional concepts "
                   "(SNOMED CT is-a); default: the offline expansions of concepts.yaml")
    p.add_argument("--terminology-optional", action="store_true", default=None,
                   help="a terminology server that cannot answer is a warning, not an error")


def pathway_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {"timezone": args.timezone, "same_session_gap_hours": args.same_session_gap_hours,
            "terminology": getattr(args, "terminology", None),
            "terminology_optional": getattr(args, "terminology_optional", None)}


def run(args: argparse.Namespace) -> int:
    # pandas/pyarrow load here, not at start-up, so `fhir-spine --help` stays quick.
    from fhir_spine.dataset import build_dataset, issue_counts, manifest, part_of
    from fhir_spine.outputs import check_target, publish, write_dataset
    from fhir_spine.pipeline import extract
    from fhir_spine.review import warning_line
    from fhir_spine.summary import summary_lines

    started = datetime.now(UTC)
    key = pseudonym_key(args)
    source = None if args.server or args.bulk else check_folder(
        args.source if args.source is not None else DEMO_COHORT)
    check_target(args.out)
    mappings = load_mappings(args.mappings, pathway_overrides(args))
    if source is None:  # info is filled while the items are read
        from fhir_spine.cli.bulk_options import bulk_source
        from fhir_spine.cli.server_options import server_source

        items, info = (bulk_source if args.bulk else server_source)(args, mappings)
    else:
        files = FileSource(source)
        items, info = iter(files), {
            "source": {"kind": "files", "location": str(source.absolute())},
            "fhir_version": "4.0.1", "query": {}}
    log.info("reading %s", info["source"]["location"])
    with counter("resources read", quiet=args.quiet) as tick:
        extraction = extract(items, mappings, validation=args.validation, progress=tick)
    if source is not None:  # a Bulk Data export folder: its transactionTime, its log
        info["query"].update(files.query_info())
    dataset = build_dataset([part_of(extraction)])  # exit 70 unless accounting balances
    tables = dataset.tables
    meta = manifest(dataset, mappings, validation=args.validation, source=info["source"],
                    fhir_version=info["fhir_version"], query=info["query"], started=started,
                    finished=datetime.now(UTC))
    review_line = warning_line(tables.codes, tables.patients)
    if review_line:
        meta["warnings"].append(review_line)
    if key is not None:
        from fhir_spine.pseudonymise import pseudonymise_manifest, pseudonymise_tables

        meta = pseudonymise_manifest(meta, tables, key, args.date_shift_days)
        tables = pseudonymise_tables(tables, key, args.date_shift_days)
    publish(args.out, lambda folder: write_dataset(tables, meta, folder,
                                                   csv=not args.no_csv))
    severities = issue_counts(tables)
    acc = dataset.accounting
    for line in summary_lines(tables.patients):
        print(line)
    print(f"resources read {acc.read}: used {acc.used}, set aside {acc.set_aside}; "
          f"issues: {', '.join(f'{k} {v}' for k, v in sorted(severities.items())) or 'none'}")
    print(f"wrote {args.out}")
    if review_line:  # the last line: visible to a person and in a scheduler's log
        print(review_line, file=sys.stderr)
    if severities.get("error"):
        return int(ExitCode.DATA_ISSUES)
    return int(ExitCode.OK)
