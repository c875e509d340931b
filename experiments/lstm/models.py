"""The word-level LSTM language model of the paper's PTB run, as the reference builds it
(google-research/jestimator, ``jestimator/models/lstm/modeling.py``, ``SingleLstmLM``).

One recurrent layer with a hidden state ``h`` (size H) and a separate memory ``c`` (size
M; the reference: H = 256, M = 1024), a tied input/output embedding and an output bias.
One time step, with ``x`` the embedded input word:

    z            = dropout_h(shrink_norm([h, x]))              # (2H,), the "input norm"
    a, u, g, o   = split(z @ W_core + b_core, 4)               # ONE core kernel (2H, 4M)
    erase        = sigmoid(f - g)                              # f: forget-gate bias, 1.0
    cand         = clip(sigmoid(-f) * tanh(u), -erase, erase)
    c'           = c * (1 - erase) + 2 * cand * silu(a)
    r            = shrink_norm(c') * 2 * sigmoid(o) * mask_m   # the "memory norm"
    h'           = r @ W_out + b_out                           # (M -> H), W_out starts at 0

``shrink_norm(v) = w / max(1, sqrt(mean(w^2) * sqrt(d)))`` with ``w = v - bias - mean(v -
bias)`` over the d features: it centres, then shrinks the root mean square to at most
``d^(-1/4)`` (it never scales up). ``dropout_h`` (rate 0.55 in the reference) draws a
fresh mask at every step and once more on the layer's outputs; ``mask_m`` is the memory
dropout (0.1), ONE mask per sequence, shared by all its steps. Logits are
``dropout_h(h') @ E^T + b`` with ``E`` the input embedding.

The state ``(h, c)`` lives in the ``carry`` collection, one row per stream, so a training
step can start from where the previous batch of consecutive segments ended (truncated
back-propagation through time, see experiments/data/word_lm.py): apply the model with
``mutable=["carry"]`` and keep the returned collection. ``reset`` (one flag per row)
restarts a row from the zero state. Applied without a ``carry`` collection and without
``mutable``, every row starts from zero and nothing is kept.

Variable names are Flax's standard ones (kernel/bias/embedding), so
``amos.default_eta_fn`` classifies every variable; the reference's Amos table (its
fourth-root etas) is bound as rule maps in gin_configs/models/lstm_ptb.gin.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CARRY = "carry"  # The collection of the recurrent state carried between batches.


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """The reference's ``ModelConfig`` (modeling.py); defaults are its PTB values."""

    vocab_size: int
    hidden: int = 256
    memory: int = 1024
    forget_gate_bias: float = 1.0
    hidden_dropout: float = 0.55
    memory_dropout: float = 0.1


def truncated_normal(stddev: float) -> nn.initializers.Initializer:
    """Normal(0, stddev) truncated at +-2 stddev (without re-scaling), the reference's
    ``truncated_normal_initializer``."""
    return nn.initializers.truncated_normal(stddev, lower=-2.0, upper=2.0)


class ShrinkNorm(nn.Module):
    """Centres the features (after subtracting a learned ``bias``) and shrinks their root
    mean square to at most ``d^(-1/4)``; the reference's ``ShiftNorm``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = x - self.param("bias", nn.initializers.zeros, (d,), x.dtype)
        x = x - jnp.mean(x, axis=-1, keepdims=True)
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(jnp.maximum(mean_square * math.sqrt(d), 1.0))


class LSTMStep(nn.Module):
    """One time step of the cell (module docstring); scanned over time by ``LSTMLayer``.
    ``input_mask`` and ``memory_mask`` are the dropout masks (None: no dropout)."""

    config: LSTMConfig

    @nn.compact
    def __call__(
        self,
        state: tuple[jax.Array, jax.Array],
        x: jax.Array,
        input_mask: jax.Array | None,
        memory_mask: jax.Array | None,
    ):
        cfg = self.config
        h, c = state
        z = ShrinkNorm(name="input_norm")(jnp.concatenate([h, x], axis=-1))
        if input_mask is not None:
            z = z * input_mask
        core = nn.Dense(
            4 * cfg.memory, name="core", kernel_init=truncated_normal(math.sqrt(1 / z.shape[-1]))
        )(z)
        a, u, g, o = jnp.split(core, 4, axis=-1)
        fb = cfg.forget_gate_bias
        erase = nn.sigmoid(fb - g)
        candidate = jnp.clip(nn.sigmoid(-fb) * jnp.tanh(u), -erase, erase)
        c = c * (1.0 - erase) + 2.0 * candidate * nn.silu(a)
        read = ShrinkNorm(name="memory_norm")(c) * 2.0 * nn.sigmoid(o)
        if memory_mask is not None:
            read = read * memory_mask
        h = nn.Dense(cfg.hidden, name="out", kernel_init=nn.initializers.zeros)(read)
        return (h, c), h


class LSTMLayer(nn.Module):
    """The cell scanned over the time axis (axis 1) from ``state``; returns the outputs
    (with hidden dropout) and the final state."""

    config: LSTMConfig
    deterministic: bool

    @nn.compact
    def __call__(self, xs: jax.Array, state: tuple[jax.Array, jax.Array]):
        cfg = self.config
        batch, steps = xs.shape[:2]
        h, m = cfg.hidden, cfg.memory
        input_masks = memory_mask = output_masks = None
        if not self.deterministic:
            # All masks from ONE uniform draw (each RNG call costs seconds of compile time on
            # CPU): a fresh hidden-dropout mask for each step's inputs, ONE memory mask for
            # the sequence (the reference draws it before its scan), and the hidden-dropout
            # mask of the outputs.
            sizes = (steps * 2 * h, m, steps * h)
            u = jax.random.uniform(self.make_rng("dropout"), (batch, sum(sizes)), xs.dtype)
            u_in, u_mem, u_out = jnp.split(u, [sizes[0], sizes[0] + sizes[1]], axis=1)

            def mask(uniform: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
                # Inverted dropout: 0 with probability `rate`, else 1 / (1 - rate).
                return (uniform >= rate).astype(xs.dtype).reshape(shape) / (1.0 - rate)

            if cfg.hidden_dropout > 0:
                input_masks = mask(u_in, cfg.hidden_dropout, (batch, steps, 2 * h))
                output_masks = mask(u_out, cfg.hidden_dropout, (batch, steps, h))
            if cfg.memory_dropout > 0:
                memory_mask = mask(u_mem, cfg.memory_dropout, (batch, m))
        scan = nn.scan(
            LSTMStep,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=(1, 1, nn.broadcast),
            out_axes=1,
        )
        state, outputs = scan(cfg, name="cell")(state, xs, input_masks, memory_mask)
        if output_masks is not None:
            outputs = outputs * output_masks
        return outputs, state


class LSTMLanguageModel(nn.Module):
    """Logits ``(B, T, vocab)`` for input ids ``(B, T)``; see the module docstring."""

    config: LSTMConfig

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        reset: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden,
            name="embed",
            embedding_init=truncated_normal(math.sqrt(1 / cfg.hidden)),
        )
        x = embed(inputs)
        state = self._initial_state(inputs.shape[0], x.dtype, reset)
        outputs, final = LSTMLayer(cfg, deterministic, name="lstm")(x, state)
        if self.has_variable(CARRY, "hidden") and self.is_mutable_collection(CARRY):
            self.put_variable(CARRY, "hidden", final[0])
            self.put_variable(CARRY, "memory", final[1])
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), x.dtype)
        return embed.attend(outputs) + bias

    def _initial_state(
        self, batch: int, dtype: Any, reset: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """The carried ``(h, c)``, zero where ``reset``; zeros when there is no carry."""
        cfg = self.config
        shapes = {"hidden": (batch, cfg.hidden), "memory": (batch, cfg.memory)}
        if not (self.has_variable(CARRY, "hidden") or self.is_mutable_collection(CARRY)):
            return tuple(jnp.zeros(shapes[k], dtype) for k in ("hidden", "memory"))
        state = tuple(
            self.variable(CARRY, k, jnp.zeros, shapes[k], dtype).value for k in ("hidden", "memory")
        )
        if reset is None:
            return state
        keep = 1.0 - jnp.asarray(reset, dtype)[:, None]
        return state[0] * keep, state[1] * keep


def lstm_model(
    vocab_size: int,
    *,
    hidden: int = 256,
    memory: int = 1024,
    forget_gate_bias: float = 1.0,
    hidden_dropout: float = 0.55,
    memory_dropout: float = 0.1,
) -> LSTMLanguageModel:
    """The model; the defaults are the reference's PTB settings (modeling.py)."""
    return LSTMLanguageModel(
        LSTMConfig(
            vocab_size=vocab_size,
            hidden=hidden,
            memory=memory,
            forget_gate_bias=forget_gate_bias,
            hidden_dropout=hidden_dropout,
            memory_dropout=memory_dropout,
        )
    )
