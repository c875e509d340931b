"""The train state (`TrainState`, a pytree) and what is computed over it: its
initialization, norms, finiteness and checksums."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax


class TrainState(flax.struct.PyTreeNode):
    """What a step carries and a checkpoint holds."""

    step: jax.Array  # int32 scalar: the number of steps taken.
    params: Any
    # Non-parameter collections (e.g. batch_stats, the LSTM's carried state), unoptimized.
    model_state: Any
    opt_state: Any


def tree_norm(tree: Any) -> jax.Array:
    return optax.global_norm(tree)


def all_finite(tree: Any) -> jax.Array:
    """Whether no float leaf of `tree` holds a NaN or Inf. Exact, unlike a finite norm: the
    norm of large but finite values (Adam's second moments) can overflow."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def state_checksums(tree: Any) -> list[jax.Array]:
    """Two uint32 checksums per leaf of `tree`, in leaf order: the sum of its values'
    bits and the sum weighted by their position (1, 2, ... in C order), both modulo
    2**32, so a changed value, a flipped bit or two values swapped changes them. Integer
    sums wrap the same whatever the order of addition, so the numbers do not depend on
    how the leaf is sharded or on the device count. Saved beside each checkpoint and
    checked on restore (`checkpoints.Checkpointer`)."""

    def leaf(x: jax.Array) -> jax.Array:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if x.dtype == jnp.bool_:
            bits = x.astype(jnp.uint32)
        else:
            unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
            bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
        # The C-order position of every element, built per axis (no reshape, which could
        # gather a sharded leaf onto one device).
        position = jnp.ones(x.shape, jnp.uint32)
        stride = 1
        for axis in reversed(range(x.ndim)):
            position += jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride)
            stride *= x.shape[axis]
        return jnp.stack(
            [jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * position, dtype=jnp.uint32)]
        )

    return [leaf(x) for x in jax.tree_util.tree_leaves(tree)]


def checksum_record(tree: Any, sums: list) -> dict[str, list[int]]:
    """`state_checksums(tree)` fetched, by leaf path (jax.tree_util.keystr)."""
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    return {
        path: [int(v) for v in np.asarray(pair)] for path, pair in zip(paths, sums, strict=True)
    }


def poison_first_leaf(tree: Any, when: jax.Array) -> Any:
    """`tree` with its first leaf set to Inf where `when`: the testing hook
    `train.inject_nonfinite_params_at_steps` (an update that breaks the parameters)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves[0] = jnp.where(when, jnp.inf, leaves[0]).astype(leaves[0].dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def nonfinite_values(values: dict[str, Any]) -> dict[str, float]:
    """The entries of `values` that are non-finite floats (what final.json must not hold)."""
    return {k: v for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)}


def example_batch_shapes(
    task: Any, *, seed: int, batch_size: int, rows: slice
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of rows `rows` of a training batch: those of its first one."""
    shapes = task.train_batch(seed=seed, step=1, batch_size=batch_size, rows=rows)
    return {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for k, v in shapes.items()}


def init_train_state(
    seed: int,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    task: Any,
    example_batch: Mapping[str, jax.ShapeDtypeStruct],
    logical_axis_rules: Sequence[tuple[str, Any]] = (),
    keep_axis_names: bool = False,
) -> TrainState:
    """The state before the first step: the model initialized on zeros shaped like
    `example_batch` (only shapes matter to an init), the optimizer's slots for it.

    Under `logical_axis_rules` the models name their parameters' logical axes
    (experiments.layers.with_logical_axes); the state holds the plain values all the
    same (the names change no value), unless `keep_axis_names`: then its parameters stay
    boxed in `nn.LogicallyPartitioned`, for `launch.sharding.state_shardings` to read the
    names from a `jax.eval_shape` of this."""
    sample = {k: jnp.zeros(v.shape, v.dtype) for k, v in example_batch.items()}
    with nn.logical_axis_rules(logical_axis_rules):
        variables = dict(task.init_variables(model, jax.random.key(seed), sample))
    named_params = variables.pop("params")
    params = nn.meta.unbox(named_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=named_params if keep_axis_names else params,
        model_state=nn.meta.unbox(variables),
        opt_state=tx.init(params),
    )
