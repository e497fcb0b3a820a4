"""`fhir-spine extract`: FHIR source -> pathway tables in an output folder."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_spine.cli.bulk_options import add_bulk_options
from fhir_spine.cli.server_options import add_server_options
from fhir_spine.errors import ExitCode, UsageError
from fhir_spine.progress import counter
from fhir_spine.settings import DEMO_COHORT, load_mappings
from fhir_spine.sources.files import FileSource, check_folder

if TYPE_CHECKING:
    from fhir_spine.deid import DeidOptions
    from fhir_spine.outputs import PublishPolicy

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
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes reading a --source folder, one file (or 4 MiB range "
                   "of a large NDJSON file) at a time (default: the machine's cores); "
                   "the tables are the same for any N")
    p.add_argument("--validation", choices=["off", "warn", "strict"], default="warn",
                   help="FHIR model validation: warn = issues row and keep the resource "
                   "(default); strict = set invalid resources aside; off = skip")
    add_publish_options(p)
    add_server_options(p)
    add_bulk_options(p)
    add_privacy_options(p)
    p.set_defaults(func=run)


def add_publish_options(p: argparse.ArgumentParser, *, scheduled: bool = False) -> None:
    g = p.add_argument_group("publishing")
    g.add_argument("--allow-empty", action="store_true",
                   help="publish even when no resource was read or no patient screened "
                   "(default: exit 10 and keep the previous dataset)")
    if scheduled:
        g.add_argument("--allow-shrink", action="store_true",
                       help="publish even when far fewer patients are screened than in the "
                       "published dataset (default: exit 11 and keep it)")
        g.add_argument("--min-share", type=float, default=0.5, metavar="FRACTION",
                       help="the shrink guard: refuse a dataset screening fewer than this "
                       "share of the published one's patients (default 0.5)")
    g.add_argument("--report", action="store_true",
                   help="write the report (as `fhir-spine report`) into OUT/report/ of the "
                   "new dataset before it is swapped in; a report of the previous dataset "
                   "is not kept otherwise")


def publish_policy_from(args: argparse.Namespace, warnings: tuple[str, ...] = ()
                        ) -> PublishPolicy:
    from fhir_spine.outputs import PublishPolicy

    share = getattr(args, "min_share", 0.5)
    if not 0 <= share <= 1:
        raise UsageError("--min-share must be between 0 and 1")
    return PublishPolicy(allow_empty=args.allow_empty,
                         allow_shrink=getattr(args, "allow_shrink", True), min_share=share,
                         report=args.report, warnings=warnings)


def timezone_assumed(args: argparse.Namespace, *, demo: bool = False) -> bool:
    """True when neither `--timezone` nor the site's settings.yaml names a time zone, so
    UTC is a guess (the bundled demo cohort is written in UTC: no guess there)."""
    if demo or args.timezone:
        return False
    site = args.mappings / "settings.yaml" if args.mappings is not None else None
    if site is None or not site.is_file():
        return True
    import yaml

    try:
        doc = yaml.safe_load(site.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return True  # load_mappings reports it
    return not (isinstance(doc, dict) and doc.get("timezone"))


def timezone_warnings(args: argparse.Namespace, timezone: str, *, demo: bool = False
                      ) -> tuple[str, ...]:
    """The UTC-assumed warning: kept in the manifest, shown in the summary and logged once
    the dataset is published (`log_warnings`: a run that fails says only why it failed)."""
    if not timezone_assumed(args, demo=demo):
        return ()
    return (f"no time zone configured: calendar days are counted in {timezone} (assumed); "
            "set --timezone or `timezone:` in the site settings.yaml",)


def log_warnings(warnings: tuple[str, ...]) -> None:
    for text in warnings:
        log.warning("%s", text)


def report_outside(args: argparse.Namespace) -> None:
    """Say so when the swap drops a report of the previous dataset (no `--report`)."""
    if not args.report and (args.out / "report").is_dir():
        log.warning("%s/report (a report of the previous dataset) is replaced with the "
                    "dataset; pass --report to regenerate it on each run", args.out)


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
    g.add_argument("--top-code-ages", action="store_true",
                   help="with --pseudonymise: publish every age over 89 as 90 (\"90 or "
                   "older\", as HIPAA Safe Harbor asks)")
    g.add_argument("--keep-raw", action="store_true",
                   help="with --pseudonymise --bulk: keep the downloaded export (identified "
                   "data) instead of deleting it after a successful run")


def pseudonym_key(args: argparse.Namespace) -> bytes | None:
    """The key, checked before any work is done (a missing key is exit status 2)."""
    import os

    from fhir_spine.errors import UsageError
    from fhir_spine.pseudonymise import load_key

    if not args.pseudonymise:
        if args.pseudonym_key_file or args.date_shift_days or args.top_code_ages \
                or args.keep_raw:
            raise UsageError("--pseudonym-key-file, --date-shift-days, --top-code-ages and "
                             "--keep-raw need --pseudonymise")
        return None
    return load_key(os.environ, args.pseudonym_key_file)


def deid_options(args: argparse.Namespace) -> DeidOptions | None:
    """`--pseudonymise` and its companions, checked before any work is done (a missing
    key is exit status 2); under it, logs are scrubbed unless `--debug`."""
    from fhir_spine.deid import DeidOptions
    from fhir_spine.log_scrub import install_log_scrubbing

    key = pseudonym_key(args)
    if key is None:
        return None
    options = DeidOptions(key, args.date_shift_days, args.top_code_ages)
    if not args.debug:
        known: list[str] = []
        if getattr(args, "patients", None) is not None:
            from fhir_spine.sources.rest import read_patient_list

            known = read_patient_list(args.patients)
        install_log_scrubbing(known)
    return options


def publish_deid_map(out: Path, origin_map: dict[str, Any] | None) -> None:
    """The mapping back to real origins, beside the state (OUT.state/), owner-only."""
    if origin_map is None:
        return
    from fhir_spine.deid import DEID_MAP, write_origin_map
    from fhir_spine.refresh.state import state_dir_for

    where = state_dir_for(out) / DEID_MAP
    write_origin_map(where, origin_map)
    print(f"fhir-spine: the mapping back to real origins (identified data, owner-only) is "
          f"in {where}", file=sys.stderr)


def extra_ids(args: argparse.Namespace, query: dict[str, Any]) -> dict[str, list[str]]:
    """Ids the run asked for or was told about that may be in no table."""
    out: dict[str, list[str]] = {}
    if getattr(args, "patients", None) is not None:
        from fhir_spine.sources.rest import read_patient_list

        out["Patient"] = read_patient_list(args.patients)
    for rtype, ids in (query.get("not_found") or {}).items():
        out.setdefault(str(rtype), []).extend(str(i) for i in ids)
    return out


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
    p.add_argument("--terminology-max-expansion", type=int, metavar="N",
                   help="codes asked of each $expand; past it, codes are decided one by one "
                   "with $subsumes (default 10000)")


def pathway_overrides(args: argparse.Namespace) -> dict[str, object]:
    check_timezone(args.timezone)
    return {"timezone": args.timezone, "same_session_gap_hours": args.same_session_gap_hours,
            "terminology": getattr(args, "terminology", None),
            "terminology_optional": getattr(args, "terminology_optional", None),
            "terminology_max_expansion": getattr(args, "terminology_max_expansion", None)}


def check_timezone(name: str | None) -> None:
    """A `--timezone` typo is a usage error (exit 2) with the closest IANA names."""
    if name is None:
        return
    import difflib
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else \
            "give an IANA name such as Europe/Berlin or America/New_York"
        raise UsageError(f"--timezone {name!r}: unknown time zone; {hint}") from None


def run(args: argparse.Namespace) -> int:
    # pandas/pyarrow load here, not at start-up, so `fhir-spine --help` stays quick.
    from fhir_spine.dataset import build_dataset, deidentified, issue_counts, manifest, part_of
    from fhir_spine.outputs import check_apart, check_target, publish, publish_policy, write_dataset
    from fhir_spine.pipeline import extract, extract_files
    from fhir_spine.review import warning_line
    from fhir_spine.summary import dataset_counts, note, summary_lines, timezone_line

    started = datetime.now(UTC)
    deid = deid_options(args)
    source = None if args.server or args.bulk else check_folder(
        args.source if args.source is not None else DEMO_COHORT)
    check_apart(args.out, source=source, bulk_dir=args.bulk_dir)
    check_target(args.out)
    mappings = load_mappings(args.mappings, pathway_overrides(args))
    timezone = mappings.settings.timezone
    tz_warnings = timezone_warnings(args, timezone, demo=source == DEMO_COHORT)
    policy = publish_policy_from(args, tz_warnings)
    report_outside(args)
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
        if source is None:
            extraction = extract(items, mappings, validation=args.validation, progress=tick)
        else:
            extraction = extract_files(files, mappings, validation=args.validation,
                                       jobs=max(1, args.jobs), progress=tick)
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
    tables, meta, origin_map = deidentified(tables, meta, deid, mappings,
                                            extra_ids=extra_ids(args, info["query"]))
    note(**dataset_counts(tables.patients, tables.issues, meta["accounting"]),
         timezone=timezone, timezone_assumed=bool(tz_warnings), out=str(args.out))
    with publish_policy(policy):
        publish(args.out, lambda folder: write_dataset(tables, meta, folder,
                                                       csv=not args.no_csv))
    publish_deid_map(args.out, origin_map)
    if args.bulk and deid is not None:
        raw = args.bulk_dir or args.out.with_name(args.out.name + ".bulk")
        from fhir_spine.deid import drop_raw_layer

        drop_raw_layer(raw, keep=args.keep_raw)
    log_warnings(tz_warnings)
    severities = issue_counts(tables)
    acc = dataset.accounting
    for line in summary_lines(tables.patients):
        print(line)
    print(timezone_line(timezone, bool(tz_warnings)))
    print(f"resources read {acc.read}: used {acc.used}, set aside {acc.set_aside}; "
          f"issues: {', '.join(f'{k} {v}' for k, v in sorted(severities.items())) or 'none'}")
    print(f"wrote {args.out}")
    if review_line:  # after the summary: visible to a person and in a scheduler's log
        log.warning("%s", review_line)
    if severities.get("error"):
        return int(ExitCode.DATA_ISSUES)
    return int(ExitCode.OK)
