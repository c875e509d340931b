"""BERT / RoPE / RPE encoders: sizes, Amos settings against the reference table, behavior."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import amos
from amos.params import checked_eta, checked_slot_shape
from amos.tree import named_leaves
from experiments.bert import amos_settings
from experiments.bert.models import (
    BertConfig,
    BertMlm,
    apply_rotary,
    relative_position_bucket,
)
from experiments.task import cross_entropy

POSITION_TYPES = ("absolute", "rotary", "relative")


@functools.cache
def _abstract_params(size: str, position_type: str, vocab_size: int = 30522):
    """Parameter shapes from ``jax.eval_shape``: nothing is allocated."""
    config = BertConfig.from_size(size, vocab_size=vocab_size, position_type=position_type)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    params = jax.eval_shape(lambda i: BertMlm(config).init(jax.random.key(0), i), ids)["params"]
    return config, params


def _count(params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


# Measured with a 30522-token vocabulary; the published BERT sizes (110M, 340M) include a
# pooler and count slightly differently, hence the 2% tolerance on those two.
EXPECTED_COUNTS = {
    ("base", "absolute"): 109_514_298,
    ("base", "rotary"): 109_121_082,  # No position table (512 x 768).
    ("base", "relative"): 109_121_466,  # No position table; one shared 32 x 12 RPE table.
    ("large", "absolute"): 335_174_458,
    ("large", "rotary"): 334_650_170,
    ("large", "relative"): 334_650_682,
}


@pytest.mark.parametrize("size,position_type", sorted(EXPECTED_COUNTS))
def test_parameter_counts(size, position_type):
    _, params = _abstract_params(size, position_type)
    n = _count(params)
    assert n == EXPECTED_COUNTS[size, position_type]
    published = {"base": 110e6, "large": 340e6}[size]
    assert abs(n / published - 1) < 0.02


def test_variable_names_are_standard():
    _, params = _abstract_params("base", "relative")
    names = {"/".join(p) for p, _ in named_leaves(params)[0]}
    assert {n.rsplit("/", 1)[1] for n in names} == {
        "kernel",
        "bias",
        "scale",
        "embedding",
        "relpos_embedding",
    }
    assert "relpos_bias/relpos_embedding" in names  # Shared by all layers.
    assert "layers_11/mlp/wo/kernel" in names and "layers_0/attention/query/kernel" in names
    assert "position_embedder/embedding" not in names
    shapes = {"/".join(p): x.shape for p, x in named_leaves(params)[0]}
    assert shapes["layers_0/attention/query/kernel"] == (768, 768)
    assert shapes["relpos_bias/relpos_embedding"] == (32, 12)
    assert shapes["mlm_head/bias"] == (30522,)


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_amos_settings_match_reference_table(size, position_type):
    config, params = _abstract_params(size, position_type)
    eta_fn, shape_fn = amos_settings.eta_fn(config), amos_settings.shape_fn(config)
    general_eta, general_shape = amos.default_eta_fn(), amos.default_shape_fn()
    listed = 0
    for path, leaf in named_leaves(params)[0]:
        eta = checked_eta(path, leaf.shape, eta_fn)  # Finite and positive.
        slot = checked_slot_shape(path, leaf.shape, shape_fn)  # () or same rank, axes 1 / full.
        reference = amos_settings.reference_eta_and_slot(config, path, leaf.shape)
        if reference is None:  # Not in the table: the library's general rule.
            assert math.isclose(eta, general_eta(path, leaf.shape), rel_tol=1e-12), path
            assert slot == general_shape(path, leaf.shape), path
        else:
            listed += 1
            assert math.isclose(eta, reference[0], rel_tol=1e-12), (path, eta, reference)
            assert slot == reference[1], (path, slot, reference)
    assert listed >= 10 * config.num_layers
    h, f = config.hidden_size, config.mlp_dim
    assert math.isclose(eta_fn(("layers_0", "mlp", "wo", "kernel"), (f, h)), math.sqrt(2 / f))
    if position_type == "relative":
        shape = (config.relpos_num_buckets, config.num_heads)
        assert eta_fn(("relpos_bias", "relpos_embedding"), shape) == 0.5
        assert shape_fn(("relpos_bias", "relpos_embedding"), shape) == (shape[0], 1)

    memory = amos.compare_slot_memory(amos.amos(0.005, eta_fn, shape_fn, momentum=0.9), params)
    # AdamW keeps 2 full slots; Amos a full momentum plus v and b, which cost 2/H of an
    # embedding (V, H) or a kernel (H, out): a ratio of about 0.5 + 1/H, under 51% from
    # H = 100 on (tiny has H = 128 for that reason).
    assert memory["ratio"] <= 0.51


def _tiny(position_type: str, **overrides) -> BertConfig:
    return BertConfig.from_size("tiny", position_type=position_type, **overrides)


@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_forward_padding_positions_and_dropout(position_type):
    config = _tiny(position_type, dropout_rate=0.5)
    model = BertMlm(config)
    ids = jax.random.randint(jax.random.key(0), (2, 12), 1, config.vocab_size)
    params = model.init(jax.random.key(1), ids)["params"]
    # Eager on purpose: on CPU, op-by-op dispatch of a tiny model costs less than compiling.
    apply = lambda i, m, p: model.apply({"params": params}, i, None, m, positions=p)  # noqa: E731
    ones = jnp.ones_like(ids)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    logits = apply(ids, ones, positions)
    assert logits.shape == (2, 12, config.vocab_size) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))

    # Masked-out (padding) keys do not change the outputs at the other positions.
    mask = ones.at[:, 9:].set(0)
    np.testing.assert_allclose(
        apply(ids, mask, positions)[:, :9],
        apply(ids.at[:, 9:].set(0), mask, positions)[:, :9],
        atol=1e-5,
    )

    # Rotary and relative positions see only offsets: shifting every position changes
    # nothing. Absolute positions do change the output.
    shifted = apply(ids, ones, positions + 13)
    if position_type == "absolute":
        assert not np.allclose(logits, shifted, atol=1e-3)
    else:
        np.testing.assert_allclose(logits, shifted, atol=1e-4)

    # Dropout is active only when not deterministic (the default).
    dropped = model.apply(
        {"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    assert dropped.shape == logits.shape and not np.allclose(dropped, logits)


def test_rotary_dot_products_depend_on_offsets_only():
    q, k = jax.random.normal(jax.random.key(5), (2, 1, 6, 1, 16))
    pos = jnp.arange(6)[None]
    dots = lambda p: jnp.einsum("bqhd,bkhd->bqk", apply_rotary(q, p), apply_rotary(k, p))  # noqa: E731
    np.testing.assert_allclose(dots(pos), dots(pos + 100), atol=1e-4)
    # A rotation keeps norms, and position 0 is the identity.
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rotary(q, pos + 7), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(apply_rotary(q, jnp.zeros_like(pos)), q, atol=1e-6)


def test_relative_position_buckets_by_hand():
    # relative = key - query. Bidirectional, 32 buckets, max distance 128: 16 per direction,
    # 8 exact (0..7), then 8 + floor(log(n / 8) / log(128 / 8) * 8), capped at 15; keys
    # after the query use buckets 16..31.
    relative = jnp.array([0, -1, -7, -8, -20, -50, -100, -1000, 1, 3, 20])
    expected = [0, 1, 7, 8, 10, 13, 15, 15, 17, 19, 26]
    # e.g. -20: 8 + floor(log(2.5) / log(16) * 8) = 8 + floor(2.64) = 10;
    #      +20: 16 + 10 = 26.
    np.testing.assert_array_equal(relative_position_bucket(relative, True, 32, 128), expected)
    # Causal: every future key in bucket 0; 16 exact, then 16 + floor(log(n/16)/log(8)*16).
    relative = jnp.array([5, 0, -5, -15, -16, -20, -200])
    np.testing.assert_array_equal(
        relative_position_bucket(relative, False, 32, 128), [0, 0, 5, 15, 16, 17, 31]
    )


@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_amos_lowers_the_mlm_loss(position_type):
    # One layer keeps the compile of the training step short; two are no different in kind.
    config = _tiny(position_type, dropout_rate=0.0, num_layers=1)
    model = BertMlm(config)
    key_ids, key_mask, key_init = jax.random.split(jax.random.key(6), 3)
    targets = jax.random.randint(key_ids, (4, 16), 1, config.vocab_size)
    masked = jax.random.bernoulli(key_mask, 0.15, targets.shape).at[:, 0].set(True)
    inputs = jnp.where(masked, 1, targets)  # Token 1 plays [MASK].
    params = model.init(key_init, inputs)["params"]
    tx = amos_settings.optimizer(config, learning_rate=0.05)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        def loss_fn(p):
            return cross_entropy(model.apply({"params": p}, inputs), targets, masked)[0]

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(21):  # The 21st loss is the loss after 20 updates.
        params, state, loss = step(params, state)
        losses.append(float(loss))
    first, last = losses[0], losses[-1]
    assert abs(first - math.log(config.vocab_size)) < 0.5  # About uniform at init.
    assert np.isfinite(last) and last < 0.5 * first, losses
