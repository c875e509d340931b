"""launch/sweep.py: the protocol's grid, the pick on validation only, the summary's rows,
and one tiny sweep end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiments.errors import ConfigError
from launch import sweep
from tests.launch.harness_helpers import PYTHON, REPO, TINY, env_with, fake_run


def test_grid_is_the_protocols_log_grid():
    assert sweep.grid_factors(5) == [1 / 8, 1 / 4, 1 / 2, 1, 2]
    assert sweep.grid(0.053, 5) == [0.053 / 8, 0.053 / 4, 0.053 / 2, 0.053, 0.106]
    assert sweep.grid(1e-3, 5) == [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3]
    # Fewer trials keep the recipe value and the step above it, and drop the smallest.
    assert sweep.grid_factors(1) == [1]
    assert sweep.grid_factors(2) == [1, 2]
    assert sweep.grid_factors(3) == [1 / 2, 1, 2]
    with pytest.raises(ConfigError, match="--trials=0"):
        sweep.grid_factors(0)
    assert sweep.trial_label("AMOS_XI", 0.053 / 8) == "xi_0.006625"
    assert sweep.trial_label("ADAMW_LR", 2e-3) == "lr_0.002"


def test_the_recipe_values_are_read_from_the_experiments_gin():
    assert sweep.recipe_value("quickstart", "adamw", []) == 1e-3
    assert sweep.recipe_value("quickstart", "amos", []) == 0.053
    assert sweep.recipe_value("lstm_cpu", "adamw", []) == 5e-4
    # A --gin binding moves the recipe value, as it would in run.py.
    assert sweep.recipe_value("quickstart", "adamw", ["--gin.ADAMW_LR=3e-3"]) == 3e-3
    with pytest.raises(ConfigError, match="ADAMW_LR = 'high'"):
        sweep.recipe_value("quickstart", "adamw", ["--gin.ADAMW_LR='high'"])


def test_a_trial_scales_the_settings_coupled_to_its_knob():
    # nanoGPT's cosine ends at min_lr = lr / 10: a trial at 2x the rate ends at 2x min_lr.
    assert sweep.recipe_settings("quickstart", "adamw", []) == {
        "ADAMW_LR": 1e-3,
        "ADAMW_MIN_LR": 1e-4,
    }
    assert sweep.recipe_settings("quickstart", "amos", []) == {"AMOS_XI": 0.053}
    # The paper's linear decay ends at 0, at every rate.
    assert sweep.recipe_settings("bert_cpu", "adamw", [])["ADAMW_MIN_LR"] == 0.0
    recipe = {"ADAMW_LR": 1e-3, "ADAMW_MIN_LR": 1e-4}
    trial = sweep.Trial("adamw", "ADAMW_LR", 2.0, 2e-3, "lr_0.002", "")
    assert sweep.run_bindings(["--gin.BATCH_SIZE=8"], trial, recipe) == [
        "--gin.BATCH_SIZE=8",
        "--gin.ADAMW_LR=0.002",
        "--gin.ADAMW_MIN_LR=0.0002",
        "--gin.EVAL_SPLITS=['val', 'test']",
    ]
    amos = sweep.Trial("amos", "AMOS_XI", 0.25, 0.05 / 4, "xi_0.0125", "")
    assert sweep.run_bindings([], amos, {"AMOS_XI": 0.05})[0] == "--gin.AMOS_XI=0.0125"
    with pytest.raises(ConfigError, match="ADAMW_MIN_LR = -1.0 in quickstart.gin"):
        sweep.recipe_settings("quickstart", "adamw", ["--gin.ADAMW_MIN_LR=-1.0"])


def test_the_sweeps_own_settings_are_not_bindings(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--experiment=quickstart", "--gin.SEED=4", "--resummarize"])
    assert "the sweep sets MODEL_DIR, SEED, EVAL_SPLITS itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--experiment=no_such_experiment"])
    assert "no experiment file" in capsys.readouterr().err


def _trial(value: float, loss: float | None, status: str = "finished") -> sweep.Trial:
    return sweep.Trial("adamw", "ADAMW_LR", value / 1e-3, value, f"lr_{value:g}", "", status, loss)


def test_pick_is_the_lowest_final_validation_loss_ties_to_the_smaller_value():
    trials = [_trial(1e-3, 2.5), _trial(2e-3, 2.1), _trial(5e-4, 2.3)]
    assert sweep.pick(trials).value == 2e-3
    # A tie goes to the smaller value, whatever the order of the trials.
    tied = [_trial(2e-3, 2.1), _trial(1e-3, 2.1), _trial(4e-3, 2.1)]
    assert sweep.pick(tied).value == 1e-3
    # Diverged and missing trials are never picked; none finished: no pick.
    assert sweep.pick([_trial(4e-3, None, "diverged"), _trial(1e-3, 2.9)]).value == 1e-3
    assert sweep.pick([_trial(4e-3, None, "diverged"), _trial(1e-3, None, "missing")]) is None


def _fake_sweep(parent: Path, recipes: dict[str, float], trials: int, seeds: list[int]):
    """Runs of a 3-trial sweep by hand. The test loss and the validation loss disagree:
    each optimizer's best test loss is at a trial whose validation loss is not the best."""
    # (val, test) final losses per factor 1/2, 1, 2.
    finals = {
        "amos": {0.5: (2.0, 1.5), 1.0: (2.2, 1.9), 2.0: (1.8, 2.4)},
        "adamw": {0.5: (2.4, 1.7), 1.0: (2.1, 2.2), 2.0: (None, None)},  # 2x: diverged
    }
    for opt, recipe in recipes.items():
        knob = sweep.KNOBS[opt]
        for factor, value in zip(sweep.grid_factors(trials), sweep.grid(recipe, trials)):
            val, test = finals[opt][factor]
            label = sweep.trial_label(knob, value)
            for seed in [0, *seeds]:
                d = sweep.trial_dir(parent, opt, label, seed)
                if val is None:
                    fake_run(d, [3.0], [3.0], status="diverged")
                else:  # Fresh seeds a little worse than the tuning seed, each its own.
                    v, t = val + 0.01 * seed, test + 0.01 * seed
                    fake_run(
                        d, [v + 0.5, v], [t + 0.5, t], slot_bytes=500 if opt == "amos" else 1000
                    )


def test_the_pick_never_looks_at_the_test_loss_and_the_summary_has_three_rows(tmp_path: Path):
    parent, out = tmp_path / "runs", tmp_path / "results"
    recipes = {"amos": 0.05, "adamw": 1e-3}
    _fake_sweep(parent, recipes, 3, [1, 2])
    trials = sweep.read_trials(parent, recipes, 3)
    assert [(t.optimizer, t.factor, t.status) for t in trials] == [
        ("amos", 0.5, "finished"),
        ("amos", 1.0, "finished"),
        ("amos", 2.0, "finished"),
        ("adamw", 0.5, "finished"),
        ("adamw", 1.0, "finished"),
        ("adamw", 2.0, "diverged"),
    ]
    # Amos: validation picks factor 2 (1.8), test would pick 1/2 (1.5); AdamW: validation
    # picks factor 1 (2.1), test would pick 1/2 (1.7).
    assert sweep.pick([t for t in trials if t.optimizer == "amos"]).factor == 2.0
    assert sweep.pick([t for t in trials if t.optimizer == "adamw"]).factor == 1.0

    s = sweep.summarize("fake", parent, out, recipes, trials, [1, 2], ["launch/sweep.py"])
    assert list(s["optimizers"]) == ["amos", "amos_untuned", "adamw"]
    amos, untuned, adamw = (s["optimizers"][k] for k in ("amos", "amos_untuned", "adamw"))
    assert (amos["tuned"], untuned["tuned"], adamw["tuned"]) == (True, False, True)
    assert (amos["knob_value"], amos["knob_factor"]) == (0.1, 2.0)
    assert (untuned["knob_value"], untuned["knob_factor"]) == (0.05, 1.0)
    assert (adamw["knob"], adamw["knob_value"]) == ("ADAMW_LR", 1e-3)
    assert s["picked"] == {
        "amos": {"knob": "AMOS_XI", "value": 0.1, "factor": 2.0, "trial": "xi_0.1"},
        "adamw": {"knob": "ADAMW_LR", "value": 1e-3, "factor": 1.0, "trial": "lr_0.001"},
    }
    # The rows are the fresh seeds (1, 2) at the pick, reported on test and validation.
    assert amos["seeds"] == [1, 2] and amos["run_dirs"][0].endswith("amos/xi_0.1/seed_1")
    assert amos["final_eval_loss"] == [1.81, 1.82]
    assert adamw["final_test_loss"] == [2.21, 2.22]
    assert s["target_test_loss"] == pytest.approx(2.215)
    assert untuned["final_test_loss"] == [1.91, 1.92]

    record = json.loads((out / "sweep.json").read_text())
    chosen = [(t["optimizer"], t["factor"]) for t in record["trials"] if t["chosen"]]
    assert chosen == [("amos", 2.0), ("adamw", 1.0)]
    assert [t["final_val_loss"] for t in record["trials"]] == [2.0, 2.2, 1.8, 2.4, 2.1, None]
    assert not any("test" in key for t in record["trials"] for key in t)  # validation only
    assert record["trials"][-1]["status"] == "diverged"
    md = (out / "summary.md").read_text()
    assert "| adamw | ADAMW_LR | 2 | 0.002 | diverged | — |  |" in md
    assert "| amos | AMOS_XI | 2 | 0.1 | finished | 1.8000 | yes |" in md
    assert "Test split: target" in md
    for name in ("tuning_curves.png", "loss_curves.png", "config_amos_untuned.gin"):
        assert (out / name).stat().st_size > 0
    # Every run's records, trials included, at their place below the parent.
    assert (out / "runs" / "adamw" / "lr_0.002" / "seed_0" / "run.json").exists()
    assert (out / "runs" / "amos" / "xi_0.1" / "seed_2" / "final.json").exists()


@pytest.mark.slow
def test_a_tiny_sweep_trains_summarizes_and_skips_finished_runs(tmp_path: Path):
    parent, results = tmp_path / "runs", tmp_path / "results"
    cmd = [
        PYTHON,
        str(REPO / "launch" / "sweep.py"),
        "--experiment=quickstart",
        "--trials=2",
        "--seeds=1",
        f"--parent={parent}",
        f"--results={results}",
        "--gin.TRAIN_STEPS=20",
        "--gin.EVAL_EVERY=10",
        "--gin.WARMUP_STEPS=2",
        *TINY,
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env_with(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    trials = {
        ("amos", "xi_0.053"),
        ("amos", "xi_0.106"),
        ("adamw", "lr_0.001"),
        ("adamw", "lr_0.002"),
    }
    for opt, label in trials:
        d = parent / opt / label / "seed_0"
        assert (d / "final.json").exists(), d
        final = json.loads((d / "final.json").read_text())
        assert {"loss", "test_loss"} <= set(final["eval"])  # both splits evaluated
    record = json.loads((results / "sweep.json").read_text())
    picked = {opt: v["trial"] for opt, v in record["picked"].items()}
    for opt, label in picked.items():
        assert (parent / opt / label / "seed_1" / "final.json").exists()
    assert (parent / "amos" / "xi_0.053" / "seed_1" / "final.json").exists()  # untuned
    s = json.loads((results / "summary.json").read_text())
    assert list(s["optimizers"]) == ["amos", "amos_untuned", "adamw"]
    assert [v["tuned"] for v in s["optimizers"].values()] == [True, False, True]
    assert all(v["seeds"] == [1] and "final_test_loss_mean" in v for v in s["optimizers"].values())
    assert s["optimizers"]["adamw"]["steps_to_test_target_mean"] == 20.0
    for name in ("summary.md", "tuning_curves.png", "loss_curves.png"):
        assert (results / name).stat().st_size > 0
    assert (results / "runs" / "adamw" / "lr_0.001" / "seed_0" / "metrics.jsonl").exists()

    # A rerun trains nothing: every run is finished, and the summary is the same.
    before = {k: v["final_test_loss"] for k, v in s["optimizers"].items()}
    p2 = subprocess.run(cmd, cwd=REPO, env=env_with(), capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "launch/run.py" not in p2.stdout and "already finished; skipping" in p2.stdout
    s2 = json.loads((results / "summary.json").read_text())
    assert {k: v["final_test_loss"] for k, v in s2["optimizers"].items()} == before


def test_a_ladder_rung_trains_the_sweeps_picks_at_its_own_horizon(tmp_path: Path):
    """--picks_from: no trials; the source sweep's picks and Amos' guidance value, with
    fresh seeds under the rung's own parent, summarized as a rung naming its source."""
    recipes = {"amos": 0.05, "adamw": 1e-3}
    _fake_sweep(tmp_path / "runs", recipes, 3, [1, 2])
    source = tmp_path / "results" / "fake"
    trials = sweep.read_trials(tmp_path / "runs", recipes, 3)
    sweep.summarize("fake", tmp_path / "runs", source, recipes, trials, [1, 2], ["sweep"])

    record, rows = sweep.ladder_rows(source, recipes)
    assert [(r.name, r.trial.label, r.tuned) for r in rows] == [
        ("amos", "xi_0.1", True),
        ("amos_untuned", "xi_0.05", False),
        ("adamw", "lr_0.001", True),
    ]
    # The rung's runs: its own parent, the picked labels, better losses than at 1x.
    rung_parent, rung_out = tmp_path / "rung_runs", tmp_path / "results" / "fake_4x"
    for row, val in zip(rows, [1.5, 1.6, 1.7], strict=True):
        for seed in (1, 2):
            d = sweep.trial_dir(rung_parent, row.trial.optimizer, row.trial.label, seed)
            fake_run(d, [val + 0.5, val], [val + 0.6, val + 0.1])
    rung_trials = [sweep.Trial(**t) for t in record["trials"]]
    s = sweep.summarize(
        "fake_4x", rung_parent, rung_out, recipes, rung_trials, [1, 2], ["sweep"], (source, record)
    )
    assert list(s["optimizers"]) == ["amos", "amos_untuned", "adamw"]
    assert s["optimizers"]["amos"]["run_dirs"][0].endswith("rung_runs/amos/xi_0.1/seed_1")
    assert s["optimizers"]["adamw"]["final_test_loss"] == [1.8, 1.8]
    assert s["picks_from"] == str(source) and s["picked"] == record["picked"]
    rung = json.loads((rung_out / "sweep.json").read_text())
    assert (rung["picks_from"], rung["source_experiment"]) == (str(source), "fake")
    assert "a rung of the horizon ladder" in (rung_out / "summary.md").read_text()
    assert not (rung_out / "tuning_curves.png").exists()  # no trials of its own

    with pytest.raises(ConfigError, match="its AMOS_XI recipe value is 0.05, this exp"):
        sweep.ladder_rows(source, {"amos": 0.06, "adamw": 1e-3})
    with pytest.raises(ConfigError, match="a ladder rung, not a sweep"):
        sweep.ladder_rows(rung_out, recipes)
    with pytest.raises(ConfigError, match="no sweep.json there"):
        sweep.ladder_rows(tmp_path, recipes)
