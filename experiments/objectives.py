"""Training objectives: which batch keys the model reads, which it must predict, how the
predictions are weighted, and how the summed cross-entropy becomes the training loss.

Data modules (``experiments/data``) only make batches (dicts of arrays); an objective turns
a model and a batch into ``(training loss, metrics, updated collections)``. Every objective
goes through the one ``token_cross_entropy`` below, so the loss and the reported metrics
mean the same thing in every family.

With per-position cross-entropies ``ce_i``, weights ``w_i`` (1 where a position is a
target, 0 elsewhere; all ones when the objective has no weights) and ``n = sum_i w_i``,
the training loss is, by ``normalization``:

* ``"mean"``: ``sum_i w_i ce_i / n`` (the per-target mean; GPT, LSTM, ResNet);
* ``"sum"``:  ``sum_i w_i ce_i`` (T5X's loss without a loss-normalizing factor);
* ``"sqrt"``: ``sum_i w_i ce_i / sqrt(n)``, the reference's masked-LM training loss
  (google-research/jestimator, ``jestimator/modeling.py`` ``normalize_loss_by_size``,
  applied in ``models/bert/modeling.py`` ``mlm_train_loss`` to the whole batch's masked
  tokens). Its gradient is ``sqrt(n)`` times the mean's, which is what Amos'
  ``clip_value=1.0`` was set against there.

``n`` is floored at 1, so a batch without targets gives loss 0, not NaN. The sums run over
the whole global batch: the trainer calls ``loss`` on the sharded global arrays, so data
parallelism does not change the loss.

Whatever the normalization, ``metrics`` hold ``token_loss`` (the per-target mean
cross-entropy, which the trainer reports as the eval loss and turns into perplexity),
``accuracy`` (the weighted fraction of targets whose argmax is right) and ``num_targets``
(``n``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.errors import ConfigError

Batch = dict[str, np.ndarray]
LossAndMetrics = tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]

NORMALIZATIONS = ("mean", "sum", "sqrt")


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-position ``-log softmax(logits)[target]`` (float32) and whether the argmax is
    the target (0/1, float32); both have the shape of ``targets``."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return nll, (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(sum(w * ce) / max(sum(w), 1), sum(w * correct) / max(sum(w), 1))``: the weighted
    mean token cross-entropy and accuracy (weights default to all ones)."""
    nll, correct = token_cross_entropy(logits, targets)
    if weights is None:
        return jnp.mean(nll), jnp.mean(correct)
    weights = weights.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.sum(nll * weights) / total, jnp.sum(correct * weights) / total


def normalized_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None,
    normalization: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of ``normalization`` (see the module docstring) and the metrics
    ``token_loss``, ``accuracy`` and ``num_targets``."""
    check_normalization(normalization)
    if weights is None:
        # Unweighted means exactly as cross_entropy computes them (the recorded GPT and
        # ResNet runs used this form).
        token_loss, accuracy = cross_entropy(logits, targets)
        count = jnp.asarray(float(np.prod(targets.shape)), jnp.float32)
        total = token_loss * count
    else:
        nll, correct = token_cross_entropy(logits, targets)
        weights = jnp.asarray(weights, jnp.float32)
        total = jnp.sum(nll * weights)
        count = jnp.sum(weights)
        denominator = jnp.maximum(count, 1.0)
        token_loss = total / denominator
        accuracy = jnp.sum(correct * weights) / denominator
    if normalization == "mean":
        loss = token_loss
    elif normalization == "sum":
        loss = total
    else:  # "sqrt": jestimator/modeling.py normalize_loss_by_size.
        loss = total * jax.lax.rsqrt(jnp.maximum(count, 1.0))
    return loss, {"token_loss": token_loss, "accuracy": accuracy, "num_targets": count}


def check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"loss_normalization={normalization!r} is not one of {NORMALIZATIONS}")


@dataclasses.dataclass(frozen=True)
class Objective:
    """Cross-entropy of a model's logits against batch targets.

    ``inputs``: the batch keys passed, in order, as the model's positional arguments.
    ``targets``: the key of the int ids to predict (the logits' shape less the last axis).
    ``weights``: the key of the 0/1 float weights of the targets, or None for all ones.
    ``normalization``: "mean", "sum" or "sqrt" (module docstring).

    Models here take ``deterministic=`` and a ``dropout`` rng; ``Classification`` below
    overrides the call for batch-norm models.
    """

    inputs: tuple[str, ...]
    targets: str
    weights: str | None = None
    normalization: str = "mean"

    # Whether eval reports perplexity = exp(token_loss) (language models).
    reports_perplexity: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_normalization(self.normalization)

    def model_inputs(self, batch: Batch, rows: slice | None = None) -> list[Any]:
        return [batch[k] if rows is None else batch[k][rows] for k in self.inputs]

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        """``model.init`` on the first example: ``{"params": ..., <other collections>}``."""
        params_rng, dropout_rng = jax.random.split(rng)
        variables = model.init(
            {"params": params_rng, "dropout": dropout_rng},
            *self.model_inputs(batch, slice(0, 1)),
            deterministic=True,
        )
        return dict(variables)

    def logits(
        self, model: nn.Module, variables: dict[str, Any], batch: Batch, *, train: bool, rng
    ) -> tuple[jax.Array, dict[str, Any]]:
        """The model's logits on the batch and its updated non-param collections."""
        logits = model.apply(
            variables,
            *self.model_inputs(batch),
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )
        return logits, {}

    def loss(
        self,
        model: nn.Module,
        variables: dict[str, Any],
        batch: Batch,
        *,
        train: bool,
        rng: jax.Array,
    ) -> LossAndMetrics:
        """``(training loss, metrics, updated collections)``; see the module docstring."""
        logits, updated = self.logits(model, variables, batch, train=train, rng=rng)
        weights = None if self.weights is None else batch[self.weights]
        loss, metrics = normalized_cross_entropy(
            logits, batch[self.targets], weights, self.normalization
        )
        return loss, metrics, updated


@dataclasses.dataclass(frozen=True)
class CausalLM(Objective):
    """Next-token prediction: ``model.apply(v, inputs, deterministic=...)`` -> logits
    ``(B, T, vocab)`` against ``targets`` (the inputs shifted by one), every position
    counted; the per-token mean by default."""

    inputs: tuple[str, ...] = ("inputs",)
    targets: str = "targets"

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        # One rng for the params, as the recorded GPT/LSTM runs were initialized.
        return dict(model.init(rng, *self.model_inputs(batch, slice(0, 1))))


@dataclasses.dataclass(frozen=True)
class MaskedLM(Objective):
    """BERT's masked LM: ``model.apply(v, input_ids, segment_ids, attention_mask,
    deterministic=...)`` -> ``(B, L, vocab)`` logits against the original ids at the
    masked positions (``weights`` 1 there). The training loss defaults to the reference's
    ``"sqrt"`` (jestimator/modeling.py ``normalize_loss_by_size``) for every optimizer."""

    inputs: tuple[str, ...] = ("input_ids", "segment_ids", "attention_mask")
    targets: str = "targets"
    weights: str | None = "weights"
    normalization: str = "sqrt"


@dataclasses.dataclass(frozen=True)
class Seq2Seq(Objective):
    """Encoder-decoder targets, e.g. T5 span corruption: ``model.apply(v,
    encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, deterministic=...)``
    -> ``(B, targets_length, vocab)`` logits against ``decoder_target_tokens`` weighted by
    ``decoder_loss_weights``. The paper's T5 loss is the batch ``"sum"`` (the default);
    its gradient grows with the batch, so Amos' ``clip_value`` must then be about
    ``sqrt(batch_size * targets_length)``, not 1.0. Under data parallelism a summed loss
    must be summed, not averaged, across devices to stay the paper's loss."""

    inputs: tuple[str, ...] = (
        "encoder_input_tokens",
        "decoder_input_tokens",
        "decoder_target_tokens",
    )
    targets: str = "decoder_target_tokens"
    weights: str | None = "decoder_loss_weights"
    normalization: str = "sum"


# How a classifier is called: "batch_norm", ``model.apply(v, images, train=...)`` with the
# ``batch_stats`` collection updated in training (the ResNet); "dropout",
# ``model.apply(v, images, deterministic=...)`` with a dropout rng, as every other model
# here (a ViT).
MODEL_CALLS = ("batch_norm", "dropout")


@dataclasses.dataclass(frozen=True)
class Classification(Objective):
    """One label per example: ``(B, classes)`` logits of ``images`` against ``labels``.
    ``model_call`` (``MODEL_CALLS``) says how the model is called: with "batch_norm" (the
    default) the updated ``batch_stats`` come back as the new collections in training."""

    inputs: tuple[str, ...] = ("images",)
    targets: str = "labels"
    model_call: str = "batch_norm"

    reports_perplexity: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_call not in MODEL_CALLS:
            raise ConfigError(f"model_call={self.model_call!r} is not one of {MODEL_CALLS}")

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        if self.model_call == "dropout":
            return super().init_variables(model, rng, batch)
        return dict(model.init(rng, *self.model_inputs(batch, slice(0, 1)), train=False))

    def logits(
        self, model: nn.Module, variables: dict[str, Any], batch: Batch, *, train: bool, rng
    ) -> tuple[jax.Array, dict[str, Any]]:
        if self.model_call == "dropout":
            return super().logits(model, variables, batch, train=train, rng=rng)
        if not train:
            return model.apply(variables, *self.model_inputs(batch), train=False), {}
        logits, updated = model.apply(
            variables, *self.model_inputs(batch), train=True, mutable=["batch_stats"]
        )
        return logits, dict(updated)


@dataclasses.dataclass(frozen=True)
class SequenceClassification(Objective):
    """One label per text (or text pair) with a dropout model, e.g. BERT on GLUE:
    ``model.apply(v, input_ids, segment_ids, attention_mask, deterministic=...)`` ->
    ``(B, classes)`` logits against ``labels``, weighted by ``weights`` (0 for the padding
    rows that complete an evaluation split's last batch, 1 otherwise). No batch norm, so
    not :class:`Classification`; no perplexity. The training loss defaults to the
    reference's ``"sqrt"`` (jestimator/models/bert/modeling.py ``ModelForSeqCls.xe_loss``:
    the batch's summed cross-entropy / sqrt(batch size)), the reported eval loss is the
    per-example mean."""

    inputs: tuple[str, ...] = ("input_ids", "segment_ids", "attention_mask")
    targets: str = "labels"
    weights: str | None = "weights"
    normalization: str = "sqrt"

    reports_perplexity: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class CarriedStateLM(CausalLM):
    """Next-token prediction on consecutive segments with the recurrent state carried from
    batch to batch (truncated BPTT; the reference's LSTM, google-research/jestimator
    ``jestimator/models/lstm/lm.py`` with ``--train_consecutive``).

    ``model.apply(v, inputs, reset, deterministic=..., mutable=collections)`` -> logits
    ``(B, T, vocab)``: the model reads its state from ``collections`` (experiments/lstm:
    ``carry``, one row per stream), restarts the rows where ``reset`` is 1 from zero, and
    returns the final state as the updated collections, which the trainer keeps for the
    next batch (in training) or threads through the held-out text (in evaluation, from
    no collection at all, i.e. the zero state). ``weights`` are 0 on padding. The
    reference's training loss is ``"sqrt"`` (``normalize_loss_by_size`` in its
    ``SingleLstmLM``), the default here.
    """

    inputs: tuple[str, ...] = ("inputs", "reset")
    weights: str | None = "weights"
    normalization: str = "sqrt"
    collections: tuple[str, ...] = ("carry",)

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        # The whole batch: the carried state has one row per stream.
        return dict(model.init(rng, *self.model_inputs(batch)))

    def logits(
        self, model: nn.Module, variables: dict[str, Any], batch: Batch, *, train: bool, rng
    ) -> tuple[jax.Array, dict[str, Any]]:
        logits, updated = model.apply(
            variables,
            *self.model_inputs(batch),
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
            mutable=list(self.collections),
        )
        return logits, dict(updated)
