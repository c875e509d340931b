"""Plug-and-play learning-rate and weight-decay schedules derived from Amos' ideas.

For any base direction ``u_t`` (e.g. Adam's), update
``theta <- theta - (alpha_t * u_t + rho_t * theta)`` with, per variable of ``k`` entries
and expected scale ``sigma`` (so ``||eps_0|| = sqrt(k) * sigma``), ``q`` about 1::

    inverse-square:  alpha_t = alpha_0 ||eps_0|| / ||u_t|| / (alpha_0 p t + 1)**2
                     rho_t   = alpha_0**2 / (2 q)         / (alpha_0 p t + 1)**2
    inverse-time:    the same with 1 / (2 alpha_0 p t + 1) as the decay.

A half-life ``T`` (steps until both have halved) gives ``alpha_0 p = (sqrt(2) - 1) / T``
for inverse-square and ``2 alpha_0 p = 1 / T`` for inverse-time. ``t`` counts the
updates already applied (0 at the first). Derivation: Su Jianlin, "Amos-inspired
plug-and-play learning-rate and weight-decay schedules" (kexue.fm/archives/9344), after
Tian & Parikh, 2022.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amos.params import checked_eta, default_eta_fn
from amos.tree import ParamsFn, named_leaves

Variant = Literal["inverse_square", "inverse_time"]


class PlugAndPlayState(NamedTuple):
    count: jax.Array  # int32 scalar: updates already applied.


def decay_rate(variant: Variant, half_life: float) -> float:
    """``alpha_0 p`` whose schedule halves after ``half_life`` steps."""
    if not half_life > 0:
        raise ValueError(f"half_life must be positive, got {half_life}.")
    if variant == "inverse_square":
        return (math.sqrt(2.0) - 1.0) / half_life
    if variant == "inverse_time":
        return 1.0 / (2.0 * half_life)
    raise ValueError(f"variant must be 'inverse_square' or 'inverse_time', got {variant!r}.")


def schedule_decay(variant: Variant, rate: float, t: jax.Array) -> jax.Array:
    """The decay factor at step ``t`` for ``rate = alpha_0 p``."""
    if variant == "inverse_square":
        return 1.0 / jnp.square(rate * t + 1.0)
    return 1.0 / (2.0 * rate * t + 1.0)


def plug_and_play_decay(
    learning_rate: float,
    sigma_fn: ParamsFn | None = None,
    *,
    variant: Variant = "inverse_square",
    half_life: float | None = None,
    p: float | None = None,
    q: float = 1.0,
) -> optax.GradientTransformation:
    """Scales a base direction ``u_t`` into ``-(alpha_t u_t + rho_t theta)``.

    Args:
      learning_rate: ``alpha_0``, the relative size of an update (about 1e-3).
      sigma_fn: ``sigma_fn(path, shape)``, the expected scale of a variable's entries
        (init std for kernels, 0.5 for biases and norm parameters); by default
        :func:`amos.default_eta_fn`'s values, which follow that rule.
      variant: ``'inverse_square'`` or ``'inverse_time'``.
      half_life: steps after which the schedules have halved; or give ``p`` instead.
      p: the convergence constant of the derivation (``alpha_0 p`` is the decay rate).
      q: the constant in ``rho_t``'s denominator.
    """
    if (half_life is None) == (p is None):
        raise ValueError("Give exactly one of half_life and p.")
    rate = decay_rate(variant, half_life) if half_life is not None else learning_rate * p
    schedule_decay(variant, rate, jnp.zeros([]))  # Checks the variant name early.
    sigma_fn = sigma_fn if sigma_fn is not None else default_eta_fn()

    def init_fn(params: optax.Params) -> PlugAndPlayState:
        for path, theta in named_leaves(params)[0]:
            checked_eta(path, jnp.shape(theta), sigma_fn)
        return PlugAndPlayState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("plug_and_play_decay needs the parameters for its weight decay.")
        decay = schedule_decay(variant, rate, state.count.astype(jnp.float32))
        rho = learning_rate**2 / (2.0 * q) * decay
        named, treedef = named_leaves(params)
        new_updates = []
        for (path, theta), u in zip(named, treedef.flatten_up_to(updates)):
            shape = jnp.shape(theta)
            eps0_norm = math.sqrt(max(1, math.prod(shape))) * checked_eta(path, shape, sigma_fn)
            u32 = u.astype(jnp.float32)
            u_norm = jnp.sqrt(jnp.sum(jnp.square(u32)))
            alpha = (
                learning_rate * eps0_norm * decay / jnp.maximum(u_norm, jnp.finfo(jnp.float32).tiny)
            )
            delta = -(alpha * u32 + rho * theta.astype(jnp.float32))
            new_updates.append(delta.astype(jnp.result_type(theta)))
        return treedef.unflatten(new_updates), PlugAndPlayState(
            count=optax.safe_int32_increment(state.count)
        )

    return optax.GradientTransformation(init_fn, update_fn)


def adam_plug_and_play(
    learning_rate: float,
    sigma_fn: ParamsFn | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    **schedule: Any,
) -> optax.GradientTransformation:
    """Adam's direction with the plug-and-play schedules on top.

    ``schedule`` holds :func:`plug_and_play_decay`'s keyword arguments (``variant``,
    ``half_life`` or ``p``, ``q``).
    """
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        plug_and_play_decay(learning_rate, sigma_fn, **schedule),
    )
