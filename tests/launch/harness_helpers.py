"""Helpers for the launch tests: run launch/run.py and the tools that start it (compare.py,
sweep.py, ...) as subprocesses or in the test's process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# A tiny configuration on generated text: seconds per run on 2 CPU cores.
TINY = [
    "--gin.GENERATED_CHARS=20000",
    "--gin.BATCH_SIZE=8",
    "--gin.BLOCK_SIZE=16",
    "--gin.gpt_model.width=32",
    "--gin.EVAL_BATCHES=4",
    "--gin.LOG_EVERY=10",
]


def run_cmd(
    model_dir, *extra, experiment="quickstart", optimizer="adamw", steps=60, tiny=True
) -> list[str]:
    return [
        PYTHON,
        str(REPO / "launch" / "run.py"),
        f"--gin_file=experiments/{experiment}.gin",
        f"--optimizer={optimizer}",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        *(TINY if tiny else []),
        *extra,
    ]


# 60 steps, evaluations and checkpoints every 20, logs every 10 (TINY).
EVERY_20 = ["--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20"]


def build_trainer(model_dir: Path, *extra: str, steps: int = 60):
    """The Trainer launch/run.py would build for the tiny quickstart with `extra` (one
    compile, then `Trainer.replace(model_dir=...)` runs copies in other directories)."""
    from launch import run as run_cli  # Not at the top: the subprocess helpers need no jax.
    from launch import trainer as train_lib

    args, bindings = run_cli.parse_args(run_cmd(model_dir, *extra, steps=steps)[2:])
    run_cli.load_gin(args.gin_file, bindings, [])
    return train_lib.train(build_only=True)


def checkpoint_steps(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


def env_with(**kw) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(kw)
    return env


def run(cmd, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, env=env or env_with(), capture_output=True, text=True, timeout=timeout
    )


def run_in_process(cmd: list[str], capsys) -> subprocess.CompletedProcess:
    """A launch/run.py command (`run_cmd`'s) run in this process through `run.main`, as the
    script calls it: its exit status and output, without an interpreter start and the
    imports (seconds per run). For one-device runs; a device count needs a process."""
    from launch import run as run_cli

    assert Path(cmd[1]).name == "run.py", cmd
    capsys.readouterr()
    code = run_cli.main(cmd[2:])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(cmd, code, out, err)


def run_tool_in_process(main, argv: list[str], capsys, monkeypatch) -> subprocess.CompletedProcess:
    """A launch tool's `main(argv)` (compare, sweep, ...) run in this process, and so are
    the launch/run.py processes it starts (`run.main`, with the same arguments): its exit
    status and output as a process would give them, without an interpreter start and the
    imports for the tool and for every run. Any other command (git, a run with its own
    XLA_FLAGS) still runs as a process."""
    from launch import run as run_cli

    real_run = subprocess.run

    def run_here(cmd, *args, env=None, **kwargs):
        same_devices = env is None or env.get("XLA_FLAGS") == os.environ.get("XLA_FLAGS")
        if len(cmd) > 1 and Path(cmd[1]).name == "run.py" and same_devices:
            return subprocess.CompletedProcess(cmd, run_cli.main(list(cmd[2:])))
        return real_run(cmd, *args, env=env, **kwargs)

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "run", run_here)
        try:
            code = main(argv)
        except SystemExit as e:  # As the interpreter: a message to stderr and status 1.
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 1 if isinstance(e.code, str) else e.code or 0
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["launch", *argv], code, out, err)


def metrics(model_dir) -> list[dict]:
    with open(Path(model_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# Keys that measure time rather than the computation.
TIMING = {"steps_per_sec", "tokens_per_sec", "examples_per_sec", "train_time_s"}


def numbers(model_dir) -> list[tuple]:
    """metrics.jsonl without the timing values: what must repeat exactly."""
    return [
        tuple(sorted((k, v) for k, v in r.items() if k not in TIMING)) for r in metrics(model_dir)
    ]


def fake_run(
    model_dir,
    val: list[float],
    test: list[float] | None = None,
    *,
    every: int = 10,
    seconds_per_eval: float = 1.0,
    slot_bytes: int = 1000,
    status: str = "finished",
) -> Path:
    """A run directory as launch/run.py leaves it (metrics.jsonl, final.json, run.json,
    config.gin), with the given validation (and test) losses at steps every, 2 * every,
    ...: summaries can be checked on numbers chosen by hand, without training. A
    `status='diverged'` run has no final.json."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    evals = []
    for i, loss in enumerate(val):
        r = {"step": every * (i + 1), "split": "eval", "loss": loss, "accuracy": 0.1 * i}
        if test is not None:
            r.update(test_loss=test[i], test_accuracy=0.1 * i)
        evals.append({**r, "train_time_s": seconds_per_eval * (i + 1)})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    (d / "config.gin").write_text(f"# fake run {d.name}\n")
    info = {
        "argv": ["fake"],
        "git": {"revision": None, "dirty": None},
        "machine": {"device_kind": "cpu", "device_count": 1, "cpu_count": 2},
        "status": status,
    }
    (d / "run.json").write_text(json.dumps(info))
    if status == "finished":
        last = {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
        final = {
            "step": evals[-1]["step"],
            "finished": True,
            "eval": last,
            "train_time_s": last["train_time_s"],
            "slot_bytes": slot_bytes,
        }
        (d / "final.json").write_text(json.dumps(final))
    return d


def dry_run_slot_bytes(out: str, arm: str) -> tuple[int, int]:
    """(bytes in all, per device) of an arm's optimizer state, from `run.py --dry_run`'s
    report."""
    m = re.search(rf"^  {arm}\b.*?\s([\d,]+) \(.*per device\s+([\d,]+) ", out, re.M)
    assert m, out
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
