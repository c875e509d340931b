"""A decoder-only Transformer in the shape of nanoGPT's `model.py` (flax linen).

Learned positions, pre-LayerNorm blocks, GELU MLP, tied input/output embedding, nanoGPT's
initialization (normal 0.02, residual projections 0.02 / sqrt(2 * layers)). Variables use
the standard flax names ('kernel', 'bias', 'scale', 'embedding') so that
`amos.default_eta_fn` and `amos.default_shape_fn` recognize them; the MLP output kernel
`h_<i>/mlp/c_proj/kernel` reads GELU outputs (Amos gain 2, bound in
gin_configs/models/gpt_*.gin). The attention core is `experiments.layers`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from experiments.errors import ConfigError
from experiments.layers import (
    causal_mask,
    check_remat,
    dot_product_attention,
    mask_to_bias,
    remat_block,
    with_logical_axes,
)


class CausalSelfAttention(nn.Module):
    num_heads: int
    residual_init_std: float
    use_bias: bool
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        b, t, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"width {c} is not divisible by num_heads={self.num_heads}")
        # The fused q|k|v columns split over the model axis as one (XLA reshards them at
        # the split below); Megatron-style layouts split q, k and v each.
        init = with_logical_axes(nn.initializers.normal(0.02), ("embed", "joined_kv"))
        qkv = nn.Dense(3 * c, use_bias=self.use_bias, kernel_init=init, name="c_attn")(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        heads = lambda a: a.reshape(b, t, self.num_heads, c // self.num_heads)  # noqa: E731
        attention_dropout = nn.Dropout(self.dropout, deterministic=deterministic)
        y = dot_product_attention(
            heads(q),
            heads(k),
            heads(v),
            bias=mask_to_bias(causal_mask(t)),
            dropout=attention_dropout,
        ).reshape(b, t, c)
        y = nn.Dense(
            c,
            use_bias=self.use_bias,
            kernel_init=with_logical_axes(
                nn.initializers.normal(self.residual_init_std), ("joined_kv", "embed")
            ),
            name="c_proj",
        )(y)
        return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class MLP(nn.Module):
    residual_init_std: float
    use_bias: bool
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        c = x.shape[-1]
        h = nn.Dense(
            4 * c,
            use_bias=self.use_bias,
            kernel_init=with_logical_axes(nn.initializers.normal(0.02), ("embed", "mlp")),
            name="c_fc",
        )(x)
        h = nn.gelu(h, approximate=False)  # PyTorch nn.GELU() default, as in nanoGPT.
        h = nn.Dense(
            c,
            use_bias=self.use_bias,
            kernel_init=with_logical_axes(
                nn.initializers.normal(self.residual_init_std), ("mlp", "embed")
            ),
            name="c_proj",
        )(h)
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
    num_heads: int
    residual_init_std: float
    use_bias: bool
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, name=name)  # noqa: E731
        x = x + CausalSelfAttention(
            self.num_heads, self.residual_init_std, self.use_bias, self.dropout, name="attn"
        )(ln("ln_1")(x), deterministic)
        x = x + MLP(self.residual_init_std, self.use_bias, self.dropout, name="mlp")(
            ln("ln_2")(x), deterministic
        )
        return x


class GPT(nn.Module):
    """Maps token ids (B, T) to next-token logits (B, T, vocab_size)."""

    vocab_size: int
    block_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    width: int = 128
    dropout: float = 0.0
    use_bias: bool = False  # nanoGPT's default: no biases in Linear and LayerNorm.
    # Each block rematerialized in the backward pass: 'none', 'full' or 'dots'
    # (experiments.layers.REMAT_POLICIES).
    remat: str = "none"

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        t = tokens.shape[-1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} > block_size {self.block_size}")
        init = nn.initializers.normal(0.02)
        wte_init = with_logical_axes(init, ("vocab", "embed"))
        wte = nn.Embed(self.vocab_size, self.width, embedding_init=wte_init, name="wte")
        wpe = nn.Embed(self.block_size, self.width, embedding_init=init, name="wpe")
        x = wte(tokens) + wpe(jnp.arange(t))[None]
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        residual_std = 0.02 / math.sqrt(2 * self.num_layers)
        block = remat_block(Block, self.remat, static_argnums=(2,))  # (deterministic)
        for i in range(self.num_layers):
            x = block(self.num_heads, residual_std, self.use_bias, self.dropout, name=f"h_{i}")(
                x, deterministic
            )
        x = nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, name="ln_f")(x)
        return wte.attend(x)  # Tied output embedding, as nanoGPT.


def gpt_model(
    vocab_size: int,
    *,
    block_size: int | None = None,
    num_layers: int = 4,
    num_heads: int = 4,
    width: int = 128,
    dropout: float = 0.0,
    use_bias: bool = False,
    remat: str = "none",
) -> nn.Module:
    """The nanoGPT-shaped decoder; `vocab_size` comes from the data task, `block_size`
    (BLOCK_SIZE) from the configuration."""
    if block_size is None:
        raise ConfigError("gpt_model.block_size (BLOCK_SIZE) is not set")
    check_remat(remat)
    return GPT(
        vocab_size=vocab_size,
        block_size=block_size,
        num_layers=num_layers,
        num_heads=num_heads,
        width=width,
        dropout=dropout,
        use_bias=use_bias,
        remat=remat,
    )
