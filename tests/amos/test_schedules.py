"""The plug-and-play schedules of the derivation, against hand-computed updates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import amos
from amos.schedules import decay_rate, schedule_decay


@pytest.mark.parametrize("variant", ["inverse_square", "inverse_time"])
def test_half_life_halves_the_schedule(variant):
    rate = decay_rate(variant, half_life=100)
    assert float(schedule_decay(variant, rate, jnp.asarray(0.0))) == 1.0
    assert float(schedule_decay(variant, rate, jnp.asarray(100.0))) == pytest.approx(0.5)
    assert float(schedule_decay(variant, rate, jnp.asarray(300.0))) < 0.5


def test_decay_forms():
    assert decay_rate("inverse_square", 10) == pytest.approx((math.sqrt(2) - 1) / 10)
    inverse_square = float(schedule_decay("inverse_square", 0.01, jnp.asarray(50.0)))
    assert inverse_square == pytest.approx(1 / 1.5**2)
    assert float(schedule_decay("inverse_time", 0.01, jnp.asarray(50.0))) == pytest.approx(1 / 2.0)


def test_update_by_hand():
    # k = 4 entries, sigma = 0.5: ||eps_0|| = 1. alpha_0 = 0.1, q = 1:
    # alpha_t = 0.1 * 1 / ||u|| * decay, rho_t = 0.01 / 2 * decay.
    theta = {"w": jnp.array([1.0, -1.0, 2.0, 0.0])}
    u = {"w": jnp.array([3.0, 0.0, 4.0, 0.0])}  # ||u|| = 5
    tx = amos.plug_and_play_decay(0.1, lambda p, s: 0.5, variant="inverse_time", half_life=2)
    state = tx.init(theta)
    expected_first = -(0.1 / 5 * np.asarray(u["w"]) + 0.005 * np.asarray(theta["w"]))
    first, state = tx.update(u, state, theta)
    np.testing.assert_allclose(first["w"], expected_first, rtol=1e-6)
    _, state = tx.update(u, state, theta)
    third, state = tx.update(u, state, theta)  # t = 2 = half-life: everything halves.
    np.testing.assert_allclose(third["w"], expected_first / 2, rtol=1e-6)
    assert int(state.count) == 3


def test_p_parametrization_and_errors():
    theta = {"w": jnp.ones(4)}
    u = {"w": jnp.ones(4)}
    tx = amos.plug_and_play_decay(0.1, lambda p, s: 0.5, variant="inverse_square", p=2.0)
    state = tx.init(theta)
    for _ in range(3):
        out, state = tx.update(u, state, theta)
    decay = 1 / (0.1 * 2.0 * 2 + 1) ** 2  # t = 2 at the third update.
    np.testing.assert_allclose(out["w"], -(0.1 * 1 / 2 * decay + 0.005 * decay), rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one of half_life and p"):
        amos.plug_and_play_decay(0.1, half_life=10, p=1.0)
    with pytest.raises(ValueError, match="variant must be"):
        amos.plug_and_play_decay(0.1, variant="cosine", half_life=10)
    with pytest.raises(ValueError, match="eta for variable 'w'"):
        amos.plug_and_play_decay(0.1, lambda p, s: -1.0, half_life=10).init(theta)


def test_adam_with_plug_and_play_trains_a_regression():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((256, 8)), jnp.float32)
    true_w = jnp.asarray(rng.standard_normal((8, 1)) / math.sqrt(8), jnp.float32)
    y = x @ true_w
    params = {"dense": {"kernel": jnp.zeros((8, 1)), "bias": jnp.zeros(1)}}
    loss = lambda p: jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)  # noqa: E731
    tx = amos.adam_plug_and_play(0.05, half_life=200)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    start = float(loss(params))
    for _ in range(400):
        params, state = step(params, state)
    assert float(loss(params)) < 0.01 * start
