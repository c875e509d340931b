"""ResNet-18 (CIFAR stem) and ResNet-50 (ImageNet stem) with batch normalization.

He et al. (2016). Batch statistics are a separate ``batch_stats`` collection: training
normalizes with the batch's statistics and updates the running averages (``mutable``),
evaluation uses the running averages. The CIFAR stem is one 3x3 convolution without
pooling; the ImageNet stem a 7x7 stride-2 convolution and a 3x3 max-pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = 64
    stem: str = "cifar"  # "cifar" or "imagenet"
    bn_momentum: float = 0.9


SIZES = {
    "tiny": dict(stage_sizes=(1, 1), width=16, stem="cifar"),
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), width=64, stem="cifar"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), width=64, bottleneck=True, stem="imagenet"),
}


class ResidualBlock(nn.Module):
    filters: int
    strides: int
    bottleneck: bool
    norm: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, padding="SAME")
        out_filters = self.filters * (4 if self.bottleneck else 1)
        if self.bottleneck:
            y = nn.relu(self.norm(name="norm_0")(conv(self.filters, (1, 1), name="conv_0")(x)))
            y = conv(self.filters, (3, 3), self.strides, name="conv_1")(y)
            y = nn.relu(self.norm(name="norm_1")(y))
            y = conv(out_filters, (1, 1), name="conv_2")(y)
            # Zero-init the last scale so each block starts as the identity (Goyal et al.).
            y = self.norm(name="norm_2", scale_init=nn.initializers.zeros)(y)
        else:
            y = conv(self.filters, (3, 3), self.strides, name="conv_0")(x)
            y = nn.relu(self.norm(name="norm_0")(y))
            y = conv(self.filters, (3, 3), name="conv_1")(y)
            y = self.norm(name="norm_1", scale_init=nn.initializers.zeros)(y)
        if x.shape[-1] != out_filters or self.strides != 1:
            x = conv(out_filters, (1, 1), self.strides, name="shortcut_conv")(x)
            x = self.norm(name="shortcut_norm")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    config: ResNetConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        norm = partial(
            nn.BatchNorm, use_running_average=not train, momentum=cfg.bn_momentum, epsilon=1e-5
        )
        x = images.astype(jnp.float32)
        if cfg.stem == "imagenet":
            x = nn.Conv(
                cfg.width,
                (7, 7),
                (2, 2),
                padding=[(3, 3), (3, 3)],
                use_bias=False,
                name="stem_conv",
            )(x)
            x = nn.relu(norm(name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        elif cfg.stem == "cifar":
            x = nn.Conv(cfg.width, (3, 3), use_bias=False, padding="SAME", name="stem_conv")(x)
            x = nn.relu(norm(name="stem_norm")(x))
        else:
            raise ValueError(f"Unknown ResNet stem {cfg.stem!r}; use 'cifar' or 'imagenet'.")
        for stage, blocks in enumerate(cfg.stage_sizes):
            for block in range(blocks):
                x = ResidualBlock(
                    cfg.width * 2**stage,
                    strides=2 if stage and not block else 1,
                    bottleneck=cfg.bottleneck,
                    norm=norm,
                    name=f"stage_{stage}_block_{block}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(cfg.num_classes, name="head")(x)


def resnet_model(num_classes: int, size: str = "resnet18", **overrides) -> ResNet:
    """The model at a named size (``tiny``, ``resnet18``, ``resnet50``)."""
    if size not in SIZES:
        raise ValueError(f"Unknown ResNet size {size!r}; known: {sorted(SIZES)}.")
    return ResNet(ResNetConfig(num_classes=num_classes, **{**SIZES[size], **overrides}))
