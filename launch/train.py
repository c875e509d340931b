"""The training loop behind launch/run.py: data-parallel, checkpointed, logged.

One `Trainer` runs one configuration: every argument of `train` is a gin binding (see
gin_configs/train_defaults.gin for the readable macro names). The loop follows the Flax
WMT/LM1B examples: a jitted step on a donated state, periodic evaluation on fixed held-out
batches, Orbax checkpoints, TensorBoard scalars.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.errors import ConfigError
from launch.optimizers import OptimizerSpec, slot_bytes
from launch.summary_writer import ScalarWriter, read_metrics


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient, update or evaluation: at once with
    `skip_nonfinite_steps` off, after `max_consecutive_skipped_steps` skipped steps in a
    row with it on, and always when an evaluation is non-finite."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh with every device on `data`.

    The `model` axis has size 1 today; tensor parallelism later only changes this shape and
    the parameter PartitionSpecs, not the loop.
    """
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.asarray(devices).reshape(len(devices), 1), ("data", "model"))


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


def poison_first_leaf(tree, when: jax.Array):
    """`tree` with its first leaf set to Inf where `when`: the testing hook
    `train.inject_nonfinite_params_at_steps` (an update that breaks the parameters)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves[0] = jnp.where(when, jnp.inf, leaves[0]).astype(leaves[0].dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def nonfinite_values(values: dict[str, Any]) -> dict[str, float]:
    """The entries of `values` that are non-finite floats (what final.json must not hold)."""
    return {k: v for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)}


_SKIP_HINT = "Set train.skip_nonfinite_steps = True to skip such steps instead."


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


@dataclasses.dataclass
class _Pending:
    """Per-step metrics still on device; fetched together at the next log, so the host
    never waits on the device between logs."""

    steps: list[int] = dataclasses.field(default_factory=list)
    metrics: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)


class Trainer:
    """Builds model, data, optimizer and mesh from the bindings and runs the loop."""

    def __init__(
        self,
        *,
        model_dir: str | None,
        seed: int,
        train_steps: int,
        batch_size: int,
        model: Callable[..., nn.Module],
        task: Any,
        optimizer: Callable[[int], OptimizerSpec],
        eval_every: int,
        eval_batches: int,
        eval_batch_size: int | None,
        eval_splits: Sequence[str],
        eval_seed: int,
        log_every: int,
        checkpoint_every: int,
        keep_checkpoints: int,
        skip_nonfinite_steps: bool,
        max_consecutive_skipped_steps: int,
        first_checkpoint_at: int | None,
        inject_nonfinite_at_steps: Sequence[int],
        inject_nonfinite_params_at_steps: Sequence[int],
        progress: bool,
    ):
        problems = []
        if not model_dir:
            problems.append("MODEL_DIR is not set (pass --gin.MODEL_DIR=\"'/path/to/run'\")")
        for name, value in [
            ("TRAIN_STEPS", train_steps),
            ("BATCH_SIZE", batch_size),
            ("train.eval_every", eval_every),
            ("train.log_every", log_every),
            ("train.checkpoint_every", checkpoint_every),
            ("train.keep_checkpoints", keep_checkpoints),
            ("train.eval_batches", eval_batches),
            ("train.max_consecutive_skipped_steps", max_consecutive_skipped_steps),
        ]:
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if first_checkpoint_at is not None and (
            not isinstance(first_checkpoint_at, int) or first_checkpoint_at < 0
        ):
            problems.append(
                "train.first_checkpoint_at must be None (the first log step), 0 (off) or a "
                f"positive step, got {first_checkpoint_at!r}"
            )
        for split in eval_splits:
            if split not in ("train", "val"):
                problems.append(f"train.eval_splits: unknown split {split!r} (train, val)")
        self.mesh = make_mesh()
        n_dev, n_proc = self.mesh.devices.size, jax.process_count()
        eval_batch_size = eval_batch_size or batch_size
        for name, value in [("BATCH_SIZE", batch_size), ("train.eval_batch_size", eval_batch_size)]:
            if isinstance(value, int) and value % n_dev:
                problems.append(
                    f"{name}={value} is not divisible by the {n_dev} devices of the data axis"
                )
        if problems:
            raise ConfigError("; ".join(problems))

        self.model_dir = model_dir
        self.seed, self.train_steps, self.batch_size = seed, train_steps, batch_size
        self.eval_every, self.eval_batches, self.eval_batch_size = (
            eval_every,
            eval_batches,
            eval_batch_size,
        )
        self.eval_splits, self.eval_seed = tuple(eval_splits), eval_seed
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.skip_nonfinite_steps = skip_nonfinite_steps
        self.max_consecutive_skipped_steps = max_consecutive_skipped_steps
        # A first checkpoint early, so that a run dying young (a crash, a preemption, the
        # machine under load) loses little of its work. By default at the first log step,
        # min(checkpoint_every, log_every): there the host fetches the step metrics anyway
        # and has just checked the steps finite, so the save adds no synchronization and
        # saves a state known good; and a crash before the first regular checkpoint loses
        # at most one log interval. 0 turns it off. It counts among `keep_checkpoints`
        # like any other and, being the oldest, is the first to go.
        self.first_checkpoint_at = (
            min(checkpoint_every, log_every) if first_checkpoint_at is None else first_checkpoint_at
        )
        self.inject_nonfinite_at_steps = tuple(inject_nonfinite_at_steps)
        self.inject_nonfinite_params_at_steps = tuple(inject_nonfinite_params_at_steps)
        self.progress = progress
        self.is_chief = jax.process_index() == 0

        # The task (experiments/task.py protocol) fixes the model's data-dependent
        # arguments, the objective and what throughput counts.
        self.task = task
        self.model = model(**task.model_kwargs())
        self.opt = optimizer(train_steps)
        self.unit_name = task.unit_name
        self.units_per_batch = batch_size * task.units_per_example
        self.reports_perplexity = task.reports_perplexity
        # A task whose model carries a recurrent state from batch to batch (consecutive
        # segments, e.g. experiments/data/word_lm.py) names the collections holding it;
        # its state is sized by the whole global batch, and its evaluation reads
        # `task.eval_num_batches(split, batch_size)` consecutive batches per split in
        # order, threading the state from zero (see `evaluate`).
        self.state_collections = tuple(getattr(task, "state_collections", ()))

        # Each host feeds its own rows of the global batch.
        per_host = batch_size // n_proc
        self.rows = slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)
        eval_per_host = eval_batch_size // n_proc
        self.eval_rows = slice(
            jax.process_index() * eval_per_host, (jax.process_index() + 1) * eval_per_host
        )
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))

        self._build_functions()

    # ------------------------------------------------------------------ functions
    def _init_state(self, seed: int):
        rows = slice(0, self.batch_size) if self.state_collections else slice(0, 1)
        sample = self.task.train_batch(seed=seed, step=1, batch_size=self.batch_size, rows=rows)
        variables = dict(self.task.init_variables(self.model, jax.random.key(seed), sample))
        params = variables.pop("params")
        # Non-parameter collections (e.g. batch_stats) travel in the state, unoptimized.
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "model_state": variables,
            "opt_state": self.opt.tx.init(params),
        }

    def _build_functions(self) -> None:
        model, tx, task = self.model, self.opt.tx, self.task
        base_key = jax.random.key(self.seed)
        inject = jnp.asarray(self.inject_nonfinite_at_steps or [-1], jnp.int32)
        inject_params = self.inject_nonfinite_params_at_steps
        skip = self.skip_nonfinite_steps

        def train_step(state, batch):
            step = state["step"] + 1  # The 1-based number of the step being taken.
            rng = jax.random.fold_in(base_key, step)

            def loss_fn(params):
                loss, metrics, model_state = task.loss(
                    model, {"params": params, **state["model_state"]}, batch, train=True, rng=rng
                )
                # Testing hook (train.inject_nonfinite_at_steps): poison chosen steps.
                loss = jnp.where(jnp.any(inject == step), jnp.nan, loss)
                # The per-token loss, whatever the training loss's normalization.
                token_loss = metrics.get("token_loss", loss)
                return loss, (metrics["accuracy"], token_loss, model_state)

            (loss, (acc, token_loss, model_state)), grads = jax.value_and_grad(
                loss_fn, has_aux=True
            )(state["params"])
            model_state = {**state["model_state"], **model_state}
            grad_norm = tree_norm(grads)
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            if inject_params:  # Testing hook (train.inject_nonfinite_params_at_steps).
                params = poison_first_leaf(params, jnp.any(jnp.asarray(inject_params) == step))
            # A finite loss can still come with an update that breaks the parameters or the
            # slots (an overflow in the optimizer): such a step is as bad as a NaN loss, and
            # its state must never be checkpointed.
            update_finite = all_finite((params, opt_state, model_state))
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & update_finite
            if skip:  # Keep the old params and slots; the step counter still advances.
                keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
                    lambda a, b: jnp.where(finite, a, b), new, old
                )
                params = keep(params, state["params"])
                opt_state = keep(opt_state, state["opt_state"])
                model_state = keep(model_state, state["model_state"])
            new_state = {
                "step": step,
                "params": params,
                "model_state": model_state,
                "opt_state": opt_state,
            }
            metrics = {
                "loss": loss,
                "token_loss": token_loss,
                "accuracy": acc,
                "grad_norm": grad_norm,
                "param_norm": tree_norm(params),
                "finite": finite,
                "update_finite": update_finite,
            }
            return new_state, metrics

        def eval_step(state, batch):
            loss, metrics, _ = task.loss(
                model,
                {"params": state["params"], **state["model_state"]},
                batch,
                train=False,
                rng=base_key,
            )
            # The per-token loss where the objective is a sum (see Task.loss).
            return metrics.get("token_loss", loss), metrics["accuracy"]

        def eval_carry_step(state, carried, batch):
            # `carried`: the state collections after the previous batch (zeros, or {} for
            # the model to make them, at the first); the training state's are left out.
            others = {
                k: v for k, v in state["model_state"].items() if k not in self.state_collections
            }
            loss, metrics, updated = task.loss(
                model,
                {"params": state["params"], **others, **carried},
                batch,
                train=False,
                rng=base_key,
            )
            carried = {k: updated[k] for k in self.state_collections}
            return metrics["token_loss"], metrics["accuracy"], metrics["num_targets"], carried

        def diagnostics(state):
            if self.opt.diagnostics is None:
                return {}
            return self.opt.diagnostics(state["opt_state"], state["params"])

        abstract = jax.eval_shape(lambda: self._init_state(self.seed))
        self.state_sharding = jax.tree_util.tree_map(lambda _: self.replicated, abstract)
        self.abstract_state = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract
        )
        self.init_state = jax.jit(
            self._init_state, static_argnums=0, out_shardings=self.state_sharding
        )
        self.train_step = jax.jit(
            train_step,
            donate_argnums=0,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, self.replicated),
        )
        self.eval_step = jax.jit(
            eval_step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=self.replicated,
        )
        self.eval_carry_step = jax.jit(eval_carry_step)
        self.state_finite = jax.jit(all_finite)
        self.diagnostics = jax.jit(
            diagnostics, in_shardings=(self.state_sharding,), out_shardings=self.replicated
        )
        self.slot_bytes = slot_bytes(abstract["opt_state"])
        self.num_params = sum(
            math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract["params"])
        )

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
        local = self.task.train_batch(
            seed=self.seed, step=step, batch_size=self.batch_size, rows=self.rows
        )
        return self.device_batch(local, self.batch_size)

    def _eval_batches(self) -> dict[str, list]:
        # Fixed held-out batches, the same at every evaluation and for every run seed, so
        # eval curves of different runs are measured on identical data.
        return {
            split: [
                self.device_batch(
                    self.task.eval_batch(
                        split,
                        seed=self.eval_seed,
                        index=i,
                        batch_size=self.eval_batch_size,
                        rows=self.eval_rows,
                    ),
                    self.eval_batch_size,
                )
                for i in range(self._num_eval_batches(split))
            ]
            for split in self.eval_splits
        }

    def _num_eval_batches(self, split: str) -> int:
        if self.state_collections:  # Consecutive batches covering the whole split.
            return self.task.eval_num_batches(split, self.eval_batch_size)
        return self.eval_batches

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
        out = {}
        for split, split_batches in batches.items():
            prefix = "" if split == "val" else f"{split}_"
            if self.state_collections:
                loss, accuracy = self._evaluate_carried(state, split_batches)
            else:
                results = [self.eval_step(state, b) for b in split_batches]
                losses, accs = zip(*jax.device_get(results), strict=True)
                loss, accuracy = float(np.mean(losses)), float(np.mean(accs))
            out[f"{prefix}loss"] = loss
            out[f"{prefix}accuracy"] = accuracy
            if self.reports_perplexity:
                out[f"{prefix}perplexity"] = math.exp(min(loss, 50.0))
        return out

    # ------------------------------------------------------------------ loop
    @property
    def checkpoint_dir(self) -> str:
        return os.path.abspath(os.path.join(self.model_dir, "checkpoints"))

    def _is_checkpoint_step(self, step: int) -> bool:
        return (
            step % self.checkpoint_every == 0
            or step == self.train_steps
            or step == self.first_checkpoint_at
        )

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Trains to `train_steps` (or `stop_after` steps in this call); returns final.json."""
        os.makedirs(self.model_dir, exist_ok=True)
        writer = ScalarWriter(self.model_dir, enabled=self.is_chief)
        manager = ocp.CheckpointManager(
            self.checkpoint_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep_checkpoints, create=True),
        )
        try:
            restored = self._restore(manager)
        except ConfigError:
            manager.close()
            raise
        if restored is not None:
            state, train_time, start = restored
            writer.restart_at(start)
            self._say(f"resumed from checkpoint at step {start} in {self.model_dir}")
        else:
            state, train_time, start = self.init_state(self.seed), 0.0, 0
            if os.path.exists(writer.jsonl_path):
                # An earlier try died before its first checkpoint: its records go.
                writer.restart_at(-1)
        last_good = start if restored is not None else None

        eval_batches = self._eval_batches()
        # Compile outside the timed region: steps/s and time-to-target measure training.
        self.train_step.lower(state, self.train_batch(start + 1)).compile()
        if start == 0:  # Static facts of the run, once (a resumed run already has them).
            writer.write("train", 0, {"slot_bytes": self.slot_bytes, "num_params": self.num_params})

        end = self.train_steps if stop_after is None else min(self.train_steps, start + stop_after)
        pending, skips = _Pending(), _SkipCount(self.max_consecutive_skipped_steps)
        interval_start, interval_steps = time.perf_counter(), 0
        final_eval: dict[str, float] = {}
        step = start
        while step < end:
            batch = self.train_batch(step + 1)
            state, metrics = self.train_step(state, batch)
            step += 1
            pending.steps.append(step)
            pending.metrics.append(metrics)
            interval_steps += 1
            is_eval = step % self.eval_every == 0 or step == self.train_steps
            is_ckpt = self._is_checkpoint_step(step)
            if step % self.log_every == 0 or is_eval or is_ckpt or step == end:
                fetched = jax.device_get(pending.metrics)
                elapsed = time.perf_counter() - interval_start
                train_time += elapsed
                problem = self._check_steps(pending.steps, fetched, skips)
                if problem:
                    raise self._diverged(writer, manager, last_good, *problem)
                scalars = self._train_scalars(fetched, step, interval_steps, elapsed)
                scalars["train_time_s"] = train_time
                scalars["skipped_steps"] = skips.total
                scalars.update(
                    {k: float(v) for k, v in jax.device_get(self.diagnostics(state)).items()}
                )
                writer.write("train", step, scalars)
                if self.progress:
                    left = (self.train_steps - step) / max(scalars["steps_per_sec"], 1e-9)
                    self._say(
                        f"step {step}/{self.train_steps} | loss {scalars['loss']:.4f} | "
                        f"{scalars['steps_per_sec']:.1f} steps/s | "
                        f"left {datetime.timedelta(seconds=round(left))}"
                    )
                pending = _Pending()
                if is_eval:
                    final_eval = self.evaluate(state, eval_batches)
                    bad = nonfinite_values(final_eval)
                    if bad:
                        raise self._diverged(
                            writer,
                            manager,
                            last_good,
                            f"non-finite evaluation at step {step} ({_items(bad)})",
                        )
                    final_eval["train_time_s"] = train_time
                    writer.write("eval", step, final_eval)
                    self._say(
                        f"eval step {step}: "
                        + ", ".join(
                            f"{k} {v:.4f}" for k, v in final_eval.items() if "time" not in k
                        )
                    )
                if is_ckpt:
                    # Every step up to here was finite, its update included (or skipped):
                    # the state saved is one a restart can use.
                    manager.save(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardSave(state),
                            meta=ocp.args.JsonSave({"train_time_s": train_time}),
                        ),
                    )
                    last_good = step
                writer.flush()
                interval_start, interval_steps = time.perf_counter(), 0
        manager.wait_until_finished()
        manager.close()
        writer.close()
        if not final_eval and self.is_chief and os.path.exists(writer.jsonl_path):
            final_eval = self._recorded_eval(step)
        bad = nonfinite_values(final_eval)
        if bad:  # final.json never holds NaN or Inf.
            raise TrainingDiverged(f"non-finite final evaluation at step {step} ({_items(bad)})")
        result = {
            "step": step,
            "finished": step >= self.train_steps,
            "eval": final_eval,
            "train_time_s": train_time,
            "slot_bytes": self.slot_bytes,
            "num_params": self.num_params,
            "optimizer": self.opt.name,
        }
        if self.is_chief and result["finished"]:
            with open(os.path.join(self.model_dir, "final.json"), "w") as f:
                json.dump(result, f, indent=2)
        return result

    def _recorded_eval(self, step: int) -> dict[str, float]:
        """The evaluation at `step` from metrics.jsonl: a run restarted on its finished
        checkpoint (killed before final.json was written) has it on record."""
        record = next(
            (
                r
                for r in reversed(read_metrics(self.model_dir))
                if r["split"] == "eval" and r["step"] == step
            ),
            {},
        )
        return {k: v for k, v in record.items() if k not in ("step", "split")}

    def _train_scalars(
        self, fetched: list[dict], step: int, interval_steps: int, elapsed: float
    ) -> dict[str, float]:
        """The train record of a log interval; means over its finite steps (all of them if
        none was finite)."""
        good = [m for m in fetched if m["finite"]] or fetched
        scalars = {
            k: float(np.mean([m[k] for m in good]))
            for k in ("loss", "token_loss", "accuracy", "grad_norm")
        }
        scalars["param_norm"] = float(fetched[-1]["param_norm"])
        scalars["learning_rate"] = self.opt.learning_rate(step)
        scalars["steps_per_sec"] = interval_steps / elapsed
        scalars[f"{self.unit_name}_per_sec"] = interval_steps * self.units_per_batch / elapsed
        scalars["slot_bytes"] = self.slot_bytes
        return scalars

    def _check_steps(
        self, steps: list[int], fetched: list[dict], skips: _SkipCount
    ) -> tuple[str, str] | None:
        """Why training must stop after these steps, and a hint, or None: a non-finite
        step with skipping off, or too many skipped in a row with it on."""
        if not self.skip_nonfinite_steps:
            for s, m in zip(steps, fetched, strict=True):
                if not m["finite"]:
                    what = (
                        f"non-finite loss or gradient at step {s}"
                        if m["update_finite"]
                        else f"non-finite parameters or optimizer state after the update "
                        f"of step {s} (the loss and gradient were finite)"
                    )
                    return what, _SKIP_HINT
            return None
        for s, m in zip(steps, fetched, strict=True):
            if skips.add(bool(m["finite"])):
                what = (
                    f"{skips.limit} consecutive non-finite steps skipped, the last at step {s}"
                    f" (train.max_consecutive_skipped_steps = {skips.limit})"
                )
                return what, ""
        return None

    def _diverged(
        self, writer, manager, last_good: int | None, what: str, hint: str = ""
    ) -> TrainingDiverged:
        """The error that stops a diverged run, once its records and checkpoints are
        closed; it names the last good checkpoint."""
        writer.close()
        manager.wait_until_finished()
        manager.close()
        kept = (
            f"the last good checkpoint is step {last_good} in {self.checkpoint_dir}"
            if last_good is not None
            else "no checkpoint was written"
        )
        return TrainingDiverged(f"{what}; stopping ({kept}). {hint}".rstrip())

    # ------------------------------------------------------------------ restore
    def _restore(self, manager: ocp.CheckpointManager) -> tuple[Any, float, int] | None:
        """The newest checkpoint that restores, as (state, train_time_s, step); None if
        there is none.

        One that fails (a truncated file or garbled metadata, from a crash or a full disk
        while it was written) is reported; once an older one restores, the failed ones are
        moved aside (`<step>.corrupt`, a name orbax does not list, so that it saves the
        step again). If none restores, nothing is moved, since the cause may be a
        configuration these checkpoints do not fit, and a ConfigError names the directory.
        """
        failed: list[int] = []
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                state, train_time = self._restore_step(manager, step)
            except Exception as e:  # orbax and tensorstore raise many types on bad files.
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                self._warn(
                    f"checkpoint {os.path.join(self.checkpoint_dir, str(step))} cannot be "
                    f"restored ({type(e).__name__}: {reason})"
                )
                failed.append(step)
                continue
            if failed:
                self._move_aside(manager, failed)
                self._warn(f"falling back to the checkpoint of step {step}")
            return state, train_time, step
        if failed:
            raise ConfigError(
                f"no checkpoint in {self.checkpoint_dir} can be restored (steps "
                f"{sorted(failed)}): damaged, or written by another configuration (model, "
                "optimizer); fix the configuration, or move that directory away to start over"
            )
        return None

    def _restore_step(self, manager: ocp.CheckpointManager, step: int) -> tuple[Any, float]:
        """(state, train_time_s) of one checkpoint; raises if it cannot be read or holds
        non-finite values (which no checkpoint written by this loop does)."""
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self.abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        train_time = float(restored["meta"]["train_time_s"])
        if not bool(self.state_finite(restored["state"])):
            raise ValueError("the state holds NaN or Inf values")
        return restored["state"], train_time

    def _move_aside(self, manager: ocp.CheckpointManager, steps: list[int]) -> None:
        """Renames the checkpoints of `steps` to `<step>.corrupt` (kept for inspection) and
        makes `manager` forget them."""
        if self.is_chief:
            for step in steps:
                path = os.path.join(self.checkpoint_dir, str(step))
                aside, n = f"{path}.corrupt", 1
                while os.path.exists(aside):
                    aside, n = f"{path}.corrupt.{n}", n + 1
                os.rename(path, aside)
                self._warn(f"moved the damaged checkpoint {path} to {aside}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("checkpoints moved aside")
        manager.reload()

    def describe_data(self) -> dict[str, Any]:
        """What the task reads, for run.json (see `describe_data`)."""
        return describe_data(self.task)

    def _warn(self, msg: str) -> None:
        if self.is_chief:
            print(f"WARNING: {msg}", file=sys.stderr, flush=True)

    def _say(self, msg: str) -> None:
        if self.is_chief:
            print(msg, flush=True)


# ---------------------------------------------------------------------- data description
# Attributes of tasks and sources (experiments/data/) that name where their data is.
_PATH_ATTRS = ("path", "corpus_path", "valid_path", "data_dir")


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
    of in-memory token splits (`corpus` with `train` and `val` ids)."""
    names = getattr(obj, "split_names", None)
    if isinstance(names, dict):
        return {"splits": _plain(names)}
    corpus = getattr(obj, "corpus", None)
    if corpus is not None and hasattr(corpus, "train") and hasattr(corpus, "val"):
        return {"split_tokens": {"train": len(corpus.train), "val": len(corpus.val)}}
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


@gin.configurable("train", denylist=["stop_after", "build_only"])
def train(
    *,
    model_dir: str | None = gin.REQUIRED,
    seed: int = 0,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    model: Callable[..., nn.Module] = gin.REQUIRED,
    task: Any = gin.REQUIRED,
    optimizer: Callable[[int], OptimizerSpec] = gin.REQUIRED,
    eval_every: int = 250,
    eval_batches: int = 20,
    eval_batch_size: int | None = None,
    eval_splits: Sequence[str] = ("val",),
    eval_seed: int = 0,
    log_every: int = 50,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    skip_nonfinite_steps: bool = False,
    max_consecutive_skipped_steps: int = 10,
    first_checkpoint_at: int | None = None,
    inject_nonfinite_at_steps: Sequence[int] = (),
    inject_nonfinite_params_at_steps: Sequence[int] = (),
    progress: bool = True,
    stop_after: int | None = None,
    build_only: bool = False,
) -> dict[str, Any] | Trainer:
    """Trains one configuration into `model_dir` (resuming from its checkpoint if any).

    `build_only` returns the Trainer without running it (benchmarks drive its step).
    `inject_nonfinite_at_steps` (a NaN loss) and `inject_nonfinite_params_at_steps` (an
    update that makes the parameters Inf while the loss is finite) are testing hooks: they
    poison the given 1-based steps, to exercise the non-finite paths of the loop.
    """
    trainer = Trainer(
        model_dir=model_dir,
        seed=seed,
        train_steps=train_steps,
        batch_size=batch_size,
        model=model,
        task=task,
        optimizer=optimizer,
        eval_every=eval_every,
        eval_batches=eval_batches,
        eval_batch_size=eval_batch_size,
        eval_splits=eval_splits,
        eval_seed=eval_seed,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        skip_nonfinite_steps=skip_nonfinite_steps,
        max_consecutive_skipped_steps=max_consecutive_skipped_steps,
        first_checkpoint_at=first_checkpoint_at,
        inject_nonfinite_at_steps=inject_nonfinite_at_steps,
        inject_nonfinite_params_at_steps=inject_nonfinite_params_at_steps,
        progress=progress,
    )
    return trainer if build_only else trainer.run(stop_after=stop_after)
