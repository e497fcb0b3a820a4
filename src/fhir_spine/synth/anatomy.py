"""Spinal levels: where a lesion sits, which levels a construct spans, how SINS adds up.

Kept consistent on purpose: the construct always contains the lesion, and the SINS
location points follow from the lesion's level, so no record contradicts another.
"""

from __future__ import annotations

import itertools
import random

from fhir_spine.synth.vocab import LEVELS, SINS_COMPONENTS, sins_location_points

# Thoracolumbar index levels the study treated, weighted towards the junction.
_THORACOLUMBAR_WEIGHTS: dict[str, int] = {
    "T3": 1, "T4": 2, "T5": 2, "T6": 3, "T7": 3, "T8": 4, "T9": 4, "T10": 5, "T11": 6,
    "T12": 7, "L1": 7, "L2": 5, "L3": 4, "L4": 3, "L5": 2,
}
_CERVICAL_INDEX = ("C3", "C4", "C5", "C6")
_THORACOLUMBAR_SPAN = (LEVELS.index("T1"), LEVELS.index("S"))
_CERVICAL_SPAN = (LEVELS.index("C2"), LEVELS.index("T2"))


def draw_lesion(rng: random.Random, involved: int, cervical: bool = False) -> tuple[str, ...]:
    """Contiguous lesion levels, `involved` long, starting at a weighted index level."""
    if cervical:
        first = rng.choice(_CERVICAL_INDEX)
    else:
        names = list(_THORACOLUMBAR_WEIGHTS)
        first = rng.choices(names, weights=[_THORACOLUMBAR_WEIGHTS[n] for n in names])[0]
    start = LEVELS.index(first)
    last_allowed = (_CERVICAL_SPAN if cervical else _THORACOLUMBAR_SPAN)[1]
    start = min(start, last_allowed - involved + 1)
    return LEVELS[start : start + involved]


def construct_window(
    rng: random.Random, lesion: tuple[str, ...], length: int
) -> tuple[str, ...]:
    """`length` contiguous levels containing the lesion, preferably with a level either side."""
    cervical = lesion[0].startswith("C")
    lo, hi = _CERVICAL_SPAN if cervical else _THORACOLUMBAR_SPAN
    first, last = LEVELS.index(lesion[0]), LEVELS.index(lesion[-1])
    starts = [s for s in range(lo, hi - length + 2) if s <= first and s + length - 1 >= last]
    if not starts:
        raise ValueError(f"no {length}-level construct fits lesion {lesion}")
    inner = [s for s in starts if s < first and s + length - 1 > last]
    start = rng.choice(inner or starts)
    return LEVELS[start : start + length]


def sins_location(lesion: tuple[str, ...]) -> int:
    return max(sins_location_points(level) for level in lesion)


def sins_bounds(location: int) -> tuple[int, int]:
    """Totals reachable with this location, within the study's 7..17 (indeterminate+)."""
    top = location + sum(max(v) for v in SINS_COMPONENTS.values())
    return max(7, location), min(17, top)


_COMBOS: list[tuple[int, ...]] = list(itertools.product(*SINS_COMPONENTS.values()))


def sins_components(rng: random.Random, total: int, location: int) -> dict[str, int]:
    """Six components (location given) that sum to `total`, each within its own scale."""
    rest = total - location
    options = [c for c in _COMBOS if sum(c) == rest]
    if not options:
        raise ValueError(f"SINS total {total} impossible with location {location}")
    # Weight towards mechanical pain (3) and lytic lesions: the study's typical patient.
    weights = [1 + 2 * (c[0] == 3) + (c[1] == 2) for c in options]
    chosen = rng.choices(options, weights=weights)[0]
    out = {"sins_location": location}
    out.update(zip(SINS_COMPONENTS, chosen, strict=True))
    return out
