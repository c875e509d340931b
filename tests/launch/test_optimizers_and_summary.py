"""In-process checks of the optimizer factories and of compare.py's arithmetic."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from launch.compare import first_reach, mean_curve
from launch.optimizers import adamw_cosine_optimizer, nanogpt_lr


def test_nanogpt_schedule_matches_get_lr():
    def get_lr(it, lr=1e-3, warm=100, decay=2000, min_lr=1e-4):  # nanoGPT train.py
        if it < warm:
            return lr * (it + 1) / (warm + 1)
        if it > decay:
            return min_lr
        ratio = (it - warm) / (decay - warm)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    for it in [0, 1, 50, 99, 100, 101, 1000, 1999, 2000, 2500]:
        got = float(
            nanogpt_lr(
                it, learning_rate=1e-3, warmup_steps=100, decay_steps=2000, min_learning_rate=1e-4
            )
        )
        assert math.isclose(got, get_lr(it), rel_tol=1e-5), it
    spec = adamw_cosine_optimizer(2000)
    assert math.isclose(spec.learning_rate(1), get_lr(0), rel_tol=1e-5)


def test_adamw_decays_matrices_only():
    spec = adamw_cosine_optimizer(
        10,
        learning_rate=0.1,
        warmup_steps=0,
        min_learning_rate=0.1,
        weight_decay=0.5,
        clip_global_norm=None,
    )
    params = {"k": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    grads = {"k": jnp.zeros((2, 2)), "scale": jnp.zeros((2,))}
    updates, _ = spec.tx.update(grads, spec.tx.init(params), params)
    assert float(updates["k"][0, 0]) == pytest.approx(-0.1 * 0.5)
    assert float(updates["scale"][0]) == 0.0


def test_first_reach_interpolates():
    curve = [
        {"step": 10, "loss": 3.0, "t": 1.0},
        {"step": 20, "loss": 2.0, "t": 3.0},
        {"step": 30, "loss": 1.5, "t": 5.0},
    ]
    assert first_reach(curve, 2.5, "step") == pytest.approx(15.0)
    assert first_reach(curve, 2.5, "t") == pytest.approx(2.0)
    assert first_reach(curve, 1.75, "step") == pytest.approx(25.0)
    assert first_reach(curve, 3.5, "step") == 10.0
    assert first_reach(curve, 1.0, "step") is None


def test_mean_curve_averages_shared_steps():
    a = [
        {"step": 10, "loss": 3.0, "train_time_s": 1.0},
        {"step": 20, "loss": 2.0, "train_time_s": 2.0},
    ]
    b = [{"step": 10, "loss": 2.0, "train_time_s": 3.0}]
    assert mean_curve([a, b]) == [{"step": 10, "loss": 2.5, "train_time_s": 2.0}]


def test_paper_adamw_baseline_schedule():
    amos = pytest.importorskip("amos")
    if not hasattr(amos, "adamw_baseline"):
        pytest.skip("amos.adamw_baseline not available yet")
    from launch.optimizers import adamw_baseline_optimizer

    spec = adamw_baseline_optimizer(100, learning_rate=1e-3, warmup_steps=10)
    # Linear warmup to the peak at step 10, then linear decay to 0 at the last step.
    assert spec.learning_rate(11) == pytest.approx(1e-3, rel=1e-5)
    assert spec.learning_rate(56) == pytest.approx(0.5e-3, rel=1e-3)
    assert spec.learning_rate(101) == pytest.approx(0.0, abs=1e-9)


def test_multihost_detection():
    from launch.run import multihost_detected

    assert not multihost_detected({})
    assert not multihost_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert multihost_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert multihost_detected({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert not multihost_detected({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert multihost_detected({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
