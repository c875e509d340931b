"""The GPT: shapes, causality, standard flax names and the Amos scales they produce."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.gpt.models import GPT, GPT_AMOS_GAINS, cross_entropy


def _init(model, t=8):
    return model.init(jax.random.key(0), jnp.zeros((2, t), jnp.int32))["params"]


def test_shapes_names_and_parameter_count():
    model = GPT(vocab_size=65, block_size=64, num_layers=4, num_heads=4, width=128)
    params = _init(model)
    flat = {
        "/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(params)
    }
    assert flat["wte/embedding"].shape == (65, 128)
    assert flat["h_0/attn/c_attn/kernel"].shape == (128, 384)
    assert flat["h_3/mlp/c_proj/kernel"].shape == (512, 128)
    assert flat["ln_f/scale"].shape == (128,)
    assert {k.rsplit("/", 1)[1] for k in flat} == {"kernel", "embedding", "scale"}
    # nanoGPT reports 0.80M parameters for this model without the position embedding.
    n = sum(v.size for v in flat.values())
    assert n - 64 * 128 == 4 * (12 * 128 * 128 + 2 * 128) + 65 * 128 + 128
    assert round((n - 64 * 128) / 1e6, 2) == 0.80


def test_causal_and_loss_at_init_is_uniform():
    model = GPT(vocab_size=11, block_size=16, num_layers=2, num_heads=2, width=32)
    params = _init(model, 16)
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, 11)
    y = x.at[:, 10].set((x[:, 10] + 1) % 11)
    a = model.apply({"params": params}, x)
    b = model.apply({"params": params}, y)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])
    targets = jax.random.randint(jax.random.key(2), (2, 16), 0, 11)
    loss, acc = cross_entropy(a, targets)
    assert abs(float(loss) - math.log(11)) < 0.05 and 0 <= float(acc) <= 1


def test_amos_eta_uses_the_gelu_gain():
    amos = pytest.importorskip("amos")
    if not hasattr(amos, "default_eta_fn"):
        pytest.skip("amos.default_eta_fn not available yet")
    eta = amos.default_eta_fn(gains=GPT_AMOS_GAINS)
    assert math.isclose(
        eta(("h_0", "mlp", "c_proj", "kernel"), (512, 128)), math.sqrt(2 / 512), rel_tol=1e-6
    )
    assert math.isclose(
        eta(("h_0", "attn", "c_proj", "kernel"), (128, 128)), math.sqrt(1 / 128), rel_tol=1e-6
    )
    assert math.isclose(eta(("wte", "embedding"), (65, 128)), math.sqrt(2 / 128), rel_tol=1e-6)
    assert math.isclose(eta(("ln_f", "scale"), (128,)), 1.0)
