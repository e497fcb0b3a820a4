"""`fhir-spine report`: an output folder -> analysis report (HTML, Markdown, CSV, figures)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fhir_spine.errors import ExitCode, UsageError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report", help="write the analysis report for an output folder",
        description="Read the tables `fhir-spine extract` wrote to OUT_DIR and write the "
        "analysis report: Table 1, primary outcome, staged delay components, "
        "patient-reported outcomes, adverse events, therapy mix and patient flow, with "
        "statistics that reproduce R's defaults. Writes report.html (self-contained), "
        "report.md, figures (PNG + SVG) and every table as CSV.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                   help="an output folder written by `fhir-spine extract`")
    p.add_argument("--report-dir", type=Path,
                   help="where to write the report, replaced atomically "
                   "(default: OUT_DIR/report)")
    p.add_argument("--quantile-type", type=int, choices=[7, 2], default=7,
                   help="R quantile type for medians and IQRs (default 7, R's default)")
    p.set_defaults(func=run)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    # Imported here: matplotlib and scipy take a second to load, and `--help` or the other
    # subcommands should not pay for them.
    from fhir_spine.report.build import primary_lines, write_report
    from fhir_spine.report.data import load_cohort

    cohort = load_cohort(out_dir)
    target: Path = args.report_dir if args.report_dir is not None else out_dir / "report"
    if _inside(out_dir, target):
        raise UsageError(f"--report-dir {target} would replace the output folder {out_dir}; "
                         "choose a folder inside it or elsewhere")
    log.info("writing report for %s", out_dir)
    result = write_report(cohort, target, args.quantile_type)
    from fhir_spine.summary import dataset_counts, note

    note(**dataset_counts(cohort.patients, _issues_frame(cohort.manifest)),
         timezone=(cohort.manifest.get("settings") or {}).get("timezone"),
         report=str(target / "report.html"))
    if not getattr(args, "quiet", False):
        print("primary outcome (days index biopsy -> definitive therapy):")
        for line in primary_lines(result.tables):
            print(line)
    print(f"wrote {target / 'report.html'}")
    return int(ExitCode.OK)


def _issues_frame(manifest: dict[str, Any]) -> Any:
    """The dataset's issue counts by severity, as the frame `dataset_counts` reads."""
    import pandas as pd

    issues: dict[str, Any] = manifest["issues"] if isinstance(manifest.get("issues"), dict) \
        else {}
    return pd.DataFrame({"severity": [k for k, n in issues.items() for _ in range(int(n))]})
