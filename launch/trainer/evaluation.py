"""How evaluation batches combine: the target-weighted means of loss and accuracy, and
the standard error of that loss over the batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def weighted_means(results: Sequence[tuple[Any, Any, Any]]) -> tuple[float, float]:
    """(loss, accuracy) over batches of (loss, accuracy, count): means weighted by the
    counts, in float64: sum(count * loss) / sum(count)."""
    loss, acc, count = (np.asarray(x, np.float64) for x in zip(*results, strict=True))
    total = float(count.sum())
    if total <= 0:  # No targets at all: the plain means (0 from the objective).
        return float(loss.mean()), float(acc.mean())
    return float((loss * count).sum() / total), float((acc * count).sum() / total)


def weighted_standard_error(results: Sequence[tuple[Any, Any, Any]]) -> float | None:
    """The standard error of `weighted_means`' loss, with the batches as the independent
    draws they are (each a random sample of the split): the ratio estimator's
    sqrt(n / (n - 1) * sum(w_i^2 (L_i - L)^2)) / sum(w_i), for batch losses L_i of w_i
    targets and their weighted mean L. None with fewer than 2 batches or no targets."""
    loss, _, count = (np.asarray(x, np.float64) for x in zip(*results, strict=True))
    total, n = float(count.sum()), len(loss)
    if n < 2 or total <= 0:
        return None
    mean = float((loss * count).sum() / total)
    return float(np.sqrt(n / (n - 1) * ((count * (loss - mean)) ** 2).sum()) / total)
