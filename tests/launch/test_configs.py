"""Every experiment file parses with every optimizer file, the optimizer files cannot
override an experiment's values, and paper-scale runs stop before training, naming the
missing data."""

from __future__ import annotations

import re
from pathlib import Path

import gin
import pytest

from launch import run as run_cli
from launch.run import OPTIMIZERS, load_gin, optimizer_file
from tests.launch.harness_helpers import REPO

GIN = REPO / "gin_configs"
EXPERIMENTS = sorted(p.stem for p in (GIN / "experiments").glob("*.gin"))
MACRO_DEFINITION = re.compile(r"^\s*[A-Z][A-Z0-9_]*\s*=", re.MULTILINE)
# The study's arms run with every experiment; the plug-and-play arms (issue 12) with the
# schedules study's experiment files, which define their knobs.
STUDY_ARMS = ["adamw", "amos"]
PNP_ARMS = ["adam_pnp_isq", "adam_pnp_itime"]
SCHEDULES = [e for e in EXPERIMENTS if e.startswith("schedules_")]
PAIRS = [(e, o) for e in EXPERIMENTS for o in STUDY_ARMS] + [
    (e, o) for e in SCHEDULES for o in PNP_ARMS
]


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


def test_the_arms_are_amos_adamw_and_the_plug_and_play_schedules():
    assert OPTIMIZERS == [*STUDY_ARMS, *PNP_ARMS]
    assert SCHEDULES == ["schedules_nanogpt_cpu", "schedules_resnet_cpu"]


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


@pytest.mark.parametrize(("experiment", "optimizer"), PAIRS)
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
    experiment: str, optimizer: str, culprit: str, tmp_path: Path, capsys
):
    """In process (run.py's main; tests/launch/test_failures.py proves the exit status of
    the script itself in a subprocess): exit 2 naming the data, nothing trained."""
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    bindings = [f"--gin.DATA_DIR='{data_dir}'"] if "lstm" not in experiment else []
    status = run_cli.main(
        [
            f"--gin_file=experiments/{experiment}.gin",
            f"--optimizer={optimizer}",
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            *bindings,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    assert culprit in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("optimizer", PNP_ARMS)
def test_a_plug_and_play_arm_needs_an_experiment_that_defines_its_knobs(optimizer: str):
    """Run with an experiment that does not define PNP_*, the arm stops at the
    configuration, naming the first missing macro (run.py: exit 2, one line)."""
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="no gin file defines the macro PNP_LR"):
        load_gin(["experiments/quickstart.gin", optimizer_file(optimizer)], [], [])
    gin.clear_config()


@pytest.mark.parametrize(
    ("experiment", "horizon", "half_life"),
    [("schedules_nanogpt_cpu", 500, 125.0), ("schedules_resnet_cpu", 1000, 250.0)],
)
def test_the_schedules_study_files(experiment: str, horizon: int, half_life: float):
    """Each keeps its base experiment's values, puts AdamW on the paper's linear decay to 0,
    and derives T's recipe value from the horizon: TRAIN_STEPS / 4."""
    try:
        load_gin([f"experiments/{experiment}.gin", "optimizers/adam_pnp_isq.gin"], [], [])
        values = {
            m: gin.query_parameter(f"%{m}")
            for m in ("TRAIN_STEPS", "PNP_HALF_LIFE", "ADAMW_SCHEDULE", "ADAMW_MIN_LR", "PNP_LR")
        }
        xi = gin.query_parameter("%AMOS_XI")
    finally:
        gin.clear_config()
    assert values["TRAIN_STEPS"] == horizon and values["PNP_HALF_LIFE"] == horizon / 4
    assert values["PNP_HALF_LIFE"] == half_life
    assert (values["ADAMW_SCHEDULE"], values["ADAMW_MIN_LR"]) == ("linear_decay", 0.0)
    assert values["PNP_LR"] == xi  # alpha_0 at the Amos guidance


@pytest.mark.parametrize(
    ("experiment", "width_binding", "examples", "weight_decay"),
    [
        # A quarter of the digits' 1438 training images; wd = 32 / (1e-3 * 359 * 5).
        ("timescale_resnet_cpu", "resnet_model.width", 359, 32 / (1e-3 * 359 * 5)),
        # A quarter of Tiny Shakespeare's 1,003,854 training characters, in windows of 64:
        # 250,963 // 64 = 3921; wd = 12 / (1e-3 * 3921 * 0.4).
        ("timescale_nanogpt_cpu", "gpt_model.width", 3921, 12 / (1e-3 * 3921 * 0.4)),
    ],
)
def test_the_timescale_files_set_the_decay_from_the_task(
    experiment: str, width_binding: str, examples: int, weight_decay: float, request
):
    """ADAMW_TAU_EPOCHS sets AdamW's weight decay from the task's own train-set size (of
    TRAIN_SUBSET), and MODEL_WIDTH reaches the model."""
    import jax.numpy as jnp

    if "nanogpt" in experiment:
        request.getfixturevalue("shakespeare")
    # No warmup and a constant rate: the first update of theta = 1 is -lr * wd.
    bindings = ["TRAIN_SUBSET = 0.25", "WARMUP_STEPS = 0", "ADAMW_SCHEDULE = 'constant'"]
    try:
        load_gin([f"experiments/{experiment}.gin", "optimizers/adamw.gin"], bindings, [])
        n = gin.get_configurable("train_examples")()
        width = gin.query_parameter(width_binding)
        spec = gin.query_parameter("train.optimizer").scoped_configurable_fn(100)
    finally:
        gin.clear_config()
    assert n == examples and width.scoped_selector == "MODEL_WIDTH/gin.macro"
    params = {"k": jnp.ones((2, 2))}
    updates, _ = spec.tx.update({"k": jnp.zeros((2, 2))}, spec.tx.init(params), params)
    assert float(updates["k"][0, 0]) == pytest.approx(-1e-3 * weight_decay, rel=1e-5)


def _amos_settings(experiment: str, names: list[str]) -> dict:
    """The experiment's macros `names` under the Amos arm, a call (`@xi_guidance()`)
    evaluated, as the sweeps read them."""
    from launch.study.sweep import gin_values

    return gin_values(experiment, "amos", [], names)


def test_amos_xi_defaults_to_the_guidance_counted_from_the_task():
    """vit_cpu sets no AMOS_XI: its run and its sweeps get 1/sqrt(N), N = the digits'
    1438 training images / 32 per batch."""
    guidance = (1438 / 32) ** -0.5
    assert _amos_settings("vit_cpu", ["AMOS_XI"])["AMOS_XI"] == pytest.approx(guidance, rel=1e-12)
    try:
        load_gin(["experiments/vit_cpu.gin", "optimizers/amos.gin"], [], [])
        spec = gin.query_parameter("train.optimizer").scoped_configurable_fn(1000)
    finally:
        gin.clear_config()
    assert float(spec.learning_rate(1000)) == pytest.approx(guidance, rel=1e-6)  # warmed up


# The experiments with committed study results keep the xi their runs used.
STUDIED = sorted(
    {
        p.name
        for edition in ("study", "study2")
        for p in (REPO / "results" / edition).iterdir()
        if (GIN / "experiments" / f"{p.name}.gin").is_file()
    }
)


@pytest.mark.parametrize("experiment", STUDIED)
def test_a_studied_experiment_keeps_its_xi_within_a_tenth_of_the_guidance(
    experiment: str, shakespeare
):
    """Its AMOS_XI, computed by hand before xi_guidance existed, is a number that the
    guidance from its own task confirms (so the pin cannot drift from the recipe)."""
    from launch.optimizers import xi_guidance

    try:
        load_gin([f"experiments/{experiment}.gin", "optimizers/amos.gin"], [], [])
        xi = gin.query_parameter("%AMOS_XI")
        task = gin.query_parameter("%TASK").scoped_configurable_fn()
        guidance = xi_guidance(task, gin.query_parameter("%BATCH_SIZE"))
    finally:
        gin.clear_config()
    assert isinstance(xi, float)
    assert abs(xi / guidance - 1) < 0.10, (xi, guidance)
