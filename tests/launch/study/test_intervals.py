"""Bootstrap intervals over seeds and the verdicts read from them (launch/study/intervals.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from launch.study import intervals


def curve(losses: list[float], every: int = 100) -> list[dict]:
    return [
        {"step": every * (i + 1), "loss": loss, "train_time_s": float(i + 1)}
        for i, loss in enumerate(losses)
    ]


def test_the_interval_of_a_mean_difference_over_five_seeds():
    amos = [2.00, 2.10, 1.95, 2.05, 2.00]
    adamw = [2.10, 2.15, 2.05, 2.20, 2.05]  # Amos lower on every seed, by 0.05 to 0.15.
    got = intervals.final_loss_difference(amos, adamw, resamples=4000)
    assert got.point == pytest.approx(-0.09)
    # Resampled means of the five differences stay within their range, and cover the mean.
    assert -0.15 <= got.low < got.point < got.high <= -0.05
    assert intervals.verdict(got, 0.0) == "met"
    # The same seeds drawn again with the same rng seed: the same interval.
    assert intervals.final_loss_difference(amos, adamw, resamples=4000) == got


def test_each_distinct_resample_is_computed_once_with_the_naive_interval():
    """126 multisets of 5 seeds: the statistic runs once per distinct sorted resample (plus
    once on all seeds), and the interval is the one of evaluating every draw."""
    values = np.array([3, 1, 4, 1, 5])  # Integer sums: the order of a sum cannot matter.
    calls = []

    def total(idx: np.ndarray) -> float:
        calls.append(tuple(idx))
        return float(values[idx].sum())

    got = intervals.bootstrap(5, total, resamples=10_000, rng_seed=3)
    resampled = calls[:-1]  # The last call is the point: every seed once.
    assert len(resampled) == len(set(resampled)) <= 126
    assert all(list(c) == sorted(c) for c in calls)
    draws = np.random.default_rng(3).integers(0, 5, size=(10_000, 5))
    naive = np.quantile(values[draws].sum(axis=1), [0.025, 0.975], method="inverted_cdf")
    assert (got.low, got.high) == tuple(naive) and got.point == 14


def test_a_difference_whose_sign_depends_on_the_seed_is_inconclusive():
    amos = [2.00, 2.30, 1.90, 2.20, 2.00]
    adamw = [2.10, 2.10, 2.10, 2.10, 2.10]  # Differences -0.1, 0.2, -0.2, 0.1, -0.1.
    got = intervals.final_loss_difference(amos, adamw)
    assert got.low < 0 < got.high
    assert intervals.verdict(got, 0.0) == "inconclusive"
    worse = intervals.final_loss_difference([2.3] * 3, [2.1, 2.0, 2.2])
    assert intervals.verdict(worse, 0.0) == "not met"


def test_step_ratio_per_seed_and_its_interval():
    # AdamW ends at 2.0 on every seed, reached at step 1000; Amos reaches 2.0 at step 600
    # on four seeds (ratio 0.6), and at step 1000 on the fifth.
    adamw = [curve([3.0, 2.5, 2.3, 2.2, 2.15, 2.1, 2.07, 2.04, 2.02, 2.0])] * 5
    fast = curve([2.8, 2.4, 2.2, 2.1, 2.05, 2.0, 1.9, 1.85, 1.8, 1.75])
    slow = curve([2.9, 2.6, 2.4, 2.3, 2.2, 2.1, 2.08, 2.05, 2.03, 2.0])
    amos = [fast, fast, fast, fast, slow]
    per_seed = intervals.per_seed_step_ratios(amos, adamw, [2.0] * 5)
    assert per_seed == [0.6, 0.6, 0.6, 0.6, 1.0]
    got = intervals.step_ratio(amos, adamw, [2.0] * 5, resamples=2000)
    assert got.low == pytest.approx(0.6) and got.high > 0.7  # Some resamples hold 3+ slow.
    assert intervals.verdict(got, intervals.STEP_RATIO_CLAIM) == "inconclusive"
    everywhere = intervals.step_ratio([fast] * 5, adamw, [2.0] * 5, resamples=500)
    assert (everywhere.low, everywhere.high) == pytest.approx((0.6, 0.6))
    assert intervals.verdict(everywhere, intervals.STEP_RATIO_CLAIM) == "met"


def test_a_curve_that_never_reaches_the_target_is_an_infinite_ratio_not_nan():
    adamw = [curve([3.0, 2.5, 2.0])] * 3
    never = curve([3.0, 2.8, 2.6])
    got = intervals.step_ratio([never] * 3, adamw, [2.0] * 3, resamples=200)
    assert math.isinf(got.point) and math.isinf(got.low) and math.isinf(got.high)
    assert intervals.verdict(got, intervals.STEP_RATIO_CLAIM) == "not met"
    assert intervals.per_seed_step_ratios([never], adamw[:1], [2.0]) == [math.inf]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        intervals.bootstrap(1, lambda idx: 0.0)
    with pytest.raises(ValueError, match="pair them"):
        intervals.final_loss_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="nan"):
        intervals.bootstrap(3, lambda idx: float("nan"))
    with pytest.raises(ValueError, match="'below' or 'above'"):
        intervals.verdict(intervals.Interval(0, 0, 0, 0.95, 3), 0.0, "less")
    above = intervals.Interval(point=1.2, low=1.1, high=1.3, level=0.95, seeds=5)
    assert intervals.verdict(above, 1.0, claim="above") == "met"
    assert np.isclose(above.point, 1.2) and above.contains(1.25)
    # A tie is at most the threshold, but not below it: a loss difference of exactly 0
    # is no win for Amos (strict), a step ratio of exactly 0.70 meets "within 70%".
    tie = intervals.Interval(point=0.0, low=0.0, high=0.0, level=0.95, seeds=5)
    assert intervals.verdict(tie, 0.0) == "met"
    assert intervals.verdict(tie, 0.0, strict=True) == "not met"
    touching = intervals.Interval(point=-0.1, low=-0.2, high=0.0, level=0.95, seeds=5)
    assert intervals.verdict(touching, 0.0, strict=True) == "inconclusive"
