"""Optimizer-slot memory: bytes of a state, per variable, and against AdamW.

Works on real states and on ``jax.eval_shape`` results, so a BERT-sized comparison
allocates nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import jax
import numpy as np
import optax

from amos.tree import map_param_shaped, named_leaves, path_name


def _nbytes(leaf: Any) -> int:
    if leaf is None or not hasattr(leaf, "shape"):
        return 0
    return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def slot_bytes(state: Any) -> int:
    """Total bytes of the arrays (or ``ShapeDtypeStruct``s) in an optimizer state."""
    return sum(_nbytes(leaf) for leaf in jax.tree_util.tree_leaves(state))


def slot_bytes_by_variable(state: Any, params: optax.Params) -> dict[str, int]:
    """Bytes of the state per variable ('/'-joined path); ``<global>`` holds the rest.

    Every subtree of the state that mirrors the parameter tree (Adam's ``mu`` and ``nu``,
    Amos' ``v``, ``b`` and ``m``, ...) is charged to the variables; step counts and other
    leaves are charged to ``<global>``.
    """
    names = [path_name(path) for path, _ in named_leaves(params)[0]]
    params_treedef = jax.tree_util.tree_structure(params)
    totals: dict[str, int] = defaultdict(int)

    def charge_variables(tree: Any) -> None:
        for name, leaf in zip(names, params_treedef.flatten_up_to(tree)):
            totals[name] += _nbytes(leaf)

    def charge_global(leaf: Any) -> None:
        totals["<global>"] += _nbytes(leaf)

    map_param_shaped(state, params_treedef, charge_variables, charge_global)
    return dict(totals)


def compare_slot_memory(
    tx: optax.GradientTransformation,
    params: optax.Params,
    baseline: optax.GradientTransformation | None = None,
) -> dict[str, float]:
    """Slot bytes of ``tx`` against ``baseline`` (``optax.adamw``) on the same params.

    Shapes only: both states come from ``jax.eval_shape``, so nothing is allocated.
    Returns ``{'bytes', 'baseline_bytes', 'ratio'}``.
    """
    baseline = baseline if baseline is not None else optax.adamw(1e-3)
    state_bytes = slot_bytes(jax.eval_shape(tx.init, params))
    baseline_bytes = slot_bytes(jax.eval_shape(baseline.init, params))
    return {
        "bytes": state_bytes,
        "baseline_bytes": baseline_bytes,
        "ratio": state_bytes / baseline_bytes,
    }
