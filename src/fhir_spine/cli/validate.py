"""`fhir-spine validate --server URL [DIR]`: check a folder against the profiles.

An integration engineer's question "does our data look the way fhir-spine expects?" is
answered by a FHIR validator, not by a run that silently excludes patients. The validator
is the server's (`$validate`): this command stores the profiles there, sends each resource
with the profile its type and codes select, and prints what the server said
(`conformance_check.py` does the work). It writes to the server (the conformance
resources) and sends it the data, so, like `load`, only to a server on this machine unless
`--allow-remote`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from fhir_spine.cli.load import check_loopback
from fhir_spine.cli.server_options import add_http_options
from fhir_spine.errors import ExitCode, UsageError
from fhir_spine.progress import counter
from fhir_spine.redact import redact_url
from fhir_spine.settings import DEMO_COHORT

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "validate", help="validate a folder against the fhir-spine profiles on a FHIR server",
        description="Store the fhir-spine profiles (CodeSystem, ValueSets, "
        "StructureDefinitions) on a FHIR server that supports $validate, validate every "
        "resource of a folder (default: the demo cohort) against the profile its type and "
        "codes select (others: core R4), and print the issues per resource and a summary "
        "by profile. Exit 1 when any resource has errors.",
    )
    p.add_argument("folder", nargs="?", type=Path,
                   help="folder of FHIR NDJSON / JSON files (default: the demo cohort)")
    p.add_argument("--server", help="FHIR base URL of a server with $validate, e.g. "
                   "http://127.0.0.1:8080/fhir (required)")
    p.add_argument("--workers", type=int, default=2,
                   help="$validate requests at once (default 2)")
    p.add_argument("--verbose", action="store_true",
                   help="also show information issues (default: errors and warnings)")
    p.add_argument("--allow-remote", action="store_true",
                   help="use a server that is not on this machine (default: only 127.0.0.1 / "
                   "localhost; validate stores the profiles there and sends it the data)")
    add_http_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fhir_spine import conformance, conformance_check, summary
    from fhir_spine.cli.server_options import client_from_args
    from fhir_spine.settings import load_mappings
    from fhir_spine.sources.files import check_folder, iter_folder

    if not args.server:
        raise UsageError("validate needs a FHIR server that supports $validate (the HAPI "
                         "test server does): pass --server URL")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    check_loopback(args.server, args.allow_remote,
                   why="validate stores the profiles there and sends it the data")
    folder = check_folder(args.folder if args.folder is not None else DEMO_COHORT)
    concepts = load_mappings(None).concepts
    items = list(iter_folder(folder))
    client = client_from_args(args, workers=args.workers)
    started = time.monotonic()
    try:
        shared = conformance.all_resources()
        stored = conformance_check.upload(client, shared)
        log.info("stored %d conformance resources on %s", stored, redact_url(client.base_url))
        with counter("resources validated", quiet=getattr(args, "quiet", False)) as tick:
            checked = conformance_check.check(client, items, concepts, workers=args.workers,
                                              progress=tick)
    finally:
        client.close()
    seconds = time.monotonic() - started
    for line in conformance_check.table(checked, verbose=args.verbose):
        print(line)
    by_profile = conformance_check.by_profile(checked)
    print(f"validated {len(checked)} resources of {folder} on "
          f"{redact_url(client.base_url)} ({seconds:.1f} s, {args.workers} at once)")
    for line in conformance_check.summary_lines(by_profile):
        print("  " + line)
    with_errors = sum(1 for c in checked if c.errors)
    summary.note(resources=len(checked), with_errors=with_errors,
                 with_warnings=sum(1 for c in checked if c.warnings),
                 conformance_resources=stored, by_profile=by_profile,
                 profiles={p.id: conformance.profile_url(p.id) for p in conformance.PROFILES})
    return int(ExitCode.DATA_ISSUES if with_errors else ExitCode.OK)
