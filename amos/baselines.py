"""The paper's AdamW baseline, and AdamW weight decay set by an EMA timescale.

Baseline (Tian & Parikh, 2022, section 5, following BERT): AdamW with a learning rate
that warms up linearly from 0 to its peak, then decays linearly to 0 at the last step;
betas (0.9, 0.999), decoupled weight decay 0.01 on kernels and embeddings only.

EMA timescale (Wang & Aitchison, 2024, "How to set AdamW's weight decay as you scale
model and dataset size"): with decay multiplied by the learning rate, as in optax and
PyTorch, the weights are an exponential moving average over ``tau_iter = 1 / (lr * wd)``
iterations, i.e. ``tau_epoch = tau_iter * batch_size / dataset_size`` epochs. The best
``tau_epoch`` stays roughly constant across model and dataset sizes, so
``wd = batch_size / (lr * dataset_size * tau_epoch)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from amos.params import BIAS, SCALE, variable_kind
from amos.tree import named_leaves


def warmup_linear_decay_schedule(
    peak_value: float, warmup_steps: int, total_steps: int, end_value: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to ``peak_value``, then linear decay to ``end_value`` at the end."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}."
        )
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak_value, warmup_steps),
            optax.linear_schedule(peak_value, end_value, total_steps - warmup_steps),
        ],
        boundaries=[warmup_steps],
    )


def default_weight_decay_mask(params: optax.Params) -> Any:
    """True for variables that are decayed: all but biases and normalization scales.

    Variables with non-standard names are decayed when they have two or more axes.
    """
    named, treedef = named_leaves(params)
    mask = []
    for path, leaf in named:
        shape = tuple(jax.numpy.shape(leaf))
        try:
            mask.append(variable_kind(path, shape) not in (BIAS, SCALE))
        except ValueError:
            mask.append(len(shape) >= 2)
    return treedef.unflatten(mask)


def adamw_baseline(
    learning_rate: float | optax.Schedule = 1e-4,
    *,
    total_steps: int,
    warmup_steps: int = 10_000,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = default_weight_decay_mask,
    end_learning_rate: float = 0.0,
) -> optax.GradientTransformation:
    """The paper's AdamW baseline.

    Args:
      learning_rate: peak learning rate (paper: 1e-4), or a schedule used as it is.
      total_steps: the last step, where the learning rate reaches ``end_learning_rate``.
      warmup_steps: steps of linear warmup from 0 (paper: 10k).
      b1, b2, eps: Adam's moment decays and epsilon (BERT's 1e-6).
      weight_decay: decoupled weight decay, multiplied by the learning rate (paper: 0.01).
      weight_decay_mask: which variables decay: a tree of bools, a function of the params
        returning one, or ``None`` to decay everything. Default: not biases and norm scales.
      end_learning_rate: learning rate at ``total_steps``.
    """
    schedule = (
        learning_rate
        if callable(learning_rate)
        else warmup_linear_decay_schedule(
            learning_rate, warmup_steps, total_steps, end_learning_rate
        )
    )
    return optax.adamw(
        schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
    )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}.")


def weight_decay_from_timescale(
    learning_rate: float, tau_epochs: float, batch_size: int, dataset_size: int
) -> float:
    """AdamW weight decay giving an EMA timescale of ``tau_epochs`` epochs.

    ``wd = batch_size / (learning_rate * dataset_size * tau_epochs)``; use the peak
    learning rate of a schedule.
    """
    _check_positive(
        learning_rate=learning_rate,
        tau_epochs=tau_epochs,
        batch_size=batch_size,
        dataset_size=dataset_size,
    )
    return batch_size / (learning_rate * dataset_size * tau_epochs)


def timescale_from_weight_decay(
    learning_rate: float, weight_decay: float, batch_size: int, dataset_size: int
) -> float:
    """The EMA timescale in epochs, ``batch_size / (learning_rate * dataset_size * wd)``.

    The inverse of :func:`weight_decay_from_timescale`; the timescale in iterations is
    ``1 / (learning_rate * weight_decay)``.
    """
    _check_positive(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        batch_size=batch_size,
        dataset_size=dataset_size,
    )
    return batch_size / (learning_rate * dataset_size * weight_decay)
