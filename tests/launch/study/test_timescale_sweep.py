"""launch/timescale_sweep.py: the tau_epoch grid, each setting's horizon and train-set size,
the weight decay of each timescale, the best per setting on validation only, and the
transfer check; on hand-made runs, and one tiny sweep end to end."""

from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

import pytest

from experiments.errors import ConfigError
from launch.study import sweep
from launch.study import timescale_sweep as ts
from tests.launch.harness_helpers import PYTHON, REPO, fake_run, run_tool_in_process

EXPERIMENT = "timescale_resnet_cpu"


def test_the_grid_is_powers_of_two_around_the_recipe():
    assert ts.tau_factors(7) == [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]
    assert ts.tau_factors(3) == [1 / 2, 1, 2]
    assert ts.tau_factors(4) == [1 / 4, 1 / 2, 1, 2]
    assert ts.tau_factors(1) == [1]
    with pytest.raises(ConfigError, match="--taus=0"):
        ts.tau_factors(0)
    assert sweep.trial_label(ts.TAU, 5 / 8) == "tau_0.625"
    assert sweep.trial_label(ts.WEIGHT_DECAY, 8.90125) == "wd_8.90125"


def _args(**kw) -> Namespace:
    base = dict(
        experiment=EXPERIMENT,
        taus=3,
        fractions="1,0.25",
        widths="16,8",
        horizon="epochs",
        new_fraction=0.5,
        new_width=None,
    )
    return Namespace(**{**base, **kw})


def test_each_setting_counts_its_examples_and_keeps_the_reference_epochs():
    recipe, settings, new = ts.plan_settings(_args(), [])
    assert (recipe["ADAMW_LR"], recipe["ADAMW_TAU_EPOCHS"], recipe["BATCH_SIZE"]) == (1e-3, 5.0, 32)
    assert [(s.label, s.train_examples, s.train_steps, s.warmup_steps) for s in settings] == [
        ("subset_1_width_16", 1438, 1000, 100),
        ("subset_1_width_8", 1438, 1000, 100),
        # A quarter of the images for the same 22.3 epochs: 1000 * 359 / 1438 = 249.7 steps.
        ("subset_0.25_width_16", 359, 250, 25),
        ("subset_0.25_width_8", 359, 250, 25),
    ]
    assert settings[0].epochs == pytest.approx(1000 * 32 / 1438)
    assert settings[2].epochs == pytest.approx(250 * 32 / 359)
    assert (new.label, new.train_examples, new.train_steps) == ("subset_0.5_width_16", 719, 500)
    assert settings[3].bindings() == [
        "--gin.TRAIN_SUBSET=0.25",
        "--gin.MODEL_WIDTH=8",
        "--gin.TRAIN_STEPS=250",
        "--gin.WARMUP_STEPS=25",
    ]
    # --horizon steps: every setting trains TRAIN_STEPS, a quarter for 4x the epochs.
    _, by_steps, _ = ts.plan_settings(_args(horizon="steps", widths="16"), [])
    assert [(s.train_steps, round(s.epochs, 1)) for s in by_steps] == [(1000, 22.3), (1000, 89.1)]
    # The default widths: the experiment's and half of it; a --gin binding moves the recipe.
    _, default, _ = ts.plan_settings(_args(widths=None), ["--gin.TRAIN_STEPS=400"])
    assert [(s.width, s.train_steps) for s in default[:2]] == [(16, 400), (8, 400)]
    with pytest.raises(ConfigError, match="train_subset must be a fraction"):
        ts.plan_settings(_args(fractions="1,2"), [])


def test_a_trial_binds_its_timescale_or_its_weight_decay():
    _, settings, _ = ts.plan_settings(_args(fractions="0.25", widths="8"), [])
    (s,) = settings
    tau = sweep.Trial("adamw", ts.TAU, 0.5, 2.5, "tau_2.5", "")
    assert ts.trial_bindings(["--gin.EVAL_BATCHES=2"], s, tau) == [
        "--gin.EVAL_BATCHES=2",
        *s.bindings(),
        "--gin.ADAMW_TAU_EPOCHS=2.5",
        "--gin.EVAL_SPLITS=['val', 'test']",
    ]
    wd = sweep.Trial("adamw", ts.WEIGHT_DECAY, 1.0, 17.8, "wd_17.8", "")
    assert ts.trial_bindings([], s, wd)[-3:-1] == [
        "--gin.ADAMW_TAU_EPOCHS=None",
        "--gin.ADAMW_WEIGHT_DECAY=17.8",
    ]
    # The weight decay of a timescale, by hand: 32 / (1e-3 * 359 * 2.5) = 35.65.
    record = ts.trial_record(tau, s, 1e-3)
    assert record["weight_decay"] == pytest.approx(32 / (1e-3 * 359 * 2.5))
    assert record["tau_iterations"] == pytest.approx(2.5 * 359 / 32)
    assert ts.trial_record(wd, s, 1e-3)["tau_epochs"] == pytest.approx(32 / (1e-3 * 359 * 17.8))


def test_the_sweeps_own_settings_are_not_bindings(capsys):
    with pytest.raises(SystemExit):
        ts.main([f"--experiment={EXPERIMENT}", "--gin.MODEL_WIDTH=8", "--resummarize"])
    assert "the sweep sets MODEL_DIR, SEED, EVAL_SPLITS, TRAIN_SUBSET" in capsys.readouterr().err


def _fake(trials: list[sweep.Trial], finals: dict[float, tuple[float, float]]) -> None:
    for t in trials:
        val, test = finals[t.factor]
        fake_run(t.run_dir, [val + 1.0, val], [test + 1.0, test])


def test_the_best_timescale_per_setting_and_the_transfer_check(tmp_path: Path):
    parent, out = tmp_path / "runs", tmp_path / "results"
    argv = [
        f"--experiment={EXPERIMENT}",
        "--taus=3",
        "--widths=16",
        f"--parent={parent}",
        f"--results={out}",
        "--resummarize",
    ]
    _, settings, new = ts.plan_settings(_args(widths="16"), [])
    # Validation picks tau 5 at full size and 10 (the grid's edge) at a quarter; the test
    # loss would pick otherwise, and is never used.
    _fake(
        ts.plan_trials(parent, settings[0], ts.TAU, 5.0, 3),
        {0.5: (0.3, 0.1), 1: (0.2, 0.3), 2: (0.25, 0.3)},
    )
    _fake(
        ts.plan_trials(parent, settings[1], ts.TAU, 5.0, 3),
        {0.5: (0.5, 0.1), 1: (0.45, 0.3), 2: (0.4, 0.3)},
    )
    assert ts.main(argv) == 0
    record = json.loads((out / "timescale.json").read_text())
    full, quarter = record["settings"]
    assert (full["best"]["tau_epochs"], full["best"]["at_grid_edge"]) == (5.0, False)
    assert (quarter["best"]["tau_epochs"], quarter["best"]["at_grid_edge"]) == (10.0, True)
    assert quarter["best"]["weight_decay"] == pytest.approx(32 / (1e-3 * 359 * 10))
    assert [t["chosen"] for t in full["trials"]] == [False, True, False]
    assert [t["final_test_loss"] for t in full["trials"]] == [0.1, 0.3, 0.3]
    # The transfer check: tau 5 predicts wd = 32 / (1e-3 * 719 * 5) = 8.90 at half the data.
    tr = record["transfer"]
    predicted = 32 / (1e-3 * 719 * 5)
    assert tr["predicted_weight_decay"] == pytest.approx(predicted)
    assert tr["reference_best_tau_epochs"] == 5.0 and tr["best"] is None  # not run yet
    direct = ts.plan_trials(parent, new, ts.WEIGHT_DECAY, predicted, 3, "transfer_")
    assert Path(direct[1].run_dir).relative_to(parent).parts[0] == "transfer_subset_0.5_width_16"
    _fake(direct, {0.5: (0.35, 0.3), 1: (0.31, 0.3), 2: (0.3, 0.3)})
    assert ts.main(argv) == 0
    tr = json.loads((out / "timescale.json").read_text())["transfer"]
    assert tr["best"]["weight_decay"] == pytest.approx(2 * predicted)
    assert tr["best_over_predicted"] == pytest.approx(2.0)
    assert tr["log2_best_over_predicted"] == pytest.approx(1.0)
    assert tr["val_loss_at_prediction"] == 0.31
    assert tr["val_loss_excess_at_prediction"] == pytest.approx(0.01)
    md = (out / "summary.md").read_text()
    assert "| subset_0.25_width_16 | 10 | 8.914 | 0.4000 | +1 | yes |" in md
    assert "Best direct wd / predicted = 2 (+1 grid steps) — at the grid's edge." in md
    assert (out / "timescale.png").stat().st_size > 0
    assert (out / "runs" / "transfer_subset_0.5_width_16" / "wd_17.8025" / "seed_0").is_dir()


@pytest.mark.slow
def test_a_tiny_timescale_sweep_trains_and_checks_the_transfer(tmp_path: Path, capsys, monkeypatch):
    parent, results = tmp_path / "runs", tmp_path / "results"
    cmd = [
        PYTHON,
        str(REPO / "launch" / "timescale_sweep.py"),
        f"--experiment={EXPERIMENT}",
        "--taus=1",
        "--fractions=1",
        "--widths=8",
        f"--parent={parent}",
        f"--results={results}",
        "--gin.TRAIN_STEPS=20",
        "--gin.WARMUP_STEPS=2",
        "--gin.EVAL_EVERY=10",
        "--gin.EVAL_BATCHES=2",
        "--gin.LOG_EVERY=10",
    ]
    p = run_tool_in_process(ts.main, cmd[2:], capsys, monkeypatch)
    assert p.returncode == 0, p.stderr[-3000:]
    record = json.loads((results / "timescale.json").read_text())
    (setting,) = record["settings"]
    assert setting["best"]["tau_epochs"] == 5.0 and setting["best"]["status"] == "finished"
    tr = record["transfer"]
    assert tr["setting"]["train_examples"] == 719 and tr["setting"]["train_steps"] == 10
    assert tr["best"]["weight_decay"] == pytest.approx(32 / (1e-3 * 719 * 5))
    # The run's operative config: the timescale set the decay, from the task's size.
    config = (parent / "subset_1_width_8" / "tau_5" / "seed_0" / "config.gin").read_text()
    assert "ADAMW_TAU_EPOCHS = 5.0" in config and "train_examples.task" in config


def test_the_edge_rule_extends_a_setting_until_its_optimum_is_bracketed(
    tmp_path: Path, monkeypatch
):
    """Losses chosen so that the best timescale is 8x the recipe's and the best direct weight
    decay a quarter of the prediction: the 3-trial grids' best trials are on an edge, and
    the sweep trains one trial a factor of 2 beyond it per round until they are not."""
    parent, out = tmp_path / "runs", tmp_path / "results"
    trained = []

    def fake_train(experiment, optimizer, seed, directory, bindings):
        value = {b.split("=")[0]: b.split("=", 1)[1] for b in bindings}
        tau, wd = value[f"--gin.{ts.TAU}"], value.get(f"--gin.{ts.WEIGHT_DECAY}")
        if tau != "None":  # The grid's loss is lowest at tau 40 (factor 8 of the recipe's 5).
            val = 0.1 + 0.05 * abs(math.log2(float(tau) / 40.0))
        else:  # The direct sweep's, at a quarter of the predicted weight decay.
            val = 0.2 + 0.05 * abs(math.log2(float(wd) / (predicted / 4)))
        fake_run(directory, [val + 1.0, val], [val + 1.0, val])
        trained.append(Path(directory).relative_to(parent).parts[:2])
        return "finished"

    monkeypatch.setattr(sweep, "train", fake_train)
    predicted = 32 / (1e-3 * 719 * 40)  # from the best tau 40, at half the data
    argv = [f"--experiment={EXPERIMENT}", "--taus=3", "--widths=16", "--fractions=1"]
    assert ts.main([*argv, f"--parent={parent}", f"--results={out}"]) == 0
    record = json.loads((out / "timescale.json").read_text())
    (setting,) = record["settings"]
    # Grid 2.5, 5, 10; then 20, 40 and 80 (three rounds), after which 40 is bracketed.
    assert [t["tau_epochs"] for t in setting["trials"]] == [2.5, 5, 10, 20, 40, 80]
    assert (setting["best"]["tau_epochs"], setting["best"]["at_grid_edge"]) == (40, False)
    tr = record["transfer"]
    assert tr["predicted_weight_decay"] == pytest.approx(predicted)
    # Grid 1/2, 1, 2 of the prediction, then 1/4 and 1/8: a quarter is bracketed.
    assert [t["factor"] for t in tr["trials"]] == [0.125, 0.25, 0.5, 1, 2]
    assert tr["best"]["factor"] == 0.25 and not tr["best"]["at_grid_edge"]
    assert tr["best_over_predicted"] == pytest.approx(0.25)
    assert len(trained) == 6 + 5 and record["max_extensions"] == 3
    # Resummarized, the extension trials on disk are found again, and nothing is trained.
    trained.clear()
    assert ts.main([*argv, f"--parent={parent}", f"--results={out}", "--resummarize"]) == 0
    again = json.loads((out / "timescale.json").read_text())
    assert again["settings"][0]["trials"] == setting["trials"] and not trained
    # With no rounds allowed, the grid's edge is where the best stays.
    assert ts.main([*argv, "--extensions=0", f"--parent={parent}", f"--results={out}"]) == 0
    edge = json.loads((out / "timescale.json").read_text())["settings"][0]["best"]
    assert (edge["tau_epochs"], edge["at_grid_edge"]) == (10, True)
