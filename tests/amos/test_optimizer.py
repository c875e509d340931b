"""The Amos update against an independent float64 NumPy implementation, and its behaviour."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import FrozenDict

import amos
from amos.tree import named_leaves, path_name
from tests.amos.reference_numpy import NumpyAmos


def nested_params(seed: int = 0):
    """Dicts, a FrozenDict, a list, a tuple, a None subtree and a zero-size leaf."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.3):
        return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)

    return {
        "encoder": {
            "layers": [
                {"kernel": normal(6, 5), "bias": normal(5, scale=0.1)},
                {"kernel": normal(5, 4)},
            ],
            "norm": {"scale": 1.0 + normal(4, scale=0.05)},
        },
        "embed": FrozenDict({"embedding": normal(7, 3)}),
        "conv": ({"kernel": normal(3, 3, 2, 4)},),
        "unused": None,
        "empty": {"bias": jnp.zeros((0,), jnp.float32)},
    }


ETA_FN = amos.default_eta_fn(gains={"layers/1/kernel": 2.0})


def flat(tree) -> dict[str, np.ndarray]:
    return {path_name(p): np.asarray(x, np.float64) for p, x in named_leaves(tree)[0]}


def gradient_sequence(params, steps: int, seed: int = 1):
    """Fixed gradients (independent of the trajectory, so rounding cannot feed back)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return [
        treedef.unflatten(
            [
                jnp.asarray(rng.standard_normal(x.shape) * rng.uniform(0.1, 3.0), jnp.float32)
                for x in leaves
            ]
        )
        for _ in range(steps)
    ]


def run_both(tx_kwargs: dict, shape_fn, steps: int = 120, learning_rate=0.02):
    params = nested_params()
    tx = amos.amos(learning_rate, ETA_FN, shape_fn, **tx_kwargs)
    named = named_leaves(params)[0]
    schedule = learning_rate if callable(learning_rate) else (lambda t: learning_rate)
    reference = NumpyAmos(
        xi=lambda t: float(schedule(t)),
        eta={path_name(p): ETA_FN(p, x.shape) for p, x in named},
        slot_shape={
            path_name(p): (tuple(shape_fn(p, x.shape)) if shape_fn else x.shape) for p, x in named
        },
        **tx_kwargs,
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    np_params = flat(params)
    max_error = 0.0
    for grads in gradient_sequence(params, steps):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        np_updates = reference.update(flat(grads), np_params)
        np_params = {k: np_params[k] + np_updates[k] for k in np_params}
        for name, value in flat(updates).items():
            scale = np.max(np.abs(np_updates[name]), initial=1e-30)
            max_error = max(
                max_error, np.max(np.abs(value - np_updates[name]), initial=0.0) / scale
            )
    return params, np_params, state, reference, max_error


CASES = {
    "factored": dict(tx_kwargs={}, shape_fn=amos.default_shape_fn()),
    "full": dict(tx_kwargs={"beta": 0.98}, shape_fn=None),
    "momentum+clip": dict(
        tx_kwargs={"momentum": 0.9, "clip_value": 1.0, "beta": 0.95},
        shape_fn=amos.default_shape_fn(),
    ),
    "extra_l2+coefs": dict(
        tx_kwargs={"extra_l2": 1e-3, "d_coef": 0.5, "c_coef": 0.1}, shape_fn=amos.default_shape_fn()
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_numpy_over_120_steps(case):
    params, np_params, state, reference, max_error = run_both(**CASES[case])
    assert max_error < 2e-5, f"largest relative update error {max_error}"
    for name, value in flat(params).items():
        np.testing.assert_allclose(value, np_params[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name, value in flat(state.b).items():
        np.testing.assert_allclose(value, reference.b[name], rtol=1e-4, err_msg=name)
        if name != "empty/bias":
            assert np.all(value > 0), f"b grows from 0 on every variable with entries ({name})"
    assert np.all(np.asarray(state.b["empty"]["bias"]) == 0.0)
    assert int(state.count) == 120


def test_matches_numpy_with_a_schedule():
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.05, 20, 120, end_value=0.005)
    _, _, _, _, max_error = run_both(
        {"momentum": 0.5}, amos.default_shape_fn(), learning_rate=schedule
    )
    assert max_error < 2e-5


def test_a_schedule_returning_a_python_float_works():
    # optax.constant_schedule returns its value as a Python float, not an array.
    _, _, _, _, max_error = run_both(
        {"momentum": 0.5}, amos.default_shape_fn(), learning_rate=optax.constant_schedule(0.05)
    )
    assert max_error < 2e-5


def test_closed_form_first_step():
    # t = 1: v = (1-beta) g2, r = 1/g2, gamma = xi^2, b = xi^2, and
    # delta = -(xi eta g / sqrt(g2) + xi^2 / 2 theta).
    xi, eta = 0.01, 0.25
    theta = jnp.array([1.0, -2.0, 0.5, 3.0])
    g = jnp.array([0.3, -0.4, 0.0, 1.2])
    tx = amos.scale_by_amos(xi, lambda p, s: eta, lambda p, s: ())
    state = tx.init({"w": theta})
    delta, state = tx.update({"w": g}, state, {"w": theta})
    g2 = float(jnp.mean(g**2))
    expected = -(xi * eta * np.asarray(g) / math.sqrt(g2) + xi**2 / 2 * np.asarray(theta))
    np.testing.assert_allclose(delta["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(state.b["w"], xi**2, rtol=1e-6)
    np.testing.assert_allclose(state.v["w"], 0.001 * g2, rtol=1e-6)


def test_b_decays_learning_rate_and_weight_decay():
    # With b = xi^2 after step one, step two's delta is divided by 1 + d sqrt(xi eta) xi^2.
    params = {"w": jnp.ones((3,))}
    tx = amos.scale_by_amos(0.5, lambda p, s: 1.0, lambda p, s: ())
    state = tx.init(params)
    g = {"w": jnp.ones((3,))}
    _, state = tx.update(g, state, params)
    b = float(state.b["w"][()])
    assert b == pytest.approx(0.25)
    decay = float(amos.lr_decay_factor(0.5 * 1.0, jnp.asarray(b)))
    assert decay == pytest.approx(1 / (1 + 0.25 * math.sqrt(0.5) * 0.25))


def quadratic_run(params, target, tx, steps):
    loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)  # noqa: E731
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start = float(loss(params))
    for _ in range(steps):
        params, state = step(params, state)
    return start, float(loss(params)), params


def test_converges_on_a_quadratic():
    rng = np.random.default_rng(0)
    target = {"kernel": jnp.asarray(0.2 * rng.standard_normal((16, 8)), jnp.float32)}
    params = {"kernel": jnp.zeros((16, 8))}
    tx = amos.amos(0.05, lambda p, s: 0.2, amos.default_shape_fn(), beta=0.95)
    start, end, _ = quadratic_run(params, target, tx, 1500)
    assert end < 1e-3 * start


def test_converges_on_rosenbrock():
    def rosenbrock(p):
        return (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2

    params = {"x": jnp.array(-1.0), "y": jnp.array(1.0)}
    tx = amos.amos(0.1, lambda p, s: 1.0, beta=0.9, momentum=0.9)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(rosenbrock)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(5000):
        params, state = step(params, state)
    assert float(rosenbrock(params)) < 1e-3
    assert abs(float(params["x"]) - 1) < 0.05 and abs(float(params["y"]) - 1) < 0.1


def test_eager_numpy_gradients_match_jit():
    # No jax.grad and no jit: gradients computed by hand as NumPy arrays.
    params = {"a": {"kernel": jnp.full((4, 3), 0.5)}, "b": {"bias": jnp.zeros(3)}}
    tx = amos.amos(0.01, amos.default_eta_fn(), amos.default_shape_fn(), momentum=0.9)
    grads = {"a": {"kernel": np.arange(12.0).reshape(4, 3) / 10}, "b": {"bias": np.ones(3)}}
    eager_updates, eager_state = tx.update(grads, tx.init(params), params)
    jit_updates, jit_state = jax.jit(tx.update)(grads, tx.init(params), params)
    for x, y in zip(
        jax.tree_util.tree_leaves((eager_updates, eager_state)),
        jax.tree_util.tree_leaves((jit_updates, jit_state)),
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_structure_is_preserved():
    params = nested_params()
    tx = amos.amos(0.01, ETA_FN, amos.default_shape_fn(), momentum=0.9)
    state = tx.init(params)
    updates, state = tx.update(gradient_sequence(params, 1)[0], state, params)
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(params)
    assert isinstance(updates["embed"], FrozenDict) and isinstance(updates["conv"], tuple)
    assert updates["unused"] is None and state.v["unused"] is None
    assert updates["empty"]["bias"].shape == (0,)
    assert state.v["encoder"]["layers"][0]["kernel"].shape == (1, 5)
    assert state.v["conv"][0]["kernel"].shape == (1, 1, 1, 4)
    assert state.v["embed"]["embedding"].shape == (7, 1)
    assert state.m["conv"][0]["kernel"].shape == (3, 3, 2, 4)


def test_bfloat16_params_keep_float32_slots():
    rng = np.random.default_rng(0)
    target = {"kernel": jnp.asarray(0.5 * rng.standard_normal((32, 16)), jnp.bfloat16)}
    params = {"kernel": jnp.zeros((32, 16), jnp.bfloat16)}
    tx = amos.amos(
        0.05,
        lambda p, s: 0.5,
        amos.default_shape_fn(),
        beta=0.95,
        momentum=0.9,
        momentum_dtype=jnp.bfloat16,
    )
    state = tx.init(params)
    assert state.v["kernel"].dtype == jnp.float32 and state.m["kernel"].dtype == jnp.bfloat16
    updates, _ = tx.update({"kernel": jnp.ones((32, 16), jnp.bfloat16)}, state, params)
    assert updates["kernel"].dtype == jnp.bfloat16
    start, end, trained = quadratic_run(params, target, tx, 600)
    assert trained["kernel"].dtype == jnp.bfloat16
    assert end < 0.02 * start


def test_bfloat16_update_is_the_float32_update_rounded():
    params32 = {"w": jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)}
    params16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params32)
    grads = {"w": jnp.cos(jnp.arange(24.0)).reshape(4, 6)}
    tx = amos.amos(0.01, lambda p, s: 0.3, amos.default_shape_fn())
    up16, _ = tx.update(grads, tx.init(params16), params16)
    up32, _ = tx.update(
        grads, tx.init(params16), jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params16)
    )
    np.testing.assert_array_equal(up16["w"], up32["w"].astype(jnp.bfloat16))


def test_state_round_trips_through_an_orbax_checkpoint(tmp_path):
    import orbax.checkpoint as ocp

    params = nested_params()
    params.pop("unused")
    params.pop("empty")  # Orbax cannot save zero-size arrays.
    tx = amos.amos(0.02, ETA_FN, amos.default_shape_fn(), momentum=0.9)
    grads = gradient_sequence(params, 6)
    state = tx.init(params)
    for g in grads[:3]:
        _, state = tx.update(g, state, params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(tx.init, params))
    assert isinstance(restored, amos.ScaleByAmosState)
    for x, y in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(x, y)
    for g in grads[3:]:
        u1, state = tx.update(g, state, params)
        u2, restored = tx.update(g, restored, params)
        for x, y in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2)):
            np.testing.assert_array_equal(x, y)


def test_diagnostics_weigh_slots_by_the_entries_they_cover():
    params = {"k": {"kernel": jnp.ones((4, 2))}, "n": {"scale": jnp.ones((8,))}}
    tx = amos.amos(0.1, amos.default_eta_fn(), amos.default_shape_fn(), momentum=0.9)
    state = tx.init(params)
    grads = {"k": {"kernel": jnp.ones((4, 2))}, "n": {"scale": jnp.ones((8,))}}
    _, state = tx.update(grads, state, params)
    stats = amos.amos_diagnostics(state, params, 0.1, amos.default_eta_fn())
    # After one step every b equals xi^2 = 0.01 (see the closed form).
    assert float(stats["amos/b_mean"]) == pytest.approx(0.01, rel=1e-5)
    expected_d = (
        8 / (1 + 0.25 * math.sqrt(0.1 * 0.5) * 0.01) + 8 / (1 + 0.25 * math.sqrt(0.1 * 1.0) * 0.01)
    ) / 16
    assert float(stats["amos/lr_decay_mean"]) == pytest.approx(expected_d, rel=1e-6)
    assert float(stats["amos/wd_decay_mean"]) == pytest.approx(
        1 / math.sqrt(1 + 0.25 * math.sqrt(0.1) * 0.01), rel=1e-6
    )


@pytest.mark.parametrize("xi", [0.0, -0.01, math.nan, math.inf])
def test_a_learning_rate_that_would_train_nothing_or_diverge_is_rejected(xi):
    with pytest.raises(ValueError, match=r"learning_rate \(xi\) must be finite and positive"):
        amos.amos(xi, amos.default_eta_fn())
    with pytest.raises(ValueError, match="schedule gives nan at step 1"):
        amos.amos(lambda count: jnp.nan * count, amos.default_eta_fn())
    # A warmup that starts at 0 (the step-1 value of a schedule may be 0) is fine.
    amos.amos(optax.linear_schedule(0.0, 0.01, 10), amos.default_eta_fn())


def test_integer_parameters_are_an_error_naming_the_variable():
    params = {"dense": {"kernel": jnp.ones((3, 2))}, "counter": {"bias": jnp.zeros(2, jnp.int32)}}
    tx = amos.amos(0.01, amos.default_eta_fn(), amos.default_shape_fn())
    with pytest.raises(ValueError, match="variable 'counter/bias' has dtype int32"):
        tx.init(params)
