"""`Trainer`, the training loop (checkpoints, logs, evaluation, preemption, fine-tuning
starts, evaluation-only), and the entry point `train` that builds one from gin."""

from __future__ import annotations

import datetime
from typing import Any

import jax
from etils import epath

from experiments.errors import ConfigError
from launch import prefetch, sharding
from launch.preemption import NoWatch, Preempted, Watch
from launch.summary_writer import join, read_metrics, write_json
from launch.trainer import finetune, run_folder
from launch.trainer.base import BaseTrainer
from launch.trainer.checkpoints import Checkpointer, checkpoint_steps
from launch.trainer.config import train_config
from launch.trainer.errors import CheckpointSaveFailed, TrainingDiverged
from launch.trainer.evaluation import weighted_standard_error
from launch.trainer.metrics import (
    MetricsLogger,
    StopTraining,
    cut_interval,
    format_values,
    progress_losses,
    resume_interval,
)
from launch.trainer.profiling import ProfileWindow
from launch.trainer.state import TrainState, nonfinite_values


class Trainer(BaseTrainer):
    """Builds model, optimizer, mesh and jitted steps from a TrainConfig (`BaseTrainer`);
    `run` trains."""

    # ------------------------------------------------------------------ evaluation
    def _evaluate_and_log(
        self, state, batches, step: int, train_time: float, logger: MetricsLogger
    ) -> dict[str, float]:
        result = self.evaluate(state, batches)
        bad = nonfinite_values(result)
        if bad:
            raise StopTraining(f"non-finite evaluation at step {step} ({format_values(bad)})")
        result["train_time_s"] = train_time
        logger.write("eval", step, result)
        self._say(
            f"eval step {step}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if "time" not in k)
        )
        return result

    # ------------------------------------------------------------------ logging
    def _log_train(self, state, step: int, train_time: float, logger: MetricsLogger) -> float:
        """Fetches the interval's metrics, checks them (raising StopTraining), writes the train
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
                f"step {step}/{total} | {progress_losses(scalars)} | "
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

    def run(
        self, stop_after: int | None = None, preemption: Watch | NoWatch | None = None
    ) -> dict[str, Any]:
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
        profiler = ProfileWindow(
            c.profile_steps, join(c.model_dir, run_folder.PROFILE_DIR), self._say
        )
        logger.start_interval()
        if carried:  # The steps of the interval the preemption cut short, as they were.
            resume_interval(logger, carried)
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
                    carried = cut_interval(logger)
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
        except StopTraining as stop:
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
            raise TrainingDiverged(
                f"non-finite final evaluation at step {step} ({format_values(bad)})"
            )
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
            write_json(join(c.model_dir, run_folder.FINAL_JSON), result)
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
        """`state` with the parameters of `init_from`'s checkpoint where they fit the model
        (`finetune.load_pretrained`); what was loaded, fresh and unused goes into
        `init_report`."""
        c = self.config
        state, self.init_report = finetune.load_pretrained(
            state, c.init_from, c.init_from_step, with_params=self.with_params, say=self._say
        )
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
            # EVAL_BATCHES so that it tells trials apart (docs/study.md, the second edition).
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
        path = join(c.model_dir, run_folder.eval_json(step))
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


def train(
    *, stop_after: int | None = None, build_only: bool = False, **overrides: Any
) -> dict[str, Any] | Trainer:
    """Trains the configuration of the gin bindings (`train.<field>`, `overrides` win) into
    its `model_dir`, resuming from its checkpoint if any; returns final.json's content.

    `build_only` returns the Trainer without running it (benchmarks drive its step).
    """
    trainer = Trainer(train_config(**overrides))
    return trainer if build_only else trainer.run(stop_after=stop_after)
