"""Layers shared by the Transformer families (GPT, BERT / RoPE / RPE, T5).

* :func:`dot_product_attention`: the one attention core. Every attention of every family
  computes its logits, softmax and weighted sum here; the models only project.
* Masks: :func:`causal_mask`, :func:`padding_mask` (booleans, True where a query may
  attend to a key) and :func:`mask_to_bias` (the additive float32 logit bias).
* Relative positions, two kinds:

  - T5's learned scalar bias per head of log-bucketed distances
    (:func:`relative_position_bucket`, :class:`RelativePositionBias`), added to the logits
    through ``bias``; used by T5 only.
  - Shaw et al. (2018) relative-position representations (:func:`clipped_offset_rows`):
    a table of ``2 * max_distance - 1`` vectors, one per clipped offset ``key - query``,
    which the caller projects into per-offset key and value terms and hands to
    :func:`dot_product_attention` (``relative_keys`` / ``relative_values``); used by RPE.
* :func:`apply_rotary`: rotary position embedding (Su et al., 2021), used by RoPE.
* :func:`with_logical_axes`: the logical axis names of a parameter (t5x / MaxText style),
  which launch/sharding.py maps to mesh axes for tensor parallelism.
* :func:`remat_block`: a Transformer block rematerialized in the backward pass under a
  named policy (``REMAT``: 'none', 'full', 'dots'), to trade compute for activation memory.

Shapes: ``b`` batch, ``q``/``k`` query/key length, ``h`` heads, ``d`` head size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Additive logit of a masked-out key. Finite, so that a query with no key to attend to
# (a padding query) gets uniform weights instead of NaN; exp(-1e9 - max) is exactly 0 in
# float32, so a masked key gets weight 0 whenever one key is unmasked.
MASKED_LOGIT = -1e9


# ---------------------------------------------------------------------------------------
# Logical axis names.


def with_logical_axes(
    init: nn.initializers.Initializer, names: tuple[str | None, ...]
) -> nn.initializers.Initializer:
    """``init``, naming the logical axes of the parameter it makes, one name per dimension.

    The names are t5x's: ``vocab``, ``embed`` (the model width), ``mlp`` (the MLP's
    hidden width), ``joined_kv`` (heads x head size, fused), ``heads``,
    ``relpos_buckets``. Inside ``nn.logical_axis_rules`` (launch/trainer/ initializes a
    run there) the value comes boxed in ``nn.LogicallyPartitioned`` (Flax's
    ``nn.with_logical_partitioning``), for ``nn.get_partition_spec`` to read and the
    rules to map to mesh axes; elsewhere it is ``init``'s plain array, so ``Module.init``
    returns the parameter trees it always has. The values are ``init``'s either way.
    """
    boxed = nn.with_logical_partitioning(init, names)

    def initializer(*args: Any, **kwargs: Any) -> Any:
        if nn.get_logical_axis_rules():
            return boxed(*args, **kwargs)
        return init(*args, **kwargs)

    return initializer


# ---------------------------------------------------------------------------------------
# Masks.


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """Boolean mask (True: may attend) to an additive float32 logit bias, 0 or -1e9."""
    return jnp.where(mask, 0.0, MASKED_LOGIT).astype(jnp.float32)


def causal_mask(length: int) -> jax.Array:
    """``(1, 1, length, length)`` booleans: query ``i`` may attend to keys ``j <= i``."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def padding_mask(query_valid: jax.Array, key_valid: jax.Array | None = None) -> jax.Array:
    """``(b, 1, q, k)`` booleans from ``(b, q)`` and ``(b, k)`` validity (True: a real
    token); ``key_valid`` defaults to ``query_valid`` (self-attention)."""
    key_valid = query_valid if key_valid is None else key_valid
    return query_valid[:, None, :, None].astype(bool) & key_valid[:, None, None, :].astype(bool)


# ---------------------------------------------------------------------------------------
# The attention core.


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
    relative_keys: jax.Array | None = None,
    relative_values: jax.Array | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Multi-head scaled dot-product attention, optionally with Shaw-style relative terms.

    With ``r(i, j) = j - i + (q - 1)``, the row of the offset ``j - i`` in a table of
    ``q + k - 1`` offsets (from ``-(q - 1)`` to ``k - 1``)::

        logits[b, h, i, j] = scale * (query[b, i, h] . key[b, j, h]
                                      + query[b, i, h] . relative_keys[r(i, j), h])
                             + bias[b, h, i, j]
        weights = dropout(softmax_j(logits))        # logits and softmax in float32
        out[b, i, h] = sum_j weights[b, h, i, j] * (value[b, j, h]
                                                    + relative_values[r(i, j), h])

    Args:
      query: ``(b, q, h, d)``.
      key, value: ``(b, k, h, d)``.
      bias: additive logit bias broadcastable to ``(b, h, q, k)``: masks
        (:func:`mask_to_bias`) and/or T5's relative-position bias.
      scale: multiplies the dot products; ``1 / sqrt(d)`` when None (T5 passes 1.0).
      relative_keys: ``(q + k - 1, h, d)`` key-side term per offset, or None.
      relative_values: ``(q + k - 1, h, d)`` value-side term per offset, or None.
      dropout: applied to the attention weights (e.g. a bound ``nn.Dropout``), or None.

    Returns:
      ``(b, q, h, d)`` in ``value``'s dtype.
    """
    num_queries, num_keys = query.shape[1], key.shape[1]
    num_offsets = num_queries + num_keys - 1
    for name, table in (("relative_keys", relative_keys), ("relative_values", relative_values)):
        if table is not None and table.shape[0] != num_offsets:
            raise ValueError(
                f"{name} has {table.shape[0]} rows; {num_queries} queries and {num_keys} "
                f"keys have {num_offsets} offsets"
            )
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
    if relative_keys is not None:
        by_offset = jnp.einsum("bqhd,ohd->bhqo", query, relative_keys).astype(jnp.float32)
        logits = logits + _offsets_to_keys(by_offset, num_keys)
    if scale is None:
        # Divided rather than multiplied by the reciprocal: the gradients then equal, bit
        # for bit, those of the GPT's attention before it moved here.
        logits = logits / math.sqrt(query.shape[-1])
    elif scale != 1.0:
        logits = logits * scale
    if bias is not None:
        logits = logits + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    if dropout is not None:
        weights = dropout(weights)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    if relative_values is not None:
        # Each offset's value term, weighted by the total weight of the keys at that offset.
        out = out + jnp.einsum("bhqo,ohd->bqhd", _keys_to_offsets(weights), relative_values)
    return out


def _offsets_to_keys(by_offset: jax.Array, num_keys: int) -> jax.Array:
    """``(..., q, q + k - 1)`` per offset to ``(..., q, k)`` per key: entry ``[i, j]`` is
    ``by_offset[i, j - i + q - 1]``."""
    num_queries = by_offset.shape[-2]
    rows = jnp.arange(num_queries)[:, None]
    columns = jnp.arange(num_keys)[None, :] - rows + (num_queries - 1)
    return by_offset[..., rows, columns]


def _keys_to_offsets(per_key: jax.Array) -> jax.Array:
    """``(..., q, k)`` per key to ``(..., q, q + k - 1)`` per offset, zero at offsets that
    no key of that query has: entry ``[i, r]`` is ``per_key[i, r + i - (q - 1)]``."""
    num_queries, num_keys = per_key.shape[-2:]
    rows = jnp.arange(num_queries)[:, None]
    keys = jnp.arange(num_queries + num_keys - 1)[None, :] + rows - (num_queries - 1)
    inside = (keys >= 0) & (keys < num_keys)
    # Index num_keys reads an appended zero column.
    padded = jnp.concatenate([per_key, jnp.zeros_like(per_key[..., :1])], axis=-1)
    return padded[..., rows, jnp.where(inside, keys, num_keys)]


# ---------------------------------------------------------------------------------------
# Shaw et al. (2018) relative positions.


def clipped_offset_rows(query_length: int, key_length: int, max_distance: int) -> jax.Array:
    """``(query_length + key_length - 1,)`` int rows of a ``(2 * max_distance - 1, ...)``
    table for the offsets ``key - query`` from ``-(query_length - 1)`` to
    ``key_length - 1``: offset ``o`` reads row ``clip(o, -(D - 1), D - 1) + D - 1`` with
    ``D = max_distance``, so farther offsets share the edge rows.

    ``table[clipped_offset_rows(...)]`` is what :func:`dot_product_attention` takes as
    ``relative_keys`` / ``relative_values`` (after the projections and a heads split).
    """
    if max_distance < 1:
        raise ValueError(f"max_distance must be >= 1, got {max_distance}")
    offsets = jnp.arange(-(query_length - 1), key_length)
    return jnp.clip(offsets, -(max_distance - 1), max_distance - 1) + (max_distance - 1)


# ---------------------------------------------------------------------------------------
# T5's bucketed relative-position bias.


def relative_position_bucket(
    relative_position: jax.Array,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
    """T5's bucketing of ``relative_position = key_position - query_position``.

    Half the buckets (all of them when not bidirectional) hold exact small distances; the
    rest cover distances up to ``max_distance`` logarithmically, and farther ones share the
    last bucket. When bidirectional, keys after the query use the upper half of the buckets.
    When causal, positive offsets (future keys) all map to bucket 0.
    """
    ret = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(relative_position.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # The small epsilon avoids log(0); those entries take the exact branch anyway.
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(relative_position.dtype)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
    """T5's learned ``(num_buckets, num_heads)`` logit bias of bucketed relative distances.

    The variable is ``relpos_embedding``: its leaf name ends in 'embedding' so that Amos'
    general rule classifies it (slot ``(buckets, 1)``), and 'relpos' lets a rule map give it
    the additive-bias eta 0.5.
    """

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
        """Positions ``(..., q)`` and ``(..., k)`` give a bias ``(..., heads, q, k)``."""
        table = self.param(
            "relpos_embedding",
            with_logical_axes(nn.initializers.normal(0.02), ("relpos_buckets", "heads")),
            (self.num_buckets, self.num_heads),
            jnp.float32,
        )
        relative = k_positions[..., None, :] - q_positions[..., :, None]
        buckets = relative_position_bucket(
            relative, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.asarray(table, self.dtype)[buckets]  # (..., q, k, heads)
        return jnp.moveaxis(bias, -1, -3)


# ---------------------------------------------------------------------------------------
# Rotary position embedding.


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotates ``x`` of shape ``(b, length, h, d)`` by ``positions (b, length)``.

    Dimension ``i < d / 2`` is paired with ``i + d / 2`` (the GPT-NeoX / flaxformer layout)
    and the pair is rotated by the angle ``position * base ** (-2 i / d)``, so the dot
    product of a rotated query and key depends on their positions only through the
    difference.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (b, length, half)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


# ---------------------------------------------------------------------------------------
# Rematerialization (gradient checkpointing) of a Transformer block.

# What a rematerialized block keeps for the backward pass, by name (the gin macro REMAT):
# 'none' keeps every activation (no remat: the block as it is); 'full' keeps only each
# block's inputs and recomputes the rest in the backward pass; 'dots' also keeps the
# outputs of the matmuls without batch dimensions (the dense projections), so only the
# elementwise work and the attention's batched einsums are recomputed (MaxText's
# `remat_policy` 'minimal' and 'full').
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat (REMAT) {remat!r} is none of {tuple(REMAT_POLICIES)}")


def remat_block(block: type[nn.Module], remat: str, static_argnums: tuple[int, ...]) -> Any:
    """``block`` (a Module class) as it is for ``remat='none'``, else wrapped in
    ``nn.remat`` under the named policy of :data:`REMAT_POLICIES`. ``static_argnums``: the
    positions of its call's Python arguments (``deterministic``), counting ``self`` as 0.
    Parameter names and values do not change; only what the backward pass recomputes."""
    check_remat(remat)
    if remat == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[remat], static_argnums=static_argnums)
