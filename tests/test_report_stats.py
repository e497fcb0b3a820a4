"""The report's statistics against independent reference values.

Every reference is computed here from first principles, not by calling the code under
test: Welch's formula with the t distribution from the regularized incomplete beta;
rank-sum and signed-rank null distributions by brute-force enumeration of rank subsets
and sign vectors; Fisher's p by enumerating every table with the observed margins and
exact rational hypergeometric probabilities; normal approximations by their formulas.
When R (`Rscript`) is on PATH the same cases are also checked against R itself.
"""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import special

from fhir_spine.report import stats as st

TOL = 1e-6


# --------------------------------------------------------------------------- references

def t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t: I_{df/(df+t^2)}(df/2, 1/2)."""
    return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


def t_quantile(prob: float, df: float) -> float:
    """Upper quantile by bisection on the incomplete-beta CDF (prob > 0.5)."""
    target = 2 * (1 - prob)  # two-sided tail mass at the quantile
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def avg_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def tie_term(ranks: list[float]) -> float:
    counts: dict[float, int] = {}
    for r in ranks:
        counts[r] = counts.get(r, 0) + 1
    return float(sum(t**3 - t for t in counts.values()))


def ref_welch(x: list[float], y: list[float]) -> dict[str, float]:
    nx, ny = len(x), len(y)
    mx, my = sum(x) / nx, sum(y) / ny
    vx = sum((v - mx) ** 2 for v in x) / (nx - 1)
    vy = sum((v - my) ** 2 for v in y) / (ny - 1)
    se2 = vx / nx + vy / ny
    df = se2**2 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1))
    t = (mx - my) / math.sqrt(se2)
    q = t_quantile(0.975, df)
    return {"t": t, "df": df, "p": t_two_sided(t, df), "est": mx - my,
            "lo": mx - my - q * math.sqrt(se2), "hi": mx - my + q * math.sqrt(se2)}


def ref_rank_sum(x: list[float], y: list[float]) -> tuple[float, float, bool]:
    """(W, p, exact?) following the textbook recipe R documents for wilcox.test."""
    nx, ny = len(x), len(y)
    ranks = avg_ranks(x + y)
    w = sum(ranks[:nx]) - nx * (nx + 1) / 2
    ties = len(set(ranks)) < len(ranks)
    if nx < 50 and ny < 50 and not ties:
        n = nx + ny
        dist = [sum(c) - nx * (nx + 1) // 2 for c in itertools.combinations(range(1, n + 1),
                                                                             nx)]
        le = sum(1 for d in dist if d <= w) / len(dist)
        ge = sum(1 for d in dist if d >= w) / len(dist)
        return w, min(1.0, 2 * min(le, ge)), True
    n = nx + ny
    sigma = math.sqrt(nx * ny / 12 * ((n + 1) - tie_term(ranks) / (n * (n - 1))))
    diff = w - nx * ny / 2
    z = (diff - math.copysign(0.5, diff) if diff else 0.0) / sigma
    return w, min(1.0, normal_two_sided(z)), False


def ref_signed_rank(x: list[float], y: list[float]) -> tuple[float, float, bool]:
    d = [a - b for a, b in zip(x, y, strict=True)]
    zeros = any(v == 0 for v in d)
    d = [v for v in d if v != 0]
    n = len(d)
    ranks = avg_ranks([abs(v) for v in d])
    v_stat = sum(r for r, v in zip(ranks, d, strict=True) if v > 0)
    ties = len(set(ranks)) < len(ranks)
    if n < 50 and not ties and not zeros:
        dist = [sum(r for r, s in zip(range(1, n + 1), signs, strict=True) if s)
                for signs in itertools.product((0, 1), repeat=n)]
        le = sum(1 for s in dist if s <= v_stat) / len(dist)
        ge = sum(1 for s in dist if s >= v_stat) / len(dist)
        return v_stat, min(1.0, 2 * min(le, ge)), True
    sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - tie_term(ranks) / 48)
    diff = v_stat - n * (n + 1) / 4
    z = (diff - math.copysign(0.5, diff) if diff else 0.0) / sigma
    return v_stat, min(1.0, normal_two_sided(z)), False


def table_prob(table: list[list[int]]) -> Fraction:
    rows = [sum(r) for r in table]
    cols = [sum(c) for c in zip(*table, strict=True)]
    num = math.prod(math.factorial(v) for v in rows + cols)
    den = math.factorial(sum(rows)) * math.prod(math.factorial(v) for r in table for v in r)
    return Fraction(num, den)


def all_tables(rows: list[int], cols: list[int]) -> list[list[list[int]]]:
    """Brute force: every (r-1) x (c-1) block of free cells, completed from the margins."""
    r, c = len(rows), len(cols)
    ranges = [range(min(rows[i], cols[j]) + 1) for i in range(r - 1) for j in range(c - 1)]
    out = []
    for free in itertools.product(*ranges):
        t = [[0] * c for _ in range(r)]
        for k, v in enumerate(free):
            t[k // (c - 1)][k % (c - 1)] = v
        ok = True
        for i in range(r - 1):
            t[i][c - 1] = rows[i] - sum(t[i][: c - 1])
            ok &= t[i][c - 1] >= 0
        for j in range(c):
            t[r - 1][j] = cols[j] - sum(t[i][j] for i in range(r - 1))
            ok &= t[r - 1][j] >= 0
        if ok:
            out.append(t)
    return out


def ref_fisher(table: list[list[int]]) -> float:
    rows = [sum(r) for r in table]
    cols = [sum(c) for c in zip(*table, strict=True)]
    p_obs = table_prob(table)
    tables = all_tables(rows, cols)
    assert sum(table_prob(t) for t in tables) == 1  # the enumeration is complete
    return float(sum(p for t in tables if (p := table_prob(t)) <= p_obs))


def ref_chisq(table: list[list[int]]) -> tuple[float, float, int]:
    rows = [sum(r) for r in table]
    cols = [sum(c) for c in zip(*table, strict=True)]
    n = sum(rows)
    x2 = sum((table[i][j] - rows[i] * cols[j] / n) ** 2 / (rows[i] * cols[j] / n)
             for i in range(len(rows)) for j in range(len(cols)))
    df = (len(rows) - 1) * (len(cols) - 1)
    return x2, float(special.gammaincc(df / 2, x2 / 2)), df


# --------------------------------------------------------------------------- descriptive

@pytest.mark.parametrize("values", [[1, 2, 3, 4], [120, 120, 140, 210], [5.5],
                                    [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], list(range(10))])
@pytest.mark.parametrize("prob", [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])
def test_quantile_types_7_and_2(values: list[float], prob: float) -> None:
    assert st.quantile(values, prob, 7) == pytest.approx(
        float(np.quantile(values, prob, method="linear")), abs=1e-12)
    assert st.quantile(values, prob, 2) == pytest.approx(
        float(np.quantile(values, prob, method="averaged_inverted_cdf")), abs=1e-12)


def test_quantile_known_values() -> None:
    # R: quantile(c(120,120,140,210), .75) is 157.5 (type 7) and 175 (type 2)
    assert st.quantile([120, 120, 140, 210], 0.75) == 157.5
    assert st.quantile([120, 120, 140, 210], 0.75, qtype=2) == 175


def test_median_iqr_and_missing() -> None:
    m = st.median_iqr([4, None, 1, float("nan"), 3, 2])
    assert (m.n, m.median, m.q1, m.q3) == (4, 2.5, 1.75, 3.25)
    assert st.median_iqr([]).median is None
    assert st.median_iqr([]).note


@pytest.mark.parametrize("values", [[30, 24, 41, 35, 28], [1.5, 2.5], [0.1, 0.2, 0.4, 0.8],
                                    list(range(1, 66))])
def test_mean_ci_t_interval(values: list[float]) -> None:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    m = st.mean_ci(values)
    assert m.mean == pytest.approx(mean, abs=TOL)
    assert m.low == pytest.approx(mean - half, abs=TOL)
    assert m.high == pytest.approx(mean + half, abs=TOL)


@pytest.mark.parametrize("values,has_mean", [([], False), ([7], True), ([3, 3, 3], True)])
def test_mean_ci_small_and_constant(values: list[float], has_mean: bool) -> None:
    m = st.mean_ci(values)
    assert (m.mean is not None) == has_mean
    assert m.low is None and m.high is None
    assert m.note


# --------------------------------------------------------------------------- Welch

@pytest.mark.parametrize("x,y", [
    ([30, 24, 41, 35, 28, 19, 33], [40, 44, 37, 39, 45, 41, 36, 50, 38]),
    ([1.1, 2.2], [3.3, 4.4, 5.5]),
    ([5, 5, 5, 5], [1, 2, 3, 4, 5]),              # one constant group is fine
    ([0.001, 0.002, 0.0031], [100.0, 200.0, 150.0, 175.0]),
])
def test_welch_matches_formula(x: list[float], y: list[float]) -> None:
    ref = ref_welch(x, y)
    r = st.welch_t_test(x, y)
    assert r.statistic == pytest.approx(ref["t"], abs=TOL)
    assert r.df == pytest.approx(ref["df"], abs=TOL)
    assert r.p_value == pytest.approx(ref["p"], abs=TOL)
    assert r.estimate == pytest.approx(ref["est"], abs=TOL)
    assert r.ci is not None
    assert r.ci[0] == pytest.approx(ref["lo"], abs=TOL)
    assert r.ci[1] == pytest.approx(ref["hi"], abs=TOL)


@pytest.mark.parametrize("x,y", [([], [1, 2, 3]), ([1], [1, 2, 3]), ([1, 2], [5]),
                                 ([4, 4, 4], [4, 4]), ([2, 2], [2, 2, 2, 2])])
def test_welch_tiny_or_constant_gives_none_with_reason(x: list[float], y: list[float]) -> None:
    r = st.welch_t_test(x, y)
    assert r.p_value is None and r.note


def test_welch_ignores_missing() -> None:
    a = st.welch_t_test([1, 2, None, 3, float("nan")], [4, 5, 7])
    b = st.welch_t_test([1, 2, 3], [4, 5, 7])
    assert a == b


# --------------------------------------------------------------------------- rank-sum

@pytest.mark.parametrize("x,y", [
    ([1.2, 3.4, 5.6], [2.3, 4.5, 6.7, 7.8]),                  # exact, no ties
    ([10, 20, 30, 40, 50, 60], [1, 2, 3, 4, 5, 6, 7]),         # exact, extreme
    ([1, 2, 3, 4, 5, 6, 7, 8], [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]),  # centre-ish
    ([1, 2, 2, 3], [2, 3, 4, 4, 5]),                          # ties -> normal approx
    ([3, 3, 3, 1], [3, 3, 2]),                                # heavy ties
    ([1, 2], [3, 4]),                                         # smallest exact
])
def test_rank_sum_matches_reference(x: list[float], y: list[float]) -> None:
    w, p, exact = ref_rank_sum(x, y)
    r = st.wilcoxon_rank_sum(x, y)
    assert r.statistic == pytest.approx(w, abs=TOL)
    assert r.p_value == pytest.approx(p, abs=TOL)
    assert (r.method == "exact") == exact


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.integers(0, 12), min_size=2, max_size=7),
       hst.lists(hst.integers(0, 12), min_size=2, max_size=7))
def test_rank_sum_property(x: list[int], y: list[int]) -> None:
    if len(set(x + y)) == 1:
        assert st.wilcoxon_rank_sum(x, y).p_value is None
        return
    w, p, _ = ref_rank_sum([float(v) for v in x], [float(v) for v in y])
    r = st.wilcoxon_rank_sum(x, y)
    assert r.statistic == pytest.approx(w, abs=TOL)
    assert r.p_value == pytest.approx(p, abs=TOL)


def test_rank_sum_exact_distribution_counts() -> None:
    for m, n in [(1, 1), (2, 3), (4, 4), (3, 6)]:
        counts = st.rank_sum_counts(m, n)
        brute = [0] * (m * n + 1)
        for c in itertools.combinations(range(1, m + n + 1), m):
            brute[sum(c) - m * (m + 1) // 2] += 1
        assert list(counts) == brute


def test_rank_sum_switches_to_normal_at_50() -> None:
    rng = np.random.default_rng(7)
    x = list(rng.permutation(200)[:50] + 0.5)
    y = list(rng.permutation(200)[:30] + 0.25)   # no ties, but nx = 50
    r = st.wilcoxon_rank_sum(x, y)
    w, p, exact = ref_rank_sum(x, y)
    assert not exact and r.method.startswith("normal approximation")
    assert r.p_value == pytest.approx(p, abs=TOL)
    r49 = st.wilcoxon_rank_sum(x[:49], y)
    assert r49.method == "exact"


def test_rank_sum_exact_larger_against_scipy() -> None:
    from scipy.stats import mannwhitneyu
    rng = np.random.default_rng(11)
    x, y = list(rng.normal(0, 1, 21)), list(rng.normal(0.6, 1, 44))
    r = st.wilcoxon_rank_sum(x, y)
    ref = mannwhitneyu(x, y, alternative="two-sided", method="exact")
    assert r.method == "exact"
    assert r.statistic == pytest.approx(float(ref.statistic))
    assert r.p_value == pytest.approx(float(ref.pvalue), abs=TOL)


@pytest.mark.parametrize("x,y", [([], [1, 2]), ([1], [2, 3, 4]), ([1, 1], [1, 1, 1])])
def test_rank_sum_tiny_or_constant(x: list[float], y: list[float]) -> None:
    r = st.wilcoxon_rank_sum(x, y)
    assert r.p_value is None and r.note


# --------------------------------------------------------------------------- signed-rank

@pytest.mark.parametrize("x,y", [
    ([5.1, 6.2, 7.9, 3.3, 8.8, 2.4], [4.0, 6.0, 8.5, 1.0, 5.5, 2.0]),   # exact
    ([10, 12, 14, 16, 18], [1, 2, 3, 4, 5]),                            # all positive
    ([1, 2, 3, 4, 5, 6], [1, 0, 3, 2, 5, 3]),                           # zeros -> normal
    ([4, 6, 8, 10], [3, 5, 7, 9]),                                      # ties in |d|
    ([1, 2], [2, 1]),                                                   # tiny, ties
    ([7, 3], [2, 1]),                                                   # n = 2 exact
])
def test_signed_rank_matches_reference(x: list[float], y: list[float]) -> None:
    v, p, exact = ref_signed_rank(x, y)
    r = st.wilcoxon_signed_rank(x, y)
    assert r.statistic == pytest.approx(v, abs=TOL)
    assert r.p_value == pytest.approx(p, abs=TOL)
    assert (r.method == "exact") == exact


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.tuples(hst.integers(-6, 6), hst.integers(-6, 6)), min_size=2,
                 max_size=10))
def test_signed_rank_property(pairs: list[tuple[int, int]]) -> None:
    x, y = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    r = st.wilcoxon_signed_rank(x, y)
    if all(a == b for a, b in pairs):
        assert r.p_value is None and r.note
        return
    v, p, _ = ref_signed_rank(x, y)
    assert r.statistic == pytest.approx(v, abs=TOL)
    assert r.p_value == pytest.approx(p, abs=TOL)


def test_signed_rank_counts_and_larger_exact() -> None:
    from scipy.stats import wilcoxon
    for n in range(0, 11):
        brute = [0] * (n * (n + 1) // 2 + 1)
        for signs in itertools.product((0, 1), repeat=n):
            brute[sum(r for r, s in zip(range(1, n + 1), signs, strict=True) if s)] += 1
        assert list(st.signed_rank_counts(n)) == brute
    rng = np.random.default_rng(5)
    a, b = rng.normal(15, 5, 40), rng.normal(20, 6, 40)
    r = st.wilcoxon_signed_rank(list(a), list(b))
    ref = wilcoxon(a, b, method="exact")
    assert r.method == "exact"
    assert r.p_value == pytest.approx(float(ref.pvalue), abs=TOL)


def test_signed_rank_drops_incomplete_pairs_and_zero_cases() -> None:
    r = st.wilcoxon_signed_rank([1, None, 3, 4], [0, 5, float("nan"), 2])
    v, p, _ = ref_signed_rank([1, 4], [0, 2])
    assert r.p_value == pytest.approx(p, abs=TOL)
    assert st.wilcoxon_signed_rank([1], [2]).p_value is None
    assert st.wilcoxon_signed_rank([], []).p_value is None
    zero = st.wilcoxon_signed_rank([3, 4, 5], [3, 4, 5])
    assert zero.p_value is None and zero.note and "zero" in zero.note


# --------------------------------------------------------------------------- Fisher / chi2

@pytest.mark.parametrize("table", [
    [[3, 7], [8, 2]], [[16, 26], [5, 18]], [[2, 1], [1, 2]], [[0, 5], [5, 0]],
    [[10, 0], [0, 1]], [[1, 1], [1, 1]],
    [[8, 8], [10, 25], [3, 11]],                 # ASA 1/2/3 by strategy
    [[9, 26], [12, 18]], [[17, 37], [4, 7]],
    [[2, 0, 1], [0, 3, 1], [1, 1, 2]],            # 3 x 3
    [[4, 1, 0, 2], [1, 3, 2, 0]],                 # 2 x 4
    [[6, 1], [0, 3], [4, 2], [1, 1], [0, 1]],     # 5 x 2
])
def test_fisher_matches_enumeration(table: list[list[int]]) -> None:
    r = st.fisher_exact(table)
    assert r.p_value == pytest.approx(ref_fisher(table), abs=TOL)


@settings(max_examples=40, deadline=None)
@given(hst.integers(2, 3).flatmap(lambda r: hst.lists(
    hst.lists(hst.integers(0, 5), min_size=2, max_size=2), min_size=r, max_size=r)))
def test_fisher_property(table: list[list[int]]) -> None:
    rows = [sum(r) for r in table]
    cols = [sum(c) for c in zip(*table, strict=True)]
    r = st.fisher_exact(table)
    if sum(1 for v in rows if v) < 2 or sum(1 for v in cols if v) < 2:
        assert r.p_value is None and r.note
        return
    kept = [row for row in table if sum(row) > 0]
    kept = [[v for v, c in zip(row, cols, strict=True) if c > 0] for row in kept]
    assert r.p_value == pytest.approx(ref_fisher(kept), abs=TOL)


def test_fisher_degenerate_and_size_guard() -> None:
    assert st.fisher_exact([[5, 3]]).note
    assert st.fisher_exact([[5], [3]]).note
    assert st.fisher_exact([[0, 0], [0, 0]]).note
    big = st.fisher_exact([[20, 20, 20], [20, 20, 20], [20, 20, 20]], max_tables=1000)
    assert big.p_value is None and big.note and "too large" in big.note


@pytest.mark.parametrize("table", [[[16, 26], [5, 18]], [[20, 30], [25, 15]],
                                   [[12, 15, 10], [9, 20, 14]]])
def test_chisq_matches_formula(table: list[list[int]]) -> None:
    x2, p, df = ref_chisq(table)
    r = st.chisq_test(table)
    assert r.statistic == pytest.approx(x2, abs=TOL)
    assert r.df == df
    assert r.p_value == pytest.approx(p, abs=TOL)


def test_categorical_rule_chooses_test() -> None:
    big = [[16, 26], [10, 18]]           # all expected >= 5 -> chi-square
    assert st.categorical_test(big).test.startswith("Pearson")
    small = [[8, 8], [10, 25], [3, 11]]  # an expected count < 5 -> Fisher
    assert st.categorical_test(small).test.startswith("Fisher")
    assert st.categorical_test(small).p_value == pytest.approx(ref_fisher(small), abs=TOL)
    # an all-zero level (e.g. a category nobody has) is dropped, not a zero expected count
    with_empty = [[16, 26], [0, 0], [10, 18]]
    assert st.categorical_test(with_empty).p_value == pytest.approx(
        ref_chisq(big)[1], abs=TOL)


# --------------------------------------------------------------------------- density

def test_bw_nrd0_formula() -> None:
    x = [2.0, 3.0, 5.0, 7.0, 11.0, 13.0]
    sd = float(np.std(x, ddof=1))
    iqr = float(np.quantile(x, 0.75) - np.quantile(x, 0.25))
    assert st.bw_nrd0(x) == pytest.approx(0.9 * min(sd, iqr / 1.34) * len(x) ** -0.2)
    assert st.bw_nrd0([4, 4, 4]) == pytest.approx(0.9 * 4 * 3 ** -0.2)  # R's fallback
    assert st.bw_nrd0([1]) is None
    dens = st.gaussian_density(x, np.linspace(-30, 50, 4001))
    assert dens is not None
    assert float(np.trapezoid(dens, np.linspace(-30, 50, 4001))) == pytest.approx(1, abs=1e-4)


# --------------------------------------------------------------------------- R itself

def test_against_r() -> None:
    """R itself (installed by tests/setup.sh from Debian's r-base-core) as the referee."""
    assert shutil.which("Rscript"), "Rscript not found: run tests/setup.sh (installs r-base-core)"
    x = [30, 24, 41, 35, 28, 19, 33]
    y = [40, 44, 37, 39, 45, 41, 36, 50, 38]
    a = [5.1, 6.2, 7.9, 3.3, 8.8, 2.4]
    b = [4.0, 6.0, 8.5, 1.0, 5.5, 2.0]
    xt = [1, 2, 2, 3]
    yt = [2, 3, 4, 4, 5]
    code = (
        f"x <- c({','.join(map(str, x))}); y <- c({','.join(map(str, y))});"
        f"a <- c({','.join(map(str, a))}); b <- c({','.join(map(str, b))});"
        f"xt <- c({','.join(map(str, xt))}); yt <- c({','.join(map(str, yt))});"
        "t <- t.test(x, y);"
        "out <- c(t$statistic, t$parameter, t$p.value, t$conf.int,"
        " wilcox.test(x, y)$p.value, suppressWarnings(wilcox.test(xt, yt)$p.value),"
        " wilcox.test(a, b, paired = TRUE)$p.value,"
        " fisher.test(matrix(c(8, 10, 3, 8, 25, 11), ncol = 2))$p.value,"
        " chisq.test(matrix(c(16, 5, 26, 18), ncol = 2), correct = FALSE)$p.value);"
        "cat(sprintf('%.15g', out), sep = '\\n')"
    )
    res = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True,
                         check=True, timeout=120)
    r_vals = [float(v) for v in res.stdout.split()]
    welch = st.welch_t_test(x, y)
    assert welch.ci is not None
    ours = [welch.statistic, welch.df, welch.p_value, welch.ci[0], welch.ci[1],
            st.wilcoxon_rank_sum(x, y).p_value, st.wilcoxon_rank_sum(xt, yt).p_value,
            st.wilcoxon_signed_rank(a, b).p_value,
            st.fisher_exact([[8, 8], [10, 25], [3, 11]]).p_value,
            st.chisq_test([[16, 26], [5, 18]]).p_value]
    assert len(ours) == len(r_vals)
    for mine, theirs in zip(ours, r_vals, strict=True):
        assert mine == pytest.approx(theirs, abs=TOL)
