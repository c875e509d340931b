"""The training loop behind launch/run.py: sharded, checkpointed, logged.

* `TrainConfig`: every setting of one run, frozen and validated in one place; gin binds its
  fields as `train.<field>` (see gin_configs/train_defaults.gin for the readable macros).
* `TrainState`: the state a step carries and a checkpoint holds (a pytree).
* `train_step`, `eval_step`, `eval_carry_step`, `init_train_state`: pure functions of the
  state and a batch, with the model, optimizer and task as keyword arguments; the Trainer
  jits them with `functools.partial` and the shardings of launch/sharding.py.
* `Trainer`: builds model, optimizer and mesh from a TrainConfig and runs the loop, with
  its parts in `Checkpointer` (Orbax, restore fallback) and `MetricsLogger` (TensorBoard,
  metrics.jsonl, the non-finite checks).

The loop follows the Flax WMT/LM1B examples: a jitted step on a donated state, periodic
evaluation on fixed held-out batches, Orbax checkpoints, TensorBoard scalars. On top:
mixed precision (`compute_dtype`), gradient accumulation over micro-batches inside the
step (`grad_accum_steps`), a profiler window (`profile_steps`), fine-tuning from another
run's parameters (`init_from`), evaluation-only (`Trainer.evaluate_checkpoint`), and every
file of MODEL_DIR through `etils.epath` (cloud paths).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import inspect
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.errors import ConfigError
from launch import prefetch, pretrained, sharding
from launch.checkpoints import checkpoint_manager, checkpoint_steps
from launch.optimizers import OptimizerSpec, slot_bytes
from launch.preemption import NoWatch, Preempted
from launch.summary_writer import ScalarWriter, join, read_metrics, write_json


class CheckpointSaveFailed(Exception):
    """A checkpoint could not be written (a full disk, no permission to write, a storage
    error): training stops rather than go on without a restart point. launch/run.py exits
    74 (sysexits.h EX_IOERR) naming the directory and the cause."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient, update or evaluation: at once with
    `skip_nonfinite_steps` off, after `max_consecutive_skipped_steps` skipped steps in a
    row with it on, and always when an evaluation is non-finite."""


# ---------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The settings of one run. gin binds each field as `train.<field>` (the configurable
    `train` below builds a TrainConfig from the bindings); `__post_init__` checks them all
    and raises one ConfigError naming every bad binding.

    `model` is a factory called with `**task.model_kwargs()`, `optimizer` one called with
    `train_steps` (launch/optimizers.py); `task` follows experiments/task.py.
    """

    model_dir: str | None
    train_steps: int
    batch_size: int  # Global; split over the mesh's data and fsdp axes.
    model: Callable[..., nn.Module]
    task: Any
    optimizer: Callable[[int], OptimizerSpec]
    seed: int = 0
    eval_every: int = 250
    eval_batches: int = 20
    eval_batch_size: int | None = None  # None: batch_size.
    eval_splits: Sequence[str] = ("val",)
    eval_seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    skip_nonfinite_steps: bool = False
    max_consecutive_skipped_steps: int = 10
    # A first checkpoint early, so that a run dying young (a crash, a preemption, the
    # machine under load) loses little of its work. None: at the first log step,
    # min(checkpoint_every, log_every): there the host fetches the step metrics anyway and
    # has just checked the steps finite, so the save adds no synchronization and saves a
    # state known good. 0 turns it off. It counts among `keep_checkpoints` like any other
    # and, being the oldest, is the first to go.
    first_checkpoint_at: int | None = None
    # The ('data', 'fsdp', 'model') mesh (launch/sharding.py); one axis may be -1, the
    # devices left over. Resolved to sizes in __post_init__.
    mesh_shape: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "model": 1}
    )
    # Parameters with fewer elements stay replicated on the fsdp axis.
    fsdp_min_size: int = 4096
    # Logical axis name -> mesh axes (t5x / MaxText rules): how the models' named
    # parameter axes split over the mesh (tensor parallelism on 'model').
    logical_axis_rules: Sequence[tuple[str, Any]] = sharding.LOGICAL_AXIS_RULES
    # Testing hooks: poison the given 1-based steps with a NaN loss, or with an update
    # that makes the parameters Inf while the loss is finite.
    inject_nonfinite_at_steps: Sequence[int] = ()
    inject_nonfinite_params_at_steps: Sequence[int] = ()
    progress: bool = True
    # Mixed precision: 'bfloat16' runs the model's activations and matmuls in bfloat16
    # (its `dtype` where it has one, and the parameters and float inputs cast at the loss);
    # parameters, gradients and optimizer slots stay float32, and the cross-entropy and
    # softmax are computed in float32 (experiments/objectives.py, experiments/layers.py).
    compute_dtype: str = "float32"
    # Gradient accumulation: each step's global batch is split into this many equal
    # micro-batches, whose gradients are summed inside the step (jax.lax.scan), weighted
    # so that the update is that of the whole batch (see `train_step`). A step is still one
    # optimizer update on the batch of `batch_size` examples, the step counter, schedules
    # and batch sampler (a pure function of (seed, step)) are unchanged.
    grad_accum_steps: int = 1
    # (start, count): the 1-based steps start .. start + count - 1 are traced by the JAX
    # profiler into MODEL_DIR/profile (TensorBoard's profile plugin, Perfetto); count 0
    # turns it off.
    profile_steps: Sequence[int] = (0, 0)
    # Fine-tuning: at a fresh start (no checkpoint of its own), the parameters of this
    # other run's MODEL_DIR (its newest checkpoint, or `init_from_step`) whose path and
    # shape match the model's; the others keep their initialization.
    init_from: str | None = None
    init_from_step: int | None = None
    # Not a binding: `run.py --dry_run` builds a config without a MODEL_DIR.
    dry_run: bool = False

    def __post_init__(self):
        problems = []
        if not self.model_dir and not self.dry_run:
            problems.append("MODEL_DIR is not set (pass --gin.MODEL_DIR=\"'/path/to/run'\")")
        for name, value in [
            ("TRAIN_STEPS", self.train_steps),
            ("BATCH_SIZE", self.batch_size),
            ("train.eval_every", self.eval_every),
            ("train.log_every", self.log_every),
            ("train.checkpoint_every", self.checkpoint_every),
            ("train.keep_checkpoints", self.keep_checkpoints),
            ("train.eval_batches", self.eval_batches),
            ("train.max_consecutive_skipped_steps", self.max_consecutive_skipped_steps),
        ]:
            if not _positive_int(value):
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.eval_batch_size is not None and not _positive_int(self.eval_batch_size):
            problems.append(
                f"train.eval_batch_size must be None or a positive integer, got "
                f"{self.eval_batch_size!r}"
            )
        if self.first_checkpoint_at is not None and (
            not _positive_int(self.first_checkpoint_at) and self.first_checkpoint_at != 0
        ):
            problems.append(
                "train.first_checkpoint_at must be None (the first log step), 0 (off) or a "
                f"positive step, got {self.first_checkpoint_at!r}"
            )
        for split in self.eval_splits:
            if split not in ("train", "val", "test"):
                problems.append(f"train.eval_splits: unknown split {split!r} (train, val, test)")
        if isinstance(self.compute_dtype, str) or self.compute_dtype is None:
            dtype = self.compute_dtype
        else:  # A jnp dtype bound in Python.
            dtype = np.dtype(self.compute_dtype).name
        if dtype not in COMPUTE_DTYPES:
            problems.append(
                f"train.compute_dtype (COMPUTE_DTYPE) must be one of {COMPUTE_DTYPES}, got "
                f"{self.compute_dtype!r}"
            )
        else:
            object.__setattr__(self, "compute_dtype", dtype)
        accum = self.grad_accum_steps
        if not _positive_int(accum):
            problems.append(
                f"train.grad_accum_steps (GRAD_ACCUM_STEPS) must be a positive integer, got "
                f"{accum!r}"
            )
        elif accum > 1 and getattr(self.task, "state_collections", ()):
            problems.append(
                f"train.grad_accum_steps (GRAD_ACCUM_STEPS) = {accum}: the task carries a "
                f"recurrent state over the rows of the whole batch "
                f"({tuple(self.task.state_collections)}), which micro-batches cannot split"
            )
        problems.extend(_profile_problems(self.profile_steps, self.train_steps))
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from
        ):
            problems.append(
                f"train.init_from (INIT_FROM) must be None or a MODEL_DIR path, got "
                f"{self.init_from!r}"
            )
        if self.init_from_step is not None and (
            not _positive_int(self.init_from_step) or self.init_from is None
        ):
            problems.append(
                "train.init_from_step (INIT_FROM_STEP) must be None or a positive step, with "
                f"train.init_from set; got {self.init_from_step!r} (INIT_FROM "
                f"{self.init_from!r})"
            )
        if isinstance(self.fsdp_min_size, bool) or not isinstance(self.fsdp_min_size, int):
            problems.append(
                f"train.fsdp_min_size (FSDP_MIN_SIZE) must be an integer, got "
                f"{self.fsdp_min_size!r}"
            )
        try:
            rules = sharding.check_logical_axis_rules(self.logical_axis_rules)
            object.__setattr__(self, "logical_axis_rules", rules)
        except ConfigError as e:
            problems.append(str(e))
        try:
            mesh = sharding.resolve_mesh_shape(self.mesh_shape, jax.device_count())
        except ConfigError as e:
            problems.append(str(e))
        else:
            object.__setattr__(self, "mesh_shape", mesh)
            # The batch is split over data x fsdp (every device when model = 1).
            n_dev = math.prod(mesh[axis] for axis in sharding.BATCH_AXES)
            split = f"{n_dev} devices" if mesh["model"] == 1 else f"{n_dev} data x fsdp shards"
            for name, value in [
                ("BATCH_SIZE", self.batch_size),
                ("train.eval_batch_size", self.global_eval_batch_size),
            ]:
                if _positive_int(value) and value % n_dev:
                    problems.append(
                        f"{name}={value} is not divisible by the {split} of the mesh "
                        f"({_mesh_text(mesh)}; the batch is split over data x fsdp)"
                    )
            if (
                _positive_int(self.batch_size)
                and _positive_int(accum)
                and accum > 1
                and self.batch_size % (accum * n_dev)
            ):
                problems.append(
                    f"BATCH_SIZE={self.batch_size} is not divisible by GRAD_ACCUM_STEPS="
                    f"{accum} x the {split} of the mesh (train.grad_accum_steps: "
                    "each micro-batch is split over data x fsdp)"
                )
        if problems:
            raise ConfigError("; ".join(problems))
        object.__setattr__(self, "eval_splits", tuple(self.eval_splits))
        object.__setattr__(self, "profile_steps", tuple(self.profile_steps))
        object.__setattr__(self, "inject_nonfinite_at_steps", tuple(self.inject_nonfinite_at_steps))
        object.__setattr__(
            self, "inject_nonfinite_params_at_steps", tuple(self.inject_nonfinite_params_at_steps)
        )

    @property
    def global_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size

    @property
    def first_checkpoint_step(self) -> int:
        """The step of the early checkpoint (0: none); see `first_checkpoint_at`."""
        if self.first_checkpoint_at is None:
            return min(self.checkpoint_every, self.log_every)
        return self.first_checkpoint_at

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes`, validated again."""
        return dataclasses.replace(self, **changes)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


COMPUTE_DTYPES = ("float32", "bfloat16")
_PROFILE_BINDING = "train.profile_steps (PROFILE_START, PROFILE_STEPS)"


def _profile_problems(window: Any, train_steps: Any) -> list[str]:
    """What is wrong with a `profile_steps` binding: (start, count), count 0 = off."""
    ok = (
        isinstance(window, Sequence)
        and not isinstance(window, str)
        and len(window) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in window)
    )
    if not ok:
        return [f"{_PROFILE_BINDING} must be (start, count), two integers >= 0, got {window!r}"]
    start, count = window
    if count == 0:
        return []
    if start < 1:
        return [f"{_PROFILE_BINDING} = {tuple(window)}: the first traced step must be >= 1"]
    if _positive_int(train_steps) and start + count - 1 > train_steps:
        return [
            f"{_PROFILE_BINDING} = {tuple(window)}: steps {start}..{start + count - 1} go past "
            f"TRAIN_STEPS={train_steps}"
        ]
    return []


def _mesh_text(mesh: Mapping[str, int]) -> str:
    return " x ".join(f"{axis}={size}" for axis, size in mesh.items())


# The fields that are not gin bindings.
_NOT_BOUND = ("dry_run",)


def _train_config(**settings) -> TrainConfig:
    return TrainConfig(**settings)


# gin reads a configurable's parameters from its signature: the fields' own, so each
# setting is written once (in TrainConfig). Fields without a default are gin.REQUIRED.
_train_config.__signature__ = inspect.Signature(
    [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=(
                f.default
                if f.default is not dataclasses.MISSING
                else f.default_factory()
                if f.default_factory is not dataclasses.MISSING
                else gin.REQUIRED
            ),
        )
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _NOT_BOUND
    ]
)
train_config = gin.configurable("train")(_train_config)
train_config.__doc__ = "The TrainConfig of the gin bindings `train.<field>`; kwargs override."


# ---------------------------------------------------------------------- state and steps
class TrainState(flax.struct.PyTreeNode):
    """What a step carries and a checkpoint holds."""

    step: jax.Array  # int32 scalar: the number of steps taken.
    params: Any
    # Non-parameter collections (e.g. batch_stats, the LSTM's carried state), unoptimized.
    model_state: Any
    opt_state: Any


def tree_norm(tree) -> jax.Array:
    return optax.global_norm(tree)


def all_finite(tree) -> jax.Array:
    """Whether no float leaf of `tree` holds a NaN or Inf. Exact, unlike a finite norm: the
    norm of large but finite values (Adam's second moments) can overflow."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def state_checksums(tree) -> list[jax.Array]:
    """Two uint32 checksums per leaf of `tree`, in leaf order: the sum of its values'
    bits and the sum weighted by their position (1, 2, ... in C order), both modulo
    2**32, so a changed value, a flipped bit or two values swapped changes them. Integer
    sums wrap the same whatever the order of addition, so the numbers do not depend on
    how the leaf is sharded or on the device count. Saved beside each checkpoint and
    checked on restore (`Checkpointer`)."""

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


def checksum_record(tree, sums: list) -> dict[str, list[int]]:
    """`state_checksums(tree)` fetched, by leaf path (jax.tree_util.keystr)."""
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    return {
        path: [int(v) for v in np.asarray(pair)] for path, pair in zip(paths, sums, strict=True)
    }


def poison_first_leaf(tree, when: jax.Array):
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
    """Shapes and dtypes of rows `rows` of a training batch: `task.example_shapes(
    batch_size=..., rows=...)` where the task defines it (nothing is read), else those of
    its first training batch."""
    if hasattr(task, "example_shapes"):
        shapes = task.example_shapes(batch_size=batch_size, rows=rows)
    else:
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
    inputs = getattr(getattr(task, "objective", None), "inputs", None)
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
    `normalization` ("mean", "sum", "sqrt"; experiments/objectives.py), else "mean"."""
    return getattr(getattr(task, "objective", None), "normalization", "mean")


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


# ---------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Orbax checkpoints of the train state in `directory`, sharded as the state is (the
    abstract state carries the shardings, so a restore lays every array out as training
    does). Only states known finite are saved; a restore takes the newest checkpoint that
    restores, moving damaged newer ones aside. `read_only` (evaluation-only, another
    run's checkpoints) creates, saves, deletes and moves nothing: a damaged checkpoint is
    only skipped."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int,
        abstract_state: TrainState,
        state_finite: Callable[[TrainState], jax.Array],
        is_chief: bool,
        read_only: bool = False,
        state_checksums: Callable[[TrainState], list] | None = None,
    ):
        self.directory = directory
        self.abstract_state = abstract_state
        self.state_finite = state_finite
        # Checksums of the arrays, saved with each checkpoint and compared on restore: a
        # checkpoint whose data changed since (a flipped bit) is treated as damaged.
        self.state_checksums = state_checksums
        self.is_chief = is_chief
        self.read_only = read_only
        # The newest step saved or restored by this run: what a restart would resume from.
        self.last_good: int | None = None
        # The JSON saved beside the state of the checkpoint restored last.
        self.restored_meta: dict[str, Any] = {}
        self.manager = checkpoint_manager(directory, keep=keep, read_only=read_only)
        self._closed = False
        # The step being saved in the background, and the newest known complete.
        self._pending: int | None = None
        self._confirmed: int | None = None

    def save(
        self, step: int, state: TrainState, train_time: float, carried: dict | None = None
    ) -> None:
        """Saves `state` as step `step` (asynchronously: `close` waits). `carried`: the
        metrics of the log interval a preemption cut short, for the restart to finish."""
        meta = {"train_time_s": train_time}
        if carried:
            meta["carried_interval"] = carried
        if self.state_checksums is not None:
            meta["checksums"] = checksum_record(state, self.state_checksums(state))
        self._wait()  # The previous save, finished in the background, may have failed.
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        except Exception as e:  # orbax and tensorstore raise many types on a failed write.
            self._failed(step, e)
        self._pending, self.last_good = step, step

    def _wait(self) -> None:
        """Waits for the save under way; CheckpointSaveFailed if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed(self._pending, e)
        self._confirmed = self._pending if self._pending is not None else self._confirmed
        self._pending = None

    def _failed(self, step: int | None, error: BaseException) -> NoReturn:
        """A save failed: the manager is shut down (its background threads would keep the
        process alive) and CheckpointSaveFailed names the directory, the step and the
        cause; the last good checkpoint is the last one known complete."""
        self.last_good, self._pending, self._closed = self._confirmed, None, True
        try:
            self.manager.close()
        except Exception:  # The same failure, raised again: already being reported.
            pass
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        # tensorstore names the OS error by number: lead with its text (a full disk).
        code = re.search(r"os_error_code='(\d+)'", reason)
        cause = f"{os.strerror(int(code.group(1)))}: " if code else ""
        raise CheckpointSaveFailed(
            f"the checkpoint of step {step} could not be written to {self.directory} "
            f"({cause}{type(error).__name__}: {reason[:300]}); {self.describe_last_good()}"
        ) from error

    def close(self) -> None:
        if self._closed:
            return
        self._wait()
        self._closed = True
        self.manager.close()

    def describe_last_good(self) -> str:
        if self.last_good is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is step {self.last_good} in {self.directory}"

    def restore(self) -> tuple[TrainState, float, int] | None:
        """The newest checkpoint that restores, as (state, train_time_s, step); None if
        there is none.

        One that fails (a truncated file or garbled metadata, from a crash or a full disk
        while it was written) is reported; once an older one restores, the failed ones are
        moved aside (`<step>.corrupt`, a name orbax does not list, so that it saves the
        step again). If none restores, nothing is moved, since the cause may be a
        configuration these checkpoints do not fit, and a ConfigError names the directory
        (the manager is closed first).
        """
        failed: list[int] = []
        reasons: list[str] = []  # Reported only if an older checkpoint restores.
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, train_time = self.restore_step(step)
            except Exception as e:  # orbax and tensorstore raise many types on bad files.
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                # The first sentence: orbax goes on with advice for its own API.
                reason = re.split(r"\.\s+(?=[A-Z])", reason, maxsplit=1)[0][:300]
                reasons.append(f"{type(e).__name__}: {reason}")
                failed.append(step)
                continue
            if failed:
                for bad, reason in zip(failed, reasons, strict=True):
                    where = join(self.directory, str(bad))
                    _warn(self.is_chief, f"checkpoint {where} cannot be restored ({reason})")
                if not self.read_only:
                    self._move_aside(failed)
                _warn(self.is_chief, f"falling back to the checkpoint of step {step}")
            self.last_good = self._confirmed = step
            return state, train_time, step
        if failed:
            self.close()
            raise ConfigError(
                f"no checkpoint in {self.directory} can be restored (steps "
                f"{sorted(failed)}; step {failed[0]}: {reasons[0]}): damaged, or written by "
                "another configuration (model, optimizer); fix the configuration, or move "
                "that directory away to start over"
            )
        return None

    def restore_step(self, step: int) -> tuple[TrainState, float]:
        """(state, train_time_s) of one checkpoint; raises if it cannot be read or holds
        non-finite values (which no checkpoint written by this loop does)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self.abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        train_time = float(restored["meta"]["train_time_s"])
        saved = restored["meta"].get("checksums")
        if saved is not None and self.state_checksums is not None:
            state = restored["state"]
            now = checksum_record(state, self.state_checksums(state))
            changed = [path for path, sums in now.items() if saved.get(path) != sums]
            if changed:
                raise ValueError(
                    f"checksum mismatch: {len(changed)} array(s) differ from what was saved "
                    f"(the first: state{changed[0]})"
                )
        if not bool(self.state_finite(restored["state"])):
            raise ValueError("the state holds NaN or Inf values")
        self.restored_meta = dict(restored["meta"])
        return restored["state"], train_time

    def _move_aside(self, steps: list[int]) -> None:
        """Renames the checkpoints of `steps` to `<step>.corrupt` (kept for inspection) and
        makes the manager forget them."""
        if self.is_chief:
            for step in steps:
                path = join(self.directory, str(step))
                aside, n = f"{path}.corrupt", 1
                while epath.Path(aside).exists():
                    aside, n = f"{path}.corrupt.{n}", n + 1
                epath.Path(path).rename(aside)
                _warn(self.is_chief, f"moved the damaged checkpoint {path} to {aside}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("checkpoints moved aside")
        self.manager.reload()


# ---------------------------------------------------------------------- metrics
_SKIP_HINT = "Set train.skip_nonfinite_steps = True to skip such steps instead."


class _Stop(Exception):
    """Why training must stop (the loop turns it into TrainingDiverged)."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(what)
        self.what, self.hint = what, hint


@dataclasses.dataclass
class _SkipCount:
    """Skipped (non-finite) steps: in all, and in a row up to `limit`."""

    limit: int
    total: int = 0
    consecutive: int = 0

    def add(self, finite: bool) -> bool:
        """Counts one step; True when it makes `limit` skipped steps in a row."""
        self.consecutive = 0 if finite else self.consecutive + 1
        self.total += not finite
        return self.consecutive >= self.limit


def _items(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


class MetricsLogger:
    """metrics.jsonl and the TensorBoard scalars of one run, the per-step metrics still
    on the device (fetched together at the next log, so the host never waits on the
    device between logs) and the checks of the fetched steps."""

    def __init__(self, model_dir: str, *, enabled: bool, skip_nonfinite: bool, skip_limit: int):
        self.writer = ScalarWriter(model_dir, enabled=enabled)
        self.skip_nonfinite = skip_nonfinite
        self.skips = _SkipCount(skip_limit)
        self.steps: list[int] = []
        self.metrics: list[dict[str, jax.Array]] = []
        self.start_interval()

    @property
    def jsonl_path(self) -> str:
        return self.writer.jsonl_path

    def resume(self, step: int | None) -> None:
        """Drops records after the restored `step`; with none restored, every record an
        earlier try left (it died before its first checkpoint)."""
        if step is not None:
            self.writer.restart_at(step)
        elif epath.Path(self.writer.jsonl_path).exists():
            self.writer.restart_at(-1)

    def start_interval(self) -> None:
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.steps.append(step)
        self.metrics.append(metrics)
        self.interval_steps += 1

    def fetch(self) -> tuple[list[int], list[dict], float]:
        """(steps, their metrics on the host, seconds since the interval started)."""
        fetched = jax.device_get(self.metrics)
        steps, self.steps, self.metrics = self.steps, [], []
        return steps, fetched, time.perf_counter() - self.interval_start

    def check(self, steps: list[int], fetched: list[dict]) -> None:
        """Raises _Stop for a non-finite step with skipping off, or too many skipped in a
        row with it on."""
        if not self.skip_nonfinite:
            for s, m in zip(steps, fetched, strict=True):
                if not m["finite"]:
                    what = (
                        f"non-finite loss or gradient at step {s}"
                        if m["update_finite"]
                        else f"non-finite parameters or optimizer state after the update "
                        f"of step {s} (the loss and gradient were finite)"
                    )
                    raise _Stop(what, _SKIP_HINT)
            return
        for s, m in zip(steps, fetched, strict=True):
            if self.skips.add(bool(m["finite"])):
                raise _Stop(
                    f"{self.skips.limit} consecutive non-finite steps skipped, the last at "
                    f"step {s} (train.max_consecutive_skipped_steps = {self.skips.limit})"
                )

    def train_scalars(self, fetched: list[dict], elapsed: float) -> dict[str, float]:
        """Means over the interval's finite steps (all of them if none was finite)."""
        good = [m for m in fetched if m["finite"]] or fetched
        scalars = {
            k: float(np.mean([m[k] for m in good]))
            for k in ("loss", "token_loss", "accuracy", "grad_norm")
        }
        scalars["param_norm"] = float(fetched[-1]["param_norm"])
        scalars["steps_per_sec"] = self.interval_steps / elapsed
        scalars["skipped_steps"] = self.skips.total
        return scalars

    def write(self, split: str, step: int, scalars: Mapping[str, float]) -> None:
        self.writer.write(split, step, scalars)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _warn(is_chief: bool, msg: str) -> None:
    if is_chief:
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def _cut_interval(logger: MetricsLogger) -> dict[str, Any]:
    """The metrics of the steps since the last log, fetched and checked (raising _Stop),
    as JSON that keeps every value exactly (a float32 is exact as a Python float), with the
    interval's seconds so far."""
    steps, fetched, elapsed = logger.fetch()
    logger.check(steps, fetched)
    exact = [
        {k: [str(np.asarray(v).dtype), np.asarray(v).item()] for k, v in m.items()} for m in fetched
    ]
    return {"steps": steps, "metrics": exact, "elapsed_s": elapsed}


def _resume_interval(logger: MetricsLogger, carried: Mapping[str, Any]) -> None:
    """Puts the steps `_cut_interval` saved back into the logger's open interval, with
    their dtypes and their seconds, so that the next log record is the one an
    uninterrupted run writes."""
    for step, m in zip(carried["steps"], carried["metrics"], strict=True):
        logger.add(step, {k: np.asarray(v, dtype) for k, (dtype, v) in m.items()})
    logger.interval_start -= carried["elapsed_s"]


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Builds model, optimizer, mesh and jitted steps from a TrainConfig; `run` trains."""

    # Settings only the loop reads, not compiled into any function: `replace` may change
    # them on a copy that shares the compiled steps.
    LOOP_SETTINGS = frozenset(
        {
            "model_dir",
            "eval_every",
            "eval_batches",
            "eval_splits",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "max_consecutive_skipped_steps",
            "first_checkpoint_at",
            "progress",
            "profile_steps",
            "init_from",
            "init_from_step",
        }
    )

    def __init__(self, config: TrainConfig):
        self.config = c = config
        self.is_chief = jax.process_index() == 0
        # The task (experiments/task.py protocol) fixes the model's data-dependent
        # arguments, the objective and what throughput counts.
        self.task = c.task
        self.model = c.model(**self.task.model_kwargs())
        self.opt = c.optimizer(c.train_steps)
        self._check_amos_xi()
        self.unit_name = self.task.unit_name
        self.units_per_batch = c.batch_size * self.task.units_per_example
        self.reports_perplexity = self.task.reports_perplexity
        # A task whose model carries a recurrent state from batch to batch (consecutive
        # segments, e.g. experiments/data/word_lm.py) names the collections holding it;
        # its state is sized by the whole global batch, and its evaluation reads
        # `task.eval_num_batches(split, batch_size)` consecutive batches per split in
        # order, threading the state from zero (see `evaluate`).
        self.state_collections = tuple(getattr(self.task, "state_collections", ()))

        self.mesh = sharding.make_mesh(c.mesh_shape)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        # Each host feeds its own rows of the global batch.
        n_proc, index = jax.process_count(), jax.process_index()
        per_host = c.batch_size // n_proc
        self.rows = slice(index * per_host, (index + 1) * per_host)
        eval_per_host = c.global_eval_batch_size // n_proc
        self.eval_rows = slice(index * eval_per_host, (index + 1) * eval_per_host)
        # What `load_pretrained` loaded (init_from), once it has.
        self.init_report: dict[str, Any] | None = None
        self._build_functions()

    @property
    def model_dir(self) -> str | None:
        return self.config.model_dir

    @property
    def checkpoint_dir(self) -> str:
        return join(self.config.model_dir, "checkpoints")

    def replace(self, **changes) -> Trainer:
        """A copy running with other loop settings (`LOOP_SETTINGS`, e.g. another
        `model_dir`), sharing this Trainer's compiled functions."""
        compiled = sorted(set(changes) - self.LOOP_SETTINGS)
        if compiled:
            raise ValueError(
                f"Trainer.replace: {compiled} shape the compiled steps; build a new Trainer"
            )
        trainer = copy.copy(self)
        trainer.config = self.config.replace(**changes)
        return trainer

    # ------------------------------------------------------------------ functions
    def _build_functions(self) -> None:
        c = self.config
        model, tx, task = self.model, self.opt.tx, self.task
        rows = slice(0, c.batch_size) if self.state_collections else slice(0, 1)
        self.example_batch = example_batch_shapes(
            task, seed=c.seed, batch_size=c.batch_size, rows=rows
        )
        init = functools.partial(
            init_train_state,
            model=model,
            tx=tx,
            task=task,
            example_batch=self.example_batch,
            logical_axis_rules=c.logical_axis_rules,
        )
        # The parameters' logical axis names come with the shapes (boxed), for the rules.
        named = jax.eval_shape(functools.partial(init, keep_axis_names=True), c.seed)
        abstract = nn.meta.unbox(named)
        self.state_sharding = sharding.state_shardings(
            named, self.mesh, c.fsdp_min_size, c.logical_axis_rules
        )
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract,
            self.state_sharding,
        )
        self.init_state = jax.jit(init, static_argnums=0, out_shardings=self.state_sharding)
        # float32 passes None: its steps are exactly those of a run before mixed precision.
        dtype = None if c.compute_dtype == "float32" else c.compute_dtype
        self.train_step = jax.jit(
            functools.partial(
                train_step,
                model=model,
                tx=tx,
                task=task,
                seed=c.seed,
                skip_nonfinite=c.skip_nonfinite_steps,
                inject_nonfinite_at_steps=c.inject_nonfinite_at_steps,
                inject_nonfinite_params_at_steps=c.inject_nonfinite_params_at_steps,
                compute_dtype=dtype,
                grad_accum_steps=c.grad_accum_steps,
            ),
            donate_argnums=0,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, self.replicated),
        )
        self.eval_step = jax.jit(
            functools.partial(eval_step, model=model, task=task, seed=c.seed, compute_dtype=dtype),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=self.replicated,
        )
        self.eval_carry_step = jax.jit(
            functools.partial(
                eval_carry_step,
                model=model,
                task=task,
                seed=c.seed,
                state_collections=self.state_collections,
                compute_dtype=dtype,
            )
        )
        # The fine-tuning start (`init_from`): other parameters, the optimizer's slots
        # initialized for them.
        self.with_params = jax.jit(
            lambda state, params: state.replace(params=params, opt_state=tx.init(params)),
            donate_argnums=0,
            out_shardings=self.state_sharding,
        )
        self.state_finite = jax.jit(all_finite)
        self.state_checksums = jax.jit(state_checksums, out_shardings=self.replicated)
        diagnostics = self.opt.diagnostics or (lambda opt_state, params: {})
        self.diagnostics = jax.jit(
            lambda state: diagnostics(state.opt_state, state.params),
            out_shardings=self.replicated,
        )
        self.slot_bytes = slot_bytes(abstract.opt_state)
        self.num_params = sum(
            math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract.params)
        )
        self.param_bytes_per_device = sharding.per_device_bytes(
            abstract.params, self.state_sharding.params
        )
        self.slot_bytes_per_device = sharding.per_device_bytes(
            abstract.opt_state, self.state_sharding.opt_state
        )

    def layout(self) -> dict[str, Any]:
        """The mesh and the bytes per device, for run.json."""
        return {
            "mesh": dict(self.mesh.shape),
            "fsdp_min_size": self.config.fsdp_min_size,
            "param_bytes": sharding.total_bytes(self.abstract_state.params),
            "param_bytes_per_device": self.param_bytes_per_device,
            "slot_bytes_per_device": self.slot_bytes_per_device,
        }

    # ------------------------------------------------------------------ data
    def device_batch(self, local: dict[str, np.ndarray], global_batch: int):
        return {
            k: jax.make_array_from_process_local_data(
                self.batch_sharding, v, (global_batch,) + v.shape[1:]
            )
            for k, v in local.items()
        }

    def train_batch(self, step: int):
        """The global batch of 1-based step `step`: a pure function of (seed, step)."""
        c = self.config
        local = self.task.train_batch(
            seed=c.seed, step=step, batch_size=c.batch_size, rows=self.rows
        )
        return self.device_batch(local, c.batch_size)

    def _eval_batches(self) -> dict[str, list]:
        # Fixed held-out batches, the same at every evaluation and for every run seed, so
        # eval curves of different runs are measured on identical data.
        c = self.config
        return {
            split: [
                self.device_batch(
                    self.task.eval_batch(
                        split,
                        seed=c.eval_seed,
                        index=i,
                        batch_size=c.global_eval_batch_size,
                        rows=self.eval_rows,
                    ),
                    c.global_eval_batch_size,
                )
                for i in range(self._num_eval_batches(split))
            ]
            for split in c.eval_splits
        }

    def _num_eval_batches(self, split: str) -> int:
        # Consecutive batches covering the whole split: the carried state needs them in
        # order; a task that evaluates whole splits (images.py `eval_whole_split`) asks.
        if self.state_collections or getattr(self.task, "eval_whole_split", False):
            return self.task.eval_num_batches(split, self.config.global_eval_batch_size)
        return self.config.eval_batches

    # ------------------------------------------------------------------ evaluation
    def _evaluate_carried(self, state, split_batches) -> tuple[float, float]:
        """Token-weighted mean loss and accuracy over consecutive batches, the state
        threaded through them in order from zero."""
        # The zero state, shaped from a trace of the first step (nothing runs), so every
        # batch calls the same compiled step; the first batch resets every row anyway.
        shapes = jax.eval_shape(self.eval_carry_step, state, {}, split_batches[0])[3]
        carried = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        results = []
        for batch in split_batches:
            loss, acc, count, carried = self.eval_carry_step(state, carried, batch)
            results.append((loss, acc, count))
        loss, acc, count = (np.asarray(x, np.float64) for x in zip(*jax.device_get(results)))
        total = max(float(count.sum()), 1.0)
        return float((loss * count).sum() / total), float((acc * count).sum() / total)

    def evaluate(self, state, batches) -> dict[str, float]:
        """Per split: the loss (per target) and accuracy over its evaluation batches, each
        batch weighted by its number of targets (`eval_step`): the exact mean over
        the targets evaluated, padding rows (weight 0) counting for nothing."""
        out = {}
        for split, split_batches in batches.items():
            prefix = "" if split == "val" else f"{split}_"
            if self.state_collections:
                loss, accuracy = self._evaluate_carried(state, split_batches)
            else:
                results = [self.eval_step(state, b) for b in split_batches]
                loss, accuracy = weighted_means(jax.device_get(results))
            out[f"{prefix}loss"] = loss
            out[f"{prefix}accuracy"] = accuracy
            if self.reports_perplexity:
                out[f"{prefix}perplexity"] = math.exp(min(loss, 50.0))
        return out

    def _evaluate_and_log(
        self, state, batches, step: int, train_time: float, logger: MetricsLogger
    ) -> dict[str, float]:
        result = self.evaluate(state, batches)
        bad = nonfinite_values(result)
        if bad:
            raise _Stop(f"non-finite evaluation at step {step} ({_items(bad)})")
        result["train_time_s"] = train_time
        logger.write("eval", step, result)
        self._say(
            f"eval step {step}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if "time" not in k)
        )
        return result

    # ------------------------------------------------------------------ logging
    def _log_train(self, state, step: int, train_time: float, logger: MetricsLogger) -> float:
        """Fetches the interval's metrics, checks them (raising _Stop), writes the train
        record and the progress line; returns the interval's seconds (`train_time`: the
        training time before it)."""
        steps, fetched, elapsed = logger.fetch()
        logger.check(steps, fetched)
        scalars = logger.train_scalars(fetched, elapsed)
        scalars["learning_rate"] = self.opt.learning_rate(step)
        scalars[f"{self.unit_name}_per_sec"] = (
            logger.interval_steps * self.units_per_batch / elapsed
        )
        scalars["slot_bytes"] = self.slot_bytes
        scalars["train_time_s"] = train_time + elapsed
        scalars.update({k: float(v) for k, v in jax.device_get(self.diagnostics(state)).items()})
        logger.write("train", step, scalars)
        if self.config.progress:
            total = self.config.train_steps
            left = (total - step) / max(scalars["steps_per_sec"], 1e-9)
            self._say(
                f"step {step}/{total} | loss {scalars['loss']:.4f} | "
                f"{scalars['steps_per_sec']:.1f} steps/s | "
                f"left {datetime.timedelta(seconds=round(left))}"
            )
        return elapsed

    def _static_record(self, state: TrainState) -> dict[str, float]:
        """The step-0 record: sizes, and the bytes per device of the parameters and the
        optimizer state as their arrays' addressable shards really hold them."""
        return {
            "slot_bytes": self.slot_bytes,
            "num_params": self.num_params,
            "param_bytes_per_device": sharding.addressable_bytes(state.params),
            "slot_bytes_per_device": sharding.addressable_bytes(state.opt_state),
        }

    # ------------------------------------------------------------------ loop
    def _is_checkpoint_step(self, step: int) -> bool:
        c = self.config
        return (
            step % c.checkpoint_every == 0
            or step == c.train_steps
            or step == c.first_checkpoint_step
        )

    # How far from the paper's 1/sqrt(N) guidance xi may be before a warning: the paper's
    # own settings sit within about 10x of it (BERT's 0.005 for millions of sequences).
    XI_GUIDANCE_FACTOR = 100.0

    def _check_amos_xi(self) -> None:
        """Warns when Amos' xi is far from the paper's guidance 1/sqrt(N), N the task's
        training examples (where the task knows it): xi = 100 on a small task trains to a
        large finite loss, which is no divergence, and would otherwise pass unremarked."""
        n = getattr(self.task, "num_train_examples", None)
        if self.opt.name != "amos" or not isinstance(n, int) or n < 1:
            return
        xi, guidance = float(self.opt.learning_rate(self.config.train_steps)), n**-0.5
        if guidance / self.XI_GUIDANCE_FACTOR <= xi <= guidance * self.XI_GUIDANCE_FACTOR:
            return
        _warn(
            self.is_chief,
            f"AMOS_XI={xi:g} is {max(xi / guidance, guidance / xi):.0f}x "
            f"{'above' if xi > guidance else 'below'} the paper's guidance 1/sqrt(N) = "
            f"{guidance:.3g} for this task's N = {n} training examples",
        )

    def run(self, stop_after: int | None = None, preemption=None) -> dict[str, Any]:
        """Trains to `train_steps` (or `stop_after` steps in this call); returns final.json.

        `preemption` (launch/preemption.py's Watch; default: never) is asked after every
        step whether all processes agreed to stop there: then the step's metrics are
        checked, its state saved (unless it was just saved) and `Preempted` is raised once
        the checkpoint is complete. The metrics of a log interval cut short go into that
        checkpoint, and a restart from it logs the interval as an uninterrupted run would.
        """
        c = self.config
        watch = preemption or NoWatch()
        epath.Path(c.model_dir).mkdir(parents=True, exist_ok=True)
        logger = MetricsLogger(
            c.model_dir,
            enabled=self.is_chief,
            skip_nonfinite=c.skip_nonfinite_steps,
            skip_limit=c.max_consecutive_skipped_steps,
        )
        checkpointer = Checkpointer(
            self.checkpoint_dir,
            keep=c.keep_checkpoints,
            abstract_state=self.abstract_state,
            state_finite=self.state_finite,
            state_checksums=self.state_checksums,
            is_chief=self.is_chief,
        )
        restored = checkpointer.restore()
        if restored is not None:
            state, train_time, start = restored
            self._say(f"resumed from checkpoint at step {start} in {c.model_dir}")
        else:
            state, train_time, start = self.initial_state(), 0.0, 0
        logger.resume(start if restored is not None else None)
        carried = checkpointer.restored_meta.get("carried_interval") if restored else None
        end = c.train_steps if stop_after is None else min(c.train_steps, start + stop_after)
        if watch.before(start) and start < end:  # A notice while restoring: nothing to add.
            checkpointer.close()
            logger.close()
            raise Preempted(start, saved=False, where=checkpointer.describe_last_good())

        eval_batches = self._eval_batches()
        # Compile outside the timed region: steps/s and time-to-target measure training.
        self.train_step.lower(state, self.train_batch(start + 1)).compile()
        if start == 0:  # Static facts of the run, once (a resumed run already has them).
            logger.write("train", 0, self._static_record(state))

        final_eval: dict[str, float] = {}
        step = start
        stopped = False
        profiler = _ProfileWindow(c.profile_steps, join(c.model_dir, "profile"), self._say)
        logger.start_interval()
        if carried:  # The steps of the interval the preemption cut short, as they were.
            _resume_interval(logger, carried)
        # The next batches are built and put on the devices while a step runs.
        batches = prefetch.Prefetcher(self.train_batch, start + 1, end + 1)
        try:
            while step < end and not stopped:
                profiler.before(step + 1)
                with profiler.annotate(step + 1):
                    state, metrics = self.train_step(state, batches.get(step + 1))
                step += 1
                profiler.after(step, state)
                logger.add(step, metrics)
                # Asked at every step: in a multi-process run the processes count on it.
                stopped = watch.reached(step) and step < end
                is_eval = step % c.eval_every == 0 or step == c.train_steps
                is_ckpt = self._is_checkpoint_step(step)
                is_log = step % c.log_every == 0 or is_eval or is_ckpt or step == end
                if not (is_log or stopped):
                    continue
                if is_log:
                    train_time += self._log_train(state, step, train_time, logger)
                    carried = None
                else:  # Stopped within a log interval: checked, and kept for the restart.
                    carried = _cut_interval(logger)
                if is_eval:
                    final_eval = self._evaluate_and_log(
                        state, eval_batches, step, train_time, logger
                    )
                if is_ckpt or stopped:
                    # Every step up to here was finite, its update included (or skipped):
                    # the state saved is one a restart can use.
                    checkpointer.save(step, state, train_time, carried)
                logger.flush()
                logger.start_interval()
        except CheckpointSaveFailed:
            logger.close()
            raise
        except _Stop as stop:
            profiler.stop()
            logger.close()
            checkpointer.close()
            raise TrainingDiverged(
                f"{stop.what}; stopping ({checkpointer.describe_last_good()}). {stop.hint}".rstrip()
            ) from None
        finally:
            batches.close()
            profiler.stop()
        checkpointer.close()  # Waits until the last checkpoint is complete.
        logger.close()
        if stopped:
            raise Preempted(step, saved=True, where=checkpointer.describe_last_good())
        if not final_eval and self.is_chief and epath.Path(logger.jsonl_path).exists():
            final_eval = self._recorded_eval(step)
        bad = nonfinite_values(final_eval)
        if bad:  # final.json never holds NaN or Inf.
            raise TrainingDiverged(f"non-finite final evaluation at step {step} ({_items(bad)})")
        result = {
            "step": step,
            "finished": step >= c.train_steps,
            "eval": final_eval,
            "train_time_s": train_time,
            "slot_bytes": self.slot_bytes,
            "num_params": self.num_params,
            "optimizer": self.opt.name,
            "mesh": dict(self.mesh.shape),
            "param_bytes_per_device": self.param_bytes_per_device,
            "slot_bytes_per_device": self.slot_bytes_per_device,
        }
        if self.is_chief and result["finished"]:
            write_json(join(c.model_dir, "final.json"), result)
        return result

    # ------------------------------------------------------------------ fine-tuning
    def initial_state(self) -> TrainState:
        """The state of a fresh start: the model's initialization, with `init_from`'s
        parameters where it is set (`load_pretrained`)."""
        state = self.init_state(self.config.seed)
        if self.config.init_from:
            state = self.load_pretrained(state)
        return state

    def load_pretrained(self, state: TrainState) -> TrainState:
        """`state` with the parameters of `init_from`'s checkpoint copied in by path where
        the shapes match; the optimizer state is initialized afresh for the result, the
        non-parameter collections stay.

        `init_from` is another run's MODEL_DIR (its newest checkpoint, or
        `init_from_step`), a t5x checkpoint or a Flax/Orbax PyTree checkpoint
        (launch/pretrained.py, which maps t5x's T5 names). Only parameters are read. A
        variable of the model absent from the checkpoint keeps its initialization (a
        classifier head); one present with another shape, or a checkpoint sharing no
        variable with the model, is a ConfigError naming them with their shapes. Prints
        what was loaded, what is fresh and what of the checkpoint went unused."""
        c = self.config
        checkpoint = pretrained.open_checkpoint(c.init_from, c.init_from_step)
        saved = checkpoint.shapes
        paths, leaves, treedef = _named_leaves(state.params)
        wanted = dict(zip(paths, leaves, strict=True))
        where = f"{pretrained.BINDING} = {c.init_from!r} ({checkpoint.label})"
        mismatched = [p for p in paths if p in saved and saved[p][0] != tuple(wanted[p].shape)]
        if mismatched:
            shown = "; ".join(
                f"{'/'.join(p)}: {saved[p][0]} in the checkpoint, {tuple(wanted[p].shape)} in "
                "the model"
                for p in mismatched[:_SHOWN]
            )
            more = f"; and {len(mismatched) - _SHOWN} more" if len(mismatched) > _SHOWN else ""
            raise ConfigError(
                f"{where}: {len(mismatched)} variable(s) have other shapes than the model's: "
                f"{shown}{more}"
            )
        loaded = [p for p in paths if p in saved]
        if not loaded:
            raise ConfigError(
                f"{where}: the checkpoint shares no variable with the model (checkpoint: "
                f"{_shapes(saved)}; model: "
                f"{_shapes({p: (tuple(wanted[p].shape), None) for p in paths})})"
            )
        restored = checkpoint.load(
            {
                p: jax.ShapeDtypeStruct(saved[p][0], saved[p][1], sharding=wanted[p].sharding)
                for p in loaded
            }
        )
        merged = [
            restored[p].astype(wanted[p].dtype) if p in restored else wanted[p] for p in paths
        ]
        state = self.with_params(state, jax.tree_util.tree_unflatten(treedef, merged))
        fresh = [p for p in paths if p not in saved]
        unused = [p for p in saved if p not in wanted]
        names = lambda ps: ", ".join("/".join(p) for p in ps) or "none"  # noqa: E731
        self._say(
            f"init_from {c.init_from} ({checkpoint.label}): loaded {len(loaded)} of the "
            f"model's {len(paths)} variables; fresh (initialized here): {names(fresh)}; "
            f"unused from the checkpoint: {names(unused)}"
        )
        self.init_report = {
            "path": c.init_from,
            "checkpoint": checkpoint.label,
            "loaded": ["/".join(p) for p in loaded],
            "fresh": ["/".join(p) for p in fresh],
            "unused": ["/".join(p) for p in unused],
        }
        return state

    # ------------------------------------------------------------------ evaluation only
    def evaluate_checkpoint(self) -> dict[str, Any]:
        """`run.py --eval_only`: evaluates the newest checkpoint of MODEL_DIR that
        restores, on the configured splits, and writes MODEL_DIR/eval_<step>.json.

        Read-only towards the run: no lock is taken (a trainer may be writing there), and
        no checkpoint is created, moved or deleted; metrics.jsonl, run.json and
        config.gin are not touched. A damaged newer checkpoint is skipped with a warning.
        A MODEL_DIR without a checkpoint is a ConfigError naming it."""
        c = self.config
        directory = self.checkpoint_dir
        if not checkpoint_steps(directory):
            raise ConfigError(
                f"--eval_only: MODEL_DIR {c.model_dir!r} has no checkpoint to evaluate "
                f"(nothing in {directory})"
            )
        checkpointer = Checkpointer(
            directory,
            keep=c.keep_checkpoints,
            abstract_state=self.abstract_state,
            state_finite=self.state_finite,
            state_checksums=self.state_checksums,
            is_chief=self.is_chief,
            read_only=True,
        )
        try:
            restored = checkpointer.restore()
        finally:
            checkpointer.close()
        if restored is None:  # Deleted between the listing and the restore.
            raise ConfigError(f"--eval_only: MODEL_DIR {c.model_dir!r} has no checkpoint")
        state, train_time, step = restored
        batches = self._eval_batches()
        result = {
            "step": step,
            "eval": self.evaluate(state, batches),
            # How far the validation loss could move with other batches: what sizes
            # EVAL_BATCHES so that it tells trials apart (README, the second edition).
            "loss_standard_error": {
                split: self._loss_standard_error(state, split_batches)
                for split, split_batches in batches.items()
            },
            "train_time_s": train_time,
            "checkpoint": join(directory, str(step)),
            "eval_splits": list(c.eval_splits),
            "eval_batches": {s: self._num_eval_batches(s) for s in c.eval_splits},
            "compute_dtype": c.compute_dtype,
        }
        path = join(c.model_dir, f"eval_{step}.json")
        if self.is_chief:
            write_json(path, result)
        return {**result, "path": path}

    def _loss_standard_error(self, state, split_batches) -> float | None:
        """`weighted_standard_error` of a split's batches; None for a split evaluated
        whole with the state carried (consecutive batches are no independent draws)."""
        if self.state_collections:
            return None
        return weighted_standard_error(
            jax.device_get([self.eval_step(state, b) for b in split_batches])
        )

    def _recorded_eval(self, step: int) -> dict[str, float]:
        """The evaluation at `step` from metrics.jsonl: a run restarted on its finished
        checkpoint (killed before final.json was written) has it on record."""
        record = next(
            (
                r
                for r in reversed(read_metrics(self.config.model_dir))
                if r["split"] == "eval" and r["step"] == step
            ),
            {},
        )
        return {k: v for k, v in record.items() if k not in ("step", "split")}

    def describe_data(self) -> dict[str, Any]:
        """What the task reads, for run.json (see `describe_data`)."""
        return describe_data(self.task)

    def _say(self, msg: str) -> None:
        if self.is_chief:
            print(msg, flush=True)


def weighted_means(results: Sequence[tuple[Any, Any, Any]]) -> tuple[float, float]:
    """(loss, accuracy) over batches of (loss, accuracy, count): means weighted by the
    counts, in float64: sum(count * loss) / sum(count)."""
    loss, acc, count = (np.asarray(x, np.float64) for x in zip(*results, strict=True))
    total = float(count.sum())
    if total <= 0:  # No targets at all: the plain means (0 from the objective).
        return float(loss.mean()), float(acc.mean())
    return float((loss * count).sum() / total), float((acc * count).sum() / total)


def weighted_standard_error(results: Sequence[tuple[Any, Any, Any]]) -> float | None:
    """The standard error of `weighted_means`' loss, with the batches as the independent
    draws they are (each a random sample of the split): the ratio estimator's
    sqrt(n / (n - 1) * sum(w_i^2 (L_i - L)^2)) / sum(w_i), for batch losses L_i of w_i
    targets and their weighted mean L. None with fewer than 2 batches or no targets."""
    loss, _, count = (np.asarray(x, np.float64) for x in zip(*results, strict=True))
    total, n = float(count.sum()), len(loss)
    if n < 2 or total <= 0:
        return None
    mean = float((loss * count).sum() / total)
    return float(np.sqrt(n / (n - 1) * ((count * (loss - mean)) ** 2).sum()) / total)


_SHOWN = 5  # Variables a fine-tuning mismatch names.


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _named_leaves(tree: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
    """(paths as tuples of names, leaves, treedef) of a parameter tree."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [tuple(_key_name(k) for k in path) for path, _ in with_paths]
    return paths, [leaf for _, leaf in with_paths], treedef


def _shapes(variables: Mapping[tuple[str, ...], tuple[tuple[int, ...], Any]]) -> str:
    shown = ", ".join(
        f"{'/'.join(p)} {shape}" for p, (shape, _) in list(variables.items())[:_SHOWN]
    )
    more = f", ... ({len(variables)} in all)" if len(variables) > _SHOWN else ""
    return (shown + more) or "none"


class _ProfileWindow:
    """The JAX profiler around the steps of `profile_steps` = (start, count): tracing
    starts before step `start` (or the first step of a run resumed inside the window)
    and stops once step start + count - 1 has run on the device, writing the trace
    (`*.xplane.pb`, `*.trace.json.gz`) under `log_dir/plugins/profile/<time>/`."""

    def __init__(self, window: Sequence[int], log_dir: str, say: Callable[[str], None]):
        start, count = window
        self.first, self.last = start, start + count - 1
        self.enabled = count > 0
        self.log_dir, self.say = log_dir, say
        self.active = False

    def before(self, step: int) -> None:
        if self.enabled and not self.active and self.first <= step <= self.last:
            jax.profiler.start_trace(self.log_dir)
            self.active = True
            self.enabled = False  # One window per run.
            self.say(f"profiling steps {step}..{self.last} into {self.log_dir}")

    def annotate(self, step: int):
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def after(self, step: int, state: Any) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


# ---------------------------------------------------------------------- data description
# Attributes of tasks and sources (experiments/data/) that name where their data is.
_PATH_ATTRS = ("path", "corpus_path", "valid_path", "test_path", "data_dir")


def describe_data(task: Any) -> dict[str, Any]:
    """What a task reads, readable in run.json: its class, the dataset (a name, a corpus
    path or the generated text), the split names, the files and the tokenizer or
    vocabulary. Built from the attributes the task and its source happen to have, so any
    task is described as far as it exposes itself (and nothing is an object repr)."""
    out: dict[str, Any] = {"task": type(task).__name__}
    source = getattr(task, "source", None)
    if isinstance(source, str):  # A corpus path, or a description of generated text.
        out["dataset"] = source
    elif source is not None:
        out["source"] = type(source).__name__
        out["dataset"] = _plain(getattr(source, "name", None)) or type(source).__name__
        out.update(_paths(source))
        out.update(_splits(source))
    if getattr(task, "dataset", None):
        out["dataset"] = _plain(task.dataset)
    out.update(_paths(task))
    out.update(_splits(task))
    vocabulary = _describe_vocabulary(task)
    if vocabulary:
        out["vocabulary"] = vocabulary
    return out


def _plain(value: Any) -> Any:
    """`value` if JSON holds it as is, else its str()."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _paths(obj: Any) -> dict[str, Any]:
    return {a: _plain(getattr(obj, a)) for a in _PATH_ATTRS if getattr(obj, a, None)}


def _splits(obj: Any) -> dict[str, Any]:
    """Our split names mapped to the dataset's (TFDS sources, image tasks), or the sizes
    of in-memory token splits (`corpus` with `train`, `val` and maybe `test` ids)."""
    names = getattr(obj, "split_names", None)
    if isinstance(names, dict):
        return {"splits": _plain(names)}
    corpus = getattr(obj, "corpus", None)
    if corpus is not None and hasattr(corpus, "train") and hasattr(corpus, "val"):
        names = ("train", "val", "test")  # 'test' where the corpus holds one out too.
        sizes = {n: len(getattr(corpus, n)) for n in names if getattr(corpus, n, None) is not None}
        return {"split_tokens": sizes}
    return {}


def _describe_vocabulary(task: Any) -> dict[str, Any]:
    """The tokenizer (its kind and model file) or word vocabulary, with its size."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is not None:
        out = {"tokenizer": type(tokenizer).__name__}
        if getattr(tokenizer, "model_path", None):
            out["path"] = tokenizer.model_path
        if getattr(tokenizer, "vocab_size", None):
            out["size"] = int(tokenizer.vocab_size)
        return out
    out = {}
    if getattr(task, "vocab_path", None):
        out["path"] = task.vocab_path
    vocab = getattr(task, "vocab", None)
    if vocab is not None and hasattr(vocab, "__len__"):
        out["size"] = len(vocab)
    elif getattr(task, "vocab_size", None):
        out["size"] = int(task.vocab_size)
    return out


def train(
    *, stop_after: int | None = None, build_only: bool = False, **overrides
) -> dict[str, Any] | Trainer:
    """Trains the configuration of the gin bindings (`train.<field>`, `overrides` win) into
    its `model_dir`, resuming from its checkpoint if any; returns final.json's content.

    `build_only` returns the Trainer without running it (benchmarks drive its step).
    """
    trainer = Trainer(train_config(**overrides))
    return trainer if build_only else trainer.run(stop_after=stop_after)


# ---------------------------------------------------------------------- dry runs
# `run.py --dry_run`: the vocabulary size assumed when a text task's tokenizer file is
# absent (gin macro DRY_RUN_VOCAB_SIZE, gin_configs/train_defaults.gin).
DRY_RUN_VOCAB_SIZE = 32000
_STAND_IN_CHARS = 200_000
_AS_A_RUN = "the configured task, built as a run builds it (reading what its constructor reads)"


class _Given:
    """A value bound in gin as it is: gin deep-copies bound values when it calls a
    configurable, and this one hands over the object itself instead of a copy."""

    def __init__(self, value: Any):
        self.value = value

    def __deepcopy__(self, memo) -> Any:
        return self.value


class _VocabularyOf:
    """A task that tells the model another vocabulary size than its tokenizer's (the
    dry run's stand-in, whose tokenizer is not the configured one)."""

    def __init__(self, task: Any, vocab_size: int):
        self.wrapped, self.vocab_size = task, vocab_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def model_kwargs(self) -> dict[str, Any]:
        return {**self.wrapped.model_kwargs(), "vocab_size": self.vocab_size}


def _bound(selector: str, name: str, default: Any) -> Any:
    """The evaluated gin binding `selector.name`, or `default` if there is none."""
    try:
        return copy.deepcopy(gin.query_parameter(f"{selector}.{name}"))
    except ValueError:
        return default


def dry_run_task() -> tuple[Any, str]:
    """The task for `run.py --dry_run`, and a line saying where its data comes from.

    A text task (experiments/data/text_tasks.py: masked LM, span corruption) is the
    configured class with its configured lengths and objective, on generated text instead
    of its source, so that nothing of the dataset is read and the dataset need not exist:
    only the batch shapes matter to a dry run, and they do not depend on the text. Its
    vocabulary is the configured tokenizer's when that file exists (the tokenizer alone
    is read), else DRY_RUN_VOCAB_SIZE. Any other task is built as a run builds it: tasks
    that hold their data in memory (character and word corpora, images, seqio) read it
    when they are built, to know their vocabulary or their examples.
    """
    from experiments.data.sources import GeneratedTextSource
    from experiments.data.text_tasks import TextExamples, resolve_tokenizer
    from experiments.data.tokenizers import ByteTokenizer

    reference = gin.query_parameter("train.task")
    cls = getattr(getattr(reference, "configurable", None), "wrapped", None)
    if not (isinstance(cls, type) and issubclass(cls, TextExamples)):
        return copy.deepcopy(reference), _AS_A_RUN
    signature = inspect.signature(cls)
    positional = list(signature.parameters)[:2]
    default = signature.parameters["tokenizer"].default if "tokenizer" in positional else None
    tokenizer = _bound(reference.selector, "tokenizer", default)
    if positional != ["source", "tokenizer"] or tokenizer == "char":
        # 'char' takes its alphabet from the text itself.
        return copy.deepcopy(reference), _AS_A_RUN
    source = GeneratedTextSource(num_chars=_STAND_IN_CHARS)
    path = tokenizer if isinstance(tokenizer, str) and tokenizer.endswith(".model") else None
    if path is None or os.path.exists(path):
        # Positional, so that gin does not build the configured source (it evaluates
        # every bound keyword argument, even those a caller passes).
        task = reference.scoped_configurable_fn(source, resolve_tokenizer(tokenizer, source))
        return task, f"none read: generated text in the configured shapes; vocabulary {tokenizer!r}"
    try:
        vocab_size = gin.query_parameter("%DRY_RUN_VOCAB_SIZE")
    except ValueError:
        vocab_size = DRY_RUN_VOCAB_SIZE
    task = reference.scoped_configurable_fn(source, ByteTokenizer())
    note = (
        f"none read: generated text in the configured shapes; vocabulary size {vocab_size} "
        f"(DRY_RUN_VOCAB_SIZE: the tokenizer {path!r} is absent)"
    )
    return _VocabularyOf(task, vocab_size), note


def dry_run_trainer() -> tuple[Trainer, str]:
    """The Trainer of the gin configuration for `run.py --dry_run`, on `dry_run_task()`,
    and that function's line about the data. Building it allocates nothing: the state is
    a `jax.eval_shape` (`abstract_state`) and the steps are jitted lazily."""
    task, note = dry_run_task()
    previous = gin.query_parameter("train.task")
    with gin.unlock_config():
        gin.bind_parameter("train.task", _Given(task))
    try:
        return Trainer(train_config(dry_run=True)), note
    finally:
        with gin.unlock_config():
            gin.bind_parameter("train.task", previous)


# ---------------------------------------------------------------------- step memory
# XLA's analysis of the compiled train step, from shapes alone: what `run.py --dry_run`
# prints per device, what `--dry_run_fit` searches over (benchmarks/memory_fit.py,
# benchmarks/gpu_check.py use the same functions).
@dataclasses.dataclass(frozen=True)
class StepMemory:
    """What one device needs to run the compiled train step, from XLA's memory analysis
    (`jax.stages.Compiled.memory_analysis()`), in bytes, and the step's FLOPs on one
    device (its cost analysis: the SPMD-partitioned program), on the backend it was
    compiled for. The numbers are that compiler's: another backend's fuses, schedules and
    lays out buffers differently."""

    batch_size: int  # Global.
    per_device_batch: int  # Rows of one batch shard.
    argument_bytes: int  # The inputs: the train state and the batch.
    output_bytes: int  # The new train state and the metrics.
    alias_bytes: int  # Outputs written over donated inputs (the state): counted once.
    temp_bytes: int  # Everything else live during the step: activations, gradients, ...
    code_bytes: int  # Generated code held in device memory (0 on CPU).
    flops: float | None
    backend: str
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """The least one device needs to run the step, by XLA's own account of
        `CompiledMemoryStats` (xla/pjrt/pjrt_executable.h): code + arguments + outputs -
        aliased + temporaries. The step donates the state (`donate_argnums=0`), so the new
        state is written over the old one, and the aliased bytes are not counted twice."""
        return (
            self.code_bytes
            + self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def model_remat(model: nn.Module) -> str | None:
    """The model's REMAT setting (`remat` of the model or of its `config`), None if it has
    none (a model without Transformer blocks)."""
    return getattr(model, "remat", getattr(getattr(model, "config", None), "remat", None))


def batch_shards(trainer: Trainer) -> int:
    """Into how many shards the rows of a batch are split: the product of the mesh axes
    its leading axis is sharded over (`launch.sharding.BATCH_AXES`)."""
    spec = trainer.batch_sharding.spec
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    return math.prod(trainer.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))


def batch_unit(trainer: Trainer) -> int:
    """The global batch sizes the step compiles for are the multiples of this: every
    batch shard holds the same rows, in `grad_accum_steps` equal micro-batches."""
    return batch_shards(trainer) * trainer.config.grad_accum_steps


def abstract_train_batch(trainer: Trainer, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes, dtypes and sharding of a global training batch of `batch_size` rows."""
    return {
        k: jax.ShapeDtypeStruct(
            (batch_size, *v.shape[1:]), v.dtype, sharding=trainer.batch_sharding
        )
        for k, v in trainer.example_batch.items()
    }


def compile_train_step(trainer: Trainer, batch_size: int | None = None) -> tuple[Any, float]:
    """`trainer.train_step` compiled ahead of time for a global batch of `batch_size` rows
    (the configured one by default), from the abstract state and batch: nothing is
    allocated and no data is read. Returns the `jax.stages.Compiled` (callable on a real
    state and batch of those shapes) and the seconds lowering and compiling took."""
    c = trainer.config
    batch_size = c.batch_size if batch_size is None else batch_size
    if trainer.state_collections and batch_size != c.batch_size:
        raise ValueError(
            f"the task carries a recurrent state sized by the batch "
            f"({trainer.state_collections}): only BATCH_SIZE={c.batch_size} compiles"
        )
    unit = batch_unit(trainer)
    if batch_size < 1 or batch_size % unit:
        raise ValueError(
            f"batch {batch_size} is not a positive multiple of {unit} (the batch shards "
            f"{batch_shards(trainer)} x GRAD_ACCUM_STEPS {c.grad_accum_steps})"
        )
    start = time.perf_counter()
    lowered = trainer.train_step.lower(
        trainer.abstract_state, abstract_train_batch(trainer, batch_size)
    )
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start


def compiled_step_memory(
    trainer: Trainer, compiled: Any, batch_size: int, compile_seconds: float = 0.0
) -> StepMemory:
    """The StepMemory of `compiled` (`compile_train_step`'s) at a global `batch_size`."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis")
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per partitioned program.
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    return StepMemory(
        batch_size=batch_size,
        per_device_batch=batch_size // batch_shards(trainer),
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        code_bytes=int(stats.generated_code_size_in_bytes),
        flops=None if flops is None else float(flops),
        backend=trainer.mesh.devices.flat[0].platform,
        compile_seconds=compile_seconds,
    )


def step_memory(trainer: Trainer, batch_size: int | None = None) -> StepMemory:
    """XLA's memory and cost analysis of the train step compiled from shapes for a global
    batch of `batch_size` rows (the configured one by default)."""
    batch_size = trainer.config.batch_size if batch_size is None else batch_size
    compiled, seconds = compile_train_step(trainer, batch_size)
    return compiled_step_memory(trainer, compiled, batch_size, seconds)


def largest_fitting(
    need: Callable[[int], int],
    budget: int,
    *,
    start: int,
    limit: int,
    known: Mapping[int, int] | None = None,
) -> int:
    """The largest k in 1 .. `limit` with `need(k) <= budget`, 0 if not even k = 1 fits,
    for a `need` that grows with k (the bytes of the step compiled for k batch units),
    calling it as few times as it can: each call is a compile.

    From `start`, doubling while k fits (halving while it does not) until a fitting and a
    failing k bracket the answer, then bisection. Each step's k is first guessed from the
    straight line through the two nearest values known (memory is close to affine in the
    batch: fixed state plus activations per row), which usually lands on the answer in
    one or two calls; after three guesses in a row that did worse than the plain step
    (doubling, halving, the midpoint), the next step is the plain one, so the calls stay
    of order log2. `known`: values of `need` already measured (another budget's search).
    """
    seen = {k: v for k, v in (known or {}).items() if 1 <= k <= limit}

    def fits(k: int) -> bool:
        if k not in seen:
            seen[k] = need(k)
        return seen[k] <= budget

    lo = max((k for k, v in seen.items() if v <= budget), default=0)  # 0: none known to fit
    hi = min((k for k, v in seen.items() if v > budget and k > lo), default=limit + 1)
    if not seen:
        k = min(max(start, 1), limit)
        lo, hi = (k, hi) if fits(k) else (lo, k)
    stalls = 0  # Guesses in a row that did worse than a plain step would have.
    while hi - lo > 1:
        old_lo, old_hi, width = lo, hi, hi - lo
        guess = _affine_guess(seen, lo, hi, budget, limit) if stalls < 3 else None
        guessed = guess is not None
        if not guessed:
            if hi > limit:  # Nothing known to fail yet: double.
                guess = min(2 * lo, limit)
            elif not lo:  # Nothing known to fit yet: halve.
                guess = max(hi // 2, 1)
            else:
                guess = (lo + hi) // 2
        if fits(guess):
            lo = guess
        else:
            hi = guess
        if old_hi > limit:  # As good as doubling: twice as far, or a failure found.
            good = guess >= 2 * old_lo or hi <= limit
        elif not old_lo:  # As good as halving.
            good = 2 * guess <= old_hi or lo > 0
        else:  # As good as bisection.
            good = 2 * (hi - lo) <= width
        stalls = stalls + 1 if guessed and not good else 0
    return lo


def _affine_guess(seen: Mapping[int, int], lo: int, hi: int, budget: int, limit: int) -> int | None:
    """The k where the line through the two measured points nearest the budget reaches it,
    strictly inside the bracket (lo, hi); None without two such points or a rising line."""
    if lo >= 1 and hi <= limit:
        (k1, n1), (k2, n2) = (lo, seen[lo]), (hi, seen[hi])
    else:
        side = sorted(k for k in seen if (k <= lo if hi > limit else k >= hi))
        if len(side) < 2:
            return None
        pair = side[-2:] if hi > limit else side[:2]
        (k1, n1), (k2, n2) = [(k, seen[k]) for k in pair]
    slope = (n2 - n1) / (k2 - k1)
    if slope <= 0:
        return None
    guess = k1 + math.floor((budget - n1) / slope)
    # Within the bracket, and beyond a known side by at most 16x (a guess from a noisy line).
    low = lo + 1 if lo else max(1, hi // 16)
    high = hi - 1 if hi <= limit else min(limit, 16 * lo)
    return min(max(guess, low), high) if low <= high else None


@dataclasses.dataclass(frozen=True)
class BatchFit:
    """The largest global batch whose compiled train step fits `budget_bytes` per device."""

    budget_bytes: int
    unit: int  # The batch sizes tried are multiples of this (`batch_unit`).
    batch_size: int | None  # None: not even `unit` rows fit.
    fits: StepMemory | None  # The step at `batch_size`.
    next_fails: StepMemory | None  # The smallest batch tried above it (None: at the cap).
    capped: bool  # Stopped at the largest batch tried (`max_per_device`), which fit.
    compiles: int  # Compiles this search added.


def fit_batch(
    trainer: Trainer,
    budget_bytes: int,
    *,
    probes: dict[int, StepMemory] | None = None,
    max_per_device: int = 65536,
    say: Callable[[StepMemory], None] | None = None,
) -> BatchFit:
    """The largest global batch (a multiple of `batch_unit`) whose train step, compiled
    from shapes, needs at most `budget_bytes` per device (`StepMemory.total_bytes`), by
    `largest_fitting` from the configured batch. `probes` (global batch -> StepMemory)
    holds the compiles done so far and gains this search's, so that a second budget reuses
    them; `say` hears of each new compile."""
    if trainer.state_collections:
        raise ValueError(
            f"the task carries a recurrent state sized by the batch "
            f"({trainer.state_collections}): its batch is not searched"
        )
    probes = {} if probes is None else probes
    unit, before = batch_unit(trainer), len(probes)

    def need(k: int) -> int:
        if k * unit not in probes:
            probes[k * unit] = step_memory(trainer, k * unit)
            if say:
                say(probes[k * unit])
        return probes[k * unit].total_bytes

    limit = max(1, max_per_device // trainer.config.grad_accum_steps)
    known = {b // unit: m.total_bytes for b, m in probes.items() if b % unit == 0}
    k = largest_fitting(
        need,
        budget_bytes,
        start=max(1, trainer.config.batch_size // unit),
        limit=limit,
        known=known,
    )
    above = [b for b in probes if b > k * unit]
    return BatchFit(
        budget_bytes=budget_bytes,
        unit=unit,
        batch_size=k * unit or None,
        fits=probes[k * unit] if k else None,
        next_fails=probes[min(above)] if above else None,
        capped=k == limit,
        compiles=len(probes) - before,
    )
