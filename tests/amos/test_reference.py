"""Step-by-step agreement with the public reference implementation (jestimator 0.3.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import amos
from benchmarks.reference import load_reference_amos

REFERENCE = load_reference_amos()
if REFERENCE is None:
    raise RuntimeError(
        "jestimator==0.3.3 is not installed: run `make venv` "
        "(pip install --no-deps -r requirements-test.txt)."
    )


def bert_like_params():
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(0.05 * rng.standard_normal(shape), jnp.float32)

    return {
        "embed": {"embedding": normal(50, 16)},
        "layer_0": {
            "attention": {"query": {"kernel": normal(16, 16), "bias": normal(16)}},
            "mlp": {"wi": {"kernel": normal(16, 64)}, "wo": {"kernel": normal(64, 16)}},
            "norm": {"scale": 1 + normal(16), "bias": normal(16)},
        },
        "conv": {"kernel": normal(3, 3, 4, 8)},
    }


ETA_FN = amos.default_eta_fn(gains={"mlp/wo": 2.0})
SHAPE_FN = amos.default_shape_fn()


def reference_fns(shape_fn):
    # The reference passes the path as a tuple of dict keys, as this package does.
    eta = lambda name, shape: ETA_FN(tuple(name), shape)  # noqa: E731
    shape = None if shape_fn is None else (lambda name, s: shape_fn(tuple(name), s))  # noqa: E731
    return eta, shape


@pytest.mark.parametrize(
    "kwargs,shape_fn",
    [
        ({}, SHAPE_FN),
        ({"momentum": 0.9, "clip_value": 0.05, "beta": 0.98}, SHAPE_FN),
        ({"momentum": 0.5, "extra_l2": 1e-4, "d_coef": 0.3, "c_coef": 0.2}, None),
    ],
    ids=["factored", "momentum+clip", "full+extra_l2"],
)
def test_agrees_with_reference_step_by_step(kwargs, shape_fn):
    params = bert_like_params()
    schedule = optax.linear_schedule(0.02, 0.005, 60)
    ours = amos.amos(schedule, ETA_FN, shape_fn, **kwargs)
    ref_eta, ref_shape = reference_fns(shape_fn)
    theirs = REFERENCE.amos(schedule, ref_eta, ref_shape, **kwargs)
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    ours_step, theirs_step = jax.jit(ours.update), jax.jit(theirs.update)
    rng = np.random.default_rng(1)
    ours_params = theirs_params = params
    for step in range(60):
        grads = jax.tree_util.tree_map(
            lambda p: jnp.asarray(0.1 * rng.standard_normal(p.shape), jnp.float32), params
        )
        ours_updates, ours_state = ours_step(grads, ours_state, ours_params)
        theirs_updates, theirs_state = theirs_step(grads, theirs_state, theirs_params)
        for a, b in zip(
            jax.tree_util.tree_leaves(ours_updates), jax.tree_util.tree_leaves(theirs_updates)
        ):
            # Relative to each update's scale: entries where the gradient and weight-decay terms
            # cancel carry no relative precision. The reference also computes 1 - beta**t in
            # float32, which costs it about 1e-5.
            np.testing.assert_allclose(
                a, b, rtol=5e-5, atol=5e-5 * np.max(np.abs(b)), err_msg=f"step {step + 1}"
            )
        ours_params = optax.apply_updates(ours_params, ours_updates)
        theirs_params = optax.apply_updates(theirs_params, theirs_updates)
    reference_amos_state = [
        s
        for s in jax.tree_util.tree_leaves(
            theirs_state, is_leaf=lambda x: isinstance(x, REFERENCE.ScaleByAmosState)
        )
        if isinstance(s, REFERENCE.ScaleByAmosState)
    ][0]
    for a, b in zip(
        jax.tree_util.tree_leaves(ours_state.b), jax.tree_util.tree_leaves(reference_amos_state.b)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4)
    for a, b in zip(
        jax.tree_util.tree_leaves(ours_params), jax.tree_util.tree_leaves(theirs_params)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.max(np.abs(b)))
