"""The ViT family (experiments/vit/models.py), the worked example of docs/extending.md: the
Amos rules of its gin model file for every variable, and Amos training it on the digits
through its task's objective. tests/launch/test_families.py trains its experiment file,
gin_configs/experiments/vit_cpu.gin, through launch/run.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amos
from amos.model_shapes import count_parameters
from amos.tree import named_leaves, path_name
from experiments.data.images import ImageClassificationTask
from experiments.errors import ConfigError
from experiments.vit.models import vit_model
from tests.experiments.model_gin import load_model_file


def test_every_variable_has_the_general_rules_eta_and_slot():
    rules = load_model_file("vit_tiny.gin", 10)
    variables = jax.eval_shape(
        lambda: rules.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    )
    assert set(variables) == {"params"}
    params = variables["params"]
    w, m = rules.model.width, rules.model.mlp_width  # 128 and 256 in the file
    # 2x2x1 patches -> w; 16 positions; 4 blocks of attention (4 w x w kernels and biases),
    # MLP (w -> m -> w) and two norms; the final norm and the w -> 10 head.
    block = 4 * (w * w + w) + (w * m + m) + (m * w + w) + 2 * 2 * w
    assert count_parameters(params) == (4 * w + w) + 16 * w + 4 * block + 2 * w + (w * 10 + 10)
    for path, leaf in named_leaves(params)[0]:
        name, shape = path_name(path), leaf.shape
        if name.endswith("kernel"):
            gain = 2.0 if "/mlp_out/" in name else 1.0  # only the MLP's output reads a GELU
            eta, slot = (gain / np.prod(shape[:-1])) ** 0.5, (1,) * (len(shape) - 1) + shape[-1:]
        elif name == "position/embedding":
            eta, slot = (2 / w) ** 0.5, (16, 1)
        else:
            eta, slot = (1.0 if name.endswith("scale") else 0.5), ()
        assert rules.eta_fn(path, shape) == pytest.approx(eta), name
        assert tuple(rules.shape_fn(path, shape)) == slot, name


def test_amos_trains_it_on_the_digits_through_the_task():
    """The image task calls a ViT with `deterministic=` (`model_call='dropout'`, bound in
    its model file): no batch statistics, dropout drawn in training only."""
    task = ImageClassificationTask("digits", model_call="dropout")
    model = vit_model(10, dropout=0.1)
    batch = task.train_batch(seed=0, step=1, batch_size=64)
    variables = task.init_variables(model, jax.random.PRNGKey(0), batch)
    assert set(variables) == {"params"}
    rules = load_model_file("vit_tiny.gin", 10)
    tx = amos.amos(0.03, rules.eta_fn, rules.shape_fn, beta=0.95, momentum=0.9)
    state = tx.init(variables["params"])

    @jax.jit
    def step(params, state, key):
        def loss_fn(p):
            loss, metrics, _ = task.loss(model, {"params": p}, batch, train=True, rng=key)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return jax.tree_util.tree_map(jnp.add, params, updates), state, loss

    params, losses = variables["params"], []
    for i in range(60):
        params, state, loss = step(params, state, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    # Evaluation is deterministic: the same logits twice.
    a, b = (task.loss(model, {"params": params}, batch, train=False, rng=None)[0] for _ in "ab")
    assert float(a) == float(b)
    with pytest.raises(ConfigError, match="model_call='train'"):
        ImageClassificationTask("digits", model_call="train")
