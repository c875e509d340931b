"""Every run file parses; paper-scale runs stop before training, naming the missing data."""

from __future__ import annotations

from pathlib import Path

import gin
import pytest

from launch.run import load_gin
from tests.launch.harness_helpers import PYTHON, REPO, run

RUN_FILES = sorted(p.name for p in (REPO / "gin_configs" / "runs").glob("*.gin"))


@pytest.mark.parametrize("run_file", RUN_FILES)
def test_run_file_parses_with_its_optimizer(run_file: str):
    gin.clear_config()
    try:
        load_gin([f"runs/{run_file}"], [], [])
        optimizer = gin.query_parameter("train.optimizer").selector
        steps = gin.query_parameter("%TRAIN_STEPS")
    finally:
        gin.clear_config()
    expected = "amos_optimizer" if run_file.endswith("_amos.gin") else "adamw"
    assert expected in optimizer, (run_file, optimizer)
    assert isinstance(steps, int) and steps > 0


@pytest.mark.parametrize(
    "run_file,culprit",
    [
        ("bert_base_amos.gin", "'wikipedia/20230601.en'"),
        ("t5_small_adamw.gin", "'c4/en'"),
        ("lstm_ptb_amos.gin", "data/ptb/ptb.train.txt"),
        ("resnet18_cifar10_adamw.gin", "'cifar10'"),
    ],
)
def test_paper_scale_runs_name_the_missing_data(run_file: str, culprit: str, tmp_path: Path):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    bindings = [f"--gin.DATA_DIR='{data_dir}'"] if "lstm" not in run_file else []
    result = run(
        [
            PYTHON,
            str(REPO / "launch" / "run.py"),
            f"--gin_file=runs/{run_file}",
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            *bindings,
        ]
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert culprit in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
