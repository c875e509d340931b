"""LSTM and ResNet: sizes, Amos settings for every variable, batch norm, a few Amos steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import amos
from amos.model_shapes import count_parameters
from amos.tree import named_leaves, path_name
from experiments.data.images import load_digits
from experiments.lstm import amos_settings as lstm_amos
from experiments.lstm.models import lstm_model
from experiments.resnet import amos_settings as resnet_amos
from experiments.resnet.models import resnet_model


def abstract_variables(model, *inputs, **kwargs):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, **kwargs))


def check_every_variable(params, eta_fn, shape_fn):
    """Every variable has a finite positive eta and an allowed slot shape."""
    for path, leaf in named_leaves(params)[0]:
        eta = eta_fn(path, leaf.shape)
        assert np.isfinite(eta) and eta > 0, path_name(path)
        slot = tuple(shape_fn(path, leaf.shape))
        assert slot == () or (
            len(slot) == len(leaf.shape) and all(s in (1, d) for s, d in zip(slot, leaf.shape))
        ), (path_name(path), slot)


def test_lstm_ptb_size_and_the_reference_table():
    h, vocab = 650, 10_000
    params = abstract_variables(lstm_model(vocab, "ptb"), jnp.zeros((1, 4), jnp.int32))["params"]
    expected = vocab * h + 2 * (2 * h * 4 * h + 4 * h) + h * vocab + vocab + 2 * h
    assert count_parameters(params) == expected
    eta_fn, shape_fn = lstm_amos.eta_fn(h), lstm_amos.shape_fn()
    check_every_variable(params, eta_fn, shape_fn)
    table = {
        path_name(p): (eta_fn(p, x.shape), shape_fn(p, x.shape)) for p, x in named_leaves(params)[0]
    }
    assert table["lstm_0/core/kernel"] == (pytest.approx((2 * h) ** -0.25), (1, 4 * h))
    assert table["lstm_1/core/bias"] == (0.5, ())
    assert table["output/kernel"] == (pytest.approx((h * h) ** -0.25), (1, vocab))
    assert table["output/bias"] == (pytest.approx(0.5 * h**-0.25), ())
    assert table["output_norm/bias"] == (pytest.approx(0.5 * h**-0.25), ())
    assert table["output_norm/scale"] == (1.0, ())
    assert table["embed/embedding"] == (pytest.approx(h**-0.25), (vocab, 1))
    no_momentum = amos.amos(0.01, eta_fn, shape_fn, beta=0.98)
    assert amos.compare_slot_memory(no_momentum, params)["ratio"] <= 0.01
    with_momentum = amos.amos(0.01, eta_fn, shape_fn, beta=0.98, momentum=0.9)
    assert amos.compare_slot_memory(with_momentum, params)["ratio"] <= 0.51


@pytest.mark.parametrize(
    "size,classes,shape,expected",
    [
        ("resnet18", 10, (1, 32, 32, 3), 11_173_962),
        ("resnet50", 1000, (1, 224, 224, 3), 25_557_032),
    ],
)
def test_resnet_sizes_and_every_variable_has_settings(size, classes, shape, expected):
    variables = abstract_variables(resnet_model(classes, size), jnp.zeros(shape))
    params = variables["params"]
    # He et al.: ResNet-18 (CIFAR stem) about 11.2M, ResNet-50 about 25.6M.
    assert count_parameters(params) == expected
    assert set(variables) == {"params", "batch_stats"}
    check_every_variable(params, resnet_amos.eta_fn(), resnet_amos.shape_fn())
    eta_fn = resnet_amos.eta_fn()
    assert eta_fn(("stem_conv", "kernel"), (3, 3, 3, 64)) == pytest.approx((1 / 27) ** 0.5)
    assert eta_fn(("stage_1_block_0", "shortcut_conv", "kernel"), (1, 1, 64, 128)) == (
        pytest.approx((2 / 64) ** 0.5)
    )
    assert eta_fn(("head", "kernel"), (512, 10)) == pytest.approx((2 / 512) ** 0.5)
    tx = amos.amos(0.01, eta_fn, resnet_amos.shape_fn(), momentum=0.9)
    assert amos.compare_slot_memory(tx, params)["ratio"] <= 0.51


def test_batch_norm_uses_batch_statistics_in_training_and_running_averages_in_eval():
    model = resnet_model(10, "tiny")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 8, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stem_norm"]["mean"]
    after = updated["batch_stats"]["stem_norm"]["mean"]
    assert not np.allclose(before, after)  # Training moved the running averages.
    # Evaluation is per example: the logits of x[:2] do not depend on the rest of the batch.
    full = model.apply(variables, x, train=False)
    part = model.apply(variables, x[:2], train=False)
    np.testing.assert_allclose(full[:2], part, rtol=1e-5, atol=1e-6)
    # Training normalizes by the batch, so there the rest of the batch matters.
    train_full, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    train_part, _ = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
    assert not np.allclose(train_full[:2], train_part, atol=1e-4)


def few_amos_steps(loss_fn, params, tx, steps=30):
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses


def test_tiny_lstm_learns_with_amos():
    model = lstm_model(50, "tiny")
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(np.tile(rng.integers(0, 50, size=(4, 9)), (1, 3)), jnp.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    params = model.init(jax.random.PRNGKey(0), inputs)["params"]

    def loss_fn(p):
        logits = model.apply({"params": p}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    tx = amos.amos(0.05, lstm_amos.eta_fn(64), lstm_amos.shape_fn(), beta=0.98)
    losses = few_amos_steps(loss_fn, params, tx)
    assert losses[-1] < 0.8 * losses[0]


def test_tiny_resnet_learns_digits_with_amos():
    digits = load_digits()
    x = jnp.asarray(digits.train_images[:64] / 255.0)
    y = jnp.asarray(digits.train_labels[:64])
    model = resnet_model(10, "tiny")
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)

    def loss_fn(p):
        logits, _ = model.apply(
            {"params": p, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = amos.amos(0.05, resnet_amos.eta_fn(), resnet_amos.shape_fn(), beta=0.95, momentum=0.9)
    losses = few_amos_steps(loss_fn, variables["params"], tx)
    assert losses[-1] < 0.5 * losses[0]
