"""What the training harness needs from an experiment: the `Task` protocol.

A task couples a data source with an objective. The harness (launch/train.py) builds the
model from gin (`train.model`, called with `**task.model_kwargs()`), and then only talks to
the task through this interface, so every model family (GPT, BERT/RoPE/RPE, T5, LSTM,
ResNet) runs through the same loop.

Batches are dicts of NumPy arrays whose leading axis is the example axis. Every batch is a
pure function of its arguments (seed, step or index, batch size), so a resumed run sees
exactly the data an uninterrupted one would; `rows` selects this host's rows of the global
batch on multi-host runs.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, np.ndarray]


class Task(Protocol):
    # What throughput counts: "tokens" (tokens_per_example per example) or "examples".
    unit_name: str
    units_per_example: int
    # Whether eval reports perplexity = exp(per-token eval loss) (language models).
    reports_perplexity: bool

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the data fixes for the model, e.g. ``{"vocab_size": 65}``."""

    def train_batch(self, *, seed: int, step: int, batch_size: int, rows: slice) -> Batch:
        """The global training batch of 1-based ``step`` (``rows`` of it)."""

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice
    ) -> Batch:
        """The ``index``-th fixed evaluation batch of ``split`` ('val' or 'train')."""

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        """``model.init`` on a batch: ``{"params": ..., <other collections, e.g. batch_stats>}``."""

    def loss(
        self,
        model: nn.Module,
        variables: dict[str, Any],
        batch: Batch,
        *,
        train: bool,
        rng: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """``(mean loss, metrics, updated non-param collections)`` on a batch.

        ``metrics`` holds at least ``"accuracy"``; a task whose training loss is not a
        per-token mean (T5's summed loss) also gives ``"token_loss"``, which evaluation
        then reports as its loss, so eval losses and perplexities compare across tasks and
        loss normalizations. The updated collections (e.g. batch-norm statistics in
        training) replace the old ones; return ``{}`` when there are none.
        """


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-position cross-entropy (in float32) and whether the argmax is the target (0/1)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return nll, (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean token cross-entropy and accuracy (weights default to all ones)."""
    nll, correct = token_cross_entropy(logits, targets)
    if weights is None:
        return jnp.mean(nll), jnp.mean(correct)
    weights = weights.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.sum(nll * weights) / total, jnp.sum(correct * weights) / total


class CausalLMLoss:
    """The loss of next-token tasks: ``model.apply(variables, inputs, deterministic=...)``."""

    unit_name = "tokens"
    reports_perplexity = True

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return dict(model.init(rng, batch["inputs"][:1]))

    def loss(
        self,
        model: nn.Module,
        variables: dict[str, Any],
        batch: Batch,
        *,
        train: bool,
        rng: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        logits = model.apply(
            variables,
            batch["inputs"],
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )
        loss, accuracy = cross_entropy(logits, batch["targets"])
        return loss, {"accuracy": accuracy}, {}
