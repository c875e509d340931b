"""Every experiment file parses with every optimizer file, the optimizer files cannot
override an experiment's values, and paper-scale runs stop before training, naming the
missing data."""

from __future__ import annotations

import re
from pathlib import Path

import gin
import pytest

from launch.run import OPTIMIZERS, load_gin, optimizer_file
from tests.launch.harness_helpers import PYTHON, REPO, run

GIN = REPO / "gin_configs"
EXPERIMENTS = sorted(p.stem for p in (GIN / "experiments").glob("*.gin"))
MACRO_DEFINITION = re.compile(r"^\s*[A-Z][A-Z0-9_]*\s*=", re.MULTILINE)


def _parse(files: list[str]) -> dict:
    """gin's whole configuration after parsing ``files`` (bindings and macros)."""
    import launch.configurables  # noqa: F401

    gin.clear_config()
    gin.add_config_file_search_path(str(GIN))
    gin.parse_config_files_and_bindings(files, None, finalize_config=False)
    # repr: a configurable reference compares by identity, and copying one evaluates it.
    return {
        key: {n: repr(v) for n, v in params.items()} for key, params in gin.config._CONFIG.items()
    }


def test_the_arms_are_amos_and_adamw():
    assert OPTIMIZERS == ["adamw", "amos"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_files_set_no_value_of_their_own(optimizer: str):
    """An optimizer file only binds its factory's arguments to macros: it defines no macro
    and gives no literal, so where it comes in gin's order cannot matter."""
    text = (GIN / optimizer_file(optimizer)).read_text()
    assert not MACRO_DEFINITION.search(text), text
    bindings = [line for line in text.splitlines() if line and not line.startswith("#")]
    for line in bindings:
        value = line.split("=", 1)[1].strip()
        assert value.startswith(("%", "@")), line


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_experiment_parses_with_each_optimizer_unchanged(experiment: str, optimizer: str):
    try:
        alone = _parse([f"experiments/{experiment}.gin"])
        composed = _parse([f"experiments/{experiment}.gin", optimizer_file(optimizer)])
        # Every value the experiment sets survives the optimizer file.
        for key, params in alone.items():
            for name, value in params.items():
                assert composed[key][name] == value, (key, name)
        gin.clear_config()
        load_gin([f"experiments/{experiment}.gin", optimizer_file(optimizer)], [], [])
        assert gin.query_parameter("train.optimizer").selector == f"{optimizer}_optimizer"
        steps = gin.query_parameter("%TRAIN_STEPS")
        assert isinstance(steps, int) and steps > 0
        # Every knob the optimizer file reads is defined by the experiment.
        text = (GIN / optimizer_file(optimizer)).read_text()
        for macro in re.findall(r"%([A-Z][A-Z0-9_]*)", text):
            gin.query_parameter(f"%{macro}")
        warmup = gin.query_parameter("%WARMUP_STEPS")
        assert isinstance(warmup, int) and 0 <= warmup < steps
        if steps >= 100_000:  # Paper scale: the reference's 10k warmup, or 5 epochs.
            assert warmup in (10_000, 1950, 6255) or "lstm" in experiment
    finally:
        gin.clear_config()


@pytest.mark.parametrize(
    "experiment,optimizer,culprit",
    [
        ("bert_base", "amos", "'wikipedia/20230601.en'"),
        ("t5_small", "adamw", "'c4/en'"),
        ("lstm_ptb", "amos", "data/ptb/ptb.train.txt"),
        ("resnet18_cifar10", "adamw", "'cifar10'"),
    ],
)
def test_paper_scale_runs_name_the_missing_data(
    experiment: str, optimizer: str, culprit: str, tmp_path: Path
):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    bindings = [f"--gin.DATA_DIR='{data_dir}'"] if "lstm" not in experiment else []
    result = run(
        [
            PYTHON,
            str(REPO / "launch" / "run.py"),
            f"--gin_file=experiments/{experiment}.gin",
            f"--optimizer={optimizer}",
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            *bindings,
        ]
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert culprit in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
