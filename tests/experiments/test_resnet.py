"""ResNet: sizes, the Amos rules of its gin model files for every variable, batch norm, a
few Amos steps."""

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
from experiments.resnet.models import resnet_model
from tests.experiments.model_gin import load_model_file


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


@pytest.mark.parametrize(
    "size,classes,shape,expected",
    [
        ("resnet18", 10, (1, 32, 32, 3), 11_173_962),
        ("resnet50", 1000, (1, 224, 224, 3), 25_557_032),
    ],
)
def test_resnet_sizes_and_every_variable_has_settings(size, classes, shape, expected):
    rules = load_model_file(f"{size}.gin", classes)
    variables = abstract_variables(rules.model, jnp.zeros(shape))
    params = variables["params"]
    # He et al.: ResNet-18 (CIFAR stem) about 11.2M, ResNet-50 about 25.6M.
    assert count_parameters(params) == expected
    assert set(variables) == {"params", "batch_stats"}
    check_every_variable(params, rules.eta_fn, rules.shape_fn)
    # The general rule (docs/optimizer.md): the stem sees the image (gain 1), every
    # other convolution and the head see ReLU outputs (gain 2); norms 1.0, shifts 0.5.
    for path, leaf in named_leaves(params)[0]:
        name, shape = path_name(path), leaf.shape
        if name.endswith("kernel"):
            gain = 1.0 if name.startswith("stem") else 2.0
            expected_eta = (gain / np.prod(shape[:-1])) ** 0.5
            expected_slot = (1,) * (len(shape) - 1) + (shape[-1],)
        else:
            expected_eta = 1.0 if name.endswith("scale") else 0.5
            expected_slot = ()
        assert rules.eta_fn(path, shape) == pytest.approx(expected_eta), name
        assert tuple(rules.shape_fn(path, shape)) == expected_slot, name
    tx = amos.amos(0.01, rules.eta_fn, rules.shape_fn, momentum=0.9)
    assert amos.compare_slot_memory(tx, params)["ratio"] <= 0.51


def test_batch_norm_uses_batch_statistics_in_training_and_running_averages_in_eval():
    model = resnet_model(10, "tiny")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 8, 1)), jnp.float32)
    # Jitted: a compile per shape costs less than op-by-op dispatch.
    variables = jax.jit(lambda key, x: model.init(key, x, train=False))(
        jax.random.PRNGKey(0), x[:1]
    )
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    _, updated = train(variables, x)
    before = variables["batch_stats"]["stem_norm"]["mean"]
    after = updated["batch_stats"]["stem_norm"]["mean"]
    assert not np.allclose(before, after)  # Training moved the running averages.
    # Evaluation is per example: the logits of x[:2] do not depend on the rest of the batch.
    full = evaluate(variables, x)
    part = evaluate(variables, x[:2])
    np.testing.assert_allclose(full[:2], part, rtol=1e-5, atol=1e-6)
    # Training normalizes by the batch, so there the rest of the batch matters.
    train_full, _ = train(variables, x)
    train_part, _ = train(variables, x[:2])
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


def test_tiny_resnet_learns_digits_with_amos():
    digits = load_digits()
    x = jnp.asarray(digits.train_images[:64] / 255.0)
    y = jnp.asarray(digits.train_labels[:64])
    model = resnet_model(10, "tiny")
    variables = jax.jit(lambda key, x: model.init(key, x, train=False))(
        jax.random.PRNGKey(0), x[:1]
    )

    def loss_fn(p):
        logits, _ = model.apply(
            {"params": p, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    rules = load_model_file("resnet_tiny.gin", 10)
    tx = amos.amos(0.05, rules.eta_fn, rules.shape_fn, beta=0.95, momentum=0.9)
    losses = few_amos_steps(loss_fn, variables["params"], tx)
    assert losses[-1] < 0.5 * losses[0]
