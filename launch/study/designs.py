"""Quasi-random tuning designs: the same points for every optimizer, each mapped to its
own knobs' ranges (the study's second edition, docs/study.md, "The study's second edition").

A design of `n` trials over `d` knobs is a scrambled Sobol sequence (scipy.stats.qmc,
Owen scrambling with a fixed seed): its points cover the unit cube more evenly than
random draws, as in AlgoPerf's external tuning, and the same seed gives the same
points, so a resumed sweep plans the same trials. `n` is a power of 2 (a Sobol
sequence's balance holds for those). A knob's range is `Knob(name, low, high, scale)`:
'log' spaces values geometrically (a learning rate, xi), 'linear' evenly (a warmup
fraction), 'log1m' geometrically in 1 - value (a decay rate near 1: beta 0.999 and 0.95
are as far apart as 1e-3 and 5e-2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import qmc

SCALES = ("log", "linear", "log1m")


@dataclasses.dataclass(frozen=True)
class Knob:
    """One tuned value: its gin binding, its range [low, high] and how it is spaced."""

    name: str
    low: float
    high: float
    scale: str = "log"

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"knob {self.name}: scale {self.scale!r} is not one of {SCALES}")
        if not self.low < self.high:
            raise ValueError(f"knob {self.name}: low {self.low} must be below high {self.high}")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"knob {self.name}: a log scale needs low > 0, got {self.low}")
        if self.scale == "log1m" and not 0 <= self.low < self.high < 1:
            raise ValueError(f"knob {self.name}: a log1m scale needs 0 <= low < high < 1")

    def value(self, u: float) -> float:
        """The knob's value at `u` in [0, 1)."""
        if self.scale == "linear":
            return self.low + u * (self.high - self.low)
        if self.scale == "log":
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        # log1m: 1 - value goes geometrically from 1 - low down to 1 - high.
        top, bottom = math.log(1 - self.low), math.log(1 - self.high)
        return 1 - math.exp(top + u * (bottom - top))


def unit_points(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """`n` points of the scrambled Sobol sequence in [0, 1)^dims."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sobol design needs a power of 2 of trials, got {n}")
    return qmc.Sobol(d=dims, scramble=True, seed=seed).random(n)


def design(n: int, knobs: Sequence[Knob], seed: int = 0) -> list[dict[str, float]]:
    """`n` trials: each a {knob name: value}, from the same unit points whatever the
    knobs, so that two optimizers with as many knobs get designs of the same shape."""
    points = unit_points(n, len(knobs), seed)
    return [
        {k.name: k.value(float(u)) for k, u in zip(knobs, point, strict=True)} for point in points
    ]
