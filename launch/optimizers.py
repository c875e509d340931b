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

from experiments.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str
    tx: optax.GradientTransformation
    # Learning rate applied at step t = 1, 2, ... (for Amos: the global rate xi).
    learning_rate: Callable[[int], float]
    # (opt_state, params) -> {name: scalar}, jittable; None when there is nothing to add.
    diagnostics: Callable[[Any, Any], dict[str, jax.Array]] | None = None


def checked_number(
    binding: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    allow_low: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a float in (low, high) (``[low, high)`` with ``allow_low``), or a
    ConfigError naming the binding; 0 learning rates or NaN knobs would train nothing."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if not (ok and math.isfinite(number) and (number >= low if allow_low else number > low)):
        ok = False
    if not ok or not number < high:
        bounds = f"{'[' if allow_low else '('}{low:g}, {high:g})"
        raise ConfigError(f"{binding} must be a finite number in {bounds}, got {value!r}")
    return number


def checked_steps(binding: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{binding} must be a non-negative integer, got {value!r}")
    return value


def _named_init(tx: optax.GradientTransformation, bindings: str) -> optax.GradientTransformation:
    """``tx`` whose ``init`` reports the optimizer's own ValueErrors (a bad eta or slot
    shape for a variable, an integer variable) as ConfigErrors that add the bindings
    behind them to the variable the optimizer names."""

    def init(params):
        try:
            return tx.init(params)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{e} (gin bindings: {bindings})") from e

    return optax.GradientTransformation(init, tx.update)


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


ADAMW_SCHEDULES = ("linear_decay", "constant", "nanogpt_cosine")
ADAMW_DECAY_MASKS = ("paper", "matrices")


def adamw_schedule(
    total_steps: int,
    *,
    learning_rate: float,
    warmup_steps: int,
    schedule: str,
    min_learning_rate: float = 0.0,
) -> optax.Schedule:
    """AdamW's learning rate at the 0-based update count (optax's convention).

    ``linear_decay``: the paper's (reference section 3), linear warmup to ``learning_rate``
    then linear decay to ``min_learning_rate`` (0 in the paper) at ``total_steps``.
    ``constant``: linear warmup, then constant (the paper's Adam baseline for the LSTM).
    ``nanogpt_cosine``: nanoGPT's ``get_lr`` (linear warmup, cosine to ``min_learning_rate``
    at ``total_steps``).
    """
    if schedule == "linear_decay":
        import amos

        return amos.warmup_linear_decay_schedule(
            learning_rate, warmup_steps, total_steps, min_learning_rate
        )
    if schedule == "constant":
        return linear_warmup(learning_rate, warmup_steps)
    if schedule == "nanogpt_cosine":
        return lambda count: nanogpt_lr(
            count,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            min_learning_rate=min_learning_rate,
        )
    raise ConfigError(f"ADAMW_SCHEDULE={schedule!r} is not one of {ADAMW_SCHEDULES}")


def linear_warmup(peak: float, warmup_steps: int) -> optax.Schedule:
    """``n -> peak * min(1, n / warmup_steps)``; constant ``peak`` when ``warmup_steps=0``.

    Amos calls its schedule with the 1-based step ``t``, which gives the reference's
    ``xi * min(1, t / warmup_steps)`` (jestimator/models/bert/pretrain.py, ``lr_schedule``);
    optax's AdamW passes the 0-based update count, as ``amos.warmup_linear_decay_schedule``.
    """
    checked_steps("WARMUP_STEPS", warmup_steps)
    if warmup_steps == 0:
        return optax.constant_schedule(peak)
    return optax.linear_schedule(0.0, peak, warmup_steps)


def adamw_optimizer(
    total_steps: int,
    *,
    learning_rate: float,
    warmup_steps: int,
    schedule: str = "linear_decay",
    min_learning_rate: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    decay_mask: str = "paper",
    clip_global_norm: float | None = None,
) -> OptimizerSpec:
    """AdamW with a schedule of ``adamw_schedule``; the paper's baseline by default.

    ``decay_mask``: ``paper`` decays all but biases and normalization scales
    (``amos.adamw_baseline``); ``matrices`` decays tensors of 2+ axes (nanoGPT).
    ``clip_global_norm`` clips the gradient's global norm first (nanoGPT: 1.0).
    """
    import amos

    if decay_mask not in ADAMW_DECAY_MASKS:
        raise ConfigError(f"ADAMW_DECAY_MASK={decay_mask!r} is not one of {ADAMW_DECAY_MASKS}")
    checked_number("adamw_optimizer.learning_rate (ADAMW_LR)", learning_rate)
    checked_number("adamw_optimizer.min_learning_rate", min_learning_rate, allow_low=True)
    checked_number("adamw_optimizer.b1", b1, high=1.0, allow_low=True)
    checked_number("adamw_optimizer.b2", b2, high=1.0, allow_low=True)
    checked_number("adamw_optimizer.eps", eps)
    checked_number("adamw_optimizer.weight_decay", weight_decay, allow_low=True)
    checked_number("adamw_optimizer.clip_global_norm", clip_global_norm, allow_none=True)
    rate = adamw_schedule(
        total_steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_learning_rate=min_learning_rate,
    )
    mask = amos.default_weight_decay_mask if decay_mask == "paper" else _matrices_only
    tx = amos.adamw_baseline(
        rate,
        total_steps=total_steps,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        weight_decay_mask=mask,
    )
    if clip_global_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_global_norm), tx)
    return OptimizerSpec("adamw", tx, lambda t: float(rate(t - 1)))


def amos_optimizer(
    total_steps: int,
    *,
    xi: float,
    warmup_steps: int = 0,
    beta: float = 0.999,
    momentum: float | None = None,
    clip_value: float | None = None,
    gains: Mapping[str, float] | None = None,
    eta_overrides: Mapping[str, float | str] | None = None,
    shape_overrides: Mapping[str, str] | None = None,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
) -> OptimizerSpec:
    """Amos with ``xi`` warmed up linearly over ``warmup_steps`` (the reference's
    ``xi * min(1, step / warmup_steps)``, jestimator/models/bert/pretrain.py), eta from
    ``amos.default_eta_fn(gains, eta_overrides)`` and slot shapes from
    ``amos.default_shape_fn(shape_overrides)``: a model family's rules are data, bound in
    its model gin file.

    ``total_steps`` is unused: Amos needs no schedule length (its decay comes from ``b``).
    """
    del total_steps
    import amos

    checked_number("amos_optimizer.xi (AMOS_XI)", xi)
    checked_number("amos_optimizer.beta (AMOS_BETA)", beta, high=1.0, allow_low=True)
    checked_number(
        "amos_optimizer.momentum (AMOS_MOMENTUM)",
        momentum,
        high=1.0,
        allow_low=True,
        allow_none=True,
    )
    checked_number("amos_optimizer.clip_value (AMOS_CLIP_VALUE)", clip_value, allow_none=True)
    checked_number("amos_optimizer.extra_l2", extra_l2, allow_low=True)
    checked_number("amos_optimizer.d_coef", d_coef, allow_low=True)
    checked_number("amos_optimizer.c_coef", c_coef, allow_low=True)
    xi_schedule = linear_warmup(xi, warmup_steps)
    try:
        eta_fn = amos.default_eta_fn(gains=dict(gains or {}), overrides=eta_overrides)
        shape_fn = amos.default_shape_fn(shape_overrides)
    except ValueError as e:  # A bad regex or expression in a rule map.
        raise ConfigError(f"amos_optimizer.eta_overrides / shape_overrides / gains: {e}") from e
    tx = amos.amos(
        xi_schedule,
        eta_fn,
        shape_fn,
        beta=beta,
        momentum=momentum,
        clip_value=clip_value,
        extra_l2=extra_l2,
        d_coef=d_coef,
        c_coef=c_coef,
    )
    tx = _named_init(tx, "amos_optimizer.gains, eta_overrides, shape_overrides")

    def diagnostics(opt_state, params):
        return amos.amos_diagnostics(
            opt_state, params, xi_schedule, eta_fn, d_coef=d_coef, c_coef=c_coef
        )

    return OptimizerSpec("amos", tx, lambda t: float(xi_schedule(t)), diagnostics)


def slot_bytes(opt_state) -> int:
    """Bytes held by an optimizer state; `amos.slot_bytes` when the package provides it."""
    try:
        import amos

        return int(amos.slot_bytes(opt_state))
    except (ImportError, AttributeError):
        leaves = jax.tree_util.tree_leaves(opt_state)
        return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))
