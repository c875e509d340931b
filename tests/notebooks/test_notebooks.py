"""Every notebook runs headless without a cell error, and the headline table's numbers are
the summary.json values they come from."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest

from notebooks.execute import REPO, execute, sources

RESULTS = REPO / "results"
CLAIMS = {"steps": 0.70, "time": 0.70, "memory": 0.51}  # Reference section 3.


def run(name: str, tmp_path: Path, **env: str):
    source = REPO / "notebooks" / f"{name}.py"
    return execute(source, env={"AMOS_NOTEBOOK_OUT": str(tmp_path), **env}, timeout=300)


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first markdown table, keyed by its header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def close(cell: str, value) -> bool:
    """``cell`` is ``value`` printed to the decimals it shows ("never" stays "never")."""
    if not isinstance(value, (int, float)):
        return cell == str(value)
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return math.isclose(float(cell), value, abs_tol=0.5 * 10**-decimals + 1e-12)


def claim_verdict(ratio, claim: float) -> str:
    if ratio == "never":
        return "never reached"
    return "met" if ratio <= claim else "not met"


def test_kernel_is_this_python_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Wherever the caller runs, the kernel runs in the repo.
    source = tmp_path / "probe.py"
    source.write_text("# %%\nimport os, sys\nprint(sys.executable)\nprint(os.getcwd())\n")
    (output,) = execute(source, timeout=60).cells[0].outputs
    assert output["text"].split() == [sys.executable, str(REPO)]


def test_there_is_a_notebook_per_analysis():
    assert {s.stem for s in sources()} == {
        "headline_table",
        "loss_curves",
        "tuning_curves",
        "slot_memory",
        "horizon_ladder",
        "plug_and_play",
        "ema_timescale",
        "memory_fit",
    }


@pytest.fixture(scope="module")
def headline(tmp_path_factory) -> str:
    """The headline table the notebook writes from results/."""
    out = tmp_path_factory.mktemp("headline")
    run("headline_table", out)
    return (out / "headline_table.md").read_text()


def sections(markdown: str) -> dict[str, str]:
    """The text under each `## ` heading."""
    parts = re.split(r"^## (.*)$", markdown, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


STUDY = 'The study, first edition (README, "The reproduction study: protocol")'
SECOND = 'The study, second edition (README, "The study\'s second edition: protocol")'
EARLIER = "The earlier comparisons (untuned, before the protocol)"
# The summary fields each table shows: the study reports test, the earlier ones eval.
FIELDS = {
    STUDY: (
        "final_test_loss",
        "steps_to_test_target_mean",
        "test_steps_ratio_to_baseline",
        "test_time_ratio_to_baseline",
    ),
    EARLIER: (
        "final_eval_loss",
        "steps_to_target_mean",
        "steps_ratio_to_baseline",
        "time_ratio_to_baseline",
    ),
}


def check_rows(rows: list[dict], summaries: dict[str, dict], section: str) -> None:
    """Every cell of a headline table against the summary.json field it comes from."""
    loss, steps, steps_ratio, time_ratio = FIELDS[section]
    assert [(r["experiment"], r["optimizer"]) for r in rows] == [
        (name.removeprefix("study/"), opt)
        for name, s in summaries.items()
        for opt in s["optimizers"]
    ]
    by_name = {name.removeprefix("study/"): s for name, s in summaries.items()}
    for row in rows:
        s = by_name[row["experiment"]]
        v = s["optimizers"][row["optimizer"]]
        where = (row["experiment"], row["optimizer"])
        assert row["seeds"] == str(len(v["seeds"])), where
        mean, std = row["final loss (mean ± std)"].split(" ± ")
        assert close(mean, v[f"{loss}_mean"]), where
        assert close(std, v[f"{loss}_std"]), where
        assert row["settings"].startswith("tuned" if v.get("tuned") else "untuned"), where
        if "knob_value" in v:
            assert f"{v['knob_value']:.3g} = {v['knob_factor']:g}x" in row["settings"], where
        assert close(row["steps to target"], v[steps]), where
        for claim, ratio_column, key in [
            ("steps", "steps ratio", steps_ratio),
            ("time", "time ratio", time_ratio),
            ("memory", "slot-bytes ratio", "slot_bytes_ratio_to_baseline"),
        ]:
            assert close(row[ratio_column], v[key]), (where, claim)
            verdict = row[f"{claim} claim (≤ {CLAIMS[claim]:.2f})"]
            if row["optimizer"] == s["baseline"]:
                assert verdict == "baseline", (where, claim)
            else:
                assert verdict == claim_verdict(v[key], CLAIMS[claim]), (where, claim)
        for key, label in [("collapsed_runs", "COLLAPSED"), ("stalled_runs", "STALLED")]:
            seeds = v.get(key) or {}
            assert (label in row["flagged runs"]) == bool(seeds), (where, key)
            assert all(seed in row["flagged runs"] for seed in seeds), (where, key)


def read_summaries(results: Path) -> dict[str, dict]:
    """Every comparison at one horizon: a sweep's runs continued past it (continued_<K>x/)
    are the plug-and-play notebook's, not the headline table's."""
    return {
        p.parent.relative_to(results).as_posix(): json.loads(p.read_text())
        for p in sorted(results.rglob("summary.json"))
        if not p.parent.name.startswith("continued_")
    }


def test_headline_table_equals_the_summaries(headline):
    summaries = read_summaries(RESULTS)
    parts = sections(headline)
    study = {k: v for k, v in summaries.items() if k.startswith("study/")}
    second = {k: v for k, v in summaries.items() if k.startswith("study2/")}
    earlier = {k: v for k, v in summaries.items() if not k.startswith(("study/", "study2/"))}
    assert earlier, "the earlier comparisons are committed"
    check_rows(table_rows(parts[EARLIER]), earlier, EARLIER)
    if study:
        check_rows(table_rows(parts[STUDY]), study, STUDY)
    else:
        assert "No sweep has finished yet." in parts[STUDY]
    if second:
        check_second_rows(table_rows(parts[SECOND]), second)
    else:
        assert "No family of the second edition has finished yet." in parts[SECOND]


def _interval_cell(c: dict) -> str:
    return f"{c['point']} [{c['low']}, {c['high']}]"


def check_second_rows(rows: list[dict], summaries: dict[str, dict]) -> None:
    """Every cell of the second edition's table against the summary's claims."""
    assert [(r["experiment"], r["Amos row"].split(" ")[0]) for r in rows] == [
        (name.removeprefix("study2/"), row) for name, s in summaries.items() for row in s["claims"]
    ]
    for row in rows:
        s = summaries["study2/" + row["experiment"]]
        name = row["Amos row"].split(" ")[0]
        c, v = s["claims"][name], s["optimizers"][name]
        where = (row["experiment"], name)
        assert row["seeds"] == str(len(c["seeds"])), where
        for column, verdict_column, key in [
            ("test loss − AdamW [95% CI]", "loss verdict", "final_loss_difference"),
            ("step ratio [95% CI]", f"steps verdict (≤ {CLAIMS['steps']:.2f})", "step_ratio"),
            ("at 0.7: − AdamW planned for 0.7 [95% CI]", "time-to-result verdict", "at_0.7"),
        ]:
            point, low, high = re.match(r"(\S+) \[(\S+), (\S+)\]", row[column]).groups()
            for cell, value in [
                (point, c[key]["point"]),
                (low, c[key]["low"]),
                (high, c[key]["high"]),
            ]:
                assert close(cell, value), (where, column)
            assert row[verdict_column] == c[key]["verdict"], (where, key)
        assert row["per seed"] == ", ".join(
            x if isinstance(x, str) else f"{x:.2f}" for x in c["step_ratio_per_seed"]
        )
        assert close(row["slot-bytes ratio"], v["slot_bytes_ratio_to_baseline"]), where
        assert close(row["time ratio (not judged)"], v["test_time_ratio_to_baseline"]), where


def test_committed_headline_table_is_current(headline):
    """notebooks/headline_table.md is what the notebook writes now (after a new or changed
    summary: `make notebooks`)."""
    committed = (REPO / "notebooks" / "headline_table.md").read_text()
    assert committed == headline, "notebooks/headline_table.md is stale: run `make notebooks`"


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory) -> Path:
    """A results/ directory with a sweep and a ladder rung made from hand-chosen losses
    (launch/sweep.py's own summary code), and one earlier comparison."""
    from launch import sweep
    from tests.launch.harness_helpers import fake_run

    root = tmp_path_factory.mktemp("fake_study")
    results, runs = root / "results", root / "runs"
    shutil.copytree(RESULTS / "t5_cpu", results / "t5_cpu", ignore=shutil.ignore_patterns("runs"))
    recipes = {"amos": 0.05, "adamw": 1e-3}
    # Final validation loss per factor (1/2, 1, 2); AdamW's 2x diverges, Amos' 1/2 stalls.
    finals = {"amos": {0.5: 2.0, 1.0: 2.2, 2.0: 1.8}, "adamw": {0.5: 2.4, 1.0: 2.1, 2.0: None}}
    for opt, recipe in recipes.items():
        for factor, value in zip(sweep.grid_factors(3), sweep.grid(recipe, 3), strict=True):
            label = sweep.trial_label(sweep.KNOBS[opt], value)
            for seed in (0, 1, 2):
                d = sweep.trial_dir(runs / "fake", opt, label, seed)
                val = finals[opt][factor]
                if val is None:
                    fake_run(d, [3.0], [3.0], status="diverged")
                elif (opt, factor) == ("amos", 0.5):  # Stalled: flat from the first eval.
                    fake_run(d, [val] * 3, [val + 0.1] * 3)
                else:
                    v = val + 0.01 * seed
                    fake_run(d, [v + 0.5, v + 0.2, v], [v + 0.6, v + 0.3, v + 0.1])
    trials = sweep.read_trials(runs / "fake", recipes, 3)
    source = results / "study" / "fake"
    sweep.summarize("fake", runs / "fake", source, recipes, trials, [1, 2], ["sweep"])
    record, rows = sweep.ladder_rows(source, recipes)
    # The rung: 4x the steps; Amos (tuned) now reaches AdamW's test loss, untuned never.
    finals_4x = {"amos": 1.5, "amos_untuned": 2.5, "adamw": 1.7}
    for row in rows:
        for seed in (1, 2):
            d = sweep.trial_dir(runs / "fake_4x", row.trial.optimizer, row.trial.label, seed)
            f = finals_4x[row.name]
            fake_run(d, [f + 0.3, f + 0.1, f], [f + 0.4, f + 0.2, f + 0.1], every=40)
    sweep.summarize(
        "fake_4x",
        runs / "fake_4x",
        results / "study" / "fake_4x",
        recipes,
        [sweep.Trial(**t) for t in record["trials"]],
        [1, 2],
        ["sweep"],
        (source, record),
    )
    _fake_second_edition(runs / "fake2", results / "study2" / "fake")
    return results


def _fake_second_edition(parent: Path, out: Path) -> None:
    """A second-edition summary (launch/study2.py's own code) over hand-chosen runs: Amos
    0.1 better than AdamW on every seed, untuned Amos as good as AdamW."""
    from launch import study2
    from tests.launch.harness_helpers import fake_run

    picks = {
        "amos": study2.Setting("amos", {"AMOS_XI": 0.1}, "xi_0.1", chosen=True),
        "adamw": study2.Setting("adamw", {"ADAMW_LR": 1e-3}, "lr_0.001", chosen=True),
    }
    rows = study2.rows_for(picks, 100)
    finals = {
        "amos": 1.8,
        "amos_untuned": 1.9,
        "adamw": 1.9,
        "adamw_at_0.5": 2.1,
        "adamw_at_0.7": 2.0,
    }
    for row in rows:
        for seed, d in row.dirs(parent):
            f = finals[row.name] + 0.01 * (seed - 10)
            n = row.steps // 10
            curve = [f + 0.05 * (n - 1 - i) for i in range(n)]
            fake_run(d, curve, curve, every=10, slot_bytes=500 if "amos" in row.name else 1000)
    record = {"experiment": "fake", "design": "grid", "settings": [], "picks_from": None}
    study2.summarize("fake", parent, out, record, list(picks.values()), rows, 100, ["study2"])


def test_headline_table_of_a_study_reports_test_and_marks_the_tuned_rows(fake_study, tmp_path):
    run("headline_table", tmp_path, AMOS_RESULTS=str(fake_study))
    parts = sections((tmp_path / "headline_table.md").read_text())
    summaries = read_summaries(fake_study)
    study = {k: v for k, v in summaries.items() if k.startswith("study/")}
    rows = table_rows(parts[STUDY])
    check_rows(rows, study, STUDY)
    check_rows(table_rows(parts[EARLIER]), {"t5_cpu": summaries["t5_cpu"]}, EARLIER)
    second = {k: v for k, v in summaries.items() if k.startswith("study2/")}
    second_rows = table_rows(parts[SECOND])
    check_second_rows(second_rows, second)
    amos = second_rows[0]
    assert amos["Amos row"] == "amos (tuned (xi 0.1))"
    assert amos["loss verdict"] == "met" and amos["memory claim"] == "met"
    assert second_rows[1]["loss verdict"] == "not met"  # untuned: a difference of exactly 0
    cells = {(r["experiment"], r["optimizer"]): r for r in rows}
    assert cells["fake", "amos"]["settings"] == "tuned (xi 0.1 = 2x)"
    assert cells["fake", "amos_untuned"]["settings"] == "untuned (xi 0.05 = 1x)"
    assert cells["fake", "adamw"]["settings"] == "tuned (lr 0.001 = 1x)"
    # Test losses of the fresh seeds 1, 2 at the pick: 1.8 + 0.01 * seed + 0.1.
    assert cells["fake", "amos"]["final loss (mean ± std)"] == "1.9150 ± 0.0071"
    assert cells["fake_4x", "amos_untuned"]["steps claim (≤ 0.70)"] == "never reached"
    assert "the picks of `" in parts[STUDY]


def test_tuning_curves_table_is_the_sweep(fake_study, tmp_path):
    run("tuning_curves", tmp_path, AMOS_RESULTS=str(fake_study))
    rows = table_rows((tmp_path / "tuning_curves.md").read_text())
    # The ladder rung has no trials of its own: one sweep, two optimizers.
    assert [(r["experiment"], r["optimizer"]) for r in rows] == [
        ("fake", "amos"),
        ("fake", "adamw"),
    ]
    amos, adamw = rows
    assert amos["trials (finished / diverged)"] == "3 / 0"
    assert (amos["picked factor"], amos["picked value"]) == ("2", "0.1")
    assert (amos["val loss at pick"], amos["val loss at factor 1"]) == ("1.8000", "2.2000")
    assert amos["spread (worst - best)"] == "0.4000"
    assert amos["flagged trials"].startswith("0.5x STALLED (eval loss 2.0000 at step 10")
    assert adamw["flagged trials"] == "none"
    assert adamw["trials (finished / diverged)"] == "2 / 1"
    assert (adamw["picked factor"], adamw["val loss at pick"]) == ("1", "2.1000")
    assert adamw["spread (worst - best)"] == "0.3000"
    figure = tmp_path / "figures" / "tuning_curves.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_horizon_ladder_puts_each_rung_beside_its_sweep(fake_study, tmp_path):
    run("horizon_ladder", tmp_path, AMOS_RESULTS=str(fake_study))
    rows = table_rows((tmp_path / "horizon_ladder.md").read_text())
    summaries = read_summaries(fake_study)
    assert [(r["rung"], r["optimizer"]) for r in rows] == [
        (rung, opt) for rung in ("fake", "fake_4x") for opt in ("amos", "amos_untuned", "adamw")
    ]
    for row in rows:
        v = summaries[f"study/{row['rung']}"]["optimizers"][row["optimizer"]]
        assert row["family"] == "fake"
        assert row["horizon (steps)"] == str(v["train_steps"])
        mean, std = row["final test loss"].split(" ± ")
        assert close(mean, v["final_test_loss_mean"]) and close(std, v["final_test_loss_std"])
        assert close(row["steps ratio"], v["test_steps_ratio_to_baseline"])
        assert close(row["steps to test target"], v["steps_to_test_target_mean"])
    by = {(r["rung"], r["optimizer"]): r for r in rows}
    assert by["fake", "adamw"]["horizon (steps)"] == "30"
    assert by["fake_4x", "adamw"]["horizon (steps)"] == "120"
    assert by["fake_4x", "amos_untuned"]["steps claim (≤ 0.70)"] == "never reached"
    assert by["fake_4x", "adamw"]["steps claim (≤ 0.70)"] == "baseline"
    figure = tmp_path / "figures" / "horizon_ladder.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # five notebooks over every committed result: the fast suite's margin
def test_committed_study_tables_are_current(tmp_path):
    """The committed tuning-curve and ladder tables are what their notebooks write now."""
    for name in ("tuning_curves", "horizon_ladder", "plug_and_play", "ema_timescale", "memory_fit"):
        run(name, tmp_path)
        committed = (REPO / "notebooks" / f"{name}.md").read_text()
        assert committed == (tmp_path / f"{name}.md").read_text(), f"{name}.md is stale"


def test_loss_curves_figures(fake_study, tmp_path):
    notebook = run("loss_curves", tmp_path, AMOS_RESULTS=str(fake_study))
    printed = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    # The study's rows from the fresh seeds the summary lists; the earlier t5 comparison
    # has no run records in this copy.
    assert "fake: amos x2, amos_untuned x2, adamw x2" in printed
    assert "fake_4x: amos x2, amos_untuned x2, adamw x2" in printed
    for name in ("loss_curves.png", "loss_curves_earlier.png"):
        figure = tmp_path / "figures" / name
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fake_continued(tmp_path_factory) -> Path:
    """A results/ directory with a sweep's rows continued to 2x, summarized by
    launch/sweep.py's own continuation code from hand-chosen losses: Amos improves on both
    seeds past the horizon, AdamW stays where its schedule ended (its last training record
    at rate 0), the plug-and-play arm improves on one seed of two."""
    from launch import sweep
    from tests.launch.harness_helpers import fake_run

    root = tmp_path_factory.mktemp("fake_continued")
    results, parent = root / "results", root / "runs" / "sched"
    rows = [
        sweep.Row("amos", sweep.Trial("amos", "AMOS_XI", 0.5, 0.025, "xi_0.025", ""), True),
        sweep.Row("adamw", sweep.Trial("adamw", "ADAMW_LR", 1.0, 1e-3, "lr_0.001", ""), True),
        sweep.Row(
            "adam_pnp_isq",
            sweep.Trial("adam_pnp_isq", "PNP_HALF_LIFE", 2.0, 250.0, "T_250", ""),
            True,
        ),
    ]
    change = {"amos": {1: -0.3, 2: -0.3}, "adamw": {1: 0.0, 2: 0.0}}
    change["adam_pnp_isq"] = {1: -0.2, 2: 0.1}
    for row in rows:
        t = row.trial
        for seed in (1, 2):
            val, c = 2.0 + 0.1 * seed, change[row.name][seed]
            fake_run(
                sweep.trial_dir(parent, t.optimizer, t.label, seed), [3.0, val], [3.1, val + 0.1]
            )
            continued = fake_run(
                sweep.trial_dir(sweep.continued_parent(parent, 2), t.optimizer, t.label, seed),
                [3.0, val, val + c, val + c],
                [3.1, val + 0.1, val + 0.1 + c, val + 0.1 + c],
            )
            rate = {
                "step": 40,
                "split": "train",
                "loss": val + c,
                "learning_rate": 0.0 if row.name == "adamw" else 1e-3,
            }
            with open(continued / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rate) + "\n")
    out = results / "study" / "sched" / "continued_2x"
    sweep.summarize_continuation("sched", parent, out, rows, [1, 2], 20, 2, ["sweep"])
    return results


def test_plug_and_play_table_says_who_kept_improving(fake_continued, tmp_path):
    run("plug_and_play", tmp_path, AMOS_RESULTS=str(fake_continued))
    rows = {r["row"]: r for r in table_rows((tmp_path / "plug_and_play.md").read_text())}
    assert list(rows) == ["amos", "adamw", "adam_pnp_isq"]
    amos, adamw, pnp = rows.values()
    assert amos["setting"] == "tuned: AMOS_XI 0.025 = 0.5x"
    assert pnp["setting"] == "tuned: PNP_HALF_LIFE 250 = 2x"
    assert amos["horizon (steps)"] == "20 -> 40 (2x)"
    # Test losses at 1x: 2.2 and 2.3 (seeds 1, 2); Amos then 0.3 lower on both.
    assert (amos["test loss at 1x"], amos["test loss at Kx"]) == ("2.2500", "1.9500")
    assert (amos["test change"], amos["seeds improved (test)"]) == ("-0.3000", "2/2")
    assert amos["past the horizon"] == "kept improving"
    assert adamw["test change"] == "+0.0000"
    assert adamw["past the horizon"] == "frozen: rate 0 past the horizon"
    assert (amos["end learning rate"], adamw["end learning rate"]) == ("0.001, 0.001", "0, 0")
    assert (pnp["test change"], pnp["seeds improved (test)"]) == ("-0.0500", "1/2")
    assert pnp["past the horizon"] == "improved on 1 of 2 seeds"
    assert pnp["val change"] == "-0.0500"
    figure = tmp_path / "figures" / "plug_and_play.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The continued runs are this notebook's: the headline table leaves them out.
    run("headline_table", tmp_path, AMOS_RESULTS=str(fake_continued))
    assert "continued" not in (tmp_path / "headline_table.md").read_text()


@pytest.fixture(scope="module")
def fake_timescale(tmp_path_factory) -> Path:
    """A results/ directory with a timescale sweep summarized by launch/timescale_sweep.py
    from hand-chosen losses: the best tau_epoch moves by 0, +1, +2 and -2 grid steps
    across the four settings, and the direct sweep's best weight decay is half the
    predicted one."""
    from argparse import Namespace

    from launch import timescale_sweep as ts
    from tests.launch.harness_helpers import fake_run

    root = tmp_path_factory.mktemp("fake_timescale")
    parent, out = root / "runs", root / "results" / "timescale" / "timescale_resnet_cpu"
    args = dict(fractions="1,0.25", widths="16,8", taus=5, horizon="epochs")
    args.update(experiment="timescale_resnet_cpu", new_fraction=0.5, new_width=None)
    recipe, settings, new = ts.plan_settings(Namespace(**args), [])
    tau = recipe[ts.TAU]

    def fake(trials, best_factor: float, offset: float) -> None:
        for t in trials:
            val = offset + 0.05 * abs(math.log2(t.factor / best_factor))
            fake_run(t.run_dir, [val + 1.0, val], [val + 1.1, val + 0.1])

    for s, best_factor in zip(settings, [1, 2, 4, 0.25], strict=True):
        fake(ts.plan_trials(parent, s, ts.TAU, tau, 5), best_factor, 0.2)
    wd = 32 / (recipe["ADAMW_LR"] * new.train_examples * tau)  # the reference's best, tau
    fake(ts.plan_trials(parent, new, ts.WEIGHT_DECAY, wd, 5, "transfer_"), 0.5, 0.3)
    argv = ["--experiment=timescale_resnet_cpu", "--taus=5", "--widths=16,8", "--resummarize"]
    assert ts.main([*argv, f"--parent={parent}", f"--results={out}"]) == 0
    return root / "results"


def test_ema_timescale_tables_say_where_the_optimum_falls(fake_timescale, tmp_path):
    run("ema_timescale", tmp_path, AMOS_RESULTS=str(fake_timescale))
    text = (tmp_path / "ema_timescale.md").read_text()
    optimum, transfer = text.split("## The transfer check")
    record = json.loads(next(fake_timescale.rglob("timescale.json")).read_text())
    rows = table_rows(optimum)
    assert [r["setting"] for r in rows] == [s["label"] for s in record["settings"]]
    for row, s in zip(rows, record["settings"], strict=True):
        assert row["train examples"] == str(s["train_examples"])
        assert close(row["best tau_epoch"], s["best"]["tau_epochs"])
        assert close(row["its weight decay"], s["best"]["weight_decay"])
    assert [(r["steps of 2 from the reference"], r["optimum"]) for r in rows] == [
        ("+0", "reference"),
        ("+1", "stays"),
        ("+2", "moves +2 steps (at the grid's edge)"),
        ("-2", "moves -2 steps (at the grid's edge)"),
    ]
    (check,) = table_rows(transfer)
    tr = record["transfer"]
    assert check["new setting"] == "subset_0.5_width_16"
    assert close(check["predicted weight decay"], tr["predicted_weight_decay"])
    assert close(check["best direct weight decay"], tr["predicted_weight_decay"] / 2)
    assert check["best / predicted"] == "0.5"
    assert check["excess at prediction"] == "+0.0500"
    assert check["prediction"] == "within 2x of the best"
    figure = tmp_path / "figures" / "ema_timescale.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A reference optimum on the grid's edge is said to be there: the optimum may lie beyond,
    # so "stays" relative to it means little.
    record["settings"][0]["best"]["at_grid_edge"] = True
    edged = tmp_path / "edged"
    (edged / "timescale" / "x").mkdir(parents=True)
    (edged / "timescale" / "x" / "timescale.json").write_text(json.dumps(record))
    run("ema_timescale", tmp_path / "out", AMOS_RESULTS=str(edged))
    optimum = (tmp_path / "out" / "ema_timescale.md").read_text().split("## The transfer")[0]
    assert table_rows(optimum)[0]["optimum"] == "reference (at the grid's edge)"


@pytest.mark.slow  # paper-scale shapes of five models
def test_slot_memory(tmp_path):
    notebook = run("slot_memory", tmp_path)
    text = "".join(
        output.get("text", "") + output.get("data", {}).get("text/markdown", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    for model in ["BERT-base", "BERT-large", "T5 1.1 small", "T5 1.1 base", "T5 1.1 large"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {model} |"))
        assert "| met |" in row, row
    assert "not met" not in text
