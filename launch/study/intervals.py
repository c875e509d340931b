"""Uncertainty over seeds for the study's claims: bootstrap intervals and verdicts.

A claim of the paper compares a statistic of the Amos runs with one of the AdamW runs over
the same seeds: the final validation loss (Amos lower: the difference below 0) and the
step ratio (Amos' seed-mean curve reaches AdamW's mean final loss within 70% of the steps
AdamW's seed-mean curve takes: the ratio below 0.70). Each arm's seeds are resampled
together (the runs of one seed number form a pair), the statistic is recomputed on every
resample, and the interval is the central `level` of those values: a percentile
bootstrap over seeds (Efron & Tibshirani 1993, ch. 13), as AlgoPerf reports its
per-workload spreads over trials.

The quantiles are order statistics of the resampled values (numpy's 'inverted_cdf'), not
interpolations between them: a statistic can be infinite (an Amos curve that never
reaches the target: ratio +inf), and an interpolation between inf and a finite value is
nan. With 5 seeds there are 126 distinct resamples, so the interval is coarse; it is
what 5 seeds can say.

A verdict reads an interval against the claim's threshold: "met" when the whole interval
is on the claim's side, "not met" when the whole interval is on the other side,
"inconclusive" when it contains the threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from launch.study.compare import first_reach, mean_curve

LEVEL = 0.95
RESAMPLES = 10_000
STEP_RATIO_CLAIM = 0.70  # The paper: Amos within 70% of AdamW's steps.


@dataclasses.dataclass(frozen=True)
class Interval:
    """A statistic over all seeds (`point`) and its bootstrap interval [low, high]."""

    point: float
    low: float
    high: float
    level: float
    seeds: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def bootstrap(
    seeds: int,
    statistic: Callable[[np.ndarray], float],
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    rng_seed: int = 0,
) -> Interval:
    """The percentile bootstrap interval of `statistic(indices)` over `seeds` seeds:
    `statistic` gets an array of seed indices (0 .. seeds-1, drawn with replacement) and
    computes its value on those seeds' runs. Deterministic for a given `rng_seed`.

    The statistics here are means over the drawn seeds, so they depend on which seeds
    were drawn and how often, not on the order: each resample is passed sorted and each
    distinct one computed once (126 of them for 5 seeds, against 10,000 draws; the step
    ratio's seed-mean curves made this the slowest part of a study's summary)."""
    if seeds < 2:
        raise ValueError(f"a bootstrap over seeds needs at least 2 seeds, got {seeds}")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    rng = np.random.default_rng(rng_seed)
    draws = np.sort(rng.integers(0, seeds, size=(resamples, seeds)), axis=1)
    distinct, which = np.unique(draws, axis=0, return_inverse=True)
    values = np.array([statistic(idx) for idx in distinct], dtype=float)[which.ravel()]
    if np.isnan(values).any():
        raise ValueError("the statistic is nan on some resample")
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
    return Interval(float(statistic(np.arange(seeds))), float(low), float(high), level, seeds)


def final_loss_difference(
    amos_final: Sequence[float], adamw_final: Sequence[float], **kw
) -> Interval:
    """Mean over seeds of Amos' final loss minus AdamW's, paired by seed (below 0: Amos
    better)."""
    a, b = np.asarray(amos_final, float), np.asarray(adamw_final, float)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} Amos seeds against {len(b)} AdamW seeds: pair them")
    return bootstrap(len(a), lambda idx: float(np.mean(a[idx] - b[idx])), **kw)


def step_ratio(
    amos_curves: Sequence[list[dict]],
    adamw_curves: Sequence[list[dict]],
    adamw_final: Sequence[float],
    *,
    loss_key: str = "loss",
    **kw,
) -> Interval:
    """Steps for Amos' seed-mean eval curve to reach AdamW's mean final loss, over the
    steps AdamW's seed-mean curve takes to reach it (compare.first_reach, interpolated);
    +inf where Amos' curve never reaches it, on all seeds or a resample of them."""
    if not len(amos_curves) == len(adamw_curves) == len(adamw_final):
        raise ValueError("step_ratio: one curve and one final loss per seed for each arm")
    finals = np.asarray(adamw_final, float)

    def ratio(idx: np.ndarray) -> float:
        target = float(np.mean(finals[idx]))
        amos = first_reach(
            mean_curve([amos_curves[i] for i in idx], loss_key), target, "step", loss_key
        )
        adamw = first_reach(
            mean_curve([adamw_curves[i] for i in idx], loss_key), target, "step", loss_key
        )
        if amos is None:
            return math.inf
        if not adamw:  # Cannot happen for a target of its own mean final loss, but be clear.
            raise ValueError("AdamW's seed-mean curve does not reach its own mean final loss")
        return amos / adamw

    return bootstrap(len(finals), ratio, **kw)


def per_seed_step_ratios(
    amos_curves: Sequence[list[dict]],
    adamw_curves: Sequence[list[dict]],
    adamw_final: Sequence[float],
    loss_key: str = "loss",
) -> list[float]:
    """Per seed: Amos' curve against that seed's AdamW final loss, over the steps AdamW's
    own curve takes to reach it (+inf where Amos never does)."""
    out = []
    for amos, adamw, target in zip(amos_curves, adamw_curves, adamw_final, strict=True):
        a = first_reach(amos, target, "step", loss_key)
        b = first_reach(adamw, target, "step", loss_key)
        out.append(math.inf if a is None else a / b)
    return out


def verdict(
    interval: Interval, threshold: float, claim: str = "below", strict: bool = False
) -> str:
    """'met', 'not met' or 'inconclusive': the claim is that the statistic is at most (or
    at least) `threshold` (the paper's "within 70% of the steps"), or with `strict` below
    (above) it (a lower loss: a difference of exactly 0 is no win); met when the whole
    interval is, not met when none of it is."""
    if claim not in ("below", "above"):
        raise ValueError(f"claim={claim!r}: 'below' or 'above'")
    low, high = (interval.low, interval.high)
    if claim == "above":
        low, high, threshold = -high, -low, -threshold
    if high < threshold or (high == threshold and not strict):
        return "met"
    if low > threshold or (low == threshold and strict):
        return "not met"
    return "inconclusive"
