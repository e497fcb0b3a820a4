"""Small numeric tools that make a random cohort land on the published figures.

Counts are apportioned exactly (largest remainder), then handed out by a seeded
shuffle; continuous values are sampled, then nudged one step at a time until their sum
hits the target, so the spread stays that of the sample while the mean is the study's.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def round_half_up(value: float) -> int:
    """Python's round() is banker's rounding; cohort sizes should not depend on parity."""
    return int(Decimal(str(value)).quantize(Decimal("1"), rounding=ROUND_HALF_UP))


def apportion(total: int, weights: Mapping[K, float]) -> dict[K, int]:
    """Split `total` in proportion to `weights` (largest remainder, ties in key order).

    With `total` equal to the sum of integer weights this returns the weights: the
    default cohort gets the study's counts exactly, other sizes get them scaled.
    """
    weight_sum = float(sum(weights.values()))
    if total < 0 or weight_sum <= 0:
        raise ValueError("apportion needs a non-negative total and positive weights")
    quotas = {k: total * w / weight_sum for k, w in weights.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    left = total - sum(counts.values())
    order = sorted(quotas, key=lambda k: -(quotas[k] - counts[k]))
    for k in order[:left]:
        counts[k] += 1
    return counts


def scaled(count: int, base: int, n: int) -> int:
    """A count observed in a group of `base`, for a group of `n` (exact when n == base)."""
    return round_half_up(count * n / base) if base else 0


def expand(counts: Mapping[K, int]) -> list[K]:
    return [k for k, c in counts.items() for _ in range(c)]


def shuffled(rng: random.Random, items: Sequence[T]) -> list[T]:
    out = list(items)
    rng.shuffle(out)
    return out


def adjust_to_sum(
    values: Sequence[int], target: int, lo: Sequence[int], hi: Sequence[int], rng: random.Random
) -> list[int]:
    """Move integer values within their bounds until they sum to `target`.

    A common shift first (keeps the spread), then single steps on randomly chosen values
    that still have room, so no one value absorbs the whole correction.
    """
    if not sum(lo) <= target <= sum(hi):
        raise ValueError(f"target sum {target} outside [{sum(lo)}, {sum(hi)}]")
    out = [min(max(v, a), b) for v, a, b in zip(values, lo, hi, strict=True)]
    if out:
        shift = round_half_up((target - sum(out)) / len(out))
        out = [min(max(v + shift, a), b) for v, a, b in zip(out, lo, hi, strict=True)]
    diff = target - sum(out)
    while diff:
        step = 1 if diff > 0 else -1
        room = [i for i, v in enumerate(out) if (v < hi[i] if step > 0 else v > lo[i])]
        i = rng.choice(room)
        out[i] += step
        diff -= step
    return out


def _bounds(bound: int | Sequence[int], n: int) -> list[int]:
    return [bound] * n if isinstance(bound, int) else list(bound)


def fit_mean_ints(
    rng: random.Random,
    draws: Sequence[float],
    mean: float,
    lo: int | Sequence[int],
    hi: int | Sequence[int],
) -> list[int]:
    """Round draws to integers within per-item bounds and make them sum to round(n*mean)."""
    n = len(draws)
    los, his = _bounds(lo, n), _bounds(hi, n)
    target = min(max(round_half_up(mean * n), sum(los)), sum(his))
    return adjust_to_sum([round_half_up(d) for d in draws], target, los, his, rng)


def fit_mean_tenths(
    rng: random.Random, draws: Sequence[float], mean: float, lo: float, hi: float
) -> list[float]:
    """Like `fit_mean_ints` on one-decimal values (scores are recorded to 0.1)."""
    tenths = fit_mean_ints(
        rng, [d * 10 for d in draws], mean * 10, round_half_up(lo * 10), round_half_up(hi * 10)
    )
    return [t / 10 for t in tenths]


def calibrated_ints(
    rng: random.Random,
    n: int,
    mean: float,
    sd: float,
    lo: int | Sequence[int],
    hi: int | Sequence[int],
) -> list[int]:
    """n integers drawn from N(mean, sd) within per-item bounds, summing to round(n*mean)."""
    return fit_mean_ints(rng, [rng.gauss(mean, sd) for _ in range(n)], mean, lo, hi)


def calibrated_tenths(
    rng: random.Random, n: int, mean: float, sd: float, lo: float, hi: float
) -> list[float]:
    """n one-decimal values drawn from N(mean, sd) within bounds, with the mean fixed."""
    return fit_mean_tenths(rng, [rng.gauss(mean, sd) for _ in range(n)], mean, lo, hi)
