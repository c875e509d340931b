"""T5 1.1 encoder-decoder (Raffel et al., 2020; the t5.1.1 checkpoints), as Flax linen modules.

What makes it T5 1.1 rather than T5: a gated-GELU MLP (``wi_0``, ``wi_1``, ``wo``), no
dropout in pre-training (``dropout_rate`` is a parameter), and output logits from their
own kernel instead of the input embedding. As in T5: pre-norm RMS normalization without
bias or mean-centering, no bias in any layer, no ``1/sqrt(d_kv)`` on the attention logits
(it is folded into the query kernel's initialization), and a learned relative-position
logit bias per stack (bidirectional buckets in the encoder, causal in the decoder),
computed once per stack and shared by its layers. The token embedding is shared by the
encoder and decoder inputs. Padding id 0 masks attention.

Variables use the standard Flax names (``kernel``, ``scale``, ``embedding``); the
relative-position tables are ``<stack>/relpos_bias/relpos_embedding``, and query kernels
end in ``attention/query/kernel`` (``attention``, ``self_attention`` and
``encoder_decoder_attention``), so that the Amos rule maps of gin_configs/models/t5_*.gin
can find them. Projection kernels are 2-D ``(in, out)``. The attention core, masks and
the bucketed relative-position bias are ``experiments.layers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from experiments.layers import (
    RelativePositionBias,
    causal_mask,
    check_remat,
    dot_product_attention,
    mask_to_bias,
    padding_mask,
    remat_block,
    with_logical_axes,
)

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Sizes and options of a T5 1.1 model. Build the released sizes with :meth:`from_size`."""

    vocab_size: int = 32_128
    d_model: int = 768
    num_heads: int = 12
    d_kv: int = 64
    d_ff: int = 2048
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    dropout_rate: float = 0.0  # T5 1.1 pre-trains without dropout; 0.1 to fine-tune.
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: Any = jnp.float32
    # Each encoder and decoder layer rematerialized in the backward pass: 'none', 'full'
    # or 'dots' (experiments.layers.REMAT_POLICIES); less activation memory, more compute.
    remat: str = "none"

    def __post_init__(self):
        check_remat(self.remat)

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> T5Config:
        """``tiny``, ``small``, ``base`` or ``large``, with any field overridden."""
        if size not in SIZES:
            raise ValueError(f"Unknown size {size!r}; choose from {sorted(SIZES)}")
        return cls(**{**SIZES[size], **overrides})


def _size(
    d_model: int,
    layers: int,
    heads: int,
    d_kv: int,
    d_ff: int,
    vocab_size: int = 32_128,
    **kwargs: Any,
) -> dict[str, Any]:
    return dict(
        d_model=d_model,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        d_kv=d_kv,
        d_ff=d_ff,
        vocab_size=vocab_size,
        **kwargs,
    )


SIZES: dict[str, dict[str, Any]] = {
    "tiny": _size(
        128, 2, 2, 64, 256, vocab_size=128, relpos_num_buckets=16, relpos_max_distance=32
    ),
    "small": _size(512, 8, 6, 64, 1024),
    "base": _size(768, 12, 12, 64, 2048),
    "large": _size(1024, 24, 16, 64, 2816),
}


def shift_right(tokens: jnp.ndarray, bos_id: int = PAD_ID) -> jnp.ndarray:
    """Decoder inputs from targets: shift right by one along the last axis, start with BOS.

    T5 uses the padding id 0 as BOS.
    """
    shifted = jnp.roll(tokens, 1, axis=-1)
    return shifted.at[..., 0].set(bos_id)


def _fan_in_init(scale: float = 1.0) -> nn.initializers.Initializer:
    # T5's default: truncated normal with variance scale / fan_in.
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


def _dense(
    cfg: T5Config, features: int, name: str, axes: tuple[str, str], scale: float = 1.0
) -> nn.Dense:
    # `axes`: the kernel's logical axis names (experiments.layers.with_logical_axes).
    kernel_init = with_logical_axes(_fan_in_init(scale), axes)
    return nn.Dense(features, use_bias=False, dtype=cfg.dtype, kernel_init=kernel_init, name=name)


def _norm(cfg: T5Config, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, name=name)


class Attention(nn.Module):
    """Multi-head attention without biases and without ``1/sqrt(d_kv)`` on the logits."""

    config: T5Config

    @nn.compact
    def __call__(
        self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray, bias: jnp.ndarray, deterministic: bool
    ) -> jnp.ndarray:
        cfg = self.config
        inner = cfg.num_heads * cfg.d_kv
        split = lambda a: a.reshape(a.shape[:-1] + (cfg.num_heads, cfg.d_kv))  # noqa: E731
        # The query kernel starts 1/sqrt(d_kv) smaller: the logit scaling lives in its init.
        in_axes = ("embed", "joined_kv")
        q = split(_dense(cfg, inner, "query", in_axes, scale=1.0 / cfg.d_kv)(inputs_q))
        k = split(_dense(cfg, inner, "key", in_axes)(inputs_kv))
        v = split(_dense(cfg, inner, "value", in_axes)(inputs_kv))
        attention_dropout = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        y = dot_product_attention(q, k, v, bias=bias, scale=1.0, dropout=attention_dropout)
        out = _dense(cfg, cfg.d_model, "out", ("joined_kv", "embed"))
        return out(y.reshape(y.shape[:2] + (inner,)))


class GatedGeluMlp(nn.Module):
    """``wo(gelu(wi_0(x)) * wi_1(x))``; ``mlp/wo/kernel`` reads gated-GELU outputs."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
        cfg = self.config
        wi_0 = _dense(cfg, cfg.d_ff, "wi_0", ("embed", "mlp"))
        wi_1 = _dense(cfg, cfg.d_ff, "wi_1", ("embed", "mlp"))
        h = nn.gelu(wi_0(x), approximate=True) * wi_1(x)
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return _dense(cfg, cfg.d_model, "wo", ("mlp", "embed"))(h)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: jnp.ndarray, bias: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
        cfg = self.config
        drop = lambda a: nn.Dropout(cfg.dropout_rate)(a, deterministic=deterministic)  # noqa: E731
        h = _norm(cfg, "pre_attention_layer_norm")(x)
        x = x + drop(Attention(cfg, name="attention")(h, h, bias, deterministic))
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        return x + drop(GatedGeluMlp(cfg, name="mlp")(h, deterministic))


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self,
        y: jnp.ndarray,
        encoded: jnp.ndarray,
        self_bias: jnp.ndarray,
        cross_bias: jnp.ndarray,
        deterministic: bool,
    ) -> jnp.ndarray:
        cfg = self.config
        drop = lambda a: nn.Dropout(cfg.dropout_rate)(a, deterministic=deterministic)  # noqa: E731
        h = _norm(cfg, "pre_self_attention_layer_norm")(y)
        y = y + drop(Attention(cfg, name="self_attention")(h, h, self_bias, deterministic))
        h = _norm(cfg, "pre_cross_attention_layer_norm")(y)
        y = y + drop(
            Attention(cfg, name="encoder_decoder_attention")(h, encoded, cross_bias, deterministic)
        )
        h = _norm(cfg, "pre_mlp_layer_norm")(y)
        return y + drop(GatedGeluMlp(cfg, name="mlp")(h, deterministic))


def _relpos_bias(
    cfg: T5Config, length_q: int, length_k: int, bidirectional: bool, name: str
) -> jnp.ndarray:
    """``(1, heads, q, k)`` learned bias of bucketed relative positions for one stack."""
    module = RelativePositionBias(
        cfg.relpos_num_buckets,
        cfg.relpos_max_distance,
        cfg.num_heads,
        bidirectional=bidirectional,
        dtype=jnp.float32,
        name=name,
    )
    return module(jnp.arange(length_q)[None], jnp.arange(length_k)[None])


class Encoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: jnp.ndarray, tokens: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
        cfg = self.config
        t = tokens.shape[-1]
        bias = mask_to_bias(padding_mask(tokens > PAD_ID))
        bias = bias + _relpos_bias(cfg, t, t, True, "relpos_bias")
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        layer = remat_block(EncoderLayer, cfg.remat, static_argnums=(3,))  # (deterministic)
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
        x = _norm(cfg, "encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self,
        y: jnp.ndarray,
        encoded: jnp.ndarray,
        encoder_tokens: jnp.ndarray,
        decoder_valid: jnp.ndarray,
        deterministic: bool,
    ) -> jnp.ndarray:
        cfg = self.config
        t = y.shape[1]
        self_bias = mask_to_bias(causal_mask(t) & padding_mask(decoder_valid))
        self_bias = self_bias + _relpos_bias(cfg, t, t, False, "relpos_bias")
        cross_bias = mask_to_bias(padding_mask(decoder_valid, encoder_tokens > PAD_ID))
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        layer = remat_block(DecoderLayer, cfg.remat, static_argnums=(5,))  # (deterministic)
        for i in range(cfg.num_decoder_layers):
            y = layer(cfg, name=f"layers_{i}")(y, encoded, self_bias, cross_bias, deterministic)
        y = _norm(cfg, "decoder_norm")(y)
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        # T5 1.1: untied output logits, and hence no 1/sqrt(d_model) rescaling before them.
        return _dense(cfg, cfg.vocab_size, "logits_dense", ("embed", "vocab"))(y)


class T5(nn.Module):
    """Encoder tokens ``(batch, in_len)`` and decoder tokens ``(batch, out_len)`` to logits."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        encoder_input_tokens: jnp.ndarray,
        decoder_input_tokens: jnp.ndarray,
        decoder_target_tokens: jnp.ndarray | None = None,
        *,
        deterministic: bool = True,
    ) -> jnp.ndarray:
        """Decoder logits ``(batch, out_len, vocab_size)``.

        Args:
          encoder_input_tokens: int ids; 0 is padding and is never attended to.
          decoder_input_tokens: int ids, usually ``shift_right(decoder_target_tokens)``; they
            start with 0 (BOS), so padding of the decoder is read off the targets instead.
          decoder_target_tokens: int ids whose 0s mark decoder padding; without them every
            decoder position counts as real (e.g. when decoding step by step).
          deterministic: disables dropout when True; otherwise needs a ``'dropout'`` rng.
        """
        cfg = self.config
        # T5 initializes embeddings with unit variance; RMS norm handles the scale.
        embedder = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.dtype,
            embedding_init=with_logical_axes(nn.initializers.normal(1.0), ("vocab", "embed")),
            name="token_embedder",
        )
        encoded = Encoder(cfg, name="encoder")(
            embedder(encoder_input_tokens), encoder_input_tokens, deterministic
        )
        if decoder_target_tokens is None:
            decoder_valid = jnp.ones(decoder_input_tokens.shape, dtype=bool)
        else:
            decoder_valid = decoder_target_tokens > PAD_ID
        return Decoder(cfg, name="decoder")(
            embedder(decoder_input_tokens),
            encoded,
            encoder_input_tokens,
            decoder_valid,
            deterministic,
        )


def t5_model(vocab_size: int, *, size: str = "tiny", **overrides) -> nn.Module:
    """T5 1.1 at a named size, any T5Config field overridden."""
    return T5(T5Config.from_size(size, vocab_size=vocab_size, **overrides))
