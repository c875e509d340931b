"""Optimizer factories that gin files bind (`train.optimizer = @amos_optimizer`).

Each factory takes the run's total step count and returns an `OptimizerSpec`: the optax
transformation plus what the trainer logs about it (the learning rate in force at a step,
Amos's diagnostics). `amos` is imported inside the factories that need it, so the AdamW
paths work on their own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str
    tx: optax.GradientTransformation
    # Learning rate applied at step t = 1, 2, ... (for Amos: the global rate xi).
    learning_rate: Callable[[int], float]
    # (opt_state, params) -> {name: scalar}, jittable; None when there is nothing to add.
    diagnostics: Callable[[Any, Any], dict[str, jax.Array]] | None = None


def _matrices_only(params):
    """nanoGPT's decay mask: every tensor with 2+ dims (matmul kernels, embeddings)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def nanogpt_lr(
    step: int | jax.Array,
    *,
    learning_rate: float,
    warmup_steps: int,
    decay_steps: int,
    min_learning_rate: float,
) -> jax.Array:
    """nanoGPT's `get_lr(it)`, it = 0, 1, ...: linear warmup then cosine down to min_lr."""
    it = jnp.asarray(step, jnp.float32)
    warm = learning_rate * (it + 1) / (warmup_steps + 1)
    ratio = jnp.clip((it - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = min_learning_rate + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (
        learning_rate - min_learning_rate
    )
    return jnp.where(
        it < warmup_steps, warm, jnp.where(it > decay_steps, min_learning_rate, cosine)
    )


def adamw_cosine_optimizer(
    total_steps: int,
    *,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    decay_steps: int | None = None,
    min_learning_rate: float = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    clip_global_norm: float | None = 1.0,
) -> OptimizerSpec:
    """nanoGPT's AdamW: global-norm clipping, decay on matrices only, warmup + cosine."""
    decay_steps = total_steps if decay_steps is None else decay_steps

    def schedule(count):  # optax passes the 0-based update count, nanoGPT's `it`.
        return nanogpt_lr(
            count,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            min_learning_rate=min_learning_rate,
        )

    parts = [optax.clip_by_global_norm(clip_global_norm)] if clip_global_norm else []
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_matrices_only)
    )
    return OptimizerSpec("adamw", optax.chain(*parts), lambda t: float(schedule(t - 1)))


def adamw_baseline_optimizer(
    total_steps: int,
    *,
    learning_rate: float = 1e-4,
    warmup_steps: int = 10_000,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    end_learning_rate: float = 0.0,
    clip_global_norm: float | None = None,
) -> OptimizerSpec:
    """The paper's AdamW baseline (reference section 3) from `amos.adamw_baseline`.

    `end_learning_rate = learning_rate` with `warmup_steps = 0` gives a constant rate (the
    paper's Adam baseline for the LSTM).
    """
    import amos

    schedule = amos.warmup_linear_decay_schedule(
        learning_rate, warmup_steps, total_steps, end_learning_rate
    )
    tx = amos.adamw_baseline(
        schedule, total_steps=total_steps, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
    if clip_global_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_global_norm), tx)
    return OptimizerSpec("adamw", tx, lambda t: float(schedule(t - 1)))


def amos_optimizer(
    total_steps: int,
    *,
    xi: float,
    beta: float = 0.999,
    momentum: float | None = None,
    clip_value: float | None = None,
    gains: Mapping[str, float] | None = None,
    eta_overrides: Mapping[str, float | str] | None = None,
    shape_overrides: Mapping[str, str] | None = None,
    eta_fn: Callable | None = None,
    shape_fn: Callable | None = None,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
) -> OptimizerSpec:
    """Amos with eta and slot shapes from a model family's `eta_fn` / `shape_fn` (bound by
    the model's gin file), or else from `amos.default_eta_fn(gains, eta_overrides)` and
    `amos.default_shape_fn(shape_overrides)`.

    `total_steps` is unused: Amos needs no schedule length (its decay comes from `b`).
    """
    del total_steps
    import amos

    if eta_fn is not None and (gains or eta_overrides):
        raise ValueError("amos_optimizer: give either eta_fn or gains/eta_overrides, not both")
    if shape_fn is not None and shape_overrides:
        raise ValueError("amos_optimizer: give either shape_fn or shape_overrides, not both")
    eta_fn = eta_fn or amos.default_eta_fn(gains=dict(gains or {}), overrides=eta_overrides)
    shape_fn = shape_fn or amos.default_shape_fn(shape_overrides)
    tx = amos.amos(
        xi,
        eta_fn,
        shape_fn,
        beta=beta,
        momentum=momentum,
        clip_value=clip_value,
        extra_l2=extra_l2,
        d_coef=d_coef,
        c_coef=c_coef,
    )

    def diagnostics(opt_state, params):
        return amos.amos_diagnostics(opt_state, params, xi, eta_fn, d_coef=d_coef, c_coef=c_coef)

    return OptimizerSpec("amos", tx, lambda t: float(xi), diagnostics)


def slot_bytes(opt_state) -> int:
    """Bytes held by an optimizer state; `amos.slot_bytes` when the package provides it."""
    try:
        import amos

        return int(amos.slot_bytes(opt_state))
    except (ImportError, AttributeError):
        leaves = jax.tree_util.tree_leaves(opt_state)
        return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))
