"""The report's tables, built from the patients table of one output folder.

Each table is a frame of display strings (what the HTML and Markdown show and the
per-table CSV holds) plus footnotes; every number behind a test or a summary is also
recorded at full precision in two long tables (`statistics.csv`, `summaries.csv`) so an
analyst can compare with R without re-parsing rounded cells.

Groups are the included patients by strategy: single-stage and staged, with an overall
column that is never tested. Percentages exclude missing values and an "Unknown" row
counts them (gtsummary's `missing = "ifany"`).

Why it stays long (~520 lines): one short builder per table of the paper, all over the
same helpers and `Recorder`; split per table they would only import each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fhir_spine.pathway import vocabulary as vocab
from fhir_spine.pathway.vocabulary import STRATEGIES
from fhir_spine.report import fmt
from fhir_spine.report import stats as st
from fhir_spine.report.data import GROUP_LABELS, Cohort

GROUPS = (*STRATEGIES, "overall")

# (measure, label, scale) of the measures reported at baseline and at diagnosis.
PRO_MEASURES: tuple[tuple[str, str, str], ...] = tuple(
    (m, vocab.PRO_LABELS[m], vocab.PRO_SCALES[m]) for m in vocab.PRO_MEASURES)
TIMEPOINTS = (("baseline", "Baseline (before biopsy)"), ("at_diagnosis", "At diagnosis"))

ADVERSE_EVENTS: tuple[tuple[str, str], ...] = tuple(
    (ae, vocab.ADVERSE_EVENT_LABELS[ae]) for ae in vocab.ADVERSE_EVENTS)

EXCLUSION_LABELS: dict[str, str] = {r: vocab.EXCLUSION_LABELS[r] for r in vocab.EXCLUSION_REASONS}

TUMOUR_LABELS: dict[str, str] = {g: vocab.TUMOUR_GROUP_LABELS[g] for g in vocab.TUMOUR_GROUPS}


@dataclass
class ReportTable:
    """One table of the report: display frame, footnotes, and where it goes."""

    slug: str
    title: str
    frame: pd.DataFrame
    footnotes: list[str] = field(default_factory=list)
    caption: str = ""

    def note(self, text: str | None) -> str:
        """Register a footnote and return its marker (" [n]"), or "" for no note."""
        if not text:
            return ""
        if text not in self.footnotes:
            self.footnotes.append(text)
        return f" [{self.footnotes.index(text) + 1}]"


@dataclass
class Recorder:
    """Full-precision rows behind the display cells (statistics.csv, summaries.csv)."""

    tests: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def test(self, table: str, variable: str, comparison: str, r: st.TestResult) -> None:
        self.tests.append({
            "table": table, "variable": variable, "comparison": comparison, "test": r.test,
            "method": r.method, "statistic_name": r.statistic_name, "statistic": r.statistic,
            "df": r.df, "estimate": r.estimate, "ci_low": r.ci[0] if r.ci else None,
            "ci_high": r.ci[1] if r.ci else None, "p_value": r.p_value, "note": r.note,
        })

    def continuous(self, table: str, variable: str, group: str, m: st.MeanCI,
                   q: st.MedianIQR) -> None:
        self.summaries.append({
            "table": table, "variable": variable, "group": group, "level": None,
            "n": m.n, "count": None, "percent": None, "mean": m.mean, "sd": m.sd,
            "ci_low": m.low, "ci_high": m.high, "median": q.median, "q1": q.q1,
            "q3": q.q3, "note": m.note,
        })

    def count(self, table: str, variable: str, group: str, level: str, count: int,
              total: int) -> None:
        self.summaries.append({
            "table": table, "variable": variable, "group": group, "level": level,
            "n": total, "count": count, "percent": 100.0 * count / total if total else None,
            "mean": None, "sd": None, "ci_low": None, "ci_high": None, "median": None,
            "q1": None, "q3": None, "note": None,
        })

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        test_cols = ["table", "variable", "comparison", "test", "method", "statistic_name",
                     "statistic", "df", "estimate", "ci_low", "ci_high", "p_value", "note"]
        sum_cols = ["table", "variable", "group", "level", "n", "count", "percent", "mean",
                    "sd", "ci_low", "ci_high", "median", "q1", "q3", "note"]
        return (pd.DataFrame(self.tests, columns=test_cols),
                pd.DataFrame(self.summaries, columns=sum_cols))


@dataclass
class ReportTables:
    tables: list[ReportTable]
    statistics: pd.DataFrame
    summaries: pd.DataFrame

    def get(self, slug: str) -> ReportTable:
        return next(t for t in self.tables if t.slug == slug)


# --------------------------------------------------------------------------- helpers

def _group_header(cohort: Cohort, groups: Sequence[str] = GROUPS) -> dict[str, str]:
    return {g: f"{GROUP_LABELS[g]} (n = {len(cohort.group(g))})" for g in groups}


def _level_text(value: Any) -> str | None:
    """Category values as labels: whole numbers without ".0", text as is."""
    if value is None:
        return None
    if isinstance(value, float):
        if np.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _sort_levels(levels: set[str], order: Sequence[str] | None) -> list[str]:
    if order:
        known = [lv for lv in order if lv in levels]
        return known + sorted(levels - set(order))

    def key(lv: str) -> tuple[int, float, str]:
        try:
            return (0, float(lv), lv)
        except ValueError:
            return (1, 0.0, lv)
    return sorted(levels, key=key)


def _pair_test(table: ReportTable, rec: Recorder, variable: str, result: st.TestResult,
               comparison: str = "single-stage vs staged") -> str:
    rec.test(table.slug, variable, comparison, result)
    return fmt.pvalue(result.p_value) + table.note(result.note)


def _test_label(result: st.TestResult) -> str:
    if result.test.startswith("Welch"):
        return "Welch t-test"
    if result.test.startswith("Wilcoxon rank-sum"):
        return "Wilcoxon rank-sum" + (" (exact)" if result.method == "exact" else "")
    if result.test.startswith("Wilcoxon signed-rank"):
        return "Wilcoxon signed-rank" + (" (exact)" if result.method == "exact" else "")
    if result.test.startswith("Pearson"):
        return "Pearson chi-square"
    if result.test.startswith("Fisher"):
        return "Fisher's exact test"
    return result.test


# --------------------------------------------------------------------------- Table 1

def _continuous_rows(cohort: Cohort, table: ReportTable, rec: Recorder, column: str,
                     label: str, qtype: int, digits: int = 1) -> list[dict[str, str]]:
    mean_row: dict[str, str] = {"Characteristic": f"{label}, mean (95% CI)"}
    median_row: dict[str, str] = {"Characteristic": f"{label}, median (IQR)"}
    for g in GROUPS:
        values = cohort.column(g, column)
        m, q = st.mean_ci(values), st.median_iqr(values, qtype)
        rec.continuous(table.slug, column, g, m, q)
        mean_row[g] = fmt.mean_ci(m, digits) + (table.note(m.note) if m.n else "")
        median_row[g] = fmt.median_iqr(q, digits)
    x, y = (cohort.column(s, column) for s in STRATEGIES)
    welch = st.welch_t_test(x, y)
    wil = st.wilcoxon_rank_sum(x, y)
    mean_row["p-value"] = _pair_test(table, rec, column, welch)
    mean_row["Test"] = _test_label(welch)
    median_row["p-value"] = _pair_test(table, rec, column, wil)
    median_row["Test"] = _test_label(wil)
    missing = int(np.isnan(cohort.column("overall", column)).sum())
    rows = [mean_row, median_row]
    if missing:
        rows.append({"Characteristic": "    Unknown", **{
            g: str(int(np.isnan(cohort.column(g, column)).sum())) for g in GROUPS},
            "p-value": "", "Test": ""})
    return rows


def _categorical_rows(cohort: Cohort, table: ReportTable, rec: Recorder, column: str,
                      label: str, order: Sequence[str] | None = None,
                      labels: dict[str, str] | None = None,
                      dichotomous: str | None = None) -> list[dict[str, str]]:
    """n (%) per level and group; one gtsummary-rule test on levels x strategies.

    `dichotomous` names the level shown on a single row (e.g. "yes" for a flag), as
    gtsummary shows logical variables; the test still uses both levels.
    """
    values = {g: [_level_text(v) for v in cohort.group(g)[column]] for g in GROUPS}
    levels = _sort_levels({v for v in values["overall"] if v is not None}, order)
    if dichotomous is not None and dichotomous not in levels:
        levels = _sort_levels(set(levels) | {dichotomous}, order)
    counts = {g: Counter(v for v in values[g] if v is not None) for g in GROUPS}
    totals = {g: sum(counts[g].values()) for g in GROUPS}
    grid = np.array([[counts[s][lv] for s in STRATEGIES] for lv in levels], dtype=int) \
        if levels else np.zeros((0, 2), dtype=int)
    result = st.categorical_test(grid) if grid.size else st.TestResult(
        "Fisher's exact test", None, note="no observations")
    p_cell = _pair_test(table, rec, column, result)
    for g in GROUPS:
        for lv in levels:
            rec.count(table.slug, column, g, lv, counts[g][lv], totals[g])
    rows: list[dict[str, str]] = []
    if dichotomous is not None:
        rows.append({"Characteristic": f"{label}, n (%)", **{
            g: fmt.n_pct(counts[g][dichotomous], totals[g]) for g in GROUPS},
            "p-value": p_cell, "Test": _test_label(result)})
    else:
        rows.append({"Characteristic": f"{label}, n (%)", **{g: "" for g in GROUPS},
                     "p-value": p_cell, "Test": _test_label(result)})
        for lv in levels:
            shown = (labels or {}).get(lv, lv)
            rows.append({"Characteristic": f"    {shown}", **{
                g: fmt.n_pct(counts[g][lv], totals[g]) for g in GROUPS},
                "p-value": "", "Test": ""})
    missing = {g: sum(v is None for v in values[g]) for g in GROUPS}
    if missing["overall"]:
        rows.append({"Characteristic": "    Unknown", **{g: str(missing[g]) for g in GROUPS},
                     "p-value": "", "Test": ""})
    return rows


def baseline_table(cohort: Cohort, rec: Recorder, qtype: int = 7) -> ReportTable:
    """Table 1: baseline clinical and disease characteristics by strategy."""
    table = ReportTable("table1_baseline", "Table 1. Baseline characteristics by strategy",
                        pd.DataFrame())
    rows: list[dict[str, str]] = []
    rows += _categorical_rows(cohort, table, rec, "sex", "Sex",
                              order=["female", "male", "other", "unknown"],
                              labels={"female": "Female", "male": "Male", "other": "Other",
                                      "unknown": "Unknown (recorded)"})
    rows += _continuous_rows(cohort, table, rec, "age_at_biopsy", "Age, years", qtype)
    rows += _categorical_rows(cohort, table, rec, "asa", "ASA class")
    rows += _categorical_rows(cohort, table, rec, "ecog_group", "ECOG performance status",
                              order=["0-2", "3-4", "5"])
    rows += _categorical_rows(cohort, table, rec, "metastatic_outside_index",
                              "Metastatic disease outside the index lesion",
                              order=["yes", "no"], dichotomous="yes")
    rows += _categorical_rows(cohort, table, rec, "involved_vertebrae_group",
                              "Involved vertebrae", order=["1", "2-3", "4+"])
    rows += _continuous_rows(cohort, table, rec, "sins_total", "SINS total, score", qtype)
    rows += _categorical_rows(cohort, table, rec, "fixation_levels",
                              "Fixation length, instrumented levels")
    rows += _categorical_rows(cohort, table, rec, "tumour_group", "Primary tumour group",
                              order=list(TUMOUR_LABELS), labels=TUMOUR_LABELS)
    header = _group_header(cohort)
    table.frame = pd.DataFrame(rows, columns=["Characteristic", *GROUPS, "p-value", "Test"]) \
        .rename(columns=header)
    table.caption = ("Categorical: n (%) of patients with a known value; test by gtsummary's "
                     "rule (Pearson chi-square without continuity correction when every "
                     "expected count is at least 5, else Fisher's exact test). Continuous: "
                     "mean (95% t-interval) with Welch's t-test; median (IQR, quantile "
                     f"type {qtype}) with the Wilcoxon rank-sum test. p-values compare "
                     "single-stage with staged; the overall column is not tested.")
    return table


# --------------------------------------------------------------------------- outcomes

def primary_outcome_tables(cohort: Cohort, rec: Recorder,
                           qtype: int = 7) -> list[ReportTable]:
    """Days biopsy -> definitive therapy by strategy, and the two between-group tests."""
    col = "days_biopsy_to_therapy"
    summary = ReportTable("primary_outcome", "Primary outcome: days from index biopsy to "
                          "definitive therapy", pd.DataFrame())
    rows: dict[str, dict[str, str]] = {k: {"Statistic": k} for k in (
        "n", "Mean (95% CI), days", "SD, days", "Median (IQR), days", "Range, days")}
    for g in GROUPS:
        values = st.clean(cohort.column(g, col))
        m, q = st.mean_ci(values), st.median_iqr(values, qtype)
        rec.continuous(summary.slug, col, g, m, q)
        rows["n"][g] = str(m.n)
        rows["Mean (95% CI), days"][g] = fmt.mean_ci(m) + (summary.note(m.note) if m.n else "")
        rows["SD, days"][g] = fmt.num(m.sd)
        rows["Median (IQR), days"][g] = fmt.median_iqr(q)
        rows["Range, days"][g] = (f"{fmt.num(float(values.min()), 0)}-"
                                  f"{fmt.num(float(values.max()), 0)}") if len(values) \
            else fmt.DASH
    summary.frame = pd.DataFrame(list(rows.values()), columns=["Statistic", *GROUPS]) \
        .rename(columns=_group_header(cohort))

    tests = ReportTable("primary_tests", "Primary outcome: single-stage vs staged",
                        pd.DataFrame())
    x, y = (cohort.column(s, col) for s in STRATEGIES)
    welch, wil = st.welch_t_test(x, y), st.wilcoxon_rank_sum(x, y)
    test_rows = []
    for r in (welch, wil):
        stat = (f"{r.statistic_name} = {fmt.num(r.statistic, 2)}"
                if r.statistic is not None else fmt.DASH)
        test_rows.append({
            "Test": _test_label(r), "Statistic": stat,
            "df": fmt.num(r.df, 1) if r.df is not None else "",
            "Mean difference (95% CI), days": fmt.interval(r.estimate, r.ci)
            if r.test.startswith("Welch") else "",
            "p-value": _pair_test(tests, rec, col, r), "Method": r.method,
        })
    tests.frame = pd.DataFrame(test_rows)
    tests.caption = ("Mean difference is single-stage minus staged (R: t.test(x, y)); the "
                     "rank-sum W is for the single-stage group (R: wilcox.test(x, y)).")
    return [summary, tests]


def staged_components_table(cohort: Cohort, rec: Recorder, qtype: int = 7) -> ReportTable:
    """Staged patients: biopsy -> stabilization vs stabilization -> therapy (paired)."""
    table = ReportTable("staged_components", "Staged pathway: delay components",
                        pd.DataFrame())
    staged = cohort.group("staged")
    first = staged["days_biopsy_to_stabilization"].to_numpy(dtype=float)
    second = staged["days_stabilization_to_therapy"].to_numpy(dtype=float)
    result = st.wilcoxon_signed_rank(first, second)
    p_cell = _pair_test(table, rec, "staged components",
                        result, "biopsy->stabilization vs stabilization->therapy")
    rows = []
    for name, label, values in (
            ("days_biopsy_to_stabilization", "Biopsy -> stabilization", first),
            ("days_stabilization_to_therapy", "Stabilization -> therapy", second)):
        m, q = st.mean_ci(values), st.median_iqr(values, qtype)
        rec.continuous(table.slug, name, "staged", m, q)
        rows.append({"Interval": label, "n": str(m.n),
                     "Mean (95% CI), days": fmt.mean_ci(m) + (table.note(m.note) if m.n
                                                               else ""),
                     "Median (IQR), days": fmt.median_iqr(q), "p-value": "", "Test": ""})
    rows[0]["p-value"] = p_cell
    rows[0]["Test"] = _test_label(result) + (f", {result.method}" if result.method else "")
    table.frame = pd.DataFrame(rows)
    table.caption = (f"Staged patients (n = {len(staged)}). Paired Wilcoxon signed-rank test "
                     "(R: wilcox.test(x, y, paired = TRUE)); zero differences dropped.")
    return table


def _pro_col(measure: str, timepoint: str) -> str:
    return f"{measure}_{timepoint}"


def pro_between_table(cohort: Cohort, rec: Recorder, qtype: int = 7) -> ReportTable:
    """PROs at each time point by strategy with Welch and rank-sum comparisons."""
    table = ReportTable("pros_between", "Patient-reported outcomes by strategy",
                        pd.DataFrame())
    rows = []
    for measure, label, scale in PRO_MEASURES:
        for tp, tp_label in TIMEPOINTS:
            col = _pro_col(measure, tp)
            row: dict[str, str] = {"Measure": f"{label} ({scale})", "Time point": tp_label}
            for g in GROUPS:
                values = cohort.column(g, col)
                m, q = st.mean_ci(values), st.median_iqr(values, qtype)
                rec.continuous(table.slug, col, g, m, q)
                row[g] = fmt.mean_ci(m) + (table.note(m.note) if m.n else "")
            x, y = (cohort.column(s, col) for s in STRATEGIES)
            welch, wil = st.welch_t_test(x, y), st.wilcoxon_rank_sum(x, y)
            row["Difference (95% CI)"] = fmt.interval(welch.estimate, welch.ci)
            row["p (Welch t)"] = _pair_test(table, rec, col, welch)
            row["p (rank-sum)"] = _pair_test(table, rec, col, wil)
            rows.append(row)
    table.frame = pd.DataFrame(rows, columns=["Measure", "Time point", *GROUPS,
                                              "Difference (95% CI)", "p (Welch t)",
                                              "p (rank-sum)"]) \
        .rename(columns=_group_header(cohort))
    table.caption = ("Cells: mean (95% CI). Difference: single-stage minus staged with the "
                     "Welch interval.")
    return table


def pro_change_table(cohort: Cohort, rec: Recorder, qtype: int = 7) -> ReportTable:
    """Within-group change, at diagnosis minus baseline, with a paired signed-rank test."""
    table = ReportTable("pros_change", "Patient-reported outcomes: change from baseline to "
                        "diagnosis within each group", pd.DataFrame())
    rows = []
    for measure, label, _ in PRO_MEASURES:
        for g in GROUPS:
            grp = cohort.group(g)
            before = grp[_pro_col(measure, "baseline")].to_numpy(dtype=float)
            after = grp[_pro_col(measure, "at_diagnosis")].to_numpy(dtype=float)
            both = ~np.isnan(before) & ~np.isnan(after)
            change = after[both] - before[both]
            m, q = st.mean_ci(change), st.median_iqr(change, qtype)
            rec.continuous(table.slug, f"{measure}_change", g, m, q)
            result = st.wilcoxon_signed_rank(after, before)
            rows.append({
                "Measure": label, "Group": GROUP_LABELS[g], "Pairs": str(int(both.sum())),
                "Baseline, mean": fmt.num(float(before[both].mean())) if both.any()
                else fmt.DASH,
                "At diagnosis, mean": fmt.num(float(after[both].mean())) if both.any()
                else fmt.DASH,
                "Change (95% CI)": fmt.mean_ci(m) + (table.note(m.note) if m.n else ""),
                "Median change (IQR)": fmt.median_iqr(q),
                "p (signed-rank)": _pair_test(table, rec, f"{measure}_change", result,
                                              f"{g}: at diagnosis vs baseline"),
            })
    table.frame = pd.DataFrame(rows)
    table.caption = ("Patients with both values. Change = at diagnosis minus baseline; "
                     "paired Wilcoxon signed-rank test, zero differences dropped.")
    return table


def adverse_events_table(cohort: Cohort, rec: Recorder) -> ReportTable:
    """Patients with at least one event of each kind, by strategy."""
    table = ReportTable("adverse_events", "Adverse events by strategy", pd.DataFrame())
    rows = []
    kinds = [*ADVERSE_EVENTS, ("any", "Any adverse event")]
    for name, label in kinds:
        cols = [c for c, _ in ADVERSE_EVENTS] if name == "any" else [name]
        row: dict[str, str] = {"Adverse event": label}
        per_group: dict[str, tuple[int, int]] = {}
        for g in GROUPS:
            grp = cohort.group(g)
            counts = np.column_stack([grp[c].to_numpy(dtype=float) for c in cols]) \
                if len(grp) else np.zeros((0, len(cols)))
            known = ~np.isnan(counts).all(axis=1)
            patients = int((np.nan_to_num(counts[known]) > 0).any(axis=1).sum())
            events = int(np.nansum(counts[known]))
            per_group[g] = (patients, int(known.sum()))
            rec.count(table.slug, name, g, "patients with >= 1", patients, int(known.sum()))
            cell = fmt.n_pct(patients, int(known.sum()))
            if events != patients:
                cell += f"; {events} events"
            row[g] = cell
        grid = np.array([[per_group[s][0] for s in STRATEGIES],
                         [per_group[s][1] - per_group[s][0] for s in STRATEGIES]])
        result = st.fisher_exact(grid)
        row["p-value"] = _pair_test(table, rec, name, result)
        rows.append(row)
    table.frame = pd.DataFrame(rows, columns=["Adverse event", *GROUPS, "p-value"]) \
        .rename(columns=_group_header(cohort))
    table.caption = ("Patients with at least one event, n (%) of patients with the item "
                     "recorded; event totals where they differ. Fisher's exact test (rare "
                     "events). Unplanned urgent fixation applies to staged patients only.")
    return table


def therapy_modality_table(cohort: Cohort, rec: Recorder) -> ReportTable:
    """The first-line definitive therapy mix (modalities starting together)."""
    table = ReportTable("therapy_modalities", "Definitive therapy modality mix",
                        pd.DataFrame())

    order = {"systemic": 0, "radiotherapy": 1, "surgery": 2}

    def combo(value: Any) -> str | None:
        if value is None:
            return None
        parts = sorted({p for p in str(value).split(";") if p},
                       key=lambda p: (order.get(p, 9), p))
        return (" + ".join(parts)).capitalize() if parts else None

    def shown(cohort_: Cohort) -> Cohort:
        pts = cohort_.patients.copy()
        pts["therapy_mix"] = [combo(v) for v in pts["therapy_modalities"]]
        return Cohort(pts, cohort_.manifest, cohort_.source, cohort_.missing_columns)

    mixed = shown(cohort)
    freq = Counter(v for v in mixed.included["therapy_mix"] if v is not None)
    by_frequency = [k for k, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))]
    rows = _categorical_rows(mixed, table, rec, "therapy_mix", "Modalities",
                             order=by_frequency)
    table.frame = pd.DataFrame(rows, columns=["Characteristic", *GROUPS, "p-value", "Test"]) \
        .rename(columns=_group_header(cohort)).rename(columns={"Characteristic": "Therapy"})
    table.caption = ("Definitive modalities starting within the therapy window of the first "
                     "one (systemic, radiotherapy, surgery).")
    return table


def exclusion_flow_table(cohort: Cohort) -> ReportTable:
    """Screened -> excluded by reason -> included per strategy (CONSORT-like counts)."""
    table = ReportTable("exclusion_flow", "Patient flow", pd.DataFrame())
    pts = cohort.patients
    screened = len(pts)
    included = cohort.included
    reasons: Counter[str] = Counter()
    for text in pts.loc[~pts.index.isin(included.index), "exclusion_reasons"]:
        reasons.update(r for r in str(text or "").split(";") if r)
    excluded = screened - len(included)
    rows = [("Screened", screened), ("Excluded", excluded)]
    for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append((f"    {EXCLUSION_LABELS.get(reason, reason)} ({reason})", n))
    no_reason = sum(1 for i, v in pts["exclusion_reasons"].items()
                    if i not in included.index and not v)
    if no_reason:
        rows.append(("    no reason recorded / inclusion unknown", no_reason))
    rows.append(("Included", len(included)))
    for s in STRATEGIES:
        rows.append((f"    {GROUP_LABELS[s]}", len(cohort.group(s))))
    other = len(included) - sum(len(cohort.group(s)) for s in STRATEGIES)
    if other:
        rows.append(("    strategy not classified", other))
    table.frame = pd.DataFrame(rows, columns=["Step", "Patients"]).astype({"Patients": str})
    if sum(reasons.values()) > excluded:
        table.note("A patient can have more than one exclusion reason, so the reasons add "
                   "up to more than the excluded count.")
    return table




def build_tables(cohort: Cohort, qtype: int = 7) -> ReportTables:
    """Every report table, in report order, with the full-precision statistics."""
    rec = Recorder()
    tables = [
        exclusion_flow_table(cohort),
        baseline_table(cohort, rec, qtype),
        *primary_outcome_tables(cohort, rec, qtype),
        staged_components_table(cohort, rec, qtype),
        pro_between_table(cohort, rec, qtype),
        pro_change_table(cohort, rec, qtype),
        adverse_events_table(cohort, rec),
        therapy_modality_table(cohort, rec),
    ]
    statistics, summaries = rec.frames()
    return ReportTables(tables, statistics, summaries)
