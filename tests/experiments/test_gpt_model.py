"""The GPT: shapes, causality, standard flax names and the Amos scales they produce."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amos.params import checked_eta, checked_slot_shape
from amos.tree import named_leaves
from experiments.gpt.models import GPT
from experiments.objectives import cross_entropy
from tests.experiments.model_gin import abstract_params, int_input, load_model_file


def _init(model, t=8):
    # Jitted: one compile costs less than op-by-op dispatch.
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, t), jnp.int32))["params"]


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
    apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    a, b = apply(x), apply(y)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])
    targets = jax.random.randint(jax.random.key(2), (2, 16), 0, 11)
    loss, acc = cross_entropy(a, targets)
    assert abs(float(loss) - math.log(11)) < 0.05 and 0 <= float(acc) <= 1


@pytest.mark.parametrize("file", ["gpt_nanogpt_cpu.gin", "gpt_tiny.gin"])
def test_model_files_amos_rules(file):
    """The general rule (docs/optimizer.md) with gain 2 for the MLP output projection,
    which reads GELU outputs: every kernel sqrt(gain / fan_in) with slot (1, out), the
    embeddings sqrt(2 / width) with slot (rows, 1), layer-norm scales 1.0 with slot ()."""
    loaded = load_model_file(file, vocab_size=65)
    model = loaded.model
    params = abstract_params(model, int_input(1, 8))
    w = model.width
    kernels = 0
    for path, leaf in named_leaves(params)[0]:
        name, shape = "/".join(path), tuple(leaf.shape)
        if name.endswith("mlp/c_proj/kernel"):
            expected = math.sqrt(2 / (4 * w)), (1, w)
        elif name.endswith("kernel"):
            kernels += 1
            expected = math.sqrt(1 / w), (1, shape[1])  # Every other kernel reads width w.
        elif name.endswith("embedding"):
            expected = math.sqrt(2 / w), (shape[0], 1)
        else:
            assert name.endswith("scale"), name
            expected = 1.0, ()
        eta = checked_eta(path, shape, loaded.eta_fn)
        slot = checked_slot_shape(path, shape, loaded.shape_fn)
        assert math.isclose(eta, expected[0], rel_tol=1e-12) and slot == expected[1], name
    assert kernels == 3 * model.num_layers  # c_attn, attn/c_proj, c_fc per block.
    assert loaded.eta_overrides is None and loaded.shape_overrides is None
