"""The report's figures: analogues of the study's Figures 3 and 4, and a patient flow.

Drawn with matplotlib's Agg backend (no display needed), in black and greys with
line styles, markers and hatching doing the work colour would, so a printed or
photocopied report stays readable. Output is byte-for-byte reproducible: a fixed SVG
hash salt, no creation dates or software versions in the metadata, deterministic
jitter. Empty groups give an annotated empty panel, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fhir_spine.pathway.vocabulary import STRATEGIES  # noqa: E402
from fhir_spine.report import stats as st  # noqa: E402
from fhir_spine.report.data import GROUP_LABELS, Cohort  # noqa: E402
from fhir_spine.report.tables import EXCLUSION_LABELS, PRO_MEASURES  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

STYLE: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "fhir-spine-report",
    "svg.fonttype": "none",
    "path.simplify": False,
}
SHADES = {"single-stage": "0.35", "staged": "0.75"}
HATCHES = {"single-stage": "", "staged": "///"}
MARKERS = {"single-stage": "o", "staged": "s"}
LINES = {"single-stage": "-", "staged": "--"}
PNG_DPI = 150


@dataclass(frozen=True)
class FigureFile:
    """One saved figure: its stem and the PNG/SVG paths (relative to the report dir)."""

    stem: str
    title: str
    caption: str
    png: Path
    svg: Path


def save(fig: Figure, folder: Path, stem: str) -> tuple[Path, Path]:
    """PNG and SVG without dates or versions in their metadata, so reruns are identical."""
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{stem}.png", folder / f"{stem}.svg"
    with plt.rc_context(STYLE):  # svg.hashsalt / fonttype act at save time
        fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return png, svg


def _empty(ax: Axes, text: str) -> None:
    """Say why a panel is blank instead of showing meaningless 0-1 axes."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            color="0.3", fontsize=9)


def figure3(cohort: Cohort) -> Figure:
    """Left: mean days biopsy -> therapy per strategy with 95% CI and the patients as
    points. Right: kernel densities of the two staged delay components."""
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.6),
                                          gridspec_kw={"width_ratios": [1, 1.5]})
        rng = np.random.default_rng(20250101)
        ticks = []
        for i, s in enumerate(STRATEGIES):
            values = st.clean(cohort.column(s, "days_biopsy_to_therapy"))
            m = st.mean_ci(values)
            tick = f"{GROUP_LABELS[s]} (n = {len(values)})"
            if m.mean is not None:
                left.bar(i, m.mean, width=0.5, color=SHADES[s], hatch=HATCHES[s],
                         edgecolor="black", linewidth=0.8, zorder=1)
                tick += f"\nmean {m.mean:.1f} d"
                if m.low is not None and m.high is not None:
                    left.errorbar(i, m.mean, yerr=[[m.mean - m.low], [m.high - m.mean]],
                                  color="black", capsize=6, linewidth=1.4, zorder=3)
                    tick += f"\n(95% CI {m.low:.1f}-{m.high:.1f})"
            if len(values):  # the patients, beside their bar so the CI stays visible
                jitter = rng.uniform(-0.07, 0.07, len(values))
                left.scatter(i + 0.4 + jitter, values, s=9, facecolor="white",
                             edgecolor="black", linewidth=0.6, zorder=2)
            ticks.append(tick)
        left.set_xticks(range(len(STRATEGIES)), ticks)
        left.set_xlim(-0.5, len(STRATEGIES) - 0.4)
        left.set_ylabel("Days from index biopsy to definitive therapy")
        left.set_title("Time to definitive therapy\n(mean with 95% CI; dots = patients)",
                       fontsize=9)
        if not len(cohort.included):
            _empty(left, "no included patients")

        staged = cohort.group("staged")
        comps = (("days_biopsy_to_stabilization", "Biopsy \u2192 stabilization", "-"),
                 ("days_stabilization_to_therapy", "Stabilization \u2192 therapy", "--"))
        series = [(label, ls, st.clean(staged[col].to_numpy(dtype=float)))
                  for col, label, ls in comps]
        allv = np.concatenate([v for _, _, v in series]) if series else np.array([])
        drawn = False
        if len(allv):
            lo, hi = float(allv.min()), float(allv.max())
            pad = max(5.0, 0.15 * (hi - lo))
            # intervals are never negative: do not draw kernel tails below day 0
            grid = np.linspace(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad, 400)
            curves = [(label, ls, values, shade, st.gaussian_density(values, grid))
                      for (label, ls, values), shade in zip(series, ("black", "0.45"),
                                                            strict=True)]
            top = max((float(d.max()) for *_, d in curves if d is not None), default=0.0)
            for k, (label, ls, values, shade, dens) in enumerate(curves):
                if dens is None:
                    continue
                right.plot(grid, dens, color=shade, linestyle=ls, linewidth=1.8,
                           label=f"{label} (n = {len(values)}, median "
                           f"{np.median(values):.0f} d)")
                # a rug of the observed values under the curves, one row per component
                right.plot(values, np.full(len(values), -top * (0.05 + 0.06 * k)), "|",
                           color=shade, markersize=6)
                drawn = True
            if drawn:
                right.set_ylim(-top * 0.16, top * 1.08)
                right.set_yticks([t for t in right.get_yticks() if 0 <= t <= top * 1.08])
        if drawn:
            right.legend(frameon=False, loc="upper center", fontsize=8,
                         bbox_to_anchor=(0.5, -0.2), ncol=1)
            right.axhline(0, color="0.6", linewidth=0.5)
        else:
            _empty(right, "fewer than 2 staged patients: no density")
        right.set_xlabel("Interval (days)")
        right.set_ylabel("Density (per day)")
        right.set_title("Staged pathway: delay components\n(Gaussian kernel density, "
                        "bandwidth as R's bw.nrd0)", fontsize=9)
        fig.tight_layout()
    return fig


def figure4(cohort: Cohort) -> Figure:
    """Mean (95% CI) of each PRO before biopsy and at diagnosis, one line per strategy."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 3, figsize=(9.5, 6))
        for ax, (measure, label, _scale) in zip(axes.ravel(), PRO_MEASURES, strict=True):
            any_drawn = False
            for k, s in enumerate(STRATEGIES):
                xs, ms, lo, hi = [], [], [], []
                for t, tp in enumerate(("baseline", "at_diagnosis")):
                    m = st.mean_ci(cohort.column(s, f"{measure}_{tp}"))
                    if m.mean is None:
                        continue
                    xs.append(t + (k - 0.5) * 0.08)
                    ms.append(m.mean)
                    lo.append(m.mean - (m.low if m.low is not None else m.mean))
                    hi.append((m.high if m.high is not None else m.mean) - m.mean)
                if xs:
                    ax.errorbar(xs, ms, yerr=[lo, hi], color="black" if k == 0 else "0.45",
                                linestyle=LINES[s], marker=MARKERS[s], markersize=5,
                                markerfacecolor="black" if k == 0 else "white",
                                capsize=3, linewidth=1.4, label=GROUP_LABELS[s])
                    any_drawn = True
            ax.set_xticks([0, 1], ["Before biopsy", "At diagnosis"])
            ax.set_xlim(-0.4, 1.4)
            ax.set_ylabel("VAS (points, 0-10)" if measure == "vas"
                          else "Score (points, 0-100)")
            better = "lower is better" if measure == "vas" else "higher is better"
            ax.set_title(f"{label}\n({better})", fontsize=9)
            if not any_drawn:
                _empty(ax, "no values")
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False,
                       title="mean with 95% CI")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def flow_figure(cohort: Cohort) -> Figure:
    """CONSORT-like boxes: screened -> excluded (reasons) -> included -> strategies."""
    pts = cohort.patients
    inc = cohort.included
    reasons: dict[str, int] = {}
    for text in pts.loc[~pts.index.isin(inc.index), "exclusion_reasons"]:
        for r in str(text or "").split(";"):
            if r:
                reasons[r] = reasons.get(r, 0) + 1
    excl_lines = [f"Excluded (n = {len(pts) - len(inc)})"] + [
        f"  {EXCLUSION_LABELS.get(r, r)}: {n}"
        for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
    box = {"boxstyle": "square,pad=0.5", "facecolor": "white", "edgecolor": "black"}
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 5.2))
        ax.set_axis_off()
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 10)
        ax.text(3, 9.2, f"Screened (n = {len(pts)})", ha="center", va="center", bbox=box)
        ax.text(5.6, 6.9, "\n".join(excl_lines), ha="left", va="center", bbox=box,
                fontsize=8, linespacing=1.4)
        ax.text(3, 4.6, f"Included (n = {len(inc)})", ha="center", va="center", bbox=box)
        arrow = {"arrowstyle": "-|>", "color": "black", "linewidth": 1}
        ax.annotate("", xy=(3, 4.95), xytext=(3, 8.85), arrowprops=arrow)
        ax.annotate("", xy=(5.5, 6.9), xytext=(3, 6.9), arrowprops=arrow)
        strata = [*STRATEGIES]
        other = len(inc) - sum(len(cohort.group(s)) for s in STRATEGIES)
        xs = [1.5, 4.5] if not other else [1.2, 3.6, 6.0]
        labels = [f"{GROUP_LABELS[s]}\n(n = {len(cohort.group(s))})" for s in strata]
        if other:
            labels.append(f"Strategy not classified\n(n = {other})")
        for x, label in zip(xs, labels, strict=True):
            ax.annotate("", xy=(x, 2.2), xytext=(3, 4.25), arrowprops=arrow)
            ax.text(x, 1.7, label, ha="center", va="center", bbox=box)
        ax.text(5.6, 0.3, "A patient can have several exclusion reasons: the reasons "
                "add up to more than the excluded count.", ha="center", va="center",
                fontsize=7, style="italic")
        fig.tight_layout()
    return fig


def write_figures(cohort: Cohort, folder: Path) -> list[FigureFile]:
    """Draw and save every figure into `folder`; paths are returned relative to its
    parent (the report folder) for the HTML/Markdown to reference."""
    specs = (
        ("figure3_time_to_therapy", "Figure 3. Time to definitive therapy and the staged "
         "delay components", "Left: mean days from index biopsy to definitive therapy by "
         "strategy, error bars the 95% t-interval, dots the individual patients. Right: "
         "kernel density of the two staged intervals.", figure3),
        ("figure4_pros", "Figure 4. Patient-reported outcomes before biopsy and at "
         "diagnosis", "Mean with 95% t-interval per strategy: VAS pain (0-10, lower is "
         "better) and SOSGOQ2.0 total and domains (0-100, higher is better).", figure4),
        ("flow", "Patient flow", "Screened, excluded by reason (a patient may have several "
         "reasons), included by strategy.", flow_figure),
    )
    out = []
    for stem, title, caption, draw in specs:
        png, svg = save(draw(cohort), folder, stem)
        out.append(FigureFile(stem, title, caption, png.relative_to(folder.parent),
                              svg.relative_to(folder.parent)))
    return out
