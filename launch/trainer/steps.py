"""The pure step functions the Trainer jits: `train_step` (with mixed precision and
gradient accumulation over micro-batches), `eval_step` and `eval_carry_step`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from launch.trainer.state import TrainState, all_finite, poison_first_leaf, tree_norm


# ---------------------------------------------------------------------- precision
def compute_model(model: nn.Module, compute_dtype: str | None) -> nn.Module:
    """`model` computing in `compute_dtype`, the Flax way where the model has a `dtype`
    (a field of its own, or of its `config` dataclass: BERT, T5): a clone with it set.
    Its parameters are still created in float32 (Flax's `param_dtype`); a model without
    one (GPT, LSTM, ResNet) computes in the dtype of its (cast) parameters and inputs."""
    if compute_dtype in (None, "float32") or not dataclasses.is_dataclass(model):
        return model
    dtype = jnp.dtype(compute_dtype)
    fields = {f.name for f in dataclasses.fields(model)}
    if "dtype" in fields:
        return model.clone(dtype=dtype)
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and "dtype" in {f.name for f in dataclasses.fields(config)}:
        return model.clone(config=dataclasses.replace(config, dtype=dtype))
    return model


def cast_floats(tree: Any, compute_dtype: str | None) -> Any:
    """`tree` with its floating-point leaves in `compute_dtype` (None, float32: as is)."""
    if compute_dtype in (None, "float32"):
        return tree
    dtype = jnp.dtype(compute_dtype)
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _cast_inputs(task: Any, batch: Mapping[str, Any], compute_dtype: str | None) -> dict:
    """The batch with the model's float inputs (the objective's `inputs`, e.g. images) in
    `compute_dtype`; targets and weights stay as they are (the loss is float32)."""
    if compute_dtype in (None, "float32"):
        return batch
    inputs = task.objective.inputs
    return {
        k: cast_floats(v, compute_dtype) if inputs is None or k in inputs else v
        for k, v in batch.items()
    }


def _like(new: Any, old: Any) -> Any:
    """`new` (updated collections) in the dtypes of `old` where the trees match, so the
    state keeps its dtypes whatever the compute dtype (e.g. the LSTM's carried state)."""
    if jax.tree_util.tree_structure(new) != jax.tree_util.tree_structure(old):
        return new
    return jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype), new, old)


def _keep_dtypes(model_state: dict, old: dict) -> dict:
    return {k: _like(v, old[k]) if k in old else v for k, v in model_state.items()}


# ---------------------------------------------------------------------- accumulation
def loss_normalization(task: Any) -> str:
    """How the task's training loss normalizes its summed cross-entropy: its objective's
    `normalization` ("mean", "sum", "sqrt"; experiments/objectives.py)."""
    return task.objective.normalization


def normalizer(normalization: str, count: jax.Array) -> jax.Array:
    """The divisor that turns the summed cross-entropy over `count` targets into the
    training loss: max(count, 1) for "mean", sqrt(max(count, 1)) for "sqrt", 1 for "sum"."""
    count = jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)
    if normalization == "mean":
        return count
    if normalization == "sqrt":
        return jnp.sqrt(count)
    if normalization == "sum":
        return jnp.ones((), jnp.float32)
    raise ValueError(f"unknown loss normalization {normalization!r}")


def micro_batches(batch: Mapping[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """`batch` split into `k` equal micro-batches along a new leading axis: micro-batch i
    holds rows i, i + k, i + 2k, ... Interleaved rows, so that every micro-batch has rows
    on every device when the batch's rows are split over the mesh in contiguous blocks."""

    def split(x):
        rows = x.shape[0]
        return jnp.swapaxes(x.reshape((rows // k, k) + x.shape[1:]), 0, 1)

    return {key: split(value) for key, value in batch.items()}


def _accumulated_gradients(
    params: Any,
    model_state: dict,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    loss_fn: Callable,
    *,
    k: int,
    normalization: str,
):
    """(loss, accuracy, token_loss, model_state, grads) of the whole batch from `k`
    micro-batches, one after the other (jax.lax.scan: one micro-batch's activations live
    at a time).

    Exact accumulation: with the task's normalization (`normalizer`: N(n) = max(n, 1),
    sqrt(max(n, 1)) or 1 for n targets), micro-batch i's loss is S_i / N(n_i), S_i its
    summed cross-entropy. The whole batch's loss is (sum_i S_i) / N(sum_i n_i), and since
    the counts do not depend on the parameters its gradient is
    sum_i N(n_i) grad(loss_i) / N(sum_i n_i): each micro-batch's gradient is weighted by
    N(n_i), the sum divided by N of the total count. For the per-target mean with equal
    counts (GPT: every position a target) that is the mean of the micro-batch gradients;
    for a masked LM's sum / sqrt(count), whose masked-token counts differ from one
    micro-batch to the next, a plain mean of micro-batch gradients would not be the
    batch's. `token_loss` and `accuracy` are the count-weighted means, as over the whole
    batch. A task that reports no `num_targets` gets equal weights (its micro-batches'
    mean). Non-parameter collections are threaded through the micro-batches in order
    (batch statistics are then those of each micro-batch, updated k times per step).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    counted: list[bool] = []  # Whether the task reports num_targets (seen when tracing).

    def body(carry, xs):
        grads_sum, model_state, sums = carry
        index, micro = xs
        (loss, (metrics, updated)), grads = grad_fn(
            params, micro, model_state, jax.random.fold_in(rng, index)
        )
        counted.append("num_targets" in metrics)
        if counted[-1]:
            count = jnp.asarray(metrics["num_targets"], jnp.float32)
            weight = normalizer(normalization, count)
        else:
            count = weight = jnp.ones((), jnp.float32)
        per_target = jnp.maximum(count, 1.0)
        grads_sum = jax.tree_util.tree_map(lambda a, g: a + weight * g, grads_sum, grads)
        sums = {
            "loss": sums["loss"] + weight * loss,
            "token_loss": sums["token_loss"] + metrics.get("token_loss", loss) * per_target,
            "accuracy": sums["accuracy"] + metrics["accuracy"] * per_target,
            "count": sums["count"] + count,
        }
        model_state = _keep_dtypes({**model_state, **updated}, model_state)
        return (grads_sum, model_state, sums), None

    zero = jnp.zeros((), jnp.float32)
    init = (
        jax.tree_util.tree_map(jnp.zeros_like, params),
        model_state,
        {"loss": zero, "token_loss": zero, "accuracy": zero, "count": zero},
    )
    (grads_sum, model_state, sums), _ = jax.lax.scan(
        body, init, (jnp.arange(k), micro_batches(batch, k))
    )
    norm = normalizer(normalization if counted[0] else "mean", sums["count"])
    grads = jax.tree_util.tree_map(lambda g: (g / norm).astype(g.dtype), grads_sum)
    per_target = jnp.maximum(sums["count"], 1.0)
    return (
        sums["loss"] / norm,
        sums["accuracy"] / per_target,
        sums["token_loss"] / per_target,
        model_state,
        grads,
    )


# ---------------------------------------------------------------------- steps
def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    task: Any,
    seed: int = 0,
    skip_nonfinite: bool = False,
    inject_nonfinite_at_steps: Sequence[int] = (),
    inject_nonfinite_params_at_steps: Sequence[int] = (),
    compute_dtype: str | None = None,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on `batch`: the new state and the step's metrics (`loss`,
    `token_loss`, `accuracy`, `grad_norm`, `param_norm`, `finite`, `update_finite`).

    The dropout key of step t is `fold_in(key(seed), t)` (of its micro-batch i,
    `fold_in` of that with i). A step whose loss, gradient or update is non-finite has
    `finite` False; with `skip_nonfinite` it leaves the parameters, slots and model state
    as they were (the step counter still advances). The `inject_*` arguments are the
    testing hooks of TrainConfig. `compute_dtype` (None: float32) is the dtype of the
    forward and backward pass (`compute_model`, `cast_floats`); the parameters, their
    gradients and the optimizer state stay in their own (float32). `grad_accum_steps` > 1
    splits the batch into that many micro-batches whose gradients are accumulated exactly
    (`_accumulated_gradients`): the same update as the whole batch at once, to float32
    rounding.
    """
    step = state.step + 1  # The 1-based number of the step being taken.
    rng = jax.random.fold_in(jax.random.key(seed), step)
    inject = jnp.asarray(tuple(inject_nonfinite_at_steps) or (-1,), jnp.int32)
    computing = compute_model(model, compute_dtype)

    def micro_loss(params, micro, model_state, micro_rng):
        variables = {"params": cast_floats(params, compute_dtype), **model_state}
        loss, metrics, updated = task.loss(
            computing,
            variables,
            _cast_inputs(task, micro, compute_dtype),
            train=True,
            rng=micro_rng,
        )
        return loss, (metrics, updated)

    if grad_accum_steps == 1:

        def loss_fn(params):
            loss, (metrics, model_state) = micro_loss(params, batch, state.model_state, rng)
            loss = jnp.where(jnp.any(inject == step), jnp.nan, loss)
            # The per-token loss, whatever the training loss's normalization.
            token_loss = metrics.get("token_loss", loss)
            return loss, (metrics["accuracy"], token_loss, model_state)

        (loss, (acc, token_loss, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        model_state = {**state.model_state, **model_state}
    else:
        loss, acc, token_loss, model_state, grads = _accumulated_gradients(
            state.params,
            state.model_state,
            batch,
            rng,
            micro_loss,
            k=grad_accum_steps,
            normalization=loss_normalization(task),
        )
        loss = jnp.where(jnp.any(inject == step), jnp.nan, loss)
    model_state = _keep_dtypes(model_state, state.model_state)
    grad_norm = tree_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if inject_nonfinite_params_at_steps:
        poison = jnp.any(jnp.asarray(tuple(inject_nonfinite_params_at_steps)) == step)
        params = poison_first_leaf(params, poison)
    # A finite loss can still come with an update that breaks the parameters or the slots
    # (an overflow in the optimizer): such a step is as bad as a NaN loss, and its state
    # must never be checkpointed.
    update_finite = all_finite((params, opt_state, model_state))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & update_finite
    if skip_nonfinite:

        def keep(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)

        params = keep(params, state.params)
        opt_state = keep(opt_state, state.opt_state)
        model_state = keep(model_state, state.model_state)
    metrics = {
        "loss": loss,
        "token_loss": token_loss,
        "accuracy": acc,
        "grad_norm": grad_norm,
        "param_norm": tree_norm(params),
        "finite": finite,
        "update_finite": update_finite,
    }
    new_state = TrainState(step=step, params=params, model_state=model_state, opt_state=opt_state)
    return new_state, metrics


def _eval_loss(
    state: TrainState,
    model_state: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    task: Any,
    seed: int,
    compute_dtype: str | None,
):
    return task.loss(
        compute_model(model, compute_dtype),
        {"params": cast_floats(state.params, compute_dtype), **model_state},
        _cast_inputs(task, batch, compute_dtype),
        train=False,
        rng=jax.random.key(seed),
    )


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    task: Any,
    seed: int = 0,
    compute_dtype: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-token loss, accuracy, number of targets) of the state on one held-out batch.
    The count is the objective's `num_targets` (the weighted targets: a padded GLUE
    batch's real examples), or 1 where it reports none; the trainer weights each batch's
    means by it, so that an evaluation is the exact per-target mean over its batches."""
    loss, metrics, _ = _eval_loss(
        state,
        state.model_state,
        batch,
        model=model,
        task=task,
        seed=seed,
        compute_dtype=compute_dtype,
    )
    count = jnp.asarray(metrics.get("num_targets", 1.0), jnp.float32)
    # The per-token loss where the objective is a sum (see Task.loss).
    return metrics.get("token_loss", loss), metrics["accuracy"], count


def eval_carry_step(
    state: TrainState,
    carried: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    task: Any,
    state_collections: Sequence[str],
    seed: int = 0,
    compute_dtype: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """One batch of an evaluation that threads `state_collections` (the recurrent state)
    from batch to batch: (token loss, accuracy, target count, the collections after it).
    `carried` holds them after the previous batch (zeros, or {} for the model to make
    them, at the first); the training state's own are left out."""
    others = {k: v for k, v in state.model_state.items() if k not in state_collections}
    loss, metrics, updated = _eval_loss(
        state,
        {**others, **carried},
        batch,
        model=model,
        task=task,
        seed=seed,
        compute_dtype=compute_dtype,
    )
    carried = {k: updated[k] for k in state_collections}
    return metrics["token_loss"], metrics["accuracy"], metrics["num_targets"], carried
