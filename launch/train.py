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
    """A non-finite loss or gradient with `skip_nonfinite_steps` off."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh with every device on `data`.

    The `model` axis has size 1 today; tensor parallelism later only changes this shape and
    the parameter PartitionSpecs, not the loop.
    """
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.asarray(devices).reshape(len(devices), 1), ("data", "model"))


def tree_norm(tree) -> jax.Array:
    return optax.global_norm(tree)


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
        inject_nonfinite_at_steps: Sequence[int],
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
        ]:
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
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
        self.inject_nonfinite_at_steps = tuple(inject_nonfinite_at_steps)
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
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
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
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Trains to `train_steps` (or `stop_after` steps in this call); returns final.json."""
        os.makedirs(self.model_dir, exist_ok=True)
        writer = ScalarWriter(self.model_dir, enabled=self.is_chief)
        manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(self.model_dir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep_checkpoints, create=True),
        )
        state, train_time, start = None, 0.0, manager.latest_step()
        if start is not None:
            restored = manager.restore(
                start,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(self.abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
            state, train_time = restored["state"], float(restored["meta"]["train_time_s"])
            writer.restart_at(start)
            self._say(f"resumed from checkpoint at step {start} in {self.model_dir}")
        else:
            start = 0
            state = self.init_state(self.seed)
        last_good = start if manager.latest_step() is not None else None

        eval_batches = self._eval_batches()
        # Compile outside the timed region: steps/s and time-to-target measure training.
        self.train_step.lower(state, self.train_batch(start + 1)).compile()
        if start == 0:  # Static facts of the run, once (a resumed run already has them).
            writer.write("train", 0, {"slot_bytes": self.slot_bytes, "num_params": self.num_params})

        end = self.train_steps if stop_after is None else min(self.train_steps, start + stop_after)
        pending, skipped = _Pending(), 0
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
            is_ckpt = step % self.checkpoint_every == 0 or step == self.train_steps
            if step % self.log_every == 0 or is_eval or is_ckpt or step == end:
                fetched = jax.device_get(pending.metrics)
                elapsed = time.perf_counter() - interval_start
                train_time += elapsed
                bad = [s for s, m in zip(pending.steps, fetched, strict=True) if not m["finite"]]
                if bad and not self.skip_nonfinite_steps:
                    writer.close()
                    manager.wait_until_finished()
                    kept = (
                        f"the last good checkpoint is step {last_good} in "
                        f"{self.model_dir}/checkpoints"
                        if last_good is not None
                        else "no checkpoint was written"
                    )
                    raise TrainingDiverged(
                        f"non-finite loss or gradient at step {bad[0]}; stopping ({kept}). "
                        "Set train.skip_nonfinite_steps = True to skip such steps instead."
                    )
                skipped += len(bad)
                good = [m for m in fetched if m["finite"]] or fetched
                scalars = {
                    k: float(np.mean([m[k] for m in good]))
                    for k in ("loss", "token_loss", "accuracy", "grad_norm")
                }
                scalars["param_norm"] = float(fetched[-1]["param_norm"])
                scalars["learning_rate"] = self.opt.learning_rate(step)
                scalars["steps_per_sec"] = interval_steps / elapsed
                scalars[f"{self.unit_name}_per_sec"] = (
                    interval_steps * self.units_per_batch / elapsed
                )
                scalars["train_time_s"] = train_time
                scalars["slot_bytes"] = self.slot_bytes
                scalars["skipped_steps"] = skipped
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
                    final_eval["train_time_s"] = train_time
                    writer.write("eval", step, final_eval)
                    self._say(
                        f"eval step {step}: "
                        + ", ".join(
                            f"{k} {v:.4f}" for k, v in final_eval.items() if "time" not in k
                        )
                    )
                if is_ckpt:
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
            # Restarted on a finished checkpoint (e.g. killed before final.json was written):
            # the final evaluation is already on record.
            final_eval = next(
                (
                    r
                    for r in reversed(read_metrics(self.model_dir))
                    if r["split"] == "eval" and r["step"] == step
                ),
                {},
            )
            final_eval = {k: v for k, v in final_eval.items() if k not in ("step", "split")}
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

    def _say(self, msg: str) -> None:
        if self.is_chief:
            print(msg, flush=True)


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
    inject_nonfinite_at_steps: Sequence[int] = (),
    progress: bool = True,
    stop_after: int | None = None,
    build_only: bool = False,
) -> dict[str, Any] | Trainer:
    """Trains one configuration into `model_dir` (resuming from its checkpoint if any).

    `build_only` returns the Trainer without running it (benchmarks drive its step).
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
        inject_nonfinite_at_steps=inject_nonfinite_at_steps,
        progress=progress,
    )
    return trainer if build_only else trainer.run(stop_after=stop_after)
