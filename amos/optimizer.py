"""The Amos optimizer as optax transforms.

Amos (Tian & Parikh, 2022, "Amos: An Adam-style Optimizer with Adaptive Weight Decay
towards Model-Oriented Scale", arXiv:2210.11693) is Adam with a factored second moment
and a decay of both the learning rate and the weight decay that it derives from a
per-variable scale ``eta``. For a variable ``theta`` with gradient ``g`` at step
``t = 1, 2, ...`` and global learning rate ``xi = learning_rate(t)``::

    g2    = mean(g**2) over the axes that the slot shape reduces
    v     = beta * v + (1 - beta) * g2
    r     = (1 - beta**t) / max(v, epsilon)
    gamma = xi**2 * r * g2 / sqrt(1 + c_coef * sqrt(xi) * b)
    lr    = xi * eta
    delta = -(lr * sqrt(r) * g + (gamma / 2 + extra_l2) * theta) / (1 + d_coef * sqrt(lr) * b)
    b     = b + gamma * (1 + b)

The full optimizer (:func:`amos`) optionally clips ``g`` by value first and returns a
moving average ``m = mu * m + (1 - mu) * delta`` (no bias correction) instead of ``delta``.

All of it runs as one per-variable function, so that under ``jax.jit`` each variable is
one reduction over ``g`` (for ``g2``) and one fused elementwise pass over ``g``, ``theta``
and ``m``: close to the minimum memory traffic, which is what an optimizer step costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amos.params import checked_eta, checked_slot_shape
from amos.tree import ParamsFn, named_leaves, path_name

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


class ScaleByAmosState(NamedTuple):
    """State of Amos: the step count, the slots ``v`` and ``b``, and the momentum ``m``.

    ``v`` and ``b`` mirror the parameter tree with the slot shapes; ``m`` mirrors it with the
    parameters' shapes, or is ``None`` without momentum.
    """

    count: jax.Array  # int32 scalar: the number of updates applied.
    v: optax.Updates
    b: optax.Updates
    m: optax.Updates | None


def _reduced_axes(shape: tuple[int, ...], slot_shape: tuple[int, ...]) -> tuple[int, ...]:
    if not slot_shape:
        return tuple(range(len(shape)))
    return tuple(i for i, (s, d) in enumerate(zip(slot_shape, shape)) if s < d)


def lr_decay_factor(init_lr: jax.Array, b: jax.Array, d_coef: float = 0.25) -> jax.Array:
    """The learning-rate decay ``1 / (1 + d_coef * sqrt(xi * eta) * b)``."""
    return 1.0 / (1.0 + d_coef * jnp.sqrt(init_lr) * b)


def wd_decay_factor(xi: jax.Array, b: jax.Array, c_coef: float = 0.25) -> jax.Array:
    """The weight-decay decay ``1 / sqrt(1 + c_coef * sqrt(xi) * b)``."""
    return jax.lax.rsqrt(1.0 + c_coef * jnp.sqrt(xi) * b)


def _learning_rate_at(learning_rate: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    # jnp.asarray: some optax schedules (constant_schedule) return a Python float.
    return jnp.asarray(learning_rate(count) if callable(learning_rate) else learning_rate)


def _check_learning_rate(learning_rate: ScalarOrSchedule) -> None:
    """xi must be finite and positive (a schedule: finite and non-negative at step 1, the
    one value that can be checked before training); 0 would silently train nothing."""
    if callable(learning_rate):
        try:
            value = float(learning_rate(jnp.asarray(1, jnp.int32)))
        except (TypeError, jax.errors.ConcretizationTypeError):
            return  # Built under a trace: nothing concrete to check.
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(
                f"learning_rate (xi) schedule gives {value} at step 1; it must be finite "
                "and non-negative."
            )
        return
    try:
        value = float(learning_rate)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(
            f"learning_rate (xi) must be finite and positive, got {value}; with 0 nothing "
            "would train."
        )


def _scale_by_amos(
    learning_rate: ScalarOrSchedule,
    eta_fn: ParamsFn,
    shape_fn: ParamsFn | None,
    beta: float,
    extra_l2: float,
    d_coef: float,
    c_coef: float,
    epsilon: float,
    momentum: float | None,
    clip_value: float | None,
    slot_dtype: Any,
    momentum_dtype: Any,
) -> optax.GradientTransformation:
    """The single implementation behind :func:`scale_by_amos` and :func:`amos`."""
    if eta_fn is None:
        raise ValueError(
            "eta_fn is required: Amos needs the scale eta of every variable "
            "(amos.default_eta_fn() gives the paper's general rule)."
        )
    for arg, value in (("beta", beta), ("momentum", momentum)):
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{arg} must be in [0, 1), got {value}.")
    if clip_value is not None and clip_value <= 0:
        raise ValueError(f"clip_value must be positive, got {clip_value}.")
    _check_learning_rate(learning_rate)
    use_momentum = momentum is not None and momentum > 0.0

    def variable_info(params: optax.Params) -> tuple[list[Any], Any]:
        """Per variable: (eta, slot shape, reduced axes), checked; computed at trace time."""
        named, treedef = named_leaves(params)
        info = []
        for path, theta in named:
            shape = tuple(jnp.shape(theta))
            if not jnp.issubdtype(jnp.result_type(theta), jnp.floating):
                raise ValueError(
                    f"variable '{path_name(path)}' has dtype {jnp.result_type(theta)}; Amos "
                    "updates floating-point variables only (keep integer state out of the "
                    "optimized parameters, or mask it with optax.masked)."
                )
            slot_shape = checked_slot_shape(path, shape, shape_fn)
            info.append(
                (checked_eta(path, shape, eta_fn), slot_shape, _reduced_axes(shape, slot_shape))
            )
        return info, treedef

    def init_fn(params: optax.Params) -> ScaleByAmosState:
        info, treedef = variable_info(params)
        slots = [jnp.zeros(slot_shape, slot_dtype) for _, slot_shape, _ in info]
        m = None
        if use_momentum:
            m = treedef.unflatten(
                [jnp.zeros(jnp.shape(p), momentum_dtype) for p in treedef.flatten_up_to(params)]
            )
        return ScaleByAmosState(
            count=jnp.zeros([], jnp.int32),
            v=treedef.unflatten(slots),
            b=treedef.unflatten([jnp.zeros_like(s) for s in slots]),
            m=m,
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAmosState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAmosState]:
        if params is None:
            raise ValueError(
                "Amos needs the parameters for its weight decay: call update(grads, state, params)."
            )
        info, treedef = variable_info(params)
        count = optax.safe_int32_increment(state.count)
        xi = _learning_rate_at(learning_rate, count).astype(slot_dtype)
        # 1 - beta**t without the cancellation that float32 would suffer for beta near 1.
        bias_correction = -jnp.expm1(count.astype(slot_dtype) * math.log(beta)) if beta > 0 else 1.0
        xi2 = xi * xi

        flat = [treedef.flatten_up_to(t) for t in (updates, params, state.v, state.b)]
        flat_m = treedef.flatten_up_to(state.m) if use_momentum else [None] * len(info)
        new_updates, new_v, new_b, new_m = [], [], [], []
        for (eta, _, axes), g, theta, v, b, m in zip(info, *flat, flat_m):
            if jnp.size(theta) == 0:  # Nothing to update; keep slots as they are.
                new_updates.append(jnp.zeros_like(theta))
                new_v.append(v)
                new_b.append(b)
                new_m.append(m)
                continue
            g = g.astype(slot_dtype)
            if clip_value is not None:
                g = jnp.clip(g, -clip_value, clip_value)
            g2 = jnp.mean(jnp.square(g), axis=axes, keepdims=bool(v.ndim))
            v = beta * v + (1.0 - beta) * g2
            rcpl_v_hat = bias_correction / jnp.maximum(v, epsilon)
            gamma = xi2 * rcpl_v_hat * g2 * wd_decay_factor(xi, b, c_coef)
            init_lr = xi * eta
            decay = lr_decay_factor(init_lr, b, d_coef)
            # Slot-shaped coefficients, so the full-size pass is delta = -(a * g + w * theta).
            grad_coef = init_lr * jnp.sqrt(rcpl_v_hat) * decay
            theta_coef = (0.5 * gamma + extra_l2) * decay
            delta = -(grad_coef * g + theta_coef * theta.astype(slot_dtype))
            new_b.append(b + gamma * (1.0 + b))
            new_v.append(v)
            if use_momentum:
                m = ((1.0 - momentum) * delta + momentum * m.astype(slot_dtype)).astype(
                    momentum_dtype
                )
                delta = m
            new_m.append(m)
            new_updates.append(delta.astype(jnp.result_type(theta)))

        new_state = ScaleByAmosState(
            count=count,
            v=treedef.unflatten(new_v),
            b=treedef.unflatten(new_b),
            m=treedef.unflatten(new_m) if use_momentum else None,
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_amos(
    learning_rate: ScalarOrSchedule,
    eta_fn: ParamsFn,
    shape_fn: ParamsFn | None = None,
    beta: float = 0.999,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
    epsilon: float = 2.0**-125,
    *,
    slot_dtype: Any = jnp.float32,
) -> optax.GradientTransformation:
    """Rescales gradients by the Amos rule (the update of the module docstring).

    Args:
      learning_rate: the global learning rate ``xi``, a float or an optax schedule called
        with the step count ``t = 1, 2, ...``. The paper recommends about ``1/sqrt(N)``
        for ``N`` independent batches in the training data.
      eta_fn: ``eta_fn(path, shape)``, the expected scale of each variable's trained
        entries (see :func:`amos.default_eta_fn`). ``path`` is a tuple of strings.
      shape_fn: ``shape_fn(path, shape)``, the shape of the slots ``v`` and ``b``: ``()`` or
        the variable's rank with each axis 1 (reduced) or full. ``None`` keeps full slots.
      beta: decay of the second-moment average; ``1 - beta`` of the order of ``xi``.
      extra_l2: extra L2 regularization added to the adaptive weight decay.
      d_coef: coefficient of the learning-rate decay.
      c_coef: coefficient of the weight-decay decay.
      epsilon: floor of ``v`` (the smallest float32 normal by default).
      slot_dtype: dtype of the slots and of the arithmetic, float32 whatever the params.

    Returns:
      An optax ``GradientTransformation`` whose state is :class:`ScaleByAmosState`.
    """
    return _scale_by_amos(
        learning_rate,
        eta_fn,
        shape_fn,
        beta,
        extra_l2,
        d_coef,
        c_coef,
        epsilon,
        momentum=None,
        clip_value=None,
        slot_dtype=slot_dtype,
        momentum_dtype=slot_dtype,
    )


def amos(
    learning_rate: ScalarOrSchedule,
    eta_fn: ParamsFn,
    shape_fn: ParamsFn | None = None,
    beta: float = 0.999,
    momentum: float | None = None,
    clip_value: float | None = None,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
    epsilon: float = 2.0**-125,
    *,
    slot_dtype: Any = jnp.float32,
    momentum_dtype: Any = jnp.float32,
) -> optax.GradientTransformation:
    """The full Amos optimizer: clip by value, then Amos, then momentum; one fused pass.

    Equivalent to ``optax.chain(optax.clip(clip_value), scale_by_amos(...),
    optax.ema(momentum, debias=False))``, computed per variable in one function.

    Args:
      learning_rate, eta_fn, shape_fn, beta, extra_l2, d_coef, c_coef, epsilon, slot_dtype:
        as in :func:`scale_by_amos`.
      momentum: decay of the moving average of the updates, or ``None``/0 for none (which
        saves a full-size slot).
      clip_value: clip each gradient entry to ``[-clip_value, clip_value]``, or ``None``.
        Match it to the loss: 1.0 for a mean loss, about ``sqrt(labels summed)`` for a sum.
      momentum_dtype: dtype of the momentum slot (e.g. ``jnp.bfloat16`` to halve it).

    Returns:
      An optax ``GradientTransformation`` whose state is :class:`ScaleByAmosState`.
    """
    return _scale_by_amos(
        learning_rate,
        eta_fn,
        shape_fn,
        beta,
        extra_l2,
        d_coef,
        c_coef,
        epsilon,
        momentum=momentum,
        clip_value=clip_value,
        slot_dtype=slot_dtype,
        momentum_dtype=momentum_dtype,
    )


def find_amos_state(opt_state: Any) -> ScaleByAmosState:
    """The :class:`ScaleByAmosState` inside an optimizer state (e.g. of an optax chain)."""
    found = [
        s
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, ScaleByAmosState)
        )
        if isinstance(s, ScaleByAmosState)
    ]
    if len(found) != 1:
        raise ValueError(f"Expected one Amos state in the optimizer state, found {len(found)}.")
    return found[0]


def amos_diagnostics(
    opt_state: Any,
    params: optax.Params,
    learning_rate: ScalarOrSchedule,
    eta_fn: ParamsFn,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
) -> dict[str, jax.Array]:
    """Means over all parameter entries of ``b`` and of the two decay factors it drives.

    ``amos/lr_decay_mean`` is the mean of ``1 / (1 + d_coef sqrt(xi eta) b)`` and
    ``amos/wd_decay_mean`` the mean of ``1 / sqrt(1 + c_coef sqrt(xi) b)``, both at the
    current step's ``xi``; each slot entry weighs as many parameter entries as it covers.
    """
    state = find_amos_state(opt_state)
    named, treedef = named_leaves(params)
    xi = _learning_rate_at(learning_rate, jnp.maximum(state.count, 1)).astype(jnp.float32)
    totals = {"amos/b_mean": 0.0, "amos/lr_decay_mean": 0.0, "amos/wd_decay_mean": 0.0}
    n = 0
    for (path, theta), b in zip(named, treedef.flatten_up_to(state.b)):
        size = jnp.size(theta)
        if size == 0:
            continue
        weight = size / jnp.size(b)
        init_lr = xi * checked_eta(path, jnp.shape(theta), eta_fn)
        totals["amos/b_mean"] += weight * jnp.sum(b)
        totals["amos/lr_decay_mean"] += weight * jnp.sum(lr_decay_factor(init_lr, b, d_coef))
        totals["amos/wd_decay_mean"] += weight * jnp.sum(wd_decay_factor(xi, b, c_coef))
        n += size
    return {k: jnp.asarray(v / max(n, 1), jnp.float32) for k, v in totals.items()}
