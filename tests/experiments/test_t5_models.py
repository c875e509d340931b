"""T5 1.1: sizes, the Amos rules of gin_configs/models/t5_*.gin, masking, causality and a
few Amos steps."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import amos
from amos.params import checked_eta, checked_slot_shape, fan_in
from amos.tree import named_leaves
from experiments.objectives import token_cross_entropy
from experiments.t5.models import PAD_ID, T5, T5Config, shift_right
from tests.experiments.model_gin import load_model_file


@functools.cache
def _abstract_params(size: str):
    """Parameter shapes from ``jax.eval_shape``: nothing is allocated."""
    config = T5Config.from_size(size)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    params = jax.eval_shape(lambda i: T5(config).init(jax.random.key(0), i, i), ids)["params"]
    return config, params


# (measured, published) parameter counts of the T5 1.1 checkpoints.
COUNTS = {
    "small": (76_961_152, 77e6),
    "base": (247_577_856, 248e6),
    "large": (783_150_080, 783e6),
}


@pytest.mark.parametrize("size", sorted(COUNTS))
def test_parameter_counts(size):
    _, params = _abstract_params(size)
    n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    measured, published = COUNTS[size]
    assert n == measured
    assert abs(n / published - 1) < 0.02


def test_variable_names():
    config, params = _abstract_params("small")
    shapes = {"/".join(p): x.shape for p, x in named_leaves(params)[0]}
    assert {n.rsplit("/", 1)[1] for n in shapes} == {
        "kernel",
        "scale",
        "embedding",
        "relpos_embedding",
    }
    assert shapes["token_embedder/embedding"] == (32128, 512)
    assert shapes["decoder/logits_dense/kernel"] == (512, 32128)  # Untied (T5 1.1).
    assert shapes["encoder/layers_0/attention/query/kernel"] == (512, 384)
    assert shapes["encoder/layers_0/attention/out/kernel"] == (384, 512)
    assert shapes["decoder/layers_7/encoder_decoder_attention/query/kernel"] == (512, 384)
    assert shapes["decoder/layers_0/mlp/wi_1/kernel"] == (512, 1024)
    assert shapes["encoder/relpos_bias/relpos_embedding"] == (32, 6)  # One per stack.
    assert shapes["decoder/relpos_bias/relpos_embedding"] == (32, 6)
    assert not any("bias" == n.rsplit("/", 1)[1] for n in shapes)  # No biases in T5.


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_model_files_amos_rules(size):
    """The paper's T5 (docs/optimizer.md): query kernels sqrt(1 / (d_model * d_head)),
    the MLP output kernel after gated GELU sqrt(2 / d_ff), every other kernel by fan-in;
    the bucketed relative-position bias 0.5 with slot (buckets, 1)."""
    config, params = _abstract_params(size)
    loaded = load_model_file(f"t5_{size}.gin", config.vocab_size)
    assert loaded.model.config == config
    eta_fn, shape_fn = loaded.eta_fn, loaded.shape_fn
    query_eta = math.sqrt(1 / (config.d_model * config.d_kv))
    queries = 0
    for path, leaf in named_leaves(params)[0]:
        name, shape = "/".join(path), leaf.shape
        eta = checked_eta(path, shape, eta_fn)  # Finite and positive.
        slot = checked_slot_shape(path, shape, shape_fn)  # () or same rank, axes 1 / full.
        if name.endswith("attention/query/kernel"):
            queries += 1
            expected = query_eta, (1, shape[1])
        elif name.endswith("mlp/wo/kernel"):
            expected = math.sqrt(2 / config.d_ff), (1, config.d_model)
        elif name.endswith("kernel"):
            expected = math.sqrt(1 / fan_in(shape)), (1, shape[1])
        elif name.endswith("scale"):
            expected = 1.0, ()
        elif name.endswith("relpos_embedding"):
            expected = 0.5, (config.relpos_num_buckets, 1)
        else:
            assert name == "token_embedder/embedding"
            expected = math.sqrt(2 / config.d_model), (config.vocab_size, 1)
        assert math.isclose(eta, expected[0], rel_tol=1e-12) and slot == expected[1], (
            name,
            eta,
            slot,
        )
    assert queries == config.num_encoder_layers + 2 * config.num_decoder_layers

    memory = amos.compare_slot_memory(amos.amos(0.005, eta_fn, shape_fn, momentum=0.9), params)
    # About 0.5 + 1/d_model (v and b cost 2/d_model of each factored variable): under 51%
    # from d_model = 100 on (tiny has 128 for that reason).
    assert memory["ratio"] <= 0.51


def test_shift_right():
    targets = jnp.array([[5, 6, 7, 1, 0, 0]])
    np.testing.assert_array_equal(shift_right(targets), [[0, 5, 6, 7, 1, 0]])


def _tiny_model(**overrides):
    config = T5Config.from_size("tiny", **overrides)
    return config, T5(config)


@pytest.mark.slow  # over a minute on 2 cores: T5-tiny applied six ways
def test_forward_masks_and_causality():
    config, model = _tiny_model(dropout_rate=0.5)
    key_e, key_d, key_i = jax.random.split(jax.random.key(0), 3)
    encoder_tokens = jax.random.randint(key_e, (2, 9), 1, config.vocab_size).at[:, 7:].set(0)
    decoder_targets = jax.random.randint(key_d, (2, 6), 1, config.vocab_size)
    decoder_inputs = shift_right(decoder_targets)
    params = jax.jit(model.init)(key_i, encoder_tokens, decoder_inputs)["params"]
    # Jitted, as the init: op by op, six applications of even the tiny T5 take a minute.
    apply = jax.jit(lambda e, d, t=None: model.apply({"params": params}, e, d, t))

    logits = apply(encoder_tokens, decoder_inputs, decoder_targets)
    assert logits.shape == (2, 6, config.vocab_size) and np.all(np.isfinite(logits))

    # Causal decoder: a change at decoder position 3 leaves positions 0..2 as they were.
    changed = decoder_inputs.at[:, 3].set((decoder_inputs[:, 3] + 1) % config.vocab_size + 1)
    a, b = apply(encoder_tokens, decoder_inputs), apply(encoder_tokens, changed)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)
    assert not np.allclose(a[:, 3:], b[:, 3:], atol=1e-4)

    # Encoder padding (id 0) is never attended to: more padding changes nothing.
    padded = jnp.pad(encoder_tokens, ((0, 0), (0, 4)))
    np.testing.assert_allclose(apply(padded, decoder_inputs, decoder_targets), logits, atol=1e-5)
    # ... while a real token in its place does.
    assert not np.allclose(apply(encoder_tokens.at[:, 7].set(3), decoder_inputs), a, atol=1e-4)

    # Dropout is active only when not deterministic.
    dropped = jax.jit(
        lambda e, d, t, key: model.apply(
            {"params": params}, e, d, t, deterministic=False, rngs={"dropout": key}
        )
    )(encoder_tokens, decoder_inputs, decoder_targets, jax.random.key(1))
    assert not np.allclose(dropped, logits)


@pytest.mark.slow  # 25 s; T5 also trains in tests/launch/test_families.py
def test_amos_lowers_the_seq2seq_loss():
    # One layer per stack keeps the compile of the training step short.
    config, model = _tiny_model(num_encoder_layers=1, num_decoder_layers=1)
    key_e, key_d, key_i = jax.random.split(jax.random.key(2), 3)
    encoder_tokens = jax.random.randint(key_e, (4, 12), 1, config.vocab_size)
    targets = jax.random.randint(key_d, (4, 8), 1, config.vocab_size).at[:, 6:].set(0)
    decoder_inputs = shift_right(targets)
    params = jax.jit(model.init)(key_i, encoder_tokens, decoder_inputs)["params"]
    batch, length = targets.shape
    rules = load_model_file("t5_tiny.gin", config.vocab_size)
    # The paper's T5 settings: beta 0.95, momentum 0.9, clip sqrt(batch * target length).
    tx = amos.amos(
        0.05,
        rules.eta_fn,
        rules.shape_fn,
        beta=0.95,
        momentum=0.9,
        clip_value=math.sqrt(batch * length),
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        def loss_fn(p):
            logits = model.apply({"params": p}, encoder_tokens, decoder_inputs, targets)
            nll, _ = token_cross_entropy(logits, targets)
            return jnp.sum(nll * (targets > PAD_ID))  # Summed, as T5: clip is sqrt(batch * length).

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(21):  # The 21st loss is the loss after 20 updates.
        params, state, loss = step(params, state)
        losses.append(float(loss) / float((targets > 0).sum()))  # Per token, for reading.
    first, last = losses[0], losses[-1]
    assert first > 0.5 * math.log(config.vocab_size)
    assert np.isfinite(last) and last < 0.5 * first, losses
