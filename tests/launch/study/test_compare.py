"""launch/compare.py end to end on a tiny quickstart comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gin
import pytest

from launch import quickstart
from launch import run as run_cli
from launch.study import compare
from tests.launch.harness_helpers import PYTHON, REPO, TINY, fake_run, run_tool_in_process


def _fake_comparison(parent: Path, with_test: bool = True) -> dict:
    """Two seeds of adamw and amos, and a row that never gets there, by hand. AdamW's mean
    final test loss is (2.1 + 2.3) / 2 = 2.2."""
    curves = {
        "adamw": [([3.0, 2.5, 2.0], [3.1, 2.6, 2.1]), ([3.0, 2.4, 2.2], [3.1, 2.5, 2.3])],
        "amos": [([2.5, 2.0, 1.9], [2.4, 2.1, 2.0]), ([2.9, 2.8, 2.7], [2.6, 2.2, 2.1])],
        "slow": [([3.0, 2.9, 2.8], [3.0, 2.9, 2.8]), ([3.0, 2.9, 2.8], [3.0, 2.9, 2.8])],
    }
    rows = {}
    for name, seeds in curves.items():
        rows[name] = []
        for seed, (val, test) in enumerate(seeds):
            d = fake_run(parent / name / f"seed_{seed}", val, test if with_test else None)
            rows[name].append((seed, d))
    return rows


def test_the_summary_reports_the_test_split_beside_validation(tmp_path: Path):
    parent, out = tmp_path / "runs", tmp_path / "results" / "fake"
    s = compare.summarize_runs("fake", parent, _fake_comparison(parent), out, ["cmd"])
    assert math.isclose(s["target_test_loss"], 2.2)
    assert s["target_test_definition"] == "mean final test loss of adamw over its seeds"
    assert math.isclose(s["target_eval_loss"], 2.1)  # validation as before
    a, m, slow = (s["optimizers"][k] for k in ("adamw", "amos", "slow"))
    assert a["final_test_loss"] == [2.1, 2.3] and math.isclose(a["final_test_loss_mean"], 2.2)
    assert math.isclose(a["final_test_loss_std"], 0.2 / math.sqrt(2))
    # Per seed: adamw seed 0 crosses 2.2 between steps 20 (2.6) and 30 (2.1), at 28; seed 1
    # ends at 2.3, above it. The seed-mean curve reaches it at its last evaluation.
    steps = a["steps_to_test_target_per_seed"]
    assert math.isclose(steps[0], 28.0) and steps[1] is None
    assert a["runs_reaching_test_target"] == 1
    assert a["steps_to_test_target_mean"] == 30.0 and a["test_steps_ratio_to_baseline"] == 1.0
    # Amos: its mean test curve 2.5, 2.15, 2.05 crosses at 10 + 10 * 0.3 / 0.35 steps.
    assert math.isclose(m["steps_to_test_target_mean"], 10 + 10 * 0.3 / 0.35)
    assert math.isclose(m["time_to_test_target_s_mean"], 1 + 0.3 / 0.35)
    assert math.isclose(m["test_steps_ratio_to_baseline"], (10 + 10 * 0.3 / 0.35) / 30)
    assert math.isclose(m["steps_to_test_target_per_seed"][0], 10 + 10 * 0.2 / 0.3)
    assert math.isclose(m["steps_to_test_target_per_seed"][1], 20.0)
    assert slow["steps_to_test_target_mean"] == "never"
    assert slow["test_steps_ratio_to_baseline"] == slow["test_time_ratio_to_baseline"] == "never"
    assert slow["steps_to_test_target_per_seed"] == [None, None]
    # On validation Amos' mean curve (2.7, 2.4, 2.3) never gets to adamw's 2.1.
    assert m["steps_to_target_mean"] == "never"
    md = (out / "summary.md").read_text()
    assert "Test split: target = mean final test loss of adamw over its seeds = 2.2000." in md
    assert "| slow | 2 | 2.8000 ± 0.0000 | never | never | never | never | never, never |" in md
    assert "| amos | 2 | 2.0500 ± 0.0707 | 19 | 0.619 | 1.9 | 0.619 | 17, 20 |" in md
    # Each run's records, at its path below the parent.
    assert (out / "runs" / "amos" / "seed_1" / "metrics.jsonl").exists()


def test_without_test_evaluations_the_summary_is_as_before(tmp_path: Path):
    parent, out = tmp_path / "runs", tmp_path / "results" / "fake"
    s = compare.summarize_runs("fake", parent, _fake_comparison(parent, False), out, ["cmd"])
    assert "target_test_loss" not in s
    assert not any("test" in key for v in s["optimizers"].values() for key in v)
    assert "Test split" not in (out / "summary.md").read_text()


@pytest.mark.slow
def test_compare_trains_summarizes_and_resummarizes(tmp_path: Path, capsys, monkeypatch):
    parent, results = tmp_path / "runs", tmp_path / "results"
    cmd = [
        PYTHON,
        str(REPO / "launch" / "compare.py"),
        "--experiment",
        "quickstart",
        "--seeds",
        "2",
        f"--parent={parent}",
        f"--results={results}",
        "--gin.TRAIN_STEPS=40",
        "--gin.EVAL_EVERY=10",
        *TINY,
    ]
    p = run_tool_in_process(compare.main, cmd[2:], capsys, monkeypatch)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| amos |" in p.stdout and "tensorboard --logdir" in p.stdout
    s = json.loads((results / "summary.json").read_text())
    assert set(s["optimizers"]) == {"amos", "adamw"} and s["baseline"] == "adamw"
    finals = {
        opt: [json.loads((parent / opt / f"seed_{k}" / "final.json").read_text()) for k in range(2)]
        for opt in ["amos", "adamw"]
    }
    target = sum(f["eval"]["loss"] for f in finals["adamw"]) / 2
    assert math.isclose(s["target_eval_loss"], target, rel_tol=1e-12)
    for opt, v in s["optimizers"].items():
        losses = [f["eval"]["loss"] for f in finals[opt]]
        assert v["final_eval_loss"] == losses
        assert math.isclose(
            v["final_eval_loss_std"], abs(losses[0] - losses[1]) / math.sqrt(2), rel_tol=1e-9
        )
        assert v["slot_bytes"] == finals[opt][0]["slot_bytes"]
    a = s["optimizers"]["adamw"]
    assert a["slot_bytes_ratio_to_baseline"] == 1.0
    assert s["optimizers"]["amos"]["slot_bytes_ratio_to_baseline"] < 0.6
    # On the seed-mean curve AdamW reaches its own mean final loss at its last step.
    assert a["steps_to_target_mean"] == 40.0 and a["steps_ratio_to_baseline"] == 1.0
    assert a["runs_reaching_target"] >= 1
    assert s["git"]["revision"] is None or len(s["git"]["revision"]) == 40
    assert s["machine"]["device_count"] >= 1 and s["command"]
    assert (results / "loss_curves.png").stat().st_size > 10_000
    assert (results / "config_amos.gin").exists() and "| adamw |" in (
        results / "summary.md"
    ).read_text()

    # Re-summarizing trains nothing and reproduces the numbers.
    before = {opt: v["final_eval_loss"] for opt, v in s["optimizers"].items()}
    resummarize = [
        *("--experiment", "quickstart", "--seeds", "2"),
        f"--parent={parent}",
        f"--results={results}",
        "--resummarize",
    ]
    p2 = run_tool_in_process(compare.main, resummarize, capsys, monkeypatch)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "[compare] /" not in p2.stdout  # no training commands
    s2 = json.loads((results / "summary.json").read_text())
    assert {opt: v["final_eval_loss"] for opt, v in s2["optimizers"].items()} == before


@pytest.mark.slow
def test_quickstart_leaves_the_tracked_results_alone(tmp_path: Path, capsys, monkeypatch):
    """`make quickstart` summarizes beside its runs (<parent>/results), never into the
    versioned results/quickstart/, so a new user's checkout stays clean."""
    tracked = REPO / "results" / "quickstart" / "summary.json"
    before = tracked.read_bytes()
    cmd = [
        PYTHON,
        str(REPO / "launch" / "quickstart.py"),
        "--seeds",
        "1",
        f"--parent={tmp_path / 'runs'}",
        "--gin.TRAIN_STEPS=20",
        "--gin.EVAL_EVERY=10",
        *TINY,
    ]
    p = run_tool_in_process(quickstart.main, cmd[2:], capsys, monkeypatch)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "results" / "summary.json").read_text())
    assert set(summary["optimizers"]) == {"amos", "adamw"}
    assert f"summary in {tmp_path / 'runs' / 'results'}" in p.stdout
    assert tracked.read_bytes() == before


def test_a_parent_with_a_quote_and_a_space_reaches_gin_intact(tmp_path: Path):
    directory = tmp_path / "it's runs" / "adamw" / "seed_0"
    command = compare.train_command("quickstart", "adamw", 0, directory, [])
    args, bindings = run_cli.parse_args(command[2:])
    run_cli.load_gin(args.gin_file, bindings, [])
    assert gin.query_parameter("%MODEL_DIR") == str(directory)
