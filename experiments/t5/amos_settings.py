"""Amos ``eta``, slot shapes and the paper's optimizer settings for T5 1.1 (reference §2).

``eta`` by variable (d_model, d_kv = d_head):

* query kernels (``.../attention/query/kernel``, in every attention of both stacks):
  ``sqrt(1 / (d_model * d_kv))``. T5 puts no ``1/sqrt(d_kv)`` on the attention logits; its
  query kernel is initialized that much smaller instead, and ``eta`` follows the init.
* every other kernel by fan-in, the general rule ``sqrt(gain / fan_in)``: key, value and
  ``wi_0``/``wi_1`` ``sqrt(1 / d_model)``, attention output ``sqrt(1 / (heads * d_kv))``,
  the untied ``logits_dense`` ``sqrt(1 / d_model)``, and the MLP's ``wo`` gain 2 because
  it reads gated-GELU outputs: ``sqrt(2 / d_ff)``.
* RMS-norm scales 1.0 (general rule); the relative attention bias tables 0.5, as an
  additive logit bias (override; the embedding rule would give ``sqrt(2 / heads)``).
* the token embedding by the general embedding rule, ``sqrt(2 / d_model)``.

Slots: kernels ``(1, out)``, the embedding ``(vocab, 1)``, the relative attention bias
``(buckets, 1)`` (its last, heads, axis reduced), scales ``()``.

The paper's T5 runs (t5x): ``beta=0.95``, ``momentum=0.9`` and, because T5's loss is a sum
over target tokens, ``clip_value=sqrt(batch * target_length)`` (the gradient of a summed
loss grows like the square root of the number of summed labels).
"""

from __future__ import annotations

import math
from typing import Any

import optax

import amos
from experiments.t5.models import T5Config

BETA = 0.95
MOMENTUM = 0.9

QUERY_KERNEL = r"attention/query/kernel$"
MLP_OUTPUT_KERNEL = r"mlp/wo/kernel$"
RELPOS_EMBEDDING = r"relpos_embedding$"


def clip_value(batch_size: int, target_length: int) -> float:
    """The paper's gradient clip for T5's summed loss: ``sqrt(batch * target_length)``."""
    return math.sqrt(batch_size * target_length)


def eta_fn(config: T5Config) -> amos.ParamsFn:
    """``eta`` for every variable of ``T5(config)``."""
    return amos.default_eta_fn(
        gains={MLP_OUTPUT_KERNEL: 2.0},
        overrides={
            QUERY_KERNEL: math.sqrt(1.0 / (config.d_model * config.d_kv)),
            RELPOS_EMBEDDING: 0.5,
        },
    )


def shape_fn(config: T5Config) -> amos.ParamsFn:
    """Slot shapes; the relative attention bias ``(buckets, heads)`` reduces its heads axis."""
    del config  # Every slot follows from the variable's shape; kept for a uniform API.
    return amos.default_shape_fn(overrides={RELPOS_EMBEDDING: "(SHAPE[0], 1)"})


def optimizer(
    config: T5Config, learning_rate: Any, batch_size: int, target_length: int, **kwargs: Any
) -> optax.GradientTransformation:
    """Amos with the paper's T5 settings, for a loss summed over ``batch * target_length``
    tokens; ``kwargs`` override any setting of ``amos.amos``."""
    settings = dict(beta=BETA, momentum=MOMENTUM, clip_value=clip_value(batch_size, target_length))
    settings.update(kwargs)
    return amos.amos(learning_rate, eta_fn(config), shape_fn(config), **settings)
