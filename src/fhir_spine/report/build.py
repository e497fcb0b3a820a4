"""Assemble the report folder: tables -> CSVs, figures, report.html, report.md.

Layout of the report folder (default `OUT_DIR/report/`):

    report.html            self-contained page (inline CSS, PNG data URIs)
    report.md              the same tables as Markdown; figures by relative path
    manifest.json          what was read and written (no timestamps: reruns are identical)
    figures/<stem>.png     150 dpi raster, embedded in the HTML
    figures/<stem>.svg     vector version of the same figure
    tables/<slug>.csv      each report table exactly as displayed
    tables/footnotes.csv   the footnotes behind the "[n]" markers
    tables/statistics.csv  every test at full precision (statistic, df, estimate, CI, p)
    tables/summaries.csv   every summary at full precision (n, mean, CI, median, IQR, %)

The folder is built beside the target and swapped in whole (`outputs.publish`), so a
reader never sees half a report, and an unrelated non-empty folder is never replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fhir_spine import __version__
from fhir_spine.outputs import publish
from fhir_spine.redact import scrub, scrub_json
from fhir_spine.report import fmt
from fhir_spine.report.data import Cohort
from fhir_spine.report.figures import FigureFile, write_figures
from fhir_spine.report.html import Section, render_html, render_markdown
from fhir_spine.report.tables import ReportTables, build_tables

TITLE = "Spinal oncology pathway: single-stage vs staged biopsy and stabilization"


@dataclass(frozen=True)
class ReportResult:
    folder: Path
    tables: ReportTables
    figures: list[FigureFile]


def methods_section(qtype: int) -> Section:
    return Section("Statistical methods", [
        "Groups are the included patients by strategy (single-stage, staged); the overall "
        "column is descriptive only. Tests are two-sided and reproduce R 4.x defaults.",
        "Continuous variables: mean with 95% t-interval (R: t.test(x)$conf.int) and median "
        f"with quartiles (R: quantile(x, type = {qtype})). Between groups: Welch's t-test "
        "with Welch-Satterthwaite degrees of freedom (R: t.test(x, y)) and the Wilcoxon "
        "rank-sum test (R: wilcox.test(x, y)): exact p-value when both groups have fewer "
        "than 50 values and no ties, otherwise the normal approximation with tie-corrected "
        "variance and continuity correction.",
        "Paired comparisons (staged delay components; change from baseline to diagnosis): "
        "Wilcoxon signed-rank test (R: wilcox.test(x, y, paired = TRUE)); zero differences "
        "are dropped; exact p-value when fewer than 50 non-zero differences remain and there "
        "are neither ties nor zeros, else the normal approximation with continuity "
        "correction.",
        "Categorical variables: n (%) of patients with a known value. Pearson's chi-square "
        "without continuity correction when every expected count is at least 5, otherwise "
        "Fisher's exact test (gtsummary's default rule), computed by full enumeration of the "
        "tables with the observed margins and R's tolerance for equally likely tables.",
        "A group with fewer than two values, data without variation, or a table with a "
        "single category give an empty cell with a footnote instead of a number. "
        "Full-precision values of every test are in tables/statistics.csv.",
    ])


def data_section(cohort: Cohort) -> Section | None:
    paragraphs = []
    if cohort.missing_columns:
        paragraphs.append("Columns absent from the input (treated as missing): "
                          + ", ".join(cohort.missing_columns) + ".")
    if not len(cohort.included):
        paragraphs.append("No patient is included in the analytic cohort: tables show "
                          "counts only.")
    return Section("Data notes", paragraphs) if paragraphs else None


def meta_lines(cohort: Cohort) -> list[str]:
    m = cohort.manifest
    src = m.get("source") if isinstance(m.get("source"), dict) else {}
    lines = [
        f"Input: {cohort.source.name or cohort.source} (fhir-spine "
        f"{m.get('tool_version', '?')}, schema version {m.get('schema_version', '?')}, "
        f"extraction finished {m.get('finished', '?')})",
        f"Patients screened {len(cohort.patients)}, included {len(cohort.included)}.",
        f"Report written by fhir-spine {__version__}.",
    ]
    if src and src.get("kind"):
        lines.insert(1, f"Source kind: {src.get('kind')}")
    lines[2:2] = provenance_lines(m)
    return lines


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def provenance_lines(m: dict[str, Any]) -> list[str]:
    """Where the data came from, with which settings, and its issue counts."""
    from fhir_spine.redact import redact_url

    src = _dict(m.get("source"))
    location = str(src.get("location") or "?")
    if src.get("kind") == "server":
        location = redact_url(location)
    settings = _dict(m.get("settings"))
    zone = settings.get("timezone", "?")
    assumed = any("no time zone configured" in str(w) for w in m.get("warnings") or [])
    issues = _dict(m.get("issues"))
    return [
        f"Source: {location}",
        f"Settings: time zone {zone}" + (" (assumed: none configured)" if assumed else "")
        + f", same-session gap {settings.get('same_session_gap_hours', '?')} h, validation "
        f"{m.get('validation', '?')}",
        "Issues: " + (", ".join(f"{k} {v}" for k, v in sorted(issues.items())) or "none"),
    ]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n")


def primary_lines(tables: ReportTables) -> list[str]:
    """The primary-outcome result in a few plain lines (printed by the CLI)."""
    summaries = tables.summaries
    rows = summaries[(summaries["table"] == "primary_outcome")]
    lines = []
    for _, r in rows.iterrows():
        ci = (f" (95% CI {fmt.num(r['ci_low'])}-{fmt.num(r['ci_high'])})"
              if pd.notna(r["ci_low"]) else "")
        mean = fmt.num(r["mean"]) if pd.notna(r["mean"]) else fmt.DASH
        lines.append(f"  {r['group']}: n={int(r['n'])}, mean days biopsy -> therapy "
                     f"{mean}{ci}")
    st = tables.statistics
    for _, r in st[st["table"] == "primary_tests"].iterrows():
        if pd.isna(r["p_value"]):
            lines.append(f"  {r['test']}: not computed ({r['note']})")
            continue
        extra = ""
        if r["statistic_name"] == "t":
            extra = (f" t = {r['statistic']:.2f}, df = {r['df']:.1f}, mean difference "
                     f"{r['estimate']:.1f} (95% CI {r['ci_low']:.1f} to {r['ci_high']:.1f}),")
        else:
            extra = f" W = {r['statistic']:g} ({r['method']}),"
        lines.append(f"  {r['test']}:{extra} p = {r['p_value']:.4g}")
    return lines


def build_into(cohort: Cohort, folder: Path, qtype: int = 7) -> ReportResult:
    """Write the whole report into an empty `folder`."""
    tables = build_tables(cohort, qtype)
    figures = write_figures(cohort, folder / "figures")
    tdir = folder / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    notes = []
    for t in tables.tables:
        _write_csv(t.frame, tdir / f"{t.slug}.csv")
        notes += [{"table": t.slug, "number": i, "footnote": n}
                  for i, n in enumerate(t.footnotes, start=1)]
    _write_csv(pd.DataFrame(notes, columns=["table", "number", "footnote"]),
               tdir / "footnotes.csv")
    _write_csv(tables.statistics, tdir / "statistics.csv")
    _write_csv(tables.summaries, tdir / "summaries.csv")

    sections = [methods_section(qtype)]
    extra = data_section(cohort)
    if extra:
        sections.insert(0, extra)
    meta = meta_lines(cohort)
    (folder / "report.html").write_text(
        scrub(render_html(TITLE, meta, tables.tables, figures, sections, folder)),
        encoding="utf-8")
    (folder / "report.md").write_text(
        scrub(render_markdown(TITLE, meta, tables.tables, figures, sections)),
        encoding="utf-8")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    manifest = {
        "kind": "fhir-spine report", "tool_version": __version__, "quantile_type": qtype,
        "input": {"folder": str(cohort.source.absolute()),
                  "extraction_finished": cohort.manifest.get("finished"),
                  "schema_version": cohort.manifest.get("schema_version"),
                  "patients_screened": len(cohort.patients),
                  "patients_included": len(cohort.included)},
        "files": [*files, "manifest.json"],
    }
    (folder / "manifest.json").write_text(json.dumps(scrub_json(manifest), indent=2) + "\n")
    return ReportResult(folder, tables, figures)


def write_report(cohort: Cohort, target: Path, qtype: int = 7) -> ReportResult:
    """Build the report beside `target` and swap it in atomically."""
    holder: list[ReportResult] = []
    publish(target, lambda staging: holder.append(build_into(cohort, staging, qtype)),
            kind="report")
    built = holder[0]
    return ReportResult(target, built.tables, built.figures)
