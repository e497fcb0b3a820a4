"""Render the report as one self-contained HTML file and as Markdown.

The HTML must open offline and travel as a single attachment (analysts e-mail it, and
clinical networks often block external hosts), so the CSS is inline, figures are PNG
data URIs and nothing references a URL. Markdown is the diff-friendly twin: the same
tables as pipe tables with figures referenced by relative path.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fhir_spine.report.figures import FigureFile
from fhir_spine.report.tables import ReportTable

INDENT = "    "
_NUMERIC_CELL = re.compile(r"^[-<>]?\d|^\u2014")

CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; color: #111;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; border-bottom: 2px solid #111; padding-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
caption { caption-side: bottom; text-align: left; font-size: .85em; color: #444;
          padding-top: .4em; }
th, td { padding: .25em .6em; text-align: left; vertical-align: top; }
thead th { border-top: 2px solid #111; border-bottom: 1px solid #111; }
tbody tr:last-child td { border-bottom: 2px solid #111; }
td.indent { padding-left: 2em; }
td.num { text-align: right; white-space: nowrap; }
ol.notes { font-size: .85em; color: #333; margin-top: 0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: .88em; color: #333; }
.meta { font-size: .88em; color: #333; }
code { font-size: .95em; }
"""


@dataclass(frozen=True)
class Section:
    """A titled block of prose paragraphs (methods, data notes)."""

    title: str
    paragraphs: Sequence[str]


def _cell_class(value: str, first: bool) -> str:
    """Indent level rows of the first column; right-align cells that are numbers."""
    if first:
        return ' class="indent"' if value.startswith(INDENT) else ""
    return ' class="num"' if _NUMERIC_CELL.match(value.strip()) else ""


def table_html(table: ReportTable) -> str:
    frame = table.frame
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for i, value in enumerate(row):
            text = "" if value is None or (isinstance(value, float) and pd.isna(value)) \
                else str(value)
            cells.append(f"<td{_cell_class(text, i == 0)}>{html.escape(text.strip())}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    notes = ""
    if table.footnotes:
        notes = '<ol class="notes">' + "".join(
            f"<li>{html.escape(n)}</li>" for n in table.footnotes) + "</ol>"
    return (f'<h2 id="{html.escape(table.slug)}">{html.escape(table.title)}</h2>\n'
            f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>"
            + "\n".join(body) + f"</tbody></table>\n{notes}")


def figure_html(fig: FigureFile, report_dir: Path) -> str:
    data = base64.b64encode((report_dir / fig.png).read_bytes()).decode("ascii")
    return (f'<figure id="{html.escape(fig.stem)}"><img alt="{html.escape(fig.title)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption><strong>{html.escape(fig.title)}.</strong> "
            f"{html.escape(fig.caption)} Vector version: "
            f"<code>{html.escape(str(fig.svg))}</code>.</figcaption></figure>")


def render_html(title: str, meta: Sequence[str], tables: Sequence[ReportTable],
                figures: Sequence[FigureFile], sections: Sequence[Section],
                report_dir: Path) -> str:
    """The whole page; figures are placed after the table they illustrate."""
    after = {"exclusion_flow": "flow", "staged_components": "figure3_time_to_therapy",
             "pros_change": "figure4_pros"}
    by_stem = {f.stem: f for f in figures}
    parts = [f"<h1>{html.escape(title)}</h1>",
             '<div class="meta">' + "<br>".join(html.escape(m) for m in meta) + "</div>"]
    toc = "".join(f'<li><a href="#{html.escape(t.slug)}">{html.escape(t.title)}</a></li>'
                  for t in tables)
    parts.append(f"<ul>{toc}</ul>")
    placed: set[str] = set()
    for t in tables:
        parts.append(table_html(t))
        stem = after.get(t.slug)
        if stem and stem in by_stem:
            parts.append(figure_html(by_stem[stem], report_dir))
            placed.add(stem)
    parts += [figure_html(f, report_dir) for f in figures if f.stem not in placed]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# --------------------------------------------------------------------------- Markdown

def _md_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(INDENT):
        text = "\u00a0\u00a0\u00a0\u00a0" + text.strip()
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: ReportTable) -> str:
    frame = table.frame
    lines = [f"## {table.title}", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in frame.columns) + " |")
    lines.append("|" + "|".join("---" for _ in frame.columns) + "|")
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    lines.append("")
    if table.caption:
        lines += [table.caption, ""]
    lines += [f"{i}. {n}" for i, n in enumerate(table.footnotes, start=1)]
    if table.footnotes:
        lines.append("")
    return "\n".join(lines)


def render_markdown(title: str, meta: Sequence[str], tables: Sequence[ReportTable],
                    figures: Sequence[FigureFile], sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""] + [f"{m}  " for m in meta] + [""]
    after = {"exclusion_flow": "flow", "staged_components": "figure3_time_to_therapy",
             "pros_change": "figure4_pros"}
    by_stem = {f.stem: f for f in figures}

    def fig_md(f: FigureFile) -> str:
        return (f"![{f.title}]({f.png.as_posix()})\n\n*{f.title}.* {f.caption} "
                f"(SVG: `{f.svg.as_posix()}`)\n")

    placed: set[str] = set()
    for t in tables:
        lines.append(table_markdown(t))
        stem = after.get(t.slug)
        if stem and stem in by_stem:
            lines.append(fig_md(by_stem[stem]))
            placed.add(stem)
    lines += [fig_md(f) for f in figures if f.stem not in placed]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
    return "\n".join(lines).rstrip("\n") + "\n"
