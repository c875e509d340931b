"""BERT-style masked-LM encoders of the Amos paper, built as the reference code builds them.

Reference: google-research/jestimator, ``jestimator/models/bert/modeling.py`` (BERT),
``models/rope/modeling.py`` (RoPE) and ``models/bert_rpe/modeling.py`` (RPE). One family,
three ways to encode positions (``BertConfig.position_type``):

* ``"absolute"`` (BERT): learned absolute position embeddings added to the token and
  segment embeddings.
* ``"rotary"`` (RoPE): no position embedding; queries and keys of every layer are
  rotated by their position (Su et al., 2021), so attention sees relative offsets only.
* ``"relative"`` (RPE, Shaw et al., 2018): no position embedding; every attention layer
  has its own ``relpos_embedding`` of shape ``(2 * max_distance - 1, hidden)``, one row
  per offset ``key - query`` clipped to ``[-(max_distance - 1), max_distance - 1]``. The
  row of each offset goes through the layer's own key projection (kernel and bias), and
  its dot product with the query is added to the logit; it also goes through the layer's
  value projection (kernel and bias), and the attention-weighted sum is added to the
  context::

      logit(i, j) = q_i . (K x_j + b_K + K e_{j-i} + b_K) / sqrt(d)
      context_i   = sum_j p(i, j) (V x_j + b_V + V e_{j-i} + b_V)

Initialization as the reference: the query, value, MLP output and masked-LM head dense
kernels start at ZERO; the key, attention output and MLP input kernels, the embeddings
and the relative-position tables are truncated normal (a standard normal cut at +-2,
times ``initializer_range`` = 0.02: a standard deviation of 0.02 * 0.88); biases are
zero, layer-norm scales one. At init every attention is uniform and every logit is 0.
Dropout (``dropout_rate`` on embeddings and sublayer outputs, ``attention_dropout_rate``
on attention weights) is 0.1 in the reference.

Post-LayerNorm encoder layers (as BERT) with a GELU MLP (tanh approximation, flax's
``nn.gelu`` default as the reference) and a masked-LM head (dense + GELU + LayerNorm,
then logits tied to the token embedding plus an output bias). Variables use the standard
Flax names (``kernel``, ``bias``, ``scale``, ``embedding``, and ``relpos_embedding``) so
that ``amos.default_eta_fn`` classifies them; projection kernels are 2-D ``(in, out)`` so
fan-in is their first axis. Amos rules: gin_configs/models/bert_tiny.gin.

No pooler / next-sentence head in the pre-training model: the paper pre-trains with the
masked-LM loss only. ``BertClassifier`` adds BERT's pooler and a classifier to the same
encoder (same parameter names) for GLUE-style fine-tuning.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.layers import (
    apply_rotary,
    check_remat,
    clipped_offset_rows,
    dot_product_attention,
    mask_to_bias,
    remat_block,
    with_logical_axes,
)

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
    dropout_rate: float = 0.1  # Embeddings and sublayer outputs (reference: hidden dropout).
    attention_dropout_rate: float = 0.1  # Attention weights.
    position_type: str = "absolute"
    # RPE: offsets key - query beyond +-(relpos_max_distance - 1) share the edge rows.
    relpos_max_distance: int = 128
    rotary_base: float = 10_000.0
    layer_norm_epsilon: float = 1e-12
    initializer_range: float = 0.02
    dtype: Any = jnp.float32
    # Each encoder layer rematerialized in the backward pass: 'none', 'full' or 'dots'
    # (experiments.layers.REMAT_POLICIES); less activation memory for more compute.
    remat: str = "none"

    def __post_init__(self):
        check_remat(self.remat)
        if self.position_type not in POSITION_TYPES:
            raise ValueError(f"position_type {self.position_type!r} is none of {POSITION_TYPES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.position_type == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("rotary embeddings need an even head dimension")
        if self.relpos_max_distance < 1:
            raise ValueError(f"relpos_max_distance must be >= 1, got {self.relpos_max_distance}")

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
    # For CPU runs and tests: about half a million parameters. Its RPE clips at distance
    # 16, a quarter of its 64-token examples as 128 is of the paper's 512.
    "tiny": dict(
        vocab_size=128,
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        mlp_dim=512,
        max_length=64,
        relpos_max_distance=16,
    ),
    # The reference's RPE uses relative_attention_max_distance = 128 at length 512.
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_length=512),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, max_length=512),
}


# ---------------------------------------------------------------------------------------
# Building blocks.


def _normal_init(config: BertConfig) -> nn.initializers.Initializer:
    # Standard normal truncated to (-2, 2), times initializer_range, as the reference's
    # truncated_normal_initializer (jestimator/modeling.py).
    return nn.initializers.truncated_normal(config.initializer_range)


def _dense(
    config: BertConfig,
    features: int,
    name: str,
    zero_init: bool = False,
    axes: tuple[str, str] | None = None,
) -> nn.Dense:
    init = nn.initializers.zeros if zero_init else _normal_init(config)
    if axes is not None:  # The kernel's logical axis names (tensor parallelism).
        init = with_logical_axes(init, axes)
    return nn.Dense(features, dtype=config.dtype, kernel_init=init, name=name)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # Centered before the variance, as the reference's LayerNorm (accurate with eps 1e-12).
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=config.dtype,
        use_fast_variance=False,
        name=name,
    )


def _gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=True)  # flax's default, which the reference uses.


class SelfAttention(nn.Module):
    """Multi-head self-attention with 2-D ``(hidden, hidden)`` query/key/value/out kernels."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask_bias: jax.Array,
        positions: jax.Array,
        deterministic: bool,
    ) -> jax.Array:
        cfg = self.config
        split = lambda a: a.reshape(a.shape[:-1] + (cfg.num_heads, cfg.head_dim))  # noqa: E731
        in_axes = ("embed", "joined_kv")
        query_proj = _dense(cfg, cfg.hidden_size, "query", zero_init=True, axes=in_axes)
        key_proj = _dense(cfg, cfg.hidden_size, "key", axes=in_axes)
        value_proj = _dense(cfg, cfg.hidden_size, "value", zero_init=True, axes=in_axes)
        q, k, v = split(query_proj(x)), split(key_proj(x)), split(value_proj(x))
        relative_keys = relative_values = None
        if cfg.position_type == "rotary":
            q = apply_rotary(q, positions, cfg.rotary_base)
            k = apply_rotary(k, positions, cfg.rotary_base)
        elif cfg.position_type == "relative":
            distance = cfg.relpos_max_distance
            table = self.param(
                "relpos_embedding",
                _normal_init(cfg),
                (2 * distance - 1, cfg.hidden_size),
                jnp.float32,
            )
            # Project the table's rows once, then pick each offset's row.
            rows = clipped_offset_rows(x.shape[1], x.shape[1], distance)
            relative_keys = split(key_proj(table))[rows]
            relative_values = split(value_proj(table))[rows]
        y = dot_product_attention(
            q,
            k,
            v,
            bias=mask_bias,
            relative_keys=relative_keys,
            relative_values=relative_values,
            dropout=nn.Dropout(cfg.attention_dropout_rate, deterministic=deterministic),
        )
        out = _dense(cfg, cfg.hidden_size, "out", axes=("joined_kv", "embed"))
        return out(y.reshape(y.shape[:2] + (cfg.hidden_size,)))


class Mlp(nn.Module):
    """``wo(gelu(wi(x)))`` with ``wo`` zero-initialized; ``mlp/wo/kernel`` reads GELU
    outputs (Amos gain 2)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = _gelu(_dense(cfg, cfg.mlp_dim, "wi", axes=("embed", "mlp"))(x))
        return _dense(cfg, cfg.hidden_size, "wo", zero_init=True, axes=("mlp", "embed"))(h)


class EncoderLayer(nn.Module):
    """Post-LayerNorm block, as in BERT: ``LN(x + Dropout(sublayer(x)))``."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_bias: jax.Array, positions: jax.Array, deterministic: bool
    ) -> jax.Array:
        cfg = self.config
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=deterministic)
        y = SelfAttention(cfg, name="attention")(x, mask_bias, positions, deterministic)
        x = _layer_norm(cfg, "attention_layer_norm")(x + drop(y))
        y = Mlp(cfg, name="mlp")(x)
        return _layer_norm(cfg, "mlp_layer_norm")(x + drop(y))


class MlmHead(nn.Module):
    """Dense (zero-initialized) + GELU + LayerNorm, then logits from the tied token
    embedding plus a bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, token_embedder: nn.Embed) -> jax.Array:
        cfg = self.config
        x = _gelu(_dense(cfg, cfg.hidden_size, "dense", zero_init=True)(x))
        x = _layer_norm(cfg, "layer_norm")(x)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32)
        return token_embedder.attend(x) + jnp.asarray(bias, cfg.dtype)


def encode(
    cfg: BertConfig,
    input_ids: jax.Array,
    segment_ids: jax.Array | None,
    attention_mask: jax.Array | None,
    *,
    deterministic: bool,
    positions: jax.Array | None,
) -> tuple[jax.Array, nn.Embed]:
    """The encoder: embeddings and ``cfg.num_layers`` layers, ``(batch, length, hidden)``,
    and the token embedder (which the MLM head ties its logits to).

    Called inside the ``@nn.compact`` method of a model, so every submodule is that
    model's own child with the same name (``token_embedder``, ``layers_0``, ...): the
    masked-LM model and the classifier have the same encoder parameter paths, and a
    pretrained encoder loads into a classifier by name. Arguments as
    :meth:`BertMlm.__call__`.
    """
    b, t = input_ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    if segment_ids is None:
        segment_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)

    def embed(n: int, name: str, axes: tuple[str, str] | None = None) -> nn.Embed:
        init = _normal_init(cfg) if axes is None else with_logical_axes(_normal_init(cfg), axes)
        return nn.Embed(n, cfg.hidden_size, embedding_init=init, dtype=cfg.dtype, name=name)

    # Its vocabulary axis is split for tensor parallelism; the small tables are not.
    token_embedder = embed(cfg.vocab_size, "token_embedder", ("vocab", "embed"))
    x = token_embedder(input_ids) + embed(cfg.type_vocab_size, "segment_embedder")(segment_ids)
    if cfg.position_type == "absolute":
        if t > cfg.max_length:
            raise ValueError(f"sequence length {t} > max_length {cfg.max_length}")
        x = x + embed(cfg.max_length, "position_embedder")(positions)
    x = _layer_norm(cfg, "embeddings_layer_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    # Padding keys are masked for every query: a (batch, 1, 1, length) bias.
    mask_bias = mask_to_bias((attention_mask > 0)[:, None, None, :])
    layer = remat_block(EncoderLayer, cfg.remat, static_argnums=(4,))  # (deterministic)
    for i in range(cfg.num_layers):
        x = layer(cfg, name=f"layers_{i}")(x, mask_bias, positions, deterministic)
    return x, token_embedder


class BertMlm(nn.Module):
    """Token ids ``(batch, length)`` to masked-LM logits ``(batch, length, vocab_size)``."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the encoder and the MLM head.

        Args:
          input_ids: ``(batch, length)`` int token ids.
          segment_ids: ``(batch, length)`` segment (token type) ids; zeros when ``None``.
          attention_mask: ``(batch, length)``, nonzero for tokens that may be attended to
            (i.e. not padding); every token when ``None``.
          deterministic: disables dropout when True; otherwise needs a ``'dropout'`` rng.
          positions: ``(batch, length)`` positions of the absolute and rotary encodings;
            ``0 .. length-1`` when ``None``. Relative (RPE) offsets are those of the
            indices, as in the reference, so RPE does not read ``positions``.
        """
        x, token_embedder = encode(
            self.config,
            input_ids,
            segment_ids,
            attention_mask,
            deterministic=deterministic,
            positions=positions,
        )
        return MlmHead(self.config, name="mlm_head")(x, token_embedder)


class BertClassifier(nn.Module):
    """Token ids ``(batch, length)`` to class logits ``(batch, num_classes)``: GLUE-style
    sequence classification (experiments/data/glue.py) with BERT's head.

    The encoder is :func:`encode`, so its parameters have the masked-LM model's names and
    shapes (a pretrained ``BertMlm``'s parameters, less ``mlm_head``, load by name). On
    top, BERT's pooler and classifier (Devlin et al., 2019): the first token's (``[CLS]``)
    final hidden state through ``pooler`` (dense, truncated normal 0.02, tanh), dropout
    ``dropout_rate``, then ``classifier`` (dense to ``num_classes``, zero-initialized as
    the reference's classifier, jestimator/models/bert/modeling.py ``ModelForSeqCls``, so
    every logit starts at 0). The reference's head itself differs: a learned ``cls``
    query attends through every encoder layer; this is BERT's pooled output, the usual
    GLUE head. Both new kernels read unit-scale inputs and get the general Amos rule
    (``sqrt(1 / hidden)``, biases 0.5), as everything but the MLP output in the
    reference's BERT ``eta_fn``.
    """

    config: BertConfig
    num_classes: int

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Arguments as :meth:`BertMlm.__call__`; returns ``(batch, num_classes)`` logits."""
        cfg = self.config
        x, _ = encode(
            cfg,
            input_ids,
            segment_ids,
            attention_mask,
            deterministic=deterministic,
            positions=positions,
        )
        pooled = jnp.tanh(_dense(cfg, cfg.hidden_size, "pooler")(x[:, 0]))
        pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
        return _dense(cfg, self.num_classes, "classifier", zero_init=True)(pooled)


def bert_model(vocab_size: int, *, size: str = "tiny", **overrides) -> nn.Module:
    """BERT / RoPE / RPE (`position_type`) at a named size, any BertConfig field overridden."""
    return BertMlm(BertConfig.from_size(size, vocab_size=vocab_size, **overrides))


def bert_classifier(
    vocab_size: int, num_classes: int, *, size: str = "tiny", **overrides
) -> nn.Module:
    """The BERT-family encoder with BERT's pooler and a classifier (GLUE); its encoder
    parameters have `bert_model`'s names, so a pretrained encoder loads by name."""
    config = BertConfig.from_size(size, vocab_size=vocab_size, **overrides)
    return BertClassifier(config, num_classes=num_classes)
