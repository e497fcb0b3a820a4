"""Descriptive statistics and two-group tests that reproduce R's defaults.

Analysts cross-check the report in R (the study used R 4.4 with gtsummary), so each
function follows the R source of the named function, not just the textbook test of the
same name: the same exact/normal-approximation switch, the same continuity and tie
corrections, the same tolerance when deciding which tables are "as or less likely" in
Fisher's test. scipy is used only for distribution functions (t, normal, chi-square,
from `scipy.special`, which imports far faster than `scipy.stats`).

Nothing here raises on awkward data. A group with fewer than two observations, data
with no variation or a table too large to enumerate give a result whose `p_value` (or
interval) is None and whose `note` says why; the report prints that note as a footnote
instead of a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

#: R's `.Machine$double.eps`, used by `t.test` to refuse essentially constant data.
DOUBLE_EPS = float(np.finfo(float).eps)
#: `fisher.test` 2x2: tables with d <= d_obs * (1 + 1e-7) count as "as extreme".
FISHER_2X2_REL_ERR = 1e-7
#: `fisher.test` r x c (FEXACT): the same idea with FEXACT's tolerance, on the log scale.
FISHER_RXC_TOL = 3.45254e-7
#: R's `wilcox.test` computes exact p-values only below this many observations per group.
EXACT_LIMIT = 50
#: Upper bound on the tables enumerated for an r x c Fisher test (the size guard).
MAX_FISHER_TABLES = 2_000_000
#: Smallest group for which a test or a t-interval is reported (issue 6: n < 2 -> empty).
MIN_N = 2


@dataclass(frozen=True)
class MeanCI:
    """Mean with its two-sided t-interval (R: `t.test(x)$conf.int`)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    sd: float | None
    note: str | None = None


@dataclass(frozen=True)
class MedianIQR:
    """Median and quartiles (R: `quantile(x, c(.25, .5, .75), type = 7)` by default)."""

    n: int
    median: float | None
    q1: float | None
    q3: float | None
    note: str | None = None


@dataclass(frozen=True)
class TestResult:
    """One hypothesis test: what was computed, or why nothing was.

    `method` names the variant actually used (for example "exact" or "normal
    approximation with continuity correction") because R switches silently and an
    analyst comparing numbers needs to know which branch ran.
    """

    test: str
    p_value: float | None
    statistic: float | None = None
    statistic_name: str = ""
    df: float | None = None
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    method: str = ""
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.p_value is not None


def clean(values: Iterable[Any]) -> np.ndarray:
    """Values as a float array without missing entries (None, NaN, pandas NA)."""
    out: list[float] = []
    for v in values:
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue  # pd.NA and friends
        if math.isfinite(f):
            out.append(f)
    return np.asarray(out, dtype=float)


def _paired(x: Iterable[Any], y: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Complete pairs only, as R's paired tests use `complete.cases(x, y)`."""
    xs, ys = list(x), list(y)
    if len(xs) != len(ys):
        raise ValueError("paired samples must have the same length")
    keep = [(a, b) for a, b in zip(xs, ys, strict=True)
            if len(clean([a])) == 1 and len(clean([b])) == 1]
    return (np.asarray([float(a) for a, _ in keep], dtype=float),
            np.asarray([float(b) for _, b in keep], dtype=float))


# --------------------------------------------------------------------------- descriptive

def quantile(values: Iterable[Any], prob: float, qtype: int = 7) -> float | None:
    """R's `quantile(x, prob, type = qtype)` for types 7 (R's default) and 2.

    Type 7 interpolates between order statistics (h = (n - 1) p); type 2 averages at
    discontinuities. gtsummary's documentation mentions type 2 for its `{p25}`; recent
    versions compute R's default, so the report uses 7 and offers 2 for cross-checks.
    """
    x = np.sort(clean(values))
    n = len(x)
    if n == 0:
        return None
    if not 0.0 <= prob <= 1.0:
        raise ValueError("prob must be within [0, 1]")
    if qtype == 7:
        index = (n - 1) * prob  # 0-based; R: 1 + (n - 1) * p
        lo, hi = math.floor(index), math.ceil(index)
        h = index - lo
        if index > lo and x[hi] != x[lo]:
            return float((1 - h) * x[lo] + h * x[hi])
        return float(x[lo])
    if qtype == 2:
        nppm = n * prob
        j = math.floor(nppm + 4 * DOUBLE_EPS)  # R's fuzz
        below = x[min(max(j, 1), n) - 1]
        above = x[min(max(j + 1, 1), n) - 1]
        if nppm > j:
            return float(above)
        return float(0.5 * below + 0.5 * above) if below != above else float(below)
    raise ValueError("only quantile types 2 and 7 are implemented")


def median_iqr(values: Iterable[Any], qtype: int = 7) -> MedianIQR:
    """Median with first and third quartiles (type 7 unless asked otherwise)."""
    x = clean(values)
    if len(x) == 0:
        return MedianIQR(0, None, None, None, "no observations")
    return MedianIQR(len(x), quantile(x, 0.5, qtype), quantile(x, 0.25, qtype),
                     quantile(x, 0.75, qtype))


def mean_ci(values: Iterable[Any], level: float = 0.95) -> MeanCI:
    """Mean and its t-interval mean +- qt(1 - a/2, n - 1) * sd / sqrt(n).

    The interval is withheld (None, with a note) for n < 2 and for constant data, where
    R's `t.test` stops with "not enough observations" / "data are essentially constant".
    """
    x = clean(values)
    n = len(x)
    if n == 0:
        return MeanCI(0, None, None, None, None, "no observations")
    mean = float(np.mean(x))
    if n < MIN_N:
        return MeanCI(n, mean, None, None, None, "fewer than 2 observations: no interval")
    sd = float(np.std(x, ddof=1))
    se = sd / math.sqrt(n)
    if se < 10 * DOUBLE_EPS * abs(mean) or se == 0.0:
        return MeanCI(n, mean, None, None, sd, "constant values: no interval")
    half = float(special.stdtrit(n - 1, 0.5 + level / 2)) * se
    return MeanCI(n, mean, mean - half, mean + half, sd)


# --------------------------------------------------------------------------- t-test

def welch_t_test(x: Iterable[Any], y: Iterable[Any], level: float = 0.95) -> TestResult:
    """R's `t.test(x, y)` default: Welch's unequal-variance test, Welch-Satterthwaite df.

    The estimate is mean(x) - mean(y) and the interval is for that difference.
    """
    a, b = clean(x), clean(y)
    name = "Welch two-sample t-test"
    if len(a) < MIN_N or len(b) < MIN_N:
        return TestResult(name, None, note="fewer than 2 observations in a group")
    mx, my = float(np.mean(a)), float(np.mean(b))
    vx, vy = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    sx, sy = vx / len(a), vy / len(b)
    stderr = math.sqrt(sx + sy)
    if stderr < 10 * DOUBLE_EPS * max(abs(mx), abs(my)) or stderr == 0.0:
        return TestResult(name, None, estimate=mx - my, note="data are essentially constant")
    df = (sx + sy) ** 2 / (sx**2 / (len(a) - 1) + sy**2 / (len(b) - 1))
    t = (mx - my) / stderr
    p = float(2 * special.stdtr(df, -abs(t)))
    half = float(special.stdtrit(df, 0.5 + level / 2)) * stderr
    return TestResult(name, min(p, 1.0), statistic=t, statistic_name="t", df=df,
                      estimate=mx - my, ci=(mx - my - half, mx - my + half),
                      method="Welch-Satterthwaite df")


# --------------------------------------------------------------------------- Wilcoxon

def _rank(values: np.ndarray) -> np.ndarray:
    """Average ranks for ties, as R's `rank()` (exact equality of doubles)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _tie_sizes(ranks: np.ndarray) -> np.ndarray:
    _, counts = np.unique(ranks, return_counts=True)
    return counts.astype(float)


def rank_sum_counts(m: int, n: int) -> np.ndarray:
    """Number of ways each W = 0..m*n arises (the null distribution behind `pwilcox`).

    W = sum of the ranks of the first sample minus m(m+1)/2; counted by choosing m of
    the ranks 1..m+n with a subset-sum recursion. Counts are floats (like R's doubles)
    so large binomial coefficients cannot overflow.
    """
    total = m + n
    max_sum = sum(range(n + 1, total + 1))
    ways = np.zeros((m + 1, max_sum + 1))
    ways[0, 0] = 1.0
    for r in range(1, total + 1):
        for j in range(min(r, m), 0, -1):
            ways[j, r:] += ways[j - 1, : max_sum + 1 - r]
    offset = m * (m + 1) // 2
    return ways[m, offset: offset + m * n + 1].copy()


def signed_rank_counts(n: int) -> np.ndarray:
    """Number of sign patterns giving each V = 0..n(n+1)/2 (behind `psignrank`)."""
    top = n * (n + 1) // 2
    ways = np.zeros(top + 1)
    ways[0] = 1.0
    for r in range(1, n + 1):
        ways[r:] = ways[r:] + ways[: top + 1 - r].copy()
    return ways


def _exact_two_sided(counts: np.ndarray, stat: float, centre: float) -> float:
    """R's two-sided exact p: double the smaller tail, from the side the statistic is on."""
    k = int(round(stat))
    total = float(np.sum(counts))
    if stat > centre:
        p = float(np.sum(counts[k:])) / total        # P(S >= k) = 1 - P(S <= k - 1)
    else:
        p = float(np.sum(counts[: k + 1])) / total   # P(S <= k)
    return min(2.0 * p, 1.0)


def _normal_two_sided(z_raw: float, sigma: float, correct: bool) -> tuple[float, float]:
    correction = math.copysign(0.5, z_raw) if (correct and z_raw != 0) else 0.0
    z = (z_raw - correction) / sigma
    p = 2.0 * min(float(special.ndtr(z)), float(special.ndtr(-z)))
    return z, min(p, 1.0)


def wilcoxon_rank_sum(x: Iterable[Any], y: Iterable[Any], *, exact: bool | None = None,
                      correct: bool = True) -> TestResult:
    """R's `wilcox.test(x, y)`: Wilcoxon rank-sum / Mann-Whitney, W for the first sample.

    Exact p when both groups have fewer than 50 values and there are no ties; otherwise
    the normal approximation with tie-corrected variance and a continuity correction of
    0.5 towards the centre.
    """
    a, b = clean(x), clean(y)
    name = "Wilcoxon rank-sum test"
    if len(a) < MIN_N or len(b) < MIN_N:
        return TestResult(name, None, note="fewer than 2 observations in a group")
    nx, ny = len(a), len(b)
    ranks = _rank(np.concatenate([a, b]))
    w = float(np.sum(ranks[:nx]) - nx * (nx + 1) / 2)
    ties = len(np.unique(ranks)) != len(ranks)
    use_exact = (nx < EXACT_LIMIT and ny < EXACT_LIMIT) if exact is None else exact
    if use_exact and not ties:
        p = _exact_two_sided(rank_sum_counts(nx, ny), w, nx * ny / 2)
        return TestResult(name, p, statistic=w, statistic_name="W", method="exact")
    nties = _tie_sizes(ranks)
    n = nx + ny
    sigma2 = (nx * ny / 12) * ((n + 1) - float(np.sum(nties**3 - nties)) / (n * (n - 1)))
    if sigma2 <= 0:
        return TestResult(name, None, statistic=w, statistic_name="W",
                          note="all values identical: no rank information")
    _, p = _normal_two_sided(w - nx * ny / 2, math.sqrt(sigma2), correct)
    method = "normal approximation" + (" with continuity correction" if correct else "")
    if ties:
        method += " (ties)"
    return TestResult(name, p, statistic=w, statistic_name="W", method=method)


def wilcoxon_signed_rank(x: Iterable[Any], y: Iterable[Any], *, exact: bool | None = None,
                         correct: bool = True) -> TestResult:
    """R's `wilcox.test(x, y, paired = TRUE)`: signed-rank test on d = x - y.

    Incomplete pairs are dropped, then zero differences (R's default, not Pratt's).
    Exact p when fewer than 50 non-zero differences remain and there were neither ties
    nor zeros; otherwise the normal approximation with tie correction and continuity
    correction. V is the sum of the ranks of the positive differences.
    """
    a, b = _paired(x, y)
    name = "Wilcoxon signed-rank test (paired)"
    if len(a) < MIN_N:
        return TestResult(name, None, note="fewer than 2 complete pairs")
    d = a - b
    zeroes = bool(np.any(d == 0))
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return TestResult(name, None, note="all paired differences are zero")
    ranks = _rank(np.abs(d))
    v = float(np.sum(ranks[d > 0]))
    ties = len(np.unique(ranks)) != len(ranks)
    use_exact = (n < EXACT_LIMIT) if exact is None else exact
    if use_exact and not ties and not zeroes:
        p = _exact_two_sided(signed_rank_counts(n), v, n * (n + 1) / 4)
        return TestResult(name, p, statistic=v, statistic_name="V", method="exact")
    nties = _tie_sizes(ranks)
    sigma2 = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(nties**3 - nties)) / 48
    _, p = _normal_two_sided(v - n * (n + 1) / 4, math.sqrt(sigma2), correct)
    method = "normal approximation" + (" with continuity correction" if correct else "")
    reasons = [w for w, flag in (("ties", ties), ("zero differences dropped", zeroes)) if flag]
    if reasons:
        method += f" ({', '.join(reasons)})"
    return TestResult(name, p, statistic=v, statistic_name="V", method=method)


# --------------------------------------------------------------------------- tables

def _as_table(table: Sequence[Sequence[Any]] | np.ndarray) -> np.ndarray:
    arr = np.asarray(table, dtype=float)
    if arr.ndim != 2:
        raise ValueError("a contingency table must be two-dimensional")
    if np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError("a contingency table holds non-negative whole counts")
    return arr.astype(np.int64)


def _drop_empty(arr: np.ndarray) -> np.ndarray:
    """Remove all-zero rows and columns: they carry no information and R's tests either
    ignore them (Fisher) or fail on them (a zero expected count in chi-square)."""
    return arr[arr.sum(axis=1) > 0][:, arr.sum(axis=0) > 0]


def _degenerate(arr: np.ndarray) -> str | None:
    if arr.sum() == 0:
        return "no observations"
    if arr.shape[0] < 2:
        return "only one category observed"
    if arr.shape[1] < 2:
        return "only one group has observations"
    return None


def _column_vectors(total: int, caps: list[int]) -> Iterable[tuple[int, ...]]:
    """All vectors of non-negative ints with the given sum and elementwise caps."""
    if len(caps) == 1:
        if total <= caps[0]:
            yield (total,)
        return
    rest = sum(caps[1:])
    for first in range(max(0, total - rest), min(caps[0], total) + 1):
        for tail in _column_vectors(total - first, caps[1:]):
            yield (first, *tail)


class _TooLarge(Exception):
    pass


def fisher_exact(table: Sequence[Sequence[Any]] | np.ndarray, *,
                 max_tables: int = MAX_FISHER_TABLES) -> TestResult:
    """R's `fisher.test(table)` two-sided p-value, for 2x2 and r x c tables.

    Conditional on both margins, every table has the multivariate hypergeometric
    probability prod(r_i!) prod(c_j!) / (N! prod(n_ij!)); the p-value is the total
    probability of tables no more likely than the observed one (with R's relative
    tolerance). Tables are enumerated column by column; when more than `max_tables`
    would be visited the result is None with a note rather than a long hang.
    """
    name = "Fisher's exact test"
    arr = _drop_empty(_as_table(table))
    reason = _degenerate(arr)
    if reason:
        return TestResult(name, None, note=reason)
    rows = [int(v) for v in arr.sum(axis=1)]
    cols = [int(v) for v in arr.sum(axis=0)]
    total = sum(rows)
    lf = [math.lgamma(k + 1) for k in range(total + 1)]
    const = sum(lf[r] for r in rows) + sum(lf[c] for c in cols) - lf[total]
    obs_log = const - sum(lf[int(v)] for v in arr.ravel())
    tol = FISHER_2X2_REL_ERR if arr.shape == (2, 2) else FISHER_RXC_TOL
    threshold = obs_log + math.log1p(tol)

    terms: list[float] = []
    visited = 0

    def walk(col: int, remaining: list[int], acc: float) -> None:
        nonlocal visited
        if col == len(cols) - 1:  # the last column is fixed by the row margins
            visited += 1
            if visited > max_tables:
                raise _TooLarge
            logp = acc - sum(lf[r] for r in remaining)
            if logp <= threshold:
                terms.append(math.exp(logp))
            return
        for vec in _column_vectors(cols[col], remaining):
            walk(col + 1, [r - v for r, v in zip(remaining, vec, strict=True)],
                 acc - sum(lf[v] for v in vec))

    try:
        walk(0, rows, const)
    except _TooLarge:
        return TestResult(name, None, note=f"table too large for exact enumeration "
                          f"(more than {max_tables} tables)")
    p = min(math.fsum(terms), 1.0)
    return TestResult(name, p, method="2x2" if arr.shape == (2, 2) else
                      f"{arr.shape[0]}x{arr.shape[1]}, full enumeration")


def expected_counts(table: Sequence[Sequence[Any]] | np.ndarray) -> np.ndarray:
    """Expected counts under independence, row total x column total / N."""
    arr = np.asarray(table, dtype=float)
    return np.outer(arr.sum(axis=1), arr.sum(axis=0)) / arr.sum()


def chisq_test(table: Sequence[Sequence[Any]] | np.ndarray) -> TestResult:
    """R's `chisq.test(table, correct = FALSE)`: Pearson's X^2, (r-1)(c-1) df."""
    name = "Pearson's chi-squared test"
    arr = _drop_empty(_as_table(table))
    reason = _degenerate(arr)
    if reason:
        return TestResult(name, None, note=reason)
    exp = expected_counts(arr)
    x2 = float(np.sum((arr - exp) ** 2 / exp))
    df = (arr.shape[0] - 1) * (arr.shape[1] - 1)
    return TestResult(name, float(special.chdtrc(df, x2)), statistic=x2,
                      statistic_name="X-squared", df=float(df),
                      method="no continuity correction")


def categorical_test(table: Sequence[Sequence[Any]] | np.ndarray, *,
                     max_tables: int = MAX_FISHER_TABLES) -> TestResult:
    """gtsummary's default for a categorical variable by group: chi-square without
    continuity correction when every expected count is at least 5, else Fisher."""
    arr = _drop_empty(_as_table(table))
    if _degenerate(arr) is None and bool(np.all(expected_counts(arr) >= 5)):
        return chisq_test(arr)
    return fisher_exact(arr, max_tables=max_tables)


# --------------------------------------------------------------------------- density

def bw_nrd0(values: Iterable[Any]) -> float | None:
    """R's default KDE bandwidth `bw.nrd0`: 0.9 min(sd, IQR/1.34) n^-1/5, with R's
    fallbacks when the spread is zero."""
    x = clean(values)
    if len(x) < 2:
        return None
    hi = float(np.std(x, ddof=1))
    iqr = (quantile(x, 0.75) or 0.0) - (quantile(x, 0.25) or 0.0)
    lo = min(hi, iqr / 1.34)
    if not lo:
        lo = hi or abs(float(x[0])) or 1.0
    return 0.9 * lo * len(x) ** -0.2


def gaussian_density(values: Iterable[Any], grid: Iterable[float],
                     bw: float | None = None) -> np.ndarray | None:
    """Gaussian kernel density on `grid` (R's `density(x)` shape, bandwidth bw.nrd0).

    Evaluated directly rather than by R's FFT binning, so values agree with R to the
    binning error only; the figure needs the shape, not 1e-6 agreement.
    """
    x = clean(values)
    bandwidth = bw if bw is not None else bw_nrd0(x)
    if bandwidth is None or len(x) == 0:
        return None
    g = np.asarray(list(grid), dtype=float)
    z = (g[:, None] - x[None, :]) / bandwidth
    return np.exp(-0.5 * z**2).sum(axis=1) / (len(x) * bandwidth * math.sqrt(2 * math.pi))
