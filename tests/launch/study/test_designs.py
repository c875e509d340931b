"""Quasi-random tuning designs (launch/study/designs.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from launch.study.designs import Knob, design, unit_points


def test_sixteen_points_cover_each_knob_evenly_and_repeat():
    points = unit_points(16, 2, seed=0)
    assert points.shape == (16, 2) and ((0 <= points) & (points < 1)).all()
    # A Sobol sequence of 16 points puts exactly one in each sixteenth of each axis.
    for axis in range(2):
        assert sorted(np.floor(points[:, axis] * 16).astype(int)) == list(range(16))
    assert np.array_equal(points, unit_points(16, 2, seed=0))  # A resumed sweep: the same.
    assert not np.array_equal(points, unit_points(16, 2, seed=1))


def test_knob_scales_map_the_unit_interval_onto_their_ranges():
    lr = Knob("ADAMW_LR", 1e-4, 1.6e-2, "log")
    assert lr.value(0.0) == pytest.approx(1e-4)
    assert lr.value(0.5) == pytest.approx(math.sqrt(1e-4 * 1.6e-2))  # The geometric middle.
    warmup = Knob("WARMUP_FRACTION", 0.0, 0.2, "linear")
    assert warmup.value(0.25) == pytest.approx(0.05)
    beta = Knob("AMOS_BETA", 0.95, 0.9999, "log1m")
    assert beta.value(0.0) == pytest.approx(0.95)
    # Halfway on a log scale of 1 - beta, between 5e-2 and 1e-4: sqrt(5e-6).
    assert 1 - beta.value(0.5) == pytest.approx(math.sqrt(5e-2 * 1e-4))


def test_two_optimizers_get_designs_of_the_same_points():
    adamw = design(16, [Knob("ADAMW_LR", 1e-4, 1.6e-2), Knob("WARMUP", 0.0, 0.2, "linear")])
    amos = design(16, [Knob("AMOS_XI", 1e-3, 0.16), Knob("AMOS_BETA", 0.95, 0.9999, "log1m")])
    assert len(adamw) == len(amos) == 16
    # The same unit point behind trial i of each: the lr's and xi's positions match.
    for a, m in zip(adamw, amos, strict=True):
        u_lr = math.log(a["ADAMW_LR"] / 1e-4) / math.log(160)
        u_xi = math.log(m["AMOS_XI"] / 1e-3) / math.log(160)
        assert u_lr == pytest.approx(u_xi)


def test_bad_designs_are_named():
    with pytest.raises(ValueError, match="power of 2"):
        unit_points(12, 2)
    with pytest.raises(ValueError, match="ADAMW_LR: a log scale needs low > 0"):
        Knob("ADAMW_LR", 0.0, 1.0)
    with pytest.raises(ValueError, match="AMOS_BETA: a log1m scale"):
        Knob("AMOS_BETA", 0.9, 1.0, "log1m")
    with pytest.raises(ValueError, match="scale 'cubic'"):
        Knob("X", 1.0, 2.0, "cubic")
