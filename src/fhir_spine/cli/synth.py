"""`fhir-spine synth`: write a deterministic synthetic FHIR cohort with its ground truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_spine.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_PATIENTS = 100
DEFAULT_SEED = 2025


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "synth", help="generate a synthetic FHIR cohort with its ground truth",
        description="Write a deterministic synthetic cohort of screened patients as FHIR R4 "
        "(NDJSON per resource type, one transaction Bundle) plus ground-truth.csv: included "
        "patients calibrated to the study (21 single-stage : 44 staged per 100 screened), "
        "excluded patients for every exclusion reason, and the messy variants real data "
        "has. Same --patients, --seed and --timezone give byte-identical files.",
    )
    p.add_argument("--patients", type=int, default=DEFAULT_PATIENTS,
                   help=f"screened patients (default {DEFAULT_PATIENTS})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (created; files of an earlier synth run are replaced)")
    p.add_argument("--timezone", default="UTC",
                   help="site time zone (IANA name) the ground-truth dates are in "
                   "(default UTC)")
    p.add_argument("--background", type=int, default=0, metavar="N",
                   help="add on average N irrelevant resources per patient (vital signs, "
                   "labs, unrelated visits and problems, immunizations, allergies), as a "
                   "real export has; they change no ground-truth cell (default 0)")
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    """Refuse to scatter files into a folder that holds something other than a cohort."""
    from fhir_spine.synth import BACKGROUND_FILES, FILES

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in FILES + BACKGROUND_FILES)
        if foreign:
            raise UsageError(f"--out {out} holds files synth did not write ({foreign[0]}, ...); "
                             "choose an empty or new folder")


def run(args: argparse.Namespace) -> int:
    from fhir_spine.synth import plan_cohort, write_cohort

    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    background = getattr(args, "background", 0)
    if background < 0:
        raise UsageError("--background must be 0 or more")
    try:
        ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {args.timezone!r} is not a known IANA time zone") from None
    _check_out(args.out)
    cohort = plan_cohort(args.patients, args.seed, args.timezone)
    write_cohort(cohort, args.out, background)
    included = sum(r["included"] == "true" for r in cohort.truth)
    from fhir_spine.summary import note

    note(patients=len(cohort.truth), included=included, excluded=len(cohort.truth) - included,
         included_by_strategy={"single-stage": cohort.sizes.single,
                               "staged": cohort.sizes.staged},
         timezone=args.timezone, out=str(args.out))
    print(f"wrote {len(cohort.truth)} synthetic patients ({included} included: "
          f"{cohort.sizes.single} single-stage, {cohort.sizes.staged} staged; "
          f"{len(cohort.truth) - included} excluded) to {args.out}")
    return 0
