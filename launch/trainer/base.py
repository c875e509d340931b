"""`BaseTrainer`: a TrainConfig built into model, optimizer, mesh and the jitted steps under
its shardings, with the batches it feeds them and its evaluation; what dry runs,
benchmarks and evaluation-only need, and what `loop.Trainer` trains with."""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.task import reads_whole_split
from launch import sharding
from launch.optimizers import slot_bytes
from launch.summary_writer import join
from launch.trainer import run_folder
from launch.trainer.config import TrainConfig
from launch.trainer.data_description import describe_data
from launch.trainer.errors import warn
from launch.trainer.evaluation import weighted_means
from launch.trainer.state import (
    TrainState,
    all_finite,
    example_batch_shapes,
    init_train_state,
    state_checksums,
)
from launch.trainer.steps import eval_carry_step, eval_step, train_step

_Trainer = TypeVar("_Trainer", bound="BaseTrainer")


class BaseTrainer:
    """Builds model, optimizer, mesh and jitted steps from a TrainConfig, and feeds and
    evaluates them; `loop.Trainer` adds the training loop."""

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
        self.state_collections = tuple(self.task.state_collections)

        self.mesh = sharding.make_mesh(c.mesh_shape)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        # Each host feeds its own rows of the global batch.
        n_proc, index = jax.process_count(), jax.process_index()
        per_host = c.batch_size // n_proc
        self.rows = slice(index * per_host, (index + 1) * per_host)
        eval_per_host = c.global_eval_batch_size // n_proc
        self.eval_rows = slice(index * eval_per_host, (index + 1) * eval_per_host)
        # What `Trainer.load_pretrained` loaded (init_from), once it has.
        self.init_report: dict[str, Any] | None = None
        self._build_functions()

    @property
    def model_dir(self) -> str | None:
        return self.config.model_dir

    @property
    def checkpoint_dir(self) -> str:
        return join(self.config.model_dir, run_folder.CHECKPOINTS)

    def replace(self: _Trainer, **changes: Any) -> _Trainer:
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
    def device_batch(self, local: dict[str, np.ndarray], global_batch: int) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(
                self.batch_sharding, v, (global_batch,) + v.shape[1:]
            )
            for k, v in local.items()
        }

    def train_batch(self, step: int) -> dict[str, jax.Array]:
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
        if self.state_collections or reads_whole_split(self.task, split):
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

    def evaluate(self, state: TrainState, batches: dict[str, list]) -> dict[str, float]:
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

    # own settings sit within about 10x of it (BERT's 0.005 for millions of sequences).
    XI_GUIDANCE_FACTOR = 100.0

    def _check_amos_xi(self) -> None:
        """Warns when Amos' xi is far from the authors' guidance 1/sqrt(N), N the task's
        training batches an epoch (where the task counts its examples): xi = 100 on a
        small task trains to a large finite loss, which is no divergence, and would
        otherwise pass unremarked."""
        n = self.task.num_train_examples
        if self.opt.name != "amos" or not isinstance(n, int) or n < 1:
            return
        batches = n / self.config.batch_size
        xi, guidance = float(self.opt.learning_rate(self.config.train_steps)), batches**-0.5
        if guidance / self.XI_GUIDANCE_FACTOR <= xi <= guidance * self.XI_GUIDANCE_FACTOR:
            return
        warn(
            self.is_chief,
            f"AMOS_XI={xi:g} is {max(xi / guidance, guidance / xi):.0f}x "
            f"{'above' if xi > guidance else 'below'} the authors' guidance 1/sqrt(N) = "
            f"{guidance:.3g} for this task's N = {n} training examples / "
            f"{self.config.batch_size} per batch = {batches:.0f} batches",
        )

    def describe_data(self) -> dict[str, Any]:
        """What the task reads, for run.json (see `describe_data`)."""
        return describe_data(self.task)

    def _say(self, msg: str) -> None:
        if self.is_chief:
            print(msg, flush=True)
