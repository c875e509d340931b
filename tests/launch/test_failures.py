"""Configuration mistakes stop launch/run.py before training, naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import run as run_cli
from tests.launch.harness_helpers import run, run_cmd

CASES = [
    (["--gin_file=experiments/no_such_file.gin"], "no_such_file.gin"),
    (["--gin.TRAIN_STEP=5"], "unknown gin macro 'TRAIN_STEP'"),
    (["--gin.train.no_such_setting=1"], "no_such_setting"),
    (["--gin.no_such_configurable.x=1"], "no_such_configurable"),
    (["--gin.BATCH_SIZE=0"], "BATCH_SIZE must be a positive integer"),
    (["--gin.gpt_model.num_heads=3"], "not divisible by num_heads=3"),
    (
        ["--gin.CORPUS_PATH='/no/such/corpus.txt'", "--gin_file=experiments/nanogpt_cpu.gin"],
        "corpus file not found: '/no/such/corpus.txt' (gin binding CORPUS_PATH)",
    ),
]


@pytest.mark.parametrize(("extra", "message"), CASES)
def test_bad_configuration_fails_before_training(tmp_path: Path, capsys, extra, message):
    # In-process (main() is what the script runs) to keep the suite fast; the subprocess
    # test below checks the exit status end to end.
    d = tmp_path / "run"
    files = [a for a in extra if a.startswith("--gin_file")]
    argv = run_cmd(d, *[a for a in extra if a not in files], steps=20, tiny=not files)[2:]
    if files:
        argv = [*files, *argv[1:]]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert not (d / "metrics.jsonl").exists()


def test_an_experiment_without_an_optimizer_names_the_choices(tmp_path: Path, capsys):
    argv = ["--gin_file=experiments/quickstart.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no optimizer: pass --optimizer=adamw|amos" in err, err


def test_exit_status_and_message_in_a_subprocess(tmp_path: Path):
    d = tmp_path / "run"
    p = run(run_cmd(d, "--gin.EVAL_EVRY=5", steps=20))
    assert p.returncode == 2
    assert "unknown gin macro 'EVAL_EVRY'" in p.stderr
    assert not d.exists()
