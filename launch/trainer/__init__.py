"""The trainer behind launch/run.py: sharded, checkpointed, logged; one module per job.

* `config`: `TrainConfig`, every setting of one run, frozen and validated in one place;
  gin binds its fields as `train.<field>` (the configurable `train`; see
  gin_configs/train_defaults.gin for the readable macros).
* `state`: `TrainState`, the state a step carries and a checkpoint holds (a pytree), its
  initialization (`init_train_state`) and the checks over it (finiteness, checksums).
* `steps`: `train_step`, `eval_step`, `eval_carry_step`: pure functions of the state and
  a batch, with the model, optimizer and task as keyword arguments, and the mixed
  precision and gradient accumulation inside them; the Trainer jits them with
  `functools.partial` and the shardings of launch/sharding.py.
* `checkpoints`: Orbax managers and listings, and the `Checkpointer` (finite states only,
  checksums, restore fallback).
* `metrics`: `MetricsLogger` (TensorBoard, metrics.jsonl, the non-finite checks).
* `evaluation`: the target-weighted means of evaluation batches and their standard error.
* `base`: `BaseTrainer`, which builds model, optimizer, mesh and jitted steps from a
  TrainConfig and feeds and evaluates them.
* `loop`: `Trainer`, which runs the loop (and evaluation-only), and `train`, its entry
  point from gin.
* `finetune`: the fine-tuning start from another checkpoint's parameters (`init_from`).
* `profiling`: the JAX profiler's window (`profile_steps`).
* `data_description`: `describe_data`, what a task reads, for run.json.
* `dry_run`: the Trainer of `run.py --dry_run`, which reads no dataset.
* `memory`: XLA's memory analysis of the compiled train step and the largest batch that
  fits (`step_memory`, `fit_batch`).
* `errors`: `CheckpointSaveFailed`, `TrainingDiverged` and the warnings.
* `run_folder`: the name of every file and folder a run writes in MODEL_DIR.

The loop follows the Flax WMT/LM1B examples: a jitted step on a donated state, periodic
evaluation on fixed held-out batches, Orbax checkpoints, TensorBoard scalars. On top:
mixed precision (`compute_dtype`), gradient accumulation over micro-batches inside the
step (`grad_accum_steps`), a profiler window (`profile_steps`), fine-tuning from another
run's parameters (`init_from`), evaluation-only (`Trainer.evaluate_checkpoint`), and every
file of MODEL_DIR through `etils.epath` (cloud paths).

The names below are imported from their modules when first used, so that importing one
light module (`run_folder`, which the tools that read run folders use, or `checkpoints`,
which launch/pretrained.py uses) does not import the whole trainer: neither JAX for a
file name, nor launch/pretrained.py back through `finetune`.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public names, by the module that defines them.
_EXPORTS = {
    "base": ("BaseTrainer",),
    "checkpoints": ("Checkpointer", "checkpoint_manager", "checkpoint_steps"),
    "config": ("COMPUTE_DTYPES", "TrainConfig", "train_config"),
    "data_description": ("describe_data",),
    "dry_run": ("DRY_RUN_VOCAB_SIZE", "dry_run_task", "dry_run_trainer"),
    "errors": ("CheckpointSaveFailed", "TrainingDiverged"),
    "evaluation": ("weighted_means", "weighted_standard_error"),
    "loop": ("Trainer", "train"),
    "memory": (
        "BatchFit",
        "StepMemory",
        "abstract_train_batch",
        "batch_shards",
        "batch_unit",
        "compile_train_step",
        "compiled_step_memory",
        "fit_batch",
        "largest_fitting",
        "model_remat",
        "step_memory",
    ),
    "metrics": ("MetricsLogger",),
    "state": (
        "TrainState",
        "all_finite",
        "checksum_record",
        "example_batch_shapes",
        "init_train_state",
        "nonfinite_values",
        "state_checksums",
        "tree_norm",
    ),
    "steps": (
        "cast_floats",
        "compute_model",
        "eval_carry_step",
        "eval_step",
        "loss_normalization",
        "micro_batches",
        "normalizer",
        "train_step",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """`name` from its module, imported at the first use (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # Found without this function from now on.
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
