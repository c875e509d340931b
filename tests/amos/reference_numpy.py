"""An independent float64 NumPy implementation of Amos, written from the equations.

The update of the paper's Algorithm 1 (docs/optimizer.md), line by line; nothing here is
shared with the package, so the tests compare two implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


class NumpyAmos:
    """Amos on a flat ``{name: array}`` dict of float64 parameters."""

    def __init__(
        self,
        xi: Callable[[int], float],
        eta: dict[str, float],
        slot_shape: dict[str, tuple[int, ...]],
        beta: float = 0.999,
        momentum: float | None = None,
        clip_value: float | None = None,
        extra_l2: float = 0.0,
        d_coef: float = 0.25,
        c_coef: float = 0.25,
        epsilon: float = 2.0**-125,
    ):
        self.xi, self.eta, self.slot_shape = xi, eta, slot_shape
        self.beta, self.momentum, self.clip_value = beta, momentum, clip_value
        self.extra_l2, self.d_coef, self.c_coef, self.epsilon = extra_l2, d_coef, c_coef, epsilon
        self.v = {k: np.zeros(s) for k, s in slot_shape.items()}
        self.b = {k: np.zeros(s) for k, s in slot_shape.items()}
        self.m: dict[str, np.ndarray] = {}
        self.t = 0

    def update(self, grads: dict[str, np.ndarray], params: dict[str, np.ndarray]):
        """Returns the updates (delta, or the momentum average) and advances the state."""
        self.t += 1
        t, beta, xi = self.t, self.beta, self.xi(self.t)
        updates = {}
        for name, theta in params.items():
            if theta.size == 0:  # No entries: nothing to update, slots stay as they are.
                updates[name] = np.zeros_like(theta)
                continue
            g = np.asarray(grads[name], np.float64)
            if self.clip_value is not None:
                g = np.clip(g, -self.clip_value, self.clip_value)
            slot = self.slot_shape[name]
            if slot == ():
                g2 = np.mean(g**2)
            else:
                axes = tuple(i for i, (s, d) in enumerate(zip(slot, g.shape)) if s < d)
                g2 = np.mean(g**2, axis=axes, keepdims=True)
            v = beta * self.v[name] + (1 - beta) * g2
            r = (1 - beta**t) / np.maximum(v, self.epsilon)
            b = self.b[name]
            gamma = xi**2 * r * g2 / np.sqrt(1 + self.c_coef * math.sqrt(xi) * b)
            lr = xi * self.eta[name]
            delta = -(lr * np.sqrt(r) * g + (gamma / 2 + self.extra_l2) * theta) / (
                1 + self.d_coef * math.sqrt(lr) * b
            )
            self.b[name] = b + gamma * (1 + b)
            self.v[name] = v
            if self.momentum:
                m = self.m.get(name, np.zeros_like(theta))
                delta = self.momentum * m + (1 - self.momentum) * delta
                self.m[name] = delta
            updates[name] = delta
        return updates
