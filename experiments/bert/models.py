"""BERT-style masked-LM encoders of the Amos paper, as Flax linen modules.

One family, three ways to encode positions (``BertConfig.position_type``):

* ``"absolute"`` (BERT): learned absolute position embeddings added to the token and
  segment embeddings.
* ``"rotary"`` (RoPE): no position embedding; queries and keys of every layer are
  rotated by their position (Su et al., 2021), so attention sees relative offsets only.
* ``"relative"`` (RPE): no position embedding; a learned ``(num_buckets, num_heads)``
  table of T5-style log-bucketed relative distances is added to the attention logits.
  The table is **shared by all layers** (one variable ``relpos_bias/relpos_embedding``),
  as T5 shares its bias within a stack; it costs ``num_buckets * num_heads`` parameters.

All three are post-LayerNorm encoders (as BERT) with a GELU MLP and a masked-LM head
(dense + GELU + LayerNorm, then logits tied to the token embedding plus an output bias).
Variables use the standard Flax names (``kernel``, ``bias``, ``scale``, ``embedding``)
so that ``amos.default_eta_fn`` classifies each of them; projection kernels are 2-D
``(in, out)`` so fan-in is their first axis. Amos settings: ``experiments.bert.amos_settings``.

No pooler / next-sentence head: the paper pre-trains with the masked-LM loss only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

POSITION_TYPES = ("absolute", "rotary", "relative")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and options of the encoder. Build the paper's sizes with :meth:`from_size`."""

    vocab_size: int = 32_000  # The paper's sentencepiece vocabulary; 30522 is BERT's WordPiece.
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_length: int = 512  # Size of the absolute position table (unused by rotary/relative).
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    position_type: str = "absolute"
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    rotary_base: float = 10_000.0
    layer_norm_epsilon: float = 1e-12
    initializer_range: float = 0.02
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.position_type not in POSITION_TYPES:
            raise ValueError(f"position_type {self.position_type!r} is none of {POSITION_TYPES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.position_type == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("rotary embeddings need an even head dimension")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> BertConfig:
        """``tiny``, ``base`` or ``large``, with any field overridden (e.g. ``vocab_size``)."""
        if size not in SIZES:
            raise ValueError(f"Unknown size {size!r}; choose from {sorted(SIZES)}")
        return cls(**{**SIZES[size], **overrides})


SIZES: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: a few hundred thousand parameters.
    "tiny": dict(
        vocab_size=128,
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        mlp_dim=512,
        max_length=64,
        relpos_num_buckets=16,
        relpos_max_distance=32,
    ),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_length=512),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, max_length=512),
}


# ---------------------------------------------------------------------------------------
# Position encodings.


def relative_position_bucket(
    relative_position: jnp.ndarray,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jnp.ndarray:
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
    """Learned ``(num_buckets, num_heads)`` logit bias of bucketed relative distances."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q_positions: jnp.ndarray, k_positions: jnp.ndarray) -> jnp.ndarray:
        """Positions ``(..., q)`` and ``(..., k)`` give a bias ``(..., heads, q, k)``."""
        # Leaf name ends in 'embedding' so Amos classifies it (slot (buckets, 1)); 'relpos'
        # lets the Amos settings give it its table value, 0.5, as an additive logit bias.
        table = self.param(
            "relpos_embedding",
            nn.initializers.normal(0.02),
            (self.num_buckets, self.num_heads),
            jnp.float32,
        )
        relative = k_positions[..., None, :] - q_positions[..., :, None]
        buckets = relative_position_bucket(
            relative, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.asarray(table, self.dtype)[buckets]  # (..., q, k, heads)
        return jnp.moveaxis(bias, -1, -3)


def apply_rotary(x: jnp.ndarray, positions: jnp.ndarray, base: float = 10_000.0) -> jnp.ndarray:
    """Rotates ``x`` of shape ``(batch, length, heads, head_dim)`` by ``positions (batch, length)``.

    Pairs dimension ``i`` with ``i + head_dim / 2`` (the GPT-NeoX layout), so a dot product
    of a rotated query and key depends on their positions only through the difference.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (batch, length, half)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


# ---------------------------------------------------------------------------------------
# The encoder.


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.dtype,
        kernel_init=nn.initializers.truncated_normal(config.initializer_range),
        name=name,
    )


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.dtype, name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention with 2-D ``(hidden, hidden)`` query/key/value/out kernels."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        mask_bias: jnp.ndarray,
        positions: jnp.ndarray,
        position_bias: jnp.ndarray | None,
        deterministic: bool,
    ) -> jnp.ndarray:
        cfg = self.config
        b, t, _ = x.shape
        split = lambda a: a.reshape(b, t, cfg.num_heads, cfg.head_dim)  # noqa: E731
        q = split(_dense(cfg, cfg.hidden_size, "query")(x))
        k = split(_dense(cfg, cfg.hidden_size, "key")(x))
        v = split(_dense(cfg, cfg.hidden_size, "value")(x))
        if cfg.position_type == "rotary":
            q = apply_rotary(q, positions, cfg.rotary_base)
            k = apply_rotary(k, positions, cfg.rotary_base)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(cfg.head_dim)
        logits = logits + mask_bias
        if position_bias is not None:
            logits = logits + position_bias
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
        weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, cfg.hidden_size)
        return _dense(cfg, cfg.hidden_size, "out")(y)


class Mlp(nn.Module):
    """``wo(gelu(wi(x)))``; ``mlp/wo/kernel`` reads GELU outputs (Amos gain 2)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.gelu(_dense(self.config, self.config.mlp_dim, "wi")(x), approximate=False)
        return _dense(self.config, self.config.hidden_size, "wo")(h)


class EncoderLayer(nn.Module):
    """Post-LayerNorm block, as in BERT: ``LN(x + Dropout(sublayer(x)))``."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        mask_bias: jnp.ndarray,
        positions: jnp.ndarray,
        position_bias: jnp.ndarray | None,
        deterministic: bool,
    ) -> jnp.ndarray:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        y = SelfAttention(cfg, name="attention")(
            x, mask_bias, positions, position_bias, deterministic
        )
        x = _layer_norm(cfg, "attention_layer_norm")(x + drop(y, deterministic=deterministic))
        y = Mlp(cfg, name="mlp")(x)
        return _layer_norm(cfg, "mlp_layer_norm")(x + drop(y, deterministic=deterministic))


class MlmHead(nn.Module):
    """Dense + GELU + LayerNorm, then logits from the tied token embedding plus a bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, token_embedder: nn.Embed) -> jnp.ndarray:
        cfg = self.config
        x = nn.gelu(_dense(cfg, cfg.hidden_size, "dense")(x), approximate=False)
        x = _layer_norm(cfg, "layer_norm")(x)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32)
        return token_embedder.attend(x) + jnp.asarray(bias, cfg.dtype)


class BertMlm(nn.Module):
    """Token ids ``(batch, length)`` to masked-LM logits ``(batch, length, vocab_size)``."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jnp.ndarray,
        segment_ids: jnp.ndarray | None = None,
        attention_mask: jnp.ndarray | None = None,
        *,
        deterministic: bool = True,
        positions: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """Runs the encoder and the MLM head.

        Args:
          input_ids: ``(batch, length)`` int token ids.
          segment_ids: ``(batch, length)`` segment (token type) ids; zeros when ``None``.
          attention_mask: ``(batch, length)``, nonzero for tokens that may be attended to
            (i.e. not padding); every token when ``None``.
          deterministic: disables dropout when True; otherwise needs a ``'dropout'`` rng.
          positions: ``(batch, length)`` positions; ``0 .. length-1`` when ``None``. With
            rotary or relative positions a shift of all positions leaves the output unchanged.
        """
        cfg = self.config
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        init = nn.initializers.truncated_normal(cfg.initializer_range)

        def embed(n: int, name: str) -> nn.Embed:
            return nn.Embed(n, cfg.hidden_size, embedding_init=init, dtype=cfg.dtype, name=name)

        token_embedder = embed(cfg.vocab_size, "token_embedder")
        x = token_embedder(input_ids) + embed(cfg.type_vocab_size, "segment_embedder")(segment_ids)
        if cfg.position_type == "absolute":
            if t > cfg.max_length:
                raise ValueError(f"sequence length {t} > max_length {cfg.max_length}")
            x = x + embed(cfg.max_length, "position_embedder")(positions)
        x = _layer_norm(cfg, "embeddings_layer_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

        # Additive mask on the keys, kept in float32 with the logits.
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(jnp.float32)
        position_bias = None
        if cfg.position_type == "relative":
            position_bias = RelativePositionBias(
                cfg.relpos_num_buckets,
                cfg.relpos_max_distance,
                cfg.num_heads,
                bidirectional=True,
                dtype=jnp.float32,
                name="relpos_bias",
            )(positions, positions)
        for i in range(cfg.num_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(
                x, mask_bias, positions, position_bias, deterministic
            )
        return MlmHead(cfg, name="mlm_head")(x, token_embedder)
