"""The settings of one run: `TrainConfig`, checked in one place, and the gin configurable
`train` that builds it from the bindings `train.<field>`."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np

from experiments.errors import ConfigError
from launch import sharding
from launch.optimizers import OptimizerSpec


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
    # so that the update is that of the whole batch (see `steps.train_step`). A step is
    # still one optimizer update on the batch of `batch_size` examples, the step counter,
    # schedules and batch sampler (a pure function of (seed, step)) are unchanged.
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
        elif accum > 1 and self.task.state_collections:
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

    def replace(self, **changes: Any) -> TrainConfig:
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
