"""A word-level LSTM language model: embedding, stacked LSTM cells, output softmax.

Each cell has one fused "core" kernel acting on ``[x, h]`` (so its fan-in is twice the
hidden size, as in the reference Amos LSTM table) and a memory of the hidden size. A
LayerNorm on the top hidden state precedes the output projection; dropouts on the
embedding, between layers and before the output are gin-configurable. Every sequence
starts from a zero state (windows are sampled independently, see
experiments/data/word_lm.py).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int
    hidden: int = 650
    num_layers: int = 2
    embedding_dropout: float = 0.0
    hidden_dropout: float = 0.5
    output_dropout: float = 0.5


SIZES = {
    "tiny": dict(hidden=64, num_layers=1, hidden_dropout=0.0, output_dropout=0.0),
    # The medium PTB model of Zaremba et al. (2014), the paper's LSTM scale.
    "ptb": dict(hidden=650, num_layers=2, hidden_dropout=0.5, output_dropout=0.5),
}


class LSTMCell(nn.Module):
    """One LSTM step: gates from a single Dense ("core") on the concatenation [x, h]."""

    hidden: int

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], x: jax.Array):
        c, h = carry
        gates = nn.Dense(4 * self.hidden, name="core")(jnp.concatenate([x, h], axis=-1))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        # A forget-gate bias of 1 keeps early gradients flowing (Jozefowicz et al., 2015).
        c = nn.sigmoid(f + 1.0) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


class LSTMLanguageModel(nn.Module):
    config: LSTMConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = nn.Embed(
            cfg.vocab_size,
            cfg.hidden,
            name="embed",
            embedding_init=nn.initializers.normal(cfg.hidden**-0.5),
        )(input_ids)
        x = nn.Dropout(cfg.embedding_dropout)(x, deterministic=deterministic)
        scan_cell = nn.scan(
            LSTMCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        batch = input_ids.shape[0]
        for layer in range(cfg.num_layers):
            zeros = jnp.zeros((batch, cfg.hidden), x.dtype)
            _, x = scan_cell(cfg.hidden, name=f"lstm_{layer}")((zeros, zeros), x)
            rate = cfg.hidden_dropout if layer < cfg.num_layers - 1 else cfg.output_dropout
            x = nn.Dropout(rate)(x, deterministic=deterministic)
        x = nn.LayerNorm(name="output_norm")(x)
        return nn.Dense(cfg.vocab_size, name="output")(x)


def lstm_model(vocab_size: int, size: str = "tiny", **overrides) -> LSTMLanguageModel:
    """The model at a named size (``tiny``, ``ptb``), with any field overridden."""
    if size not in SIZES:
        raise ValueError(f"Unknown LSTM size {size!r}; known: {sorted(SIZES)}.")
    return LSTMLanguageModel(LSTMConfig(vocab_size=vocab_size, **{**SIZES[size], **overrides}))
