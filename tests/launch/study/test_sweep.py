"""launch/sweep.py: the protocol's grid, the pick on validation only, the summary's rows,
and one tiny sweep end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.errors import ConfigError
from launch.study import sweep
from tests.launch.harness_helpers import PYTHON, REPO, TINY, fake_run, run_tool_in_process


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


def _trials(opt: str, losses: dict[float, float | None]) -> list[sweep.Trial]:
    """Finished (or, at None, diverged) trials of one optimizer at the given factors."""
    return [
        sweep.Trial(opt, sweep.KNOBS[opt], f, f, f"x_{f:g}", "", "finished" if v else "diverged", v)
        for f, v in losses.items()
    ]


def test_a_pick_on_the_grids_edge_gives_every_optimizer_one_more_trial():
    grid = sweep.grid_factors(5)
    factors = {"amos": grid, "adamw": grid}
    # The quickstart's first sweep: AdamW's best is its largest rate, Amos' is inside.
    amos = _trials("amos", {1 / 8: 2.69, 1 / 4: 2.42, 1 / 2: 2.24, 1: 2.62, 2: 3.12})
    adamw = _trials("adamw", {1 / 8: 3.22, 1 / 4: 3.06, 1 / 2: 2.95, 1: 2.83, 2: 2.67})
    # AdamW beyond its edge (4x); Amos beyond the edge of its better side (1/4 < 1: down).
    assert sweep.extension_factors(amos + adamw, factors) == {"amos": 1 / 16, "adamw": 4.0}
    # Every pick inside: no round. An optimizer without a finished trial: none either.
    inside = _trials("adamw", {1 / 8: 3.2, 1 / 4: 3.0, 1 / 2: 2.7, 1: 2.8, 2: 2.9})
    assert sweep.extension_factors(amos + inside, factors) is None
    assert sweep.extension_factors(amos + _trials("adamw", {1: None}), factors) is None
    # A pick at the bottom edge goes below; a diverged neighbour counts as the worst side.
    low = _trials("amos", {1 / 8: 2.0, 1 / 4: 2.1, 1 / 2: 2.2, 1: 2.3, 2: 2.4})
    by_divergence = _trials("adamw", {1 / 8: 3.2, 1 / 4: 3.0, 1 / 2: 2.9, 1: 2.8, 2: None})
    assert sweep.extension_factors(low + by_divergence, factors) == {
        "amos": 1 / 16,
        "adamw": 1 / 16,
    }


def test_the_edge_rounds_are_planned_from_the_runs_on_disk(tmp_path: Path):
    recipes = {"amos": 0.05, "adamw": 1e-3}
    # Final validation losses per factor of a 3-trial grid; AdamW's best is 2x, its edge.
    finals = {"amos": {0.5: 2.0, 1.0: 2.2, 2.0: 2.3}, "adamw": {0.5: 2.4, 1.0: 2.1, 2.0: 1.9}}
    for opt, losses in finals.items():
        for f, v in losses.items():
            label = sweep.trial_label(sweep.KNOBS[opt], recipes[opt] * f)
            fake_run(sweep.trial_dir(tmp_path, opt, label, 0), [v + 0.5, v], [v + 0.5, v])
    factors, rounds = sweep.planned_factors(tmp_path, recipes, 3)
    # Round 1 is planned, not yet run: AdamW at 4x, Amos below its grid (its best is 1/2).
    assert (factors, rounds) == ({"amos": [0.5, 1.0, 2.0, 0.25], "adamw": [0.5, 1.0, 2.0, 4.0]}, 1)
    missing = [t for t in sweep.read_trials(tmp_path, recipes, factors) if t.status == "missing"]
    assert [(t.optimizer, t.label) for t in missing] == [
        ("amos", "xi_0.0125"),
        ("adamw", "lr_0.004"),
    ]
    # Run them: AdamW's 4x is worse, so its pick 2x is inside now; Amos' 1/4 is worse too.
    for t, v in zip(missing, [2.05, 2.5], strict=True):
        fake_run(t.run_dir, [v + 0.5, v], [v + 0.5, v])
    assert sweep.planned_factors(tmp_path, recipes, 3) == (factors, 1)
    trials = sweep.read_trials(tmp_path, recipes, factors)
    assert [t.factor for t in trials if t.optimizer == "amos"] == [0.25, 0.5, 1.0, 2.0]
    assert [(r.name, r.trial.factor) for r in sweep.summary_rows(trials)] == [
        ("amos", 0.5),
        ("amos_untuned", 1.0),
        ("adamw", 2.0),
    ]
    # No rounds at all with --extensions=0.
    assert sweep.planned_factors(tmp_path, recipes, 3, 0)[1] == 0


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
def test_a_tiny_sweep_trains_summarizes_and_skips_finished_runs(
    tmp_path: Path, capsys, monkeypatch
):
    parent, results = tmp_path / "runs", tmp_path / "results"
    cmd = [
        PYTHON,
        str(REPO / "launch" / "sweep.py"),
        "--experiment=quickstart",
        "--trials=1",  # the pick among trials and the edge rule have their own tests
        "--extensions=0",
        "--seeds=1",
        f"--parent={parent}",
        f"--results={results}",
        "--gin.TRAIN_STEPS=20",
        "--gin.EVAL_EVERY=10",
        "--gin.WARMUP_STEPS=2",
        *TINY,
    ]
    p = run_tool_in_process(sweep.main, cmd[2:], capsys, monkeypatch)
    assert p.returncode == 0, p.stderr[-3000:]
    for opt, label in [("amos", "xi_0.053"), ("adamw", "lr_0.001")]:  # the recipe values
        d = parent / opt / label / "seed_0"
        assert (d / "final.json").exists(), d
        final = json.loads((d / "final.json").read_text())
        assert {"loss", "test_loss"} <= set(final["eval"])  # both splits evaluated
    record = json.loads((results / "sweep.json").read_text())
    picked = {opt: v["trial"] for opt, v in record["picked"].items()}
    assert picked == {"amos": "xi_0.053", "adamw": "lr_0.001"}  # the only trials
    for opt, label in picked.items():  # Amos' pick is its guidance value: one run, two rows
        assert (parent / opt / label / "seed_1" / "final.json").exists()
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
    p2 = run_tool_in_process(sweep.main, cmd[2:], capsys, monkeypatch)
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


# ------------------------------------------------ more arms: the plug-and-play schedules
PNP = ("adam_pnp_isq", "adam_pnp_itime")


def test_the_plug_and_play_arms_tune_their_half_life():
    # T's recipe value: a quarter of each horizon (500 and 1000 steps).
    assert sweep.recipe_settings("schedules_nanogpt_cpu", "adam_pnp_isq", []) == {
        "PNP_HALF_LIFE": 125.0
    }
    assert sweep.recipe_value("schedules_resnet_cpu", "adam_pnp_itime", []) == 250.0
    # The GPT's AdamW arm is on the paper's linear decay to 0 there.
    assert sweep.recipe_settings("schedules_nanogpt_cpu", "adamw", []) == {
        "ADAMW_LR": 1e-3,
        "ADAMW_MIN_LR": 0.0,
    }
    assert [sweep.trial_label("PNP_HALF_LIFE", v) for v in sweep.grid(125.0, 5)] == [
        "T_15.625",
        "T_31.25",
        "T_62.5",
        "T_125",
        "T_250",
    ]
    trial = sweep.Trial("adam_pnp_itime", "PNP_HALF_LIFE", 0.5, 62.5, "T_62.5", "")
    assert sweep.run_bindings(["--gin.BATCH_SIZE=8"], trial, {"PNP_HALF_LIFE": 125.0}) == [
        "--gin.BATCH_SIZE=8",
        "--gin.PNP_HALF_LIFE=62.5",
        "--gin.EVAL_SPLITS=['val', 'test']",
    ]
    with pytest.raises(ConfigError, match="no gin file defines the macro PNP_LR"):
        sweep.recipe_settings("quickstart", "adam_pnp_isq", [])


def _fake_pnp_runs(parent: Path, recipes: dict[str, float], seeds: list[int]) -> None:
    """3-trial runs of the plug-and-play arms: isq best at T factor 1/2, itime at 2."""
    finals = {
        "adam_pnp_isq": {0.5: 1.9, 1.0: 2.0, 2.0: 2.3},
        "adam_pnp_itime": {0.5: 2.2, 1.0: 2.1, 2.0: 2.05},
    }
    for opt in PNP:
        for factor, value in zip(sweep.grid_factors(3), sweep.grid(recipes[opt], 3)):
            val = finals[opt][factor]
            for seed in [0, *seeds]:
                d = sweep.trial_dir(parent, opt, sweep.trial_label("PNP_HALF_LIFE", value), seed)
                fake_run(d, [val + 0.5, val + 0.01 * seed], [val + 0.6, val + 0.02 * seed])


def test_a_sweep_over_four_arms_keeps_adamw_the_baseline_and_amos_untuned(tmp_path: Path):
    parent, out = tmp_path / "runs", tmp_path / "results"
    recipes = {"amos": 0.05, "adamw": 1e-3, "adam_pnp_isq": 125.0, "adam_pnp_itime": 125.0}
    _fake_sweep(parent, {k: recipes[k] for k in ("amos", "adamw")}, 3, [1, 2])
    _fake_pnp_runs(parent, recipes, [1, 2])
    trials = sweep.read_trials(parent, recipes, 3)
    assert [t.label for t in trials if t.optimizer == "adam_pnp_isq"] == [
        "T_62.5",
        "T_125",
        "T_250",
    ]
    s = sweep.summarize("fake", parent, out, recipes, trials, [1, 2], ["launch/sweep.py"])
    assert list(s["optimizers"]) == ["amos", "amos_untuned", "adamw", *PNP]
    assert s["baseline"] == "adamw" and s["target_eval_loss"] == pytest.approx(2.115)
    isq, itime = (s["optimizers"][k] for k in PNP)
    assert (isq["knob"], isq["knob_value"], isq["trial"]) == ("PNP_HALF_LIFE", 62.5, "T_62.5")
    assert (itime["knob_value"], itime["tuned"]) == (250.0, True)
    assert isq["run_dirs"][1].endswith("adam_pnp_isq/T_62.5/seed_2")
    assert isq["final_eval_loss"] == [1.91, 1.92] and isq["final_test_loss"] == [1.92, 1.94]
    record = json.loads((out / "sweep.json").read_text())
    assert record["knobs"] == {
        "amos": "AMOS_XI",
        "adamw": "ADAMW_LR",
        "adam_pnp_isq": "PNP_HALF_LIFE",
        "adam_pnp_itime": "PNP_HALF_LIFE",
    }
    assert record["picked"]["adam_pnp_itime"] == {
        "knob": "PNP_HALF_LIFE",
        "value": 250.0,
        "factor": 2.0,
        "trial": "T_250",
    }
    assert (out / "runs" / "adam_pnp_itime" / "T_62.5" / "seed_0" / "final.json").exists()
    # A ladder rung of these arms takes their picks too.
    _, rows = sweep.ladder_rows(out, recipes)
    assert [(r.name, r.trial.label) for r in rows][-2:] == [
        ("adam_pnp_isq", "T_62.5"),
        ("adam_pnp_itime", "T_250"),
    ]


def test_the_arms_and_the_continuation_are_checked(capsys):
    for argv, message in [
        (["--arms=amos,sgd"], "--arms=amos,sgd: a list without repeats of amos, adamw"),
        (["--arms=amos,amos"], "--arms=amos,amos: a list without repeats"),
        (["--continue_to=1"], "--continue_to=1 must be at least 2"),
    ]:
        with pytest.raises(SystemExit):
            sweep.main(["--experiment=quickstart", "--resummarize", *argv])
        assert message in capsys.readouterr().err


# -------------------------------------------------------- past the planned horizon
def _finished_run(d: Path, val: list[float], test: list[float], *, step: int) -> Path:
    """A finished run of `step` steps, with what run.py leaves beside the records: its
    checkpoints, TensorBoard events, a stale lock and an eval-only record."""
    fake_run(d, val, test, every=step // len(val))
    for s in (step // 2, step):
        (d / "checkpoints" / str(s)).mkdir(parents=True)
        (d / "checkpoints" / str(s) / "state").write_text(f"state {s}")
    (d / "train").mkdir()
    (d / "train" / "events.out").write_text("events")
    (d / "run.lock").write_text("{}")
    (d / f"eval_{step}.json").write_text("{}")
    return d


def test_a_continued_run_is_a_copy_of_the_planned_one_to_resume(tmp_path: Path):
    source = _finished_run(tmp_path / "a" / "seed_1", [3.0, 2.0], [3.1, 2.1], step=20)
    dest = tmp_path / "b" / "seed_1"
    sweep.copy_for_continuation(source, dest, 20)
    assert sorted(p.name for p in dest.iterdir()) == [
        "checkpoints",
        "config.gin",
        "metrics.jsonl",
        "run.json",
        "train",
    ]
    assert (dest / "checkpoints" / "20" / "state").read_text() == "state 20"
    assert (dest / "metrics.jsonl").read_text() == (source / "metrics.jsonl").read_text()
    assert sweep.run_status(dest) == ("missing", None)  # run.py resumes it
    assert (source / "final.json").exists() and (source / "run.lock").exists()  # untouched
    # Made once: a second call leaves the (now resumed) copy alone.
    (dest / "metrics.jsonl").write_text("resumed\n")
    sweep.copy_for_continuation(source, dest, 20)
    assert (dest / "metrics.jsonl").read_text() == "resumed\n"
    # A run that did not end at the planned horizon with its checkpoint cannot continue.
    with pytest.raises(ConfigError, match="no checkpoint of step 40"):
        sweep.copy_for_continuation(source, tmp_path / "c", 40)
    assert not (tmp_path / "c").exists()


def test_the_continued_runs_pin_adamws_horizon_only():
    adamw = sweep.Trial("adamw", "ADAMW_LR", 1.0, 1e-3, "lr_0.001", "")
    recipe = {"ADAMW_LR": 1e-3, "ADAMW_MIN_LR": 0.0}
    assert sweep.continuation_bindings(["--gin.TRAIN_STEPS=20"], adamw, recipe, 20, 2) == [
        "--gin.TRAIN_STEPS=20",
        "--gin.ADAMW_LR=0.001",
        "--gin.ADAMW_MIN_LR=0.0",
        "--gin.EVAL_SPLITS=['val', 'test']",
        "--gin.TRAIN_STEPS=40",  # after the user's: gin's last binding wins
        "--gin.adamw_optimizer.horizon_steps=20",
    ]
    for opt, knob in [("amos", "AMOS_XI"), ("adam_pnp_isq", "PNP_HALF_LIFE")]:
        t = sweep.Trial(opt, knob, 1.0, 0.05, "x", "")
        assert sweep.continuation_bindings([], t, {knob: 0.05}, 500, 3)[-1] == (
            "--gin.TRAIN_STEPS=1500"
        )


def test_continue_rows_copies_trains_and_summarizes_who_kept_improving(tmp_path: Path, monkeypatch):
    parent, out = tmp_path / "runs", tmp_path / "results" / "continued_2x"
    rows = [
        sweep.Row("amos", sweep.Trial("amos", "AMOS_XI", 1.0, 0.05, "xi_0.05", ""), True),
        sweep.Row("amos_untuned", sweep.Trial("amos", "AMOS_XI", 1.0, 0.05, "xi_0.05", ""), False),
        sweep.Row("adamw", sweep.Trial("adamw", "ADAMW_LR", 1.0, 1e-3, "lr_0.001", ""), True),
    ]
    # At 1x (step 20): amos 2.0 / 2.2, adamw 2.1 / 2.1; seed 2 of adamw did not finish.
    for opt, label, seed, val in [
        ("amos", "xi_0.05", 1, 2.0),
        ("amos", "xi_0.05", 2, 2.2),
        ("adamw", "lr_0.001", 1, 2.1),
    ]:
        _finished_run(
            sweep.trial_dir(parent, opt, label, seed), [3.0, val], [3.1, val + 0.1], step=20
        )
    # Continued to 40: amos improves (by 0.3 on val), adamw stays where its schedule ended,
    # re-evaluated to within float32 rounding (as the GPT's frozen AdamW runs were).
    after = {"amos": -0.3, "adamw": -1e-7}
    calls = []

    def train(experiment, optimizer, seed, directory, bindings):
        calls.append((optimizer, seed, directory.relative_to(tmp_path).as_posix(), bindings[-1]))
        if (directory / "final.json").exists():  # As sweep.train: a finished run is skipped.
            return "finished"
        before = json.loads((directory / "metrics.jsonl").read_text().splitlines()[-1])
        val, test = before["loss"] + after[optimizer], before["test_loss"] + after[optimizer]
        fake_run(directory, [3.0, before["loss"], val, val], [3.1, before["test_loss"], test, test])
        return "finished"

    monkeypatch.setattr(sweep, "train", train)
    settings = {"amos": {"AMOS_XI": 0.05}, "adamw": {"ADAMW_LR": 1e-3, "ADAMW_MIN_LR": 0.0}}
    sweep.continue_rows("fake", parent, rows, [1, 2], settings, [], 20, 2)
    # Seed-major; amos_untuned shares amos' runs (the second call finds it finished);
    # adamw's seed 2 did not finish at 1x: nothing to continue.
    assert [c[:3] for c in calls] == [
        ("amos", 1, "runs_continued_2x/amos/xi_0.05/seed_1"),
        ("amos", 1, "runs_continued_2x/amos/xi_0.05/seed_1"),
        ("adamw", 1, "runs_continued_2x/adamw/lr_0.001/seed_1"),
        ("amos", 2, "runs_continued_2x/amos/xi_0.05/seed_2"),
        ("amos", 2, "runs_continued_2x/amos/xi_0.05/seed_2"),
    ]
    assert calls[2][3] == "--gin.adamw_optimizer.horizon_steps=20"
    assert calls[0][3] == "--gin.TRAIN_STEPS=40"

    s = sweep.summarize_continuation("fake", parent, out, rows, [1, 2], 20, 2, ["sweep"])
    amos, adamw = s["optimizers"]["amos"], s["optimizers"]["adamw"]
    assert amos["continued_seeds"] == [1, 2] and adamw["continued_seeds"] == [1]
    assert amos["val_loss_planned"] == [2.0, 2.2]
    assert amos["val_loss_continued"] == pytest.approx([1.7, 1.9])
    assert amos["val_loss_change_mean"] == pytest.approx(-0.3)
    assert (amos["val_seeds_improved"], adamw["val_seeds_improved"]) == (2, 0)
    assert adamw["test_loss_change_mean"] == pytest.approx(-1e-7)  # not an improvement
    assert (amos["planned_steps"], amos["continued_steps"]) == (20, 40)
    assert s["baseline"] == "adamw" and s["continue_to"] == 2
    assert s["horizon_bindings"] == {"adamw": "adamw_optimizer.horizon_steps = 20"}
    assert amos["run_dirs"][0].endswith("runs_continued_2x/amos/xi_0.05/seed_1")
    md = (out / "summary.md").read_text()
    assert "continued to 2x the planned horizon (20 -> 40 steps" in md
    assert "| amos | 2 | 2.1000 | 1.8000 | -0.3000 | 2/2 |" in md
    assert (out / "runs" / "adamw" / "lr_0.001" / "seed_1" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_tiny_schedules_sweep_continues_past_the_horizon(
    tmp_path: Path, capsys, monkeypatch, shakespeare
):
    """adamw and adam_pnp_isq on the GPT, one trial and one seed each, then both seeds'
    runs continued to 2x: AdamW's rate is 0 past its planned horizon, the plug-and-play
    rate still positive, and the planned runs are untouched."""
    parent, results = tmp_path / "runs", tmp_path / "results"
    cmd = [
        PYTHON,
        str(REPO / "launch" / "sweep.py"),
        "--experiment=schedules_nanogpt_cpu",
        "--arms=adamw,adam_pnp_isq",
        "--trials=1",
        "--extensions=0",
        "--seeds=1",
        "--continue_to=2",
        f"--parent={parent}",
        f"--results={results}",
        "--gin.TRAIN_STEPS=20",
        "--gin.EVAL_EVERY=10",
        "--gin.WARMUP_STEPS=2",
        "--gin.CHECKPOINT_EVERY=10",
        "--gin.BATCH_SIZE=8",
        "--gin.BLOCK_SIZE=16",
        "--gin.gpt_model.width=32",
        "--gin.gpt_model.num_layers=1",
        "--gin.EVAL_BATCHES=2",
        "--gin.LOG_EVERY=10",
    ]
    p = run_tool_in_process(sweep.main, cmd[2:], capsys, monkeypatch)
    assert p.returncode == 0, p.stderr[-3000:]
    for opt, label in [("adamw", "lr_0.001"), ("adam_pnp_isq", "T_125")]:
        planned = parent / opt / label / "seed_1"
        continued = tmp_path / "runs_continued_2x" / opt / label / "seed_1"
        assert json.loads((planned / "final.json").read_text())["step"] == 20
        assert json.loads((continued / "final.json").read_text())["step"] == 40
        records = [
            json.loads(line) for line in (continued / "metrics.jsonl").read_text().splitlines()
        ]
        before = (planned / "metrics.jsonl").read_text().splitlines()
        assert (continued / "metrics.jsonl").read_text().splitlines()[: len(before)] == before
        rates = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
        assert sorted(rates) == [10, 20, 30, 40]
        if opt == "adamw":
            assert rates[30] == rates[40] == 0.0 and rates[20] > 0
        else:  # alpha_0 / ((sqrt(2) - 1) * 39 / 125 + 1)**2 at step 40
            assert rates[40] == pytest.approx(0.0277 / ((2**0.5 - 1) * 39 / 125 + 1) ** 2)
    s = json.loads((results / "continued_2x" / "summary.json").read_text())
    assert list(s["optimizers"]) == ["adamw", "adam_pnp_isq"]
    assert s["optimizers"]["adamw"]["end_learning_rate"] == [0.0]
    assert "val_loss_continued" in s["optimizers"]["adam_pnp_isq"]
    assert (results / "summary.json").exists() and (
        results / "continued_2x" / "summary.md"
    ).exists()
