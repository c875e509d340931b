"""Amos ``eta`` and slot shapes for the BERT / RoPE / RPE encoders (reference section 2).

The reference table, for hidden size H and MLP size F:

=====================================  ==============  ==============
variable                               eta             slot shape
=====================================  ==============  ==============
layer-norm scale                       1.0             ()
any bias                               0.5             ()
token embedding (V, H)                 sqrt(2 / H)     (V, 1)
relative-position embedding (RPE)      0.5             (buckets, 1)
MLP output kernel (F, H)               sqrt(2 / F)     (1, H)
every other kernel (in, out)           sqrt(1 / H)     (1, out)
=====================================  ==============  ==============

The library's general rule (``amos.default_eta_fn`` / ``amos.default_shape_fn``) gives all
of it from the standard Flax names once it is told two things that neither name nor shape
shows: the MLP output kernel reads GELU outputs (gain 2), and the relative-position table
is an additive logit bias (0.5, not the embedding rule's ``sqrt(2 / width)``). Every other
kernel of these models has fan-in H, so ``sqrt(1 / fan_in)`` is the table's ``sqrt(1 / H)``.

Variables the table does not list follow the general rule: the position and segment
embeddings get ``sqrt(2 / H)`` with slot ``(rows, 1)`` like the token embedding, the MLM
head's dense kernel ``sqrt(1 / H)`` with slot ``(1, H)`` and its output bias 0.5 (a
pooler, which these models do not have, would get the same as the dense kernel).
"""

from __future__ import annotations

import math
from typing import Any

import optax

import amos
from experiments.bert.models import BertConfig

# The paper's BERT-base run (reference section 3); clip 1.0 because the loss is a mean.
LEARNING_RATE = 0.005
BETA = 0.999
MOMENTUM = 0.9
CLIP_VALUE = 1.0

MLP_OUTPUT_KERNEL = r"mlp/wo/kernel$"
RELPOS_EMBEDDING = r"relpos_embedding$"


def eta_fn(config: BertConfig) -> amos.ParamsFn:
    """``eta`` for every variable of ``BertMlm(config)``, equal to the reference table."""
    del config  # Every value follows from the variable's shape; kept for a uniform API.
    return amos.default_eta_fn(
        gains={MLP_OUTPUT_KERNEL: 2.0},  # GELU before it: sqrt(2 / F).
        overrides={RELPOS_EMBEDDING: 0.5},  # An additive logit bias, as any bias.
    )


def shape_fn(config: BertConfig) -> amos.ParamsFn:
    """Slot shapes: kernels ``(1, out)``, embeddings ``(rows, 1)``, vectors ``()``."""
    del config
    # The general rule already reduces an embedding's last axis; the override spells out
    # the table's (buckets, 1) for the relative-position table.
    return amos.default_shape_fn(overrides={RELPOS_EMBEDDING: "(SHAPE[0], 1)"})


def reference_eta_and_slot(
    config: BertConfig, path: tuple[str, ...], shape: tuple[int, ...]
) -> tuple[float, tuple[int, ...]] | None:
    """The reference table's ``(eta, slot)`` for a variable it lists, else ``None``.

    Written from the table alone, independently of the library's rule, for tests.
    """
    name = "/".join(path)
    h, f = config.hidden_size, config.mlp_dim
    if name.endswith("layer_norm/scale"):
        return 1.0, ()
    if name.endswith("bias"):
        return 0.5, ()
    if name == "token_embedder/embedding":
        return math.sqrt(2 / h), (shape[0], 1)
    if name.endswith("relpos_embedding"):
        return 0.5, (shape[0], 1)
    if name.endswith("mlp/wo/kernel"):
        return math.sqrt(2 / f), (1, h)
    if name.endswith("kernel") and not name.startswith("mlm_head/"):
        return math.sqrt(1 / h), (1, shape[-1])
    return None


def optimizer(
    config: BertConfig, learning_rate: float = LEARNING_RATE, **kwargs: Any
) -> optax.GradientTransformation:
    """Amos with the paper's BERT-base settings (xi, beta, momentum, clip) and this family's
    ``eta`` and slots; ``kwargs`` override any setting of ``amos.amos``."""
    settings = dict(beta=BETA, momentum=MOMENTUM, clip_value=CLIP_VALUE)
    settings.update(kwargs)
    return amos.amos(learning_rate, eta_fn(config), shape_fn(config), **settings)
