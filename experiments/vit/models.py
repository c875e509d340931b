"""A small Vision Transformer (Dosovitskiy et al., 2021) for the digits: the worked
example of adding a family (docs/extending.md).

Images ``(B, H, W, C)`` are cut into ``patch_size`` squares, each embedded by one linear
map (a strided convolution), given a learned position embedding, passed through
``depth`` pre-LayerNorm Transformer blocks and mean-pooled into class logits, as
big_vision's ViT with ``pool_type='gap'``. Every variable has a standard name (kernel,
bias, scale, embedding), so Amos' general eta and slot-shape rules cover it; the kernels
that follow a GELU get gain 2 in its model gin file (``gin_configs/models/vit_tiny.gin``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from experiments.errors import ConfigError


class SelfAttention(nn.Module):
    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
        b, n, width = x.shape
        head = width // self.num_heads
        # q, k, v as (width, width) kernels, so that fan_in is the input width.
        q, k, v = (
            nn.Dense(width, name=name)(x).reshape(b, n, self.num_heads, head)
            for name in ("query", "key", "value")
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head).astype(x.dtype)
        weights = nn.Dropout(self.dropout)(nn.softmax(logits), deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, width)
        return nn.Dense(width, name="out")(out)


class Block(nn.Module):
    num_heads: int
    mlp_width: int
    dropout: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
        drop = nn.Dropout(self.dropout)
        y = SelfAttention(self.num_heads, self.dropout, name="attn")(
            nn.LayerNorm(name="ln_1")(x), deterministic
        )
        x = x + drop(y, deterministic=deterministic)
        y = nn.gelu(nn.Dense(self.mlp_width, name="mlp_in")(nn.LayerNorm(name="ln_2")(x)))
        return x + drop(nn.Dense(x.shape[-1], name="mlp_out")(y), deterministic=deterministic)


class ViT(nn.Module):
    """Maps images ``(B, H, W, C)`` to class logits ``(B, num_classes)``."""

    num_classes: int
    patch_size: int = 2
    width: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_width: int = 128
    dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="patches")(images)
        x = x.reshape(x.shape[0], -1, self.width)
        positions = nn.Embed(x.shape[1], self.width, name="position")(jnp.arange(x.shape[1]))
        x = nn.Dropout(self.dropout)(x + positions[None], deterministic=deterministic)
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_width, self.dropout, name=f"block_{i}")(
                x, deterministic
            )
        x = nn.LayerNorm(name="ln_final")(x).mean(axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


def vit_model(
    num_classes: int,
    *,
    patch_size: int = 2,
    width: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    mlp_width: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """The ViT; ``num_classes`` comes from the data task, the rest from gin."""
    if width % num_heads:
        raise ConfigError(f"vit_model.width={width} is not divisible by num_heads={num_heads}")
    return ViT(num_classes, patch_size, width, depth, num_heads, mlp_width, dropout)
