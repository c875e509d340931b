"""Parameter trees shaped like the paper's models, as ``jax.ShapeDtypeStruct`` leaves.

For memory accounting, benchmarks and eta checks without building the models: pass them
to ``jax.eval_shape(tx.init, params)``, or materialize them with :func:`materialize`.
Names follow Flax conventions (``kernel``, ``bias``, ``scale``, ``embedding``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _leaf(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)


def _dense(fan_in: int, fan_out: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"kernel": _leaf(fan_in, fan_out), "bias": _leaf(fan_out)}


def _norm(width: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"scale": _leaf(width), "bias": _leaf(width)}


def bert_param_shapes(
    hidden: int = 768,
    layers: int = 12,
    mlp: int = 3072,
    vocab: int = 30522,
    max_length: int = 512,
) -> dict[str, Any]:
    """A post-LayerNorm BERT encoder with a tied masked-LM head (base: about 110M)."""
    tree: dict[str, Any] = {
        "embeddings": {
            "token": {"embedding": _leaf(vocab, hidden)},
            "position": {"embedding": _leaf(max_length, hidden)},
            "segment": {"embedding": _leaf(2, hidden)},
            "layer_norm": _norm(hidden),
        },
        "pooler": _dense(hidden, hidden),
        "mlm_head": {
            "dense": _dense(hidden, hidden),
            "layer_norm": _norm(hidden),
            "output_bias": {"bias": _leaf(vocab)},
        },
    }
    for i in range(layers):
        tree[f"layer_{i}"] = {
            "attention": {
                name: _dense(hidden, hidden) for name in ("query", "key", "value", "out")
            },
            "attention_layer_norm": _norm(hidden),
            "mlp": {"wi": _dense(hidden, mlp), "wo": _dense(mlp, hidden)},
            "mlp_layer_norm": _norm(hidden),
        }
    return tree


def lstm_param_shapes(vocab: int = 10000, hidden: int = 650, layers: int = 2) -> dict[str, Any]:
    """A word-level LSTM language model: embedding, LSTM cells, output projection.

    Each cell has one fused core kernel ``(2 * hidden, 4 * hidden)`` acting on
    ``[x, h]`` and a bias; the output layer maps ``hidden`` to ``vocab``. The defaults are
    the classic medium PTB model (two layers of 650), a generic shape for eta and slot
    checks; the LSTM this repository trains is the reference's cell with a separate
    memory (``experiments/lstm/models.py``), whose shapes come from the model itself.
    """
    tree: dict[str, Any] = {
        "embed": {"embedding": _leaf(vocab, hidden)},
        "output": _dense(hidden, vocab),
    }
    for i in range(layers):
        tree[f"lstm_{i}"] = {"core": _dense(2 * hidden, 4 * hidden)}
    return tree


def count_parameters(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def materialize(tree: Any, seed: int = 0, scale: float = 0.02) -> Any:
    """Random float32 arrays of the given shapes (normal, std ``scale``)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten(
        [scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )
