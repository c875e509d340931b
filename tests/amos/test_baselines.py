"""The paper's AdamW baseline and the EMA-timescale weight decay, against hand values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import amos


def test_warmup_then_linear_decay_to_zero_at_the_last_step():
    schedule = amos.warmup_linear_decay_schedule(1e-3, warmup_steps=10, total_steps=30)
    values = [float(schedule(t)) for t in (0, 5, 10, 20, 30, 40)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="warmup_steps=30, total_steps=30"):
        amos.warmup_linear_decay_schedule(1e-3, warmup_steps=30, total_steps=30)


PARAMS = {
    "dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)},
    "norm": {"scale": jnp.full((2,), 2.0)},
    "tok": {"embedding": jnp.full((3, 2), 2.0)},
}


def two_steps(tx, grad_value=0.5):
    grads = {k: {n: jnp.full_like(x, grad_value) for n, x in v.items()} for k, v in PARAMS.items()}
    state = tx.init(PARAMS)
    first, state = tx.update(grads, state, PARAMS)
    second, state = tx.update(grads, state, PARAMS)
    return first, second


def test_adamw_baseline_by_hand():
    # Warmup 2, total 4, peak 1e-3: lr(0) = 0, lr(1) = 5e-4. With a constant gradient g the
    # bias-corrected moments are g and g**2 at step 2, so the update is
    # -lr * (g / (|g| + eps) + wd * theta) for decayed variables, without wd for the others.
    tx = amos.adamw_baseline(1e-3, total_steps=4, warmup_steps=2, weight_decay=0.01)
    first, second = two_steps(tx)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for v in first.values() for x in v.values())
    adam = 0.5 / (0.5 + 1e-6)
    decayed = -5e-4 * (adam + 0.01 * 2.0)
    plain = -5e-4 * adam
    # rtol 3e-5: optax bias-corrects in float32.
    np.testing.assert_allclose(second["dense"]["kernel"], decayed, rtol=3e-5)
    np.testing.assert_allclose(second["tok"]["embedding"], decayed, rtol=3e-5)
    np.testing.assert_allclose(second["dense"]["bias"], plain, rtol=3e-5)
    np.testing.assert_allclose(second["norm"]["scale"], plain, rtol=3e-5)


def test_adamw_baseline_mask_is_configurable():
    tx = amos.adamw_baseline(1e-3, total_steps=4, warmup_steps=2, weight_decay_mask=None)
    _, second = two_steps(tx)
    np.testing.assert_allclose(
        second["dense"]["bias"], -5e-4 * (0.5 / (0.5 + 1e-6) + 0.02), rtol=3e-5
    )
    assert amos.default_weight_decay_mask(PARAMS) == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False},
        "tok": {"embedding": True},
    }
    assert amos.default_weight_decay_mask({"mystery": jnp.zeros((2, 2)), "gain": jnp.zeros(2)}) == {
        "mystery": True,
        "gain": False,
    }


def test_weight_decay_from_ema_timescale_and_back():
    # wd = B / (lr * N * tau): 128 / (1e-3 * 50000 * 5) = 0.512.
    wd = amos.weight_decay_from_timescale(1e-3, tau_epochs=5, batch_size=128, dataset_size=50_000)
    assert wd == pytest.approx(0.512)
    tau = amos.timescale_from_weight_decay(
        1e-3, weight_decay=wd, batch_size=128, dataset_size=50_000
    )
    assert tau == pytest.approx(5.0)
    # The same timescale in iterations is 1 / (lr * wd) = 1953.125, i.e. 5 epochs of 390.625.
    assert 1 / (1e-3 * wd) * 128 / 50_000 == pytest.approx(tau)
    # A ten times larger dataset at the same timescale needs ten times less decay.
    assert amos.weight_decay_from_timescale(1e-3, 5, 128, 500_000) == pytest.approx(0.0512)
    with pytest.raises(ValueError, match="tau_epochs must be positive, got 0"):
        amos.weight_decay_from_timescale(1e-3, 0, 128, 50_000)
    with pytest.raises(ValueError, match="dataset_size must be positive"):
        amos.timescale_from_weight_decay(1e-3, 0.1, 128, -1)
