"""The shared Transformer layers: attention core, masks, relative positions, rotary."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.layers import (
    MASKED_LOGIT,
    RelativePositionBias,
    apply_rotary,
    causal_mask,
    clipped_offset_rows,
    dot_product_attention,
    mask_to_bias,
    padding_mask,
    relative_position_bucket,
)

# Jitted: one compile costs less than dispatching (and compiling) each op on its own.
attend = jax.jit(dot_product_attention, static_argnames=("scale", "dropout"))


def _normal(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _naive_attention(q, k, v, bias, scale, rel_k, rel_v):
    """The docstring's formula, one (query, key) pair at a time in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, nq, h, _ = q.shape
    nk = k.shape[1]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                logits = np.empty(nk)
                for j in range(nk):
                    r = j - i + nq - 1  # The row of offset j - i.
                    dot = q[bi, i, hi] @ k[bi, j, hi]
                    if rel_k is not None:
                        dot += q[bi, i, hi] @ rel_k[r, hi]
                    logits[j] = scale * dot + bias[bi, hi, i, j]
                w = np.exp(logits - logits.max())
                w /= w.sum()
                for j in range(nk):
                    r = j - i + nq - 1
                    term = v[bi, j, hi] + (0 if rel_v is None else rel_v[r, hi])
                    out[bi, i, hi] += w[j] * term
    return out


@pytest.mark.parametrize("num_queries,num_keys", [(4, 4), (3, 5)])
@pytest.mark.parametrize("relative", [False, True])
def test_attention_core_equals_the_formula(num_queries, num_keys, relative):
    rng = np.random.default_rng(0)
    b, h, d = 2, 3, 4
    q = _normal(rng, b, num_queries, h, d)
    k, v = _normal(rng, 2, b, num_keys, h, d)
    offsets = num_queries + num_keys - 1
    rel_k = _normal(rng, offsets, h, d) if relative else None
    rel_v = _normal(rng, offsets, h, d) if relative else None
    # A padding mask (last key of example 1 masked) plus an arbitrary per-head bias.
    valid_k = jnp.ones((b, num_keys), bool).at[1, -1].set(False)
    mask = padding_mask(jnp.ones((b, num_queries), bool), valid_k)
    bias = mask_to_bias(mask) + _normal(rng, b, h, num_queries, num_keys)
    out = attend(q, k, v, bias=bias, relative_keys=rel_k, relative_values=rel_v)
    expected = _naive_attention(q, k, v, np.asarray(bias), 1 / math.sqrt(d), rel_k, rel_v)
    assert out.shape == (b, num_queries, h, d) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_relative_keys_and_values_each_change_the_output():
    rng = np.random.default_rng(1)
    q, k, v = _normal(rng, 3, 1, 4, 2, 8)
    rk, rv = _normal(rng, 2, 7, 2, 8)  # 4 + 4 - 1 offsets.
    plain = attend(q, k, v)
    with_keys = attend(q, k, v, relative_keys=rk)
    with_values = attend(q, k, v, relative_values=rv)
    assert not np.allclose(plain, with_keys, atol=1e-3)
    assert not np.allclose(plain, with_values, atol=1e-3)
    with pytest.raises(ValueError, match="offsets"):
        attend(q, k, v, relative_keys=rk[:5])


def test_scale_and_dropout_apply_to_both_paths():
    rng = np.random.default_rng(2)
    q, k, v = _normal(rng, 3, 1, 3, 2, 4)
    rv = _normal(rng, 5, 2, 4)  # 3 + 3 - 1 offsets.
    # scale=1.0 (T5) differs from the default 1/sqrt(d).
    assert not np.allclose(attend(q, k, v, scale=1.0), attend(q, k, v))
    # Dropout acts on the weights, before the value and the relative-value sums: dropping
    # every weight leaves nothing of either.
    out = attend(q, k, v, relative_values=rv, dropout=lambda w: w * 0)
    np.testing.assert_array_equal(out, 0.0)


def test_logits_and_softmax_in_float32():
    q, k, v = _normal(np.random.default_rng(3), 3, 2, 6, 2, 8) * 4
    ref = attend(q, k, v, bias=mask_to_bias(causal_mask(6)))
    low = attend(*(a.astype(jnp.bfloat16) for a in (q, k, v)), bias=mask_to_bias(causal_mask(6)))
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), ref, atol=0.1)


def test_masks():
    np.testing.assert_array_equal(
        causal_mask(3)[0, 0], [[True, False, False], [True, True, False], [True, True, True]]
    )
    valid_q = jnp.array([[True, True, False]])
    valid_k = jnp.array([[True, False]])
    np.testing.assert_array_equal(
        padding_mask(valid_q, valid_k)[0, 0], [[True, False], [True, False], [False, False]]
    )
    assert padding_mask(valid_q).shape == (1, 1, 3, 3)
    bias = mask_to_bias(jnp.array([True, False]))
    assert bias.dtype == jnp.float32 and bias.tolist() == [0.0, MASKED_LOGIT]
    # A masked key gets weight exactly 0; a query with no key left stays finite (uniform).
    q, k, v = _normal(np.random.default_rng(4), 3, 1, 3, 1, 4)
    out = attend(q, k, v, bias=mask_to_bias(causal_mask(3)))
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-6)  # Query 0 sees key 0 only.
    none = attend(q, k, v, bias=mask_to_bias(jnp.zeros((1, 1, 3, 3), bool)))
    np.testing.assert_allclose(none[0, 0], v[0].mean(0), rtol=1e-5)


def test_clipped_offset_rows_by_hand():
    """Shaw et al. (2018), as jestimator/models/bert_rpe/modeling.py: offsets key - query
    beyond max_distance - 1 read the edge rows of a (2 * max_distance - 1)-row table."""
    # 3 queries, 4 keys: offsets -2 .. 3; max_distance 2 clips them to -1 .. 1 (rows 0 .. 2).
    np.testing.assert_array_equal(clipped_offset_rows(3, 4, 2), [0, 0, 1, 2, 2, 2])
    # No clipping when the table covers every offset: row = offset + max_distance - 1.
    np.testing.assert_array_equal(clipped_offset_rows(3, 3, 5), [2, 3, 4, 5, 6])
    assert clipped_offset_rows(64, 64, 16).max() == 2 * 16 - 2
    with pytest.raises(ValueError):
        clipped_offset_rows(3, 3, 0)


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


def test_relative_position_bias_reads_its_table():
    module = RelativePositionBias(num_buckets=8, max_distance=16, num_heads=3)
    pos = jnp.arange(5)[None]
    params = module.init(jax.random.key(5), pos, pos)["params"]
    table = params["relpos_embedding"]
    assert table.shape == (8, 3)
    bias = module.apply({"params": params}, pos, pos)
    assert bias.shape == (1, 3, 5, 5)
    buckets = relative_position_bucket(pos[0][None, :] - pos[0][:, None], True, 8, 16)
    np.testing.assert_array_equal(bias[0], jnp.moveaxis(table[buckets], -1, 0))


def test_rotary_dot_products_depend_on_offsets_only():
    q, k = _normal(np.random.default_rng(5), 2, 1, 6, 1, 16)
    pos = jnp.arange(6)[None]
    dots = lambda p: jnp.einsum("bqhd,bkhd->bqk", apply_rotary(q, p), apply_rotary(k, p))  # noqa: E731
    np.testing.assert_allclose(dots(pos), dots(pos + 100), atol=1e-4)
    assert not np.allclose(dots(pos), dots(pos * 2), atol=1e-3)
    # A rotation keeps norms, and position 0 is the identity.
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rotary(q, pos + 7), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(apply_rotary(q, jnp.zeros_like(pos)), q, atol=1e-6)
    # Dimension i pairs with i + d/2, rotated by position * 10000 ** (-2 i / d).
    x = jnp.zeros((1, 1, 1, 4)).at[..., 1].set(1.0)  # d = 4: pairs (0, 2) and (1, 3).
    angle = 3 * 10_000 ** (-2 * 1 / 4)
    np.testing.assert_allclose(
        apply_rotary(x, jnp.array([[3]]))[0, 0, 0],
        [0, math.cos(angle), 0, math.sin(angle)],
        atol=1e-6,
    )
