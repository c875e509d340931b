"""Steps/s of launch/run.py's training loop against a bare jitted loop, in one process.

Both loops train the same model on the same batches (the task's pure (seed, step) batches)
with the same optimizer; the bare loop only reads the loss every LOG_EVERY steps: no other
metrics, logging, NaN checks or checkpoint bookkeeping. Compile time and evaluation are
excluded from both.

  .venv/bin/python benchmarks/harness_overhead.py [--gin_file=experiments/quickstart.gin]
      [--steps 400] [--repeats 2] [--gin.NAME=VALUE ...]

Prints both rates and the overhead ratio (goal: < 5%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import optax

from launch import provenance
from launch import run as run_cli
from launch import trainer as train_lib

REPO = Path(__file__).resolve().parents[1]


def bare_loop(trainer: train_lib.Trainer, steps: int) -> float:
    """Steps/s of the simplest loop: jit(step) with donation, batches from the task."""
    model, tx, task = trainer.model, trainer.opt.tx, trainer.task
    key = jax.random.key(0)

    def step_fn(state: train_lib.TrainState, batch):
        def loss_fn(params):
            loss, _, model_state = task.loss(
                model, {"params": params, **state.model_state}, batch, train=True, rng=key
            )
            return loss, model_state

        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state={**state.model_state, **model_state},
            opt_state=opt_state,
        ), loss

    step = jax.jit(
        step_fn,
        donate_argnums=0,
        in_shardings=(trainer.state_sharding, trainer.batch_sharding),
        out_shardings=(trainer.state_sharding, trainer.replicated),
    )
    state = trainer.init_state(trainer.config.seed)
    state, loss = step(state, trainer.train_batch(1))  # compile + first step
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for s in range(2, steps + 2):
        state, loss = step(state, trainer.train_batch(s))
        if s % trainer.config.log_every == 0:
            # Like nanoGPT's loop, read the loss at the log interval. Letting the host run
            # hundreds of steps ahead measured slower on 2 cores (the dispatching thread
            # competes with XLA's), so this is the faster bare loop.
            float(loss)
    jax.block_until_ready(loss)
    return steps / (time.perf_counter() - t0)


def harness_loop(steps: int, model_dir: str) -> float:
    """Steps/s of Trainer.run over `steps` steps (its own training-time clock)."""
    trainer = train_lib.train(
        build_only=True,
        model_dir=model_dir,
        train_steps=steps,
        eval_every=steps,
        checkpoint_every=steps,
        progress=False,
    )
    result = trainer.run()
    return steps / result["train_time_s"]


def _gin_files(args: argparse.Namespace) -> list[str]:
    files = args.gin_file or ["experiments/quickstart.gin"]
    return [*files, run_cli.optimizer_file(args.optimizer)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gin_file", action="append", default=None)
    p.add_argument("--optimizer", default="adamw", help="the arm: gin_configs/optimizers/NAME.gin")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    bindings = [b[len("--gin.") :].replace("=", " = ", 1) for b in rest if b.startswith("--gin.")]
    run_cli.load_gin(_gin_files(args), ["MODEL_DIR = '/unused'", *bindings], [])
    with tempfile.TemporaryDirectory() as tmp:
        ref = train_lib.train(build_only=True, model_dir=tmp, progress=False)
        bare, harness = [], []
        for i in range(args.repeats):  # Interleaved, so drifts in machine load hit both.
            bare.append(bare_loop(ref, args.steps))
            harness.append(harness_loop(args.steps, f"{tmp}/run{i}"))
            print(
                f"repeat {i}: bare {bare[-1]:.1f} steps/s, harness {harness[-1]:.1f} steps/s",
                flush=True,
            )
    b, h = max(bare), max(harness)  # best of repeats: the least disturbed measurement
    print(f"bare loop:    {b:.1f} steps/s")
    print(f"harness loop: {h:.1f} steps/s (log every {ref.config.log_every} steps)")
    print(f"overhead: {100 * (b / h - 1):.1f}% (goal < 5%)")
    if args.out:
        record = {
            "command": [sys.executable, *sys.argv],
            "git": provenance.git_revision(),
            "machine": provenance.describe_machine(),
            "packages": provenance.package_versions(),
            "gin_files": _gin_files(args),
            "bindings": bindings,
            "steps": args.steps,
            "bare_steps_per_sec": bare,
            "harness_steps_per_sec": harness,
            "overhead": b / h - 1,
            "note": "best of repeats; the machine may be shared with other work",
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
