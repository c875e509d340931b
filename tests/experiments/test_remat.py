"""REMAT: each Transformer block rematerialized in the backward pass (experiments.layers.
remat_block) keeps the parameters, the loss and the gradients of the model without it, and
really recomputes (the gradient's program holds the remat)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bert.models import BertConfig, BertMlm
from experiments.gpt.models import GPT
from experiments.layers import REMAT_POLICIES, check_remat
from experiments.t5.models import T5, T5Config

VOCAB = 64


def _model(family: str, remat: str):
    if family == "bert":  # Dropout on: the recomputed blocks must draw the same masks.
        return BertMlm(BertConfig.from_size("tiny", vocab_size=VOCAB, num_layers=2, remat=remat))
    if family == "rpe":
        config = BertConfig.from_size(
            "tiny", vocab_size=VOCAB, num_layers=1, position_type="relative", remat=remat
        )
        return BertMlm(config)
    if family == "t5":
        config = T5Config.from_size(
            "tiny", vocab_size=VOCAB, num_encoder_layers=1, num_decoder_layers=1, remat=remat
        )
        return T5(config)
    return GPT(VOCAB, block_size=16, num_layers=2, num_heads=2, width=32, remat=remat)


def _inputs(family: str) -> tuple:
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 1, VOCAB)
    return (tokens, tokens) if family == "t5" else (tokens,)


def _loss_fn(family: str, remat: str):
    model, inputs = _model(family, remat), _inputs(family)

    def loss(params):
        logits = model.apply(
            {"params": params}, *inputs, deterministic=False, rngs={"dropout": jax.random.key(2)}
        )
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    return model, inputs, loss


@pytest.mark.parametrize("family", ["bert", "rpe", "t5", "gpt"])
def test_remat_wraps_the_blocks_and_keeps_the_parameters(family: str):
    """Traced only (no compile): the same parameter tree, and the gradient's program
    recomputes exactly when REMAT is on."""
    model, inputs, loss = _loss_fn(family, "none")
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs)["params"])
    for remat in REMAT_POLICIES:
        other, _, other_loss = _loss_fn(family, remat)
        other_params = jax.eval_shape(lambda m=other: m.init(jax.random.key(0), *inputs))
        assert other_params["params"] == params  # Same names, shapes and dtypes.
        program = str(jax.make_jaxpr(jax.value_and_grad(other_loss))(params))
        assert ("remat" in program) == (remat != "none"), remat


@pytest.mark.slow  # compiles each family's gradient twice
@pytest.mark.parametrize(("family", "remat"), [("bert", "full"), ("t5", "full"), ("gpt", "dots")])
def test_remat_keeps_the_initial_values_loss_and_gradients(family: str, remat: str):
    model, inputs, loss = _loss_fn(family, "none")
    params = model.init(jax.random.key(0), *inputs)["params"]
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    other, _, other_loss = _loss_fn(family, remat)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, other.init(jax.random.key(0), *inputs)["params"], params
    )
    other_value, other_grads = jax.jit(jax.value_and_grad(other_loss))(params)
    np.testing.assert_allclose(other_value, value, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), other_grads, grads
    )


def test_an_unknown_remat_names_the_setting():
    assert set(REMAT_POLICIES) == {"none", "dots", "full"}
    for build in (
        lambda: BertConfig(remat="half"),
        lambda: T5Config(remat="half"),
        lambda: check_remat("half"),
    ):
        with pytest.raises(ValueError, match=r"remat \(REMAT\) 'half' is none of"):
            build()
