"""What the training harness needs from an experiment: the `Task` protocol.

A task is a data module's batches plus an objective (``experiments/objectives.py``). The
harness (launch/trainer/) builds the model from gin (`train.model`, called with
`**task.model_kwargs()`), and then only talks to the task through this interface, so every
model family (GPT, BERT/RoPE/RPE, T5, LSTM, ResNet) runs through the same loop.

Batches are dicts of NumPy arrays whose leading axis is the example axis. Every batch is a
pure function of its arguments (seed, step or index, batch size), so a resumed run sees
exactly the data an uninterrupted one would; `rows` selects this host's rows of the global
batch on multi-host runs. Randomly drawn batches take their randomness from `batch_rng`
below, the one sampler of every data module.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np

from experiments.errors import ConfigError
from experiments.objectives import LossAndMetrics, Objective

Batch = dict[str, np.ndarray]


# Distinct random streams per (split, purpose): the training batches and the fixed
# evaluation batches of each split never share draws. A new stream takes a new number:
# renumbering would change every batch drawn from the old ones.
BATCH_STREAMS: dict[tuple[str, str], int] = {
    ("train", "train"): 0,
    ("val", "eval"): 1,
    ("train", "eval"): 2,
    ("test", "eval"): 3,
}
# The splits every task has (the study's protocol, docs/study.md): train; validation, for
# choosing settings; test, for reporting, disjoint from both.
SPLITS = ("train", "val", "test")


def batch_stream(split: str, purpose: str) -> int:
    """The stream number of batches of ``split`` ('train', 'val', 'test') drawn for
    ``purpose`` ('train', 'eval')."""
    if (split, purpose) not in BATCH_STREAMS:
        raise ConfigError(
            f"no batches for split={split!r}, purpose={purpose!r}; training uses "
            f"split 'train', evaluation 'val', 'test' or 'train'"
        )
    return BATCH_STREAMS[(split, purpose)]


def batch_rng(*, seed: int, split: str, purpose: str, index: int) -> np.random.Generator:
    """The NumPy Generator of batch ``index`` (the 1-based step in training, the eval
    batch number in evaluation): ``np.random.default_rng([seed, stream, index])``, so a
    batch depends on nothing but these numbers."""
    return np.random.default_rng([seed, batch_stream(split, purpose), index])


# The splits a task with ``eval_whole_split`` reads whole; evaluation on 'train' (a
# training-loss estimate) still draws EVAL_BATCHES batches.
HELD_OUT_SPLITS = ("val", "test")


def reads_whole_split(task: Task, split: str) -> bool:
    """Whether evaluation reads ``split`` of ``task`` whole (its ``eval_whole_split``)."""
    return bool(task.eval_whole_split) and split in HELD_OUT_SPLITS


def whole_split_windows(
    n_tokens: int, *, window: int, stride: int, index: int, batch_size: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``index`` of a held-out split read whole, in order: the start offsets of its
    ``batch_size`` windows of ``window`` tokens, ``stride`` apart (the split's windows
    ``index * batch_size`` onwards), and which rows are real (False: padding past the last
    window, a repeat of window 0 that must weigh nothing). The tail shorter than a window
    is left out. ``name`` is the split, for the error past the end."""
    count = whole_split_num_windows(n_tokens, window=window, stride=stride)
    batches = whole_split_num_batches(n_tokens, window=window, stride=stride, batch_size=batch_size)
    if not 0 <= index < batches:
        raise ConfigError(
            f"{name}: {count} examples make {batches} batches of {batch_size}; evaluation "
            f"batch {index} is past its end"
        )
    positions = index * batch_size + np.arange(batch_size)
    valid = positions < count
    return np.where(valid, positions, 0) * stride, valid


def whole_split_num_windows(n_tokens: int, *, window: int, stride: int) -> int:
    """How many windows of ``window`` tokens, ``stride`` apart, fit in ``n_tokens``."""
    return 0 if n_tokens < window else (n_tokens - window) // stride + 1


def whole_split_num_batches(n_tokens: int, *, window: int, stride: int, batch_size: int) -> int:
    """The batches of ``batch_size`` that ``whole_split_windows`` cuts a split into."""
    return -(-whole_split_num_windows(n_tokens, window=window, stride=stride) // batch_size)


class Task(Protocol):
    """Every member the harness (launch/trainer/) reads; `ObjectiveTask` gives the
    defaults of the optional ones, so a new task is its batches and an objective."""

    # What throughput counts: "tokens" (tokens_per_example per example) or "examples".
    unit_name: str
    units_per_example: int
    # Whether eval reports perplexity = exp(per-token eval loss) (language models).
    reports_perplexity: bool
    # The loss, and how the model is called: its `inputs` are the batch keys passed to
    # `model.apply` in order (and cast to the compute dtype), its `normalization` what
    # gradient accumulation must respect (experiments/objectives.py).
    objective: Objective
    # Collections of a state the model carries from batch to batch (word_lm.py's LSTM):
    # evaluation then threads it through `eval_num_batches` consecutive batches, and
    # gradient accumulation is refused. () for none (the default).
    state_collections: tuple[str, ...]
    # Whether evaluation reads the held-out splits whole (`reads_whole_split`) in
    # `eval_num_batches` batches instead of drawing EVAL_BATCHES. False by default.
    eval_whole_split: bool
    # The training split's size in examples (Amos' guidance xi = 1/sqrt(N), the EMA
    # timescale's epoch), or None where the task does not know it (the default).
    num_train_examples: int | None

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        """The batches of ``batch_size`` that cover ``split`` (read when the task carries
        a state or evaluates whole splits)."""

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the data fixes for the model, e.g. ``{"vocab_size": 65}``."""

    def train_batch(self, *, seed: int, step: int, batch_size: int, rows: slice) -> Batch:
        """The global training batch of 1-based ``step`` (``rows`` of it)."""

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice
    ) -> Batch:
        """The ``index``-th fixed evaluation batch of ``split`` ('val', 'test' or 'train')."""

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
    ) -> LossAndMetrics:
        """``(training loss, metrics, updated non-param collections)`` on a batch.

        ``metrics`` hold ``"accuracy"`` and ``"token_loss"``, the per-target mean
        cross-entropy, which evaluation reports as its loss whatever the training loss's
        normalization (T5's sum, masked LM's sum / sqrt(count)), so eval losses and
        perplexities compare across tasks. The updated collections (e.g. batch-norm
        statistics in training) replace the old ones; ``{}`` when there are none.
        """


class ObjectiveTask:
    """The objective half of a `Task`, and its optional members' defaults:
    ``init_variables``, ``loss`` and ``reports_perplexity`` come from ``self.objective``;
    the data class that inherits this makes the batches."""

    objective: Objective
    state_collections: tuple[str, ...] = ()
    eval_whole_split: bool = False
    num_train_examples: int | None = None

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        raise ConfigError(
            f"{type(self).__name__} draws its evaluation batches (EVAL_BATCHES); it does "
            f"not cut {split!r} into batches of {batch_size}"
        )

    @property
    def reports_perplexity(self) -> bool:
        return self.objective.reports_perplexity

    def init_variables(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return self.objective.init_variables(model, rng, batch)

    def loss(
        self,
        model: nn.Module,
        variables: dict[str, Any],
        batch: Batch,
        *,
        train: bool,
        rng: jax.Array,
    ) -> LossAndMetrics:
        return self.objective.loss(model, variables, batch, train=train, rng=rng)
