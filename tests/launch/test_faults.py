"""Faults a run survives or reports: damaged checkpoints, a half-written metrics line, a
second run on the same MODEL_DIR, non-finite steps and updates, dying before the first
regular checkpoint; and a readable description of the data in run.json.

Most tests drive one tiny Trainer, compiled once, in several directories (a copy of the
Trainer per directory): compiling dominates a tiny run on 2 cores.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.errors import ConfigError
from launch import run as run_cli
from launch import run_lock
from launch import trainer as train_lib
from launch.summary_writer import read_metrics
from tests.launch.harness_helpers import (
    EVERY_20,
    PYTHON,
    REPO,
    TIMING,
    build_trainer,
    checkpoint_steps,
    env_with,
    numbers,
    run_cmd,
)


def run_in(trainer: train_lib.Trainer, model_dir: Path, **changes) -> dict:
    """Runs a copy of `trainer` (sharing its compiled steps) in `model_dir`, with the loop
    settings in `settings` changed."""
    t = trainer.replace(model_dir=str(model_dir), **changes.pop("settings", {}))
    return t.run(**changes)


def copy_unfinished(reference: Path, tmp_path: Path) -> Path:
    """The reference run as if killed after its last checkpoint, before final.json."""
    d = tmp_path / "run"
    shutil.copytree(reference, d)
    (d / "final.json").unlink()
    return d


def truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


# ---------------------------------------------------------------- 1. damaged checkpoints
def test_damaged_latest_checkpoints_are_moved_aside_and_an_older_one_used(
    trainer, reference: Path, tmp_path: Path, capsys
):
    d = copy_unfinished(reference, tmp_path)
    ckpt = d / "checkpoints"
    # 60: a truncated array file; 40: our metadata file cut in the middle.
    data_files = glob.glob(str(ckpt / "60" / "state" / "**" / "d" / "*"), recursive=True)
    truncate(max(data_files, key=os.path.getsize))
    truncate(str(ckpt / "40" / "meta" / "metadata"))
    capsys.readouterr()

    result = run_in(trainer, d)

    err = capsys.readouterr().err
    assert f"checkpoint {ckpt / '60'} cannot be restored" in err, err
    assert f"checkpoint {ckpt / '40'} cannot be restored" in err, err
    assert "falling back to the checkpoint of step 20" in err
    assert result["finished"]
    # Batches are a pure function of (seed, step): the rerun from 20 is the reference.
    assert numbers(d) == numbers(reference)
    final, want = (json.loads((p / "final.json").read_text())["eval"] for p in (d, reference))
    assert {k: v for k, v in final.items() if k not in TIMING} == {
        k: v for k, v in want.items() if k not in TIMING
    }
    # Kept for inspection under names orbax does not list; the steps were saved again.
    assert (ckpt / "60.corrupt").is_dir() and (ckpt / "40.corrupt").is_dir()
    assert checkpoint_steps(d) == [20, 40, 60]
    manager = ocp.CheckpointManager(str(ckpt))
    assert list(manager.all_steps()) == [20, 40, 60]
    manager.close()


def test_no_restorable_checkpoint_is_a_configuration_error_naming_the_directory(
    reference: Path, tmp_path: Path, capsys
):
    d = copy_unfinished(reference, tmp_path)
    ckpt = d / "checkpoints"
    for step in (20, 40, 60):
        truncate(str(ckpt / str(step) / "state" / "_METADATA"))
    capsys.readouterr()

    assert run_cli.main(run_cmd(d, *EVERY_20, steps=60)[2:]) == 2

    err = capsys.readouterr().err
    assert f"no checkpoint in {ckpt} can be restored" in err, err
    # Nothing is moved when nothing restores: the configuration may be what is wrong.
    assert checkpoint_steps(d) == [20, 40, 60]
    assert not list(ckpt.glob("*.corrupt*"))


# ---------------------------------------------------------------- 2. half-written metrics
def test_a_half_written_last_metrics_line_is_dropped_on_resume(
    trainer, reference: Path, tmp_path: Path
):
    d = copy_unfinished(reference, tmp_path)
    shutil.rmtree(d / "checkpoints" / "60")  # Killed after checkpoint 40 ...
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["step"] <= 40]
    nxt = lines[len(kept)]
    # ... in the middle of appending the next record.
    (d / "metrics.jsonl").write_text("".join(kept) + nxt[: len(nxt) // 2])
    assert read_metrics(str(d)) == [json.loads(line) for line in kept]

    assert run_in(trainer, d)["finished"]

    assert numbers(d) == numbers(reference)
    assert all(line.endswith("}\n") for line in (d / "metrics.jsonl").read_text().splitlines(True))


def test_a_damaged_metrics_line_is_named_and_a_resume_sets_it_aside(
    trainer, reference: Path, tmp_path: Path, capsys
):
    d = copy_unfinished(reference, tmp_path)
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[3] = '{"step": 12, "spl\x00\n'  # A flipped block in the middle of the file.
    (d / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(ConfigError, match=r"metrics.jsonl: line 4 is not a metrics record"):
        read_metrics(str(d))

    capsys.readouterr()
    assert run_in(trainer, d)["finished"]
    assert "lines [4] are not metrics records" in capsys.readouterr().err
    assert (d / "metrics.jsonl.damaged").read_text() == lines[3]
    records = read_metrics(str(d))  # The rest of the record, and the steps trained since.
    assert len(records) == len(read_metrics(str(reference))) - 1
    assert records[-1] == read_metrics(str(reference))[-1]


# ---------------------------------------------------------------- 3. one run per MODEL_DIR
_HOLD_AND_RUN = """
import sys
from launch import run, run_lock
with run_lock.acquire(sys.argv[1]):
    sys.exit(run.main(sys.argv[2:]))
"""


def test_a_second_run_on_the_same_directory_is_refused_until_the_first_is_gone(
    tmp_path: Path, capsys
):
    d = tmp_path / "run"
    # A long tiny run holding the lock (launch/run.py takes it too; the handles nest).
    cmd = [PYTHON, "-c", _HOLD_AND_RUN, str(d), *run_cmd(d, *EVERY_20, steps=100_000)[2:]]
    first = subprocess.Popen(
        cmd, cwd=REPO, env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        lock = d / "run.lock"
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock.exists() and first.poll() is None
        holder = f"pid {first.pid}@{socket.gethostname()}"
        with pytest.raises(ConfigError) as refused:
            run_lock.acquire(str(d), chief=True)
        assert str(d) in str(refused.value) and holder in str(refused.value)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # Killed: its lock is stale (same host, pid gone) and is taken over with a warning.
    capsys.readouterr()
    with run_lock.acquire(str(d), chief=True) as taken:
        assert taken.held
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {str(lock)!r} of {holder}" in capsys.readouterr().err
    assert not lock.exists()


def _write_lock(model_dir: Path, **holder) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "run.lock"
    path.write_text(json.dumps({"started": "2024-01-01T00:00:00+0000", **holder}))
    return path


def test_lock_file_nesting_release_and_non_chief(tmp_path: Path):
    d = tmp_path / "run"
    lock = run_lock.acquire(str(d), chief=True)
    holder = json.loads((d / "run.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["started"]
    with run_lock.acquire(str(d), chief=True):  # The holder itself: nested.
        pass
    assert (d / "run.lock").exists()
    lock.release()
    lock.release()  # Idempotent.
    assert not (d / "run.lock").exists()
    other = run_lock.acquire(str(d), chief=False)  # A non-chief process takes nothing.
    assert not other.held and not (d / "run.lock").exists()
    # A process that exits without releasing (sys.exit on a diverged run) releases at exit.
    script = f"from launch import run_lock; run_lock.acquire({str(d)!r}, chief=True); exit(3)"
    p = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=env_with(), timeout=60)
    assert p.returncode == 3 and not (d / "run.lock").exists()


def test_locks_of_live_foreign_and_dead_holders(tmp_path: Path, capsys):
    d = tmp_path / "run"
    host = socket.gethostname()
    # pid 1 is always alive; named as itself (its boot and start), it is the holder.
    _write_lock(d, pid=1, host=host, boot_id=run_lock.boot_id(), pid_start=run_lock.pid_start(1))
    with pytest.raises(ConfigError, match=rf"in use by another run, pid 1@{host}"):
        run_lock.acquire(str(d), chief=True)
    path = _write_lock(d, pid=os.getpid(), host="elsewhere.invalid")
    with pytest.raises(ConfigError) as foreign:
        run_lock.acquire(str(d), chief=True)
    assert f"pid {os.getpid()}@elsewhere.invalid" in str(foreign.value)
    assert f"remove {str(path)!r}" in str(foreign.value)
    dead = _dead_pid()
    _write_lock(d, pid=dead, host=host)
    capsys.readouterr()
    run_lock.acquire(str(d), chief=True).release()
    assert f"stale lock {str(path)!r} of pid {dead}@{host}" in capsys.readouterr().err


def _dead_pid() -> int:
    p = subprocess.Popen([PYTHON, "-c", "pass"])
    p.wait()
    assert not run_lock.pid_alive(p.pid)
    return p.pid


# ---------------------------------------------------------------- 4. skipping has a limit
@pytest.fixture(scope="module")
def exploding(tmp_path_factory) -> train_lib.Trainer:
    """AdamW at lr 1e6 with non-finite steps skipped: the loss turns NaN within steps."""
    return build_trainer(
        tmp_path_factory.mktemp("unused") / "run",
        *EVERY_20,
        "--gin.SKIP_NONFINITE_STEPS=True",
        "--gin.ADAMW_LR=1e6",
    )


def test_skipping_stops_after_too_many_nonfinite_steps_in_a_row(exploding, tmp_path: Path):
    d = tmp_path / "run"
    with pytest.raises(train_lib.TrainingDiverged) as stopped:
        run_in(exploding, d)
    assert "10 consecutive non-finite steps skipped" in str(stopped.value)
    assert "train.max_consecutive_skipped_steps = 10" in str(stopped.value)
    train = [r for r in read_metrics(str(d)) if r["split"] == "train" and "loss" in r]
    assert train and train[-1]["skipped_steps"] > 0  # It really produced non-finite steps.
    assert not (d / "final.json").exists()


def test_a_nonfinite_final_evaluation_is_divergence(exploding, tmp_path: Path):
    d = tmp_path / "run"
    # No limit reached, one evaluation at the end: parameters finite but huge, eval NaN.
    limits = {"max_consecutive_skipped_steps": 10_000, "eval_every": 10_000}
    with pytest.raises(train_lib.TrainingDiverged, match="non-finite evaluation at step 60"):
        run_in(exploding, d, settings=limits)
    assert not (d / "final.json").exists()
    assert all(r["split"] != "eval" for r in read_metrics(str(d)))


# ---------------------------------------------------------------- 5. non-finite updates
def _finite_checkpoint(path: Path) -> bool:
    state = ocp.StandardCheckpointer().restore(str(path / "state"))
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
    return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating))


def test_an_update_that_breaks_the_parameters_is_never_checkpointed(tmp_path: Path, capsys):
    d = tmp_path / "run"
    # Step 40's loss is finite, its update makes the parameters Inf; 40 is a checkpoint step.
    argv = run_cmd(d, *EVERY_20, "--gin.train.inject_nonfinite_params_at_steps=[40]", steps=60)
    assert run_cli.main(argv[2:]) == 3
    err = capsys.readouterr().err
    assert "non-finite parameters or optimizer state after the update of step 40" in err, err
    assert "the last good checkpoint is step 20" in err
    assert checkpoint_steps(d) == [10, 20]
    assert all(_finite_checkpoint(d / "checkpoints" / str(s)) for s in (10, 20))
    train = [r for r in read_metrics(str(d)) if r["split"] == "train" and "loss" in r]
    assert [r["step"] for r in train] == [10, 20, 30]


# ---------------------------------------------------------------- 6. an early checkpoint
def test_a_run_dying_before_its_first_regular_checkpoint_keeps_an_early_one(
    trainer, reference: Path, tmp_path: Path
):
    d = tmp_path / "run"
    # Stopped at step 15, before checkpoint 20: the first log step (10) was saved.
    assert not run_in(trainer, d, stop_after=15)["finished"]
    assert checkpoint_steps(d) == [10]
    assert run_in(trainer, d)["finished"]
    assert numbers(d) == numbers(reference)
    assert checkpoint_steps(d) == [20, 40, 60]


def test_first_checkpoint_at_is_validated(tmp_path: Path, capsys):
    argv = run_cmd(tmp_path / "run", "--gin.train.first_checkpoint_at=-1", steps=20)[2:]
    assert run_cli.main(argv) == 2
    assert "train.first_checkpoint_at must be None" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. what data a run reads
def test_describe_data_is_readable_for_every_task_kind(trainer, tmp_path: Path):
    from experiments.data.char_text import CharTextTask
    from experiments.data.images import ImageClassificationTask
    from experiments.data.sources import TextFileSource, TfdsSource
    from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
    from experiments.data.tokenizers import ByteTokenizer
    from experiments.data.word_lm import WordLMTask

    text = "\n".join(f"the cat {i % 7} sat on the mat {i % 5} ." for i in range(400))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<unk>\n<eos>\nthe\ncat\nsat\non\nmat\n.\n")

    quick = trainer.describe_data()
    assert quick["task"] == "CharTextTask"
    assert quick["dataset"] == "generated_text(num_chars=20000, seed=0)"
    assert sum(quick["split_tokens"].values()) == 20000

    char = train_lib.describe_data(CharTextTask(str(corpus), block_size=8))
    assert char["dataset"] == str(corpus) and char["vocabulary"]["size"] > 10

    words = train_lib.describe_data(
        WordLMTask(str(corpus), seq_length=4, vocab_path=str(vocab), valid_path=str(corpus))
    )
    assert words["valid_path"] == str(corpus)
    assert words["vocabulary"] == {"path": str(vocab), "size": 8}

    mlm = train_lib.describe_data(MaskedLMTask(TextFileSource(str(corpus)), "char", 16))
    assert mlm["source"] == "TextFileSource" and mlm["path"] == str(corpus)
    assert mlm["vocabulary"]["tokenizer"] == "CharTokenizer"

    span = train_lib.describe_data(SpanCorruptionTask(str(corpus), "byte", 16, 8))
    assert span["path"] == str(corpus) and span["vocabulary"]["tokenizer"] == "ByteTokenizer"

    digits = train_lib.describe_data(ImageClassificationTask("digits"))
    assert digits["dataset"] == "digits"
    assert digits["splits"] == {
        "train": "permutation[359:]",
        "val": "permutation[:180]",
        "test": "permutation[180:359]",
    }

    # A TFDS source (never downloads, so none is prepared here): its attributes alone.
    tfds = object.__new__(TfdsSource)
    tfds.name, tfds.data_dir = "c4/en", "/data/tfds"
    tfds.split_names = {"train": "train", "validation": "validation"}
    task = object.__new__(SpanCorruptionTask)
    task.source, task.tokenizer = tfds, ByteTokenizer()
    c4 = train_lib.describe_data(task)
    assert c4["dataset"] == "c4/en" and c4["data_dir"] == "/data/tfds"
    assert c4["splits"] == tfds.split_names

    for description in (quick, char, words, mlm, span, digits, c4):
        assert " at 0x" not in json.dumps(description)


def test_restored_nonfinite_checkpoint_is_not_used(trainer, reference: Path, tmp_path: Path):
    """A checkpoint with NaN values (as earlier versions saved as "last good") is damaged."""
    d = copy_unfinished(reference, tmp_path)
    manager = ocp.CheckpointManager(str(d / "checkpoints"))
    restored = manager.restore(60)
    state = restored["state"]
    poisoned = jax.tree_util.tree_map(
        lambda x: np.full_like(x, np.nan) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
        state,
    )
    shutil.rmtree(d / "checkpoints" / "60")
    manager.reload()
    manager.save(
        60,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(poisoned), meta=ocp.args.JsonSave(restored["meta"])
        ),
    )
    manager.wait_until_finished()
    manager.close()
    assert run_in(trainer, d)["finished"]
    assert numbers(d) == numbers(reference)
    assert math.isfinite(json.loads((d / "final.json").read_text())["eval"]["loss"])
    assert (d / "checkpoints" / "60.corrupt").is_dir()
