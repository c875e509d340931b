"""Slot-memory accounting and the paper's memory claim on a BERT-base-shaped tree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import amos
from amos.model_shapes import bert_param_shapes, count_parameters

BERT = bert_param_shapes()
N = count_parameters(BERT)


def amos_tx(**kwargs):
    return amos.amos(0.005, amos.default_eta_fn(), amos.default_shape_fn(), **kwargs)


def test_bert_base_has_about_110m_parameters():
    assert 109e6 < N < 111e6


def test_amos_with_momentum_needs_at_most_51_percent_of_adamw():
    result = amos.compare_slot_memory(amos_tx(momentum=0.9, clip_value=1.0), BERT)
    assert result["baseline_bytes"] == 8 * N + 4  # mu, nu in float32 and the step count.
    assert result["ratio"] <= 0.51
    assert result["ratio"] > 0.5  # The momentum alone is half of AdamW.


def test_amos_without_momentum_needs_at_most_1_percent_of_adamw():
    assert amos.compare_slot_memory(amos_tx(), BERT)["ratio"] <= 0.01


def test_bfloat16_momentum_and_full_slots():
    assert amos.compare_slot_memory(amos_tx(momentum=0.9, momentum_dtype=jnp.bfloat16), BERT)[
        "ratio"
    ] == pytest.approx(0.25, abs=0.005)
    full = amos.amos(0.005, amos.default_eta_fn(), None)
    assert amos.compare_slot_memory(full, BERT)["ratio"] == pytest.approx(1.0, abs=1e-6)


def test_bytes_per_variable():
    params = {
        "tok": {"embedding": jax.ShapeDtypeStruct((100, 8), jnp.float32)},
        "dense": {
            "kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32),
            "bias": jax.ShapeDtypeStruct((4,), jnp.float32),
        },
    }
    state = jax.eval_shape(amos_tx(momentum=0.9).init, params)
    by_variable = amos.slot_bytes_by_variable(state, params)
    assert by_variable == {
        "tok/embedding": 4 * (100 * 8 + 2 * 100),  # m full; v, b of shape (100, 1).
        "dense/kernel": 4 * (8 * 4 + 2 * 4),  # m full; v, b of shape (1, 4).
        "dense/bias": 4 * (4 + 2),  # m full; scalar v, b.
        "<global>": 4,  # The int32 step count.
    }
    assert sum(by_variable.values()) == amos.slot_bytes(state)
    adam_state = jax.eval_shape(optax.adam(1e-3).init, params)
    assert amos.slot_bytes_by_variable(adam_state, params)["dense/kernel"] == 2 * 4 * 32


def test_slot_bytes_of_real_arrays():
    params = {"w": jnp.zeros((3, 5)), "b": jnp.zeros(5, jnp.bfloat16)}
    state = optax.adam(1e-3).init(params)
    assert amos.slot_bytes(state) == 4 + 2 * (15 * 4 + 5 * 2)
