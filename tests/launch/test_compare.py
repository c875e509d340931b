"""launch/compare.py end to end on a tiny quickstart comparison."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from tests.launch.harness_helpers import PYTHON, REPO, TINY, env_with


@pytest.mark.slow
def test_compare_trains_summarizes_and_resummarizes(tmp_path: Path):
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
    p = subprocess.run(cmd, cwd=REPO, env=env_with(), capture_output=True, text=True, timeout=600)
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
    p2 = subprocess.run(
        cmd[:2]
        + [
            "--experiment",
            "quickstart",
            "--seeds",
            "2",
            f"--parent={parent}",
            f"--results={results}",
            "--resummarize",
        ],
        cwd=REPO,
        env=env_with(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "[compare] /" not in p2.stdout  # no training commands
    s2 = json.loads((results / "summary.json").read_text())
    assert {opt: v["final_eval_loss"] for opt, v in s2["optimizers"].items()} == before


@pytest.mark.slow
def test_quickstart_leaves_the_tracked_results_alone(tmp_path: Path):
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
    p = subprocess.run(cmd, cwd=REPO, env=env_with(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "results" / "summary.json").read_text())
    assert set(summary["optimizers"]) == {"amos", "adamw"}
    assert f"summary in {tmp_path / 'runs' / 'results'}" in p.stdout
    assert tracked.read_bytes() == before
