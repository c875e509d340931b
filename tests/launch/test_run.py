"""launch/run.py end to end: outputs, determinism, resume after SIGKILL, device count."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.launch.harness_helpers import (
    REPO,
    TIMING,
    env_with,
    metrics,
    numbers,
    run,
    run_cmd,
    run_in_process,
)


def test_outputs_exist_parse_and_loss_falls(reference_run: Path):
    d = reference_run
    recs = metrics(d)
    train = [r for r in recs if r["split"] == "train" and "loss" in r]
    evals = [r for r in recs if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40, 60, 80, 100, 120]
    assert [r["step"] for r in train] == list(range(10, 121, 10))
    # Loss falls clearly.
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.2
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    for r in train:
        assert r["grad_norm"] > 0 and r["param_norm"] > 0
        assert 0 < r["learning_rate"] <= 1e-3 + 1e-12
        assert r["steps_per_sec"] > 0
        assert math.isclose(r["tokens_per_sec"], r["steps_per_sec"] * 8 * 16, rel_tol=1e-9)
    # nanoGPT's schedule: warmup to 1e-3 over 20 steps, cosine to 1e-4 at step 120.
    lr = {r["step"]: r["learning_rate"] for r in train}
    assert math.isclose(lr[10], 1e-3 * 10 / 21, rel_tol=1e-5)
    assert math.isclose(
        lr[120], 1e-4 + 0.5 * (1 + math.cos(math.pi * 99 / 100)) * 9e-4, rel_tol=1e-4
    )
    # Slot bytes: AdamW keeps two float32 slots per parameter (plus counters).
    final = json.loads((d / "final.json").read_text())
    assert final["finished"] and final["step"] == 120
    assert final["eval"]["loss"] == evals[-1]["loss"]
    assert 2 * 4 * final["num_params"] <= final["slot_bytes"] <= 2 * 4 * final["num_params"] + 64
    assert math.isclose(final["eval"]["perplexity"], math.exp(final["eval"]["loss"]), rel_tol=1e-6)
    # run.json, config.gin, checkpoints.
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["machine"]["device_count"] == 1 and info["packages"]["jax"]
    assert "revision" in info["git"] and info["argv"]
    cfg = (d / "config.gin").read_text()
    assert "TRAIN_STEPS = 120" in cfg and "ADAMW_B2 = 0.99" in cfg
    assert "adamw_optimizer.b2 = %ADAMW_B2" in cfg
    steps = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [80, 100, 120]  # keep the last 3


def test_tensorboard_events_match_jsonl(reference_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recs = metrics(reference_run)
    # TensorBoard's `loss` is per target token in both splits (the train record's
    # `token_loss`); the train objective is `objective`.
    for split, tag, key in [
        ("train", "loss", "token_loss"),
        ("train", "objective", "loss"),
        ("eval", "loss", "loss"),
    ]:
        acc = EventAccumulator(str(reference_run / split))
        acc.Reload()
        loss = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(r["step"], r[key]) for r in recs if r["split"] == split and key in r]
        assert [s for s, _ in loss] == [s for s, _ in want]
        for (_, got), (_, exp) in zip(loss, want, strict=True):
            assert math.isclose(got, exp, rel_tol=1e-6)
    acc = EventAccumulator(str(reference_run / "train"))
    acc.Reload()
    for tag in [
        "learning_rate",
        "grad_norm",
        "param_norm",
        "steps_per_sec",
        "tokens_per_sec",
        "slot_bytes",
        "accuracy",
    ]:
        assert tag in acc.Tags()["scalars"], tag


@pytest.mark.slow  # end to end: extra runs of launch/run.py
def test_resume_after_sigkill_is_exact(reference_run: Path, tmp_path: Path):
    d = tmp_path / "run"
    cmd = run_cmd(d, "--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", steps=120)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = d / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # Orbax renames a checkpoint into place once it is complete.
        if ckpt.exists() and any(p.name.isdigit() and int(p.name) >= 20 for p in ckpt.iterdir()):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (d / "final.json").exists(), "the run finished before it could be killed"
    killed_at = max(r["step"] for r in metrics(d))
    assert killed_at < 120
    p = run(cmd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from checkpoint at step" in p.stdout
    assert numbers(d) == numbers(reference_run)


@pytest.mark.slow  # end to end: extra runs of launch/run.py
def test_eight_device_mesh_matches_one_device(reference_run: Path, tmp_path: Path):
    d = tmp_path / "eight"
    env = env_with(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    p = run(run_cmd(d, "--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", steps=120), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((d / "run.json").read_text())["machine"]["device_count"] == 8
    one, eight = metrics(reference_run), metrics(d)
    assert len(one) == len(eight)
    for a, b in zip(one, eight, strict=True):
        assert a["step"] == b["step"] and a["split"] == b["split"]
        for k in ("loss", "accuracy", "grad_norm", "param_norm"):
            if k in a and k not in TIMING:
                # Only the order of float32 reductions differs.
                assert math.isclose(a[k], b[k], rel_tol=2e-4, abs_tol=1e-5), (a["step"], k)


def test_amos_run_logs_diagnostics_and_learns(tmp_path: Path, capsys):
    d = tmp_path / "amos"
    p = run_in_process(
        run_cmd(
            d,
            "--gin.EVAL_EVERY=30",
            "--gin.CHECKPOINT_EVERY=60",
            optimizer="amos",
            steps=60,
        ),
        capsys,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    train = [r for r in metrics(d) if r["split"] == "train" and "loss" in r]
    evals = [r for r in metrics(d) if r["split"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"] + 0.0 and train[-1]["loss"] < train[0]["loss"]
    b = [r["amos/b_mean"] for r in train]
    assert all(x2 > x1 > 0 for x1, x2 in zip(b, b[1:], strict=False))  # b only grows
    assert all(0 < r["amos/lr_decay_mean"] <= 1 for r in train)
    # xi warms up linearly over the quickstart's 20 steps: xi * min(1, step / 20).
    assert [r["learning_rate"] for r in train] == pytest.approx(
        [0.053 * min(1.0, r["step"] / 20) for r in train], rel=1e-6
    )
    # Amos keeps one full-size momentum slot plus factored v and b: well under AdamW's two.
    final = json.loads((d / "final.json").read_text())
    assert final["slot_bytes"] < 0.6 * 2 * 4 * final["num_params"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, capsys):
    d = tmp_path / "nan"
    p = run_in_process(
        run_cmd(
            d,
            "--gin.CHECKPOINT_EVERY=20",
            "--gin.EVAL_EVERY=20",
            "--gin.train.inject_nonfinite_at_steps=[25]",
            steps=60,
        ),
        capsys,
    )
    assert p.returncode == 3
    assert "non-finite loss or gradient at step 25" in p.stderr
    assert "last good checkpoint is step 20" in p.stderr
    steps = sorted(int(x.name) for x in (d / "checkpoints").iterdir() if x.name.isdigit())
    assert steps == [10, 20]  # The early first checkpoint (the first log step), then 20.
    assert json.loads((d / "run.json").read_text())["status"] == "diverged"
    assert all(math.isfinite(r.get("loss", 0.0)) for r in metrics(d))


def test_skip_nonfinite_steps_option(tmp_path: Path, capsys):
    d = tmp_path / "skip"
    p = run_in_process(
        run_cmd(
            d,
            "--gin.SKIP_NONFINITE_STEPS=True",
            "--gin.EVAL_EVERY=30",
            "--gin.train.inject_nonfinite_at_steps=[5, 6]",
            steps=30,
        ),
        capsys,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    last = [r for r in metrics(d) if r["split"] == "train" and "loss" in r][-1]
    assert last["skipped_steps"] == 2 and math.isfinite(last["loss"])
    assert math.isfinite(json.loads((d / "final.json").read_text())["eval"]["loss"])


def test_a_whole_split_evaluation_ignores_eval_batches(tmp_path: Path, capsys):
    """ImageClassificationTask.eval_whole_split: every evaluation reads each held-out split
    once (6 batches of 32 for the digits' 180 validation images), not EVAL_BATCHES draws."""
    from launch import run as run_cli

    argv = [
        "--gin_file=experiments/resnet_cpu.gin",
        "--optimizer=adamw",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.TRAIN_STEPS=4",
        "--gin.WARMUP_STEPS=1",
        "--gin.ImageClassificationTask.eval_whole_split=True",
        "--gin.EVAL_BATCHES=2",
        "--gin.EVAL_SPLITS=['val', 'test']",
    ]
    assert run_cli.main(argv) == 0
    assert run_cli.main([*argv, "--eval_only"]) == 0
    record = json.loads((tmp_path / "eval_4.json").read_text())
    assert record["eval_batches"] == {"val": 6, "test": 6}
    # Accuracy over whole images: a multiple of 1/180 on validation, 1/179 on test.
    assert record["eval"]["accuracy"] * 180 == pytest.approx(
        round(record["eval"]["accuracy"] * 180)
    )
    assert record["eval"]["test_accuracy"] * 179 == pytest.approx(
        round(record["eval"]["test_accuracy"] * 179)
    )
    final = json.loads((tmp_path / "final.json").read_text())["eval"]
    assert final["loss"] == pytest.approx(record["eval"]["loss"], rel=1e-6)


def test_text_reads_held_out_splits_whole_and_draws_the_training_split(tmp_path: Path):
    """CharTextTask.eval_whole_split (the text tasks' counterpart): validation is read
    whole in consecutive windows; the training split, evaluated too, still draws
    EVAL_BATCHES batches."""
    from experiments.data.char_text import CharTextTask
    from launch import run as run_cli

    argv = [
        "--gin_file=experiments/quickstart.gin",
        "--optimizer=amos",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.TRAIN_STEPS=2",
        "--gin.CharTextTask.eval_whole_split=True",
        "--gin.EVAL_BATCHES=3",
        "--gin.EVAL_SPLITS=['val', 'train']",
    ]
    assert run_cli.main(argv) == 0
    assert run_cli.main([*argv, "--eval_only"]) == 0
    record = json.loads((tmp_path / "eval_2.json").read_text())
    # quickstart.gin: 200,000 generated characters, BLOCK_SIZE 32, BATCH_SIZE 16.
    task = CharTextTask(generated_chars=200_000, block_size=32, eval_whole_split=True)
    assert record["eval_batches"] == {"val": task.eval_num_batches("val", 16), "train": 3}
    assert record["eval_batches"]["val"] == 20  # (10,000 - 33) // 32 + 1 = 312 windows
    # Accuracy over every validation target once: a multiple of 1 / (312 * 32).
    targets = 312 * 32
    accuracy = record["eval"]["accuracy"]
    assert accuracy * targets == pytest.approx(round(accuracy * targets))
