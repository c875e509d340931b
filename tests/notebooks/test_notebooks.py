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
CLAIMS = {"steps": 0.70, "time": 0.70, "memory": 0.51}  # The paper's abstract.


def run(name: str, tmp_path: Path, **env: str):
    source = REPO / "notebooks" / f"{name}.py"
    return execute(source, env={"AMOS_NOTEBOOK_OUT": str(tmp_path), **env}, timeout=300)


def table_rows(markdown: str, which: int = 0) -> list[dict[str, str]]:
    """The rows of the markdown table number ``which`` (from 0), keyed by its header."""
    tables, previous = [], False
    for line in markdown.splitlines():
        table_line = line.startswith("|")
        if table_line and not previous:
            tables.append([])
        if table_line:
            tables[-1].append([c.strip() for c in line.strip("|").split("|")])
        previous = table_line
    cells = tables[which]
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


STUDY = 'The study, first edition (docs/study.md, "The reproduction study: protocol")'
SECOND = 'The study, second edition (docs/study.md, "The study\'s second edition: protocol")'
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


def check_interval(cell: str, claim: dict, where) -> None:
    """A ``point [low, high]`` cell is the claim's interval ("never" stays "never")."""
    point, low, high = re.match(r"(\S+) \[(\S+), (\S+)\]", cell).groups()
    for shown, key in [(point, "point"), (low, "low"), (high, "high")]:
        assert close(shown, claim[key]), (where, key, cell)


def per_seed_cell(ratios: list) -> str:
    return ", ".join(x if isinstance(x, str) else f"{x:.2f}" for x in ratios)


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
            check_interval(row[column], c[key], (where, column))
            assert row[verdict_column] == c[key]["verdict"], (where, key)
        assert row["per seed"] == per_seed_cell(c["step_ratio_per_seed"]), where
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
    from launch.study import sweep
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
    _fake_second_edition(runs / "study2", results / "study2")
    return results


# The second edition's recipes in the fakes (launch/study2.py's recipe_of, as numbers).
FAKE_RECIPES = {
    "amos": {"AMOS_XI": 0.2, "TRAIN_STEPS": 100, "WARMUP_STEPS": 0, "AMOS_BETA": 0.95},
    "adamw": {"ADAMW_LR": 1e-3, "ADAMW_MIN_LR": 1e-4, "TRAIN_STEPS": 100, "WARMUP_STEPS": 0},
}


def _fake_second_edition(parent: Path, out: Path) -> None:
    """Four experiments of the second edition, from hand-chosen runs by launch/study2.py's
    own tuning and summary code: `fake`, tuned on the grid, where Amos is 0.1 better than
    AdamW on every fresh seed and untuned Amos as good as AdamW; `fake_4x`, the rung that
    trains fake's picks at 4x, where tuned Amos is better still and untuned Amos never
    reaches AdamW's loss; `fake_sobol`, tuned on the Sobol design with Amos' pick at the
    largest xi tried; `fake_4x_retuned`, the rung's experiment tuned afresh on the Sobol
    design, where AdamW's new pick tests 0.2 lower. `fake_pending` has only its
    EVAL_BATCHES sizing (not run yet)."""
    # Grid: final validation loss at seed 0 by increasing knob value (None: diverged), and
    # at seed 1 for the two best. Amos' best at seed 0 (xi 0.2) is not its pick: xi 0.1 has
    # the lower mean over both seeds.
    grid_losses = {
        "amos": ([2.6, 2.3, 2.05, 2.0, 2.5], {0.1: 2.0, 0.2: 2.2}),
        "adamw": ([2.7, 2.4, 2.15, 2.1, None], {5e-4: 2.3, 1e-3: 2.1}),
    }

    def grid_loss(setting, seed: int) -> float | None:
        seed0, seed1 = grid_losses[setting.optimizer]
        (value,) = setting.values.values()
        if seed == 1:
            return next(v for k, v in seed1.items() if math.isclose(k, value))
        mine = sorted(
            s.values[k] for s in grid for k in s.values if s.optimizer == setting.optimizer
        )
        return seed0[mine.index(value)]

    from launch.study import study2

    grid = study2.grid_settings(parent / "fake", FAKE_RECIPES)
    _fake_tuning(parent / "fake", grid, grid_loss)
    finals = {
        "amos": 1.8,
        "amos_untuned": 1.9,
        "adamw": 1.9,
        "adamw_at_0.5": 2.1,
        "adamw_at_0.7": 2.0,
    }
    _fake_study2("fake", "grid", parent, out, finals, 100)

    # The rung: fake's picks at 400 steps.
    finals_4x = {
        "amos": 1.5,
        "amos_untuned": 2.5,
        "adamw": 1.7,
        "adamw_at_0.5": 1.9,
        "adamw_at_0.7": 1.8,
    }
    _fake_study2("fake_4x", "picks", parent, out, finals_4x, 400, picks_from=out / "fake")

    # Sobol: Amos better the larger xi (its pick on the edge of the range), AdamW best near
    # its recipe rate and a tenth of warmup; AdamW's largest rate diverges.
    sobol = study2.sobol_settings(FAKE_RECIPES)
    top = {
        o: max(
            s.values[k]
            for s in sobol
            if s.optimizer == o
            for k in s.values
            if k in ("AMOS_XI", "ADAMW_LR")
        )
        for o in FAKE_RECIPES
    }

    def sobol_loss(setting, seed: int) -> float | None:
        v = setting.values
        if setting.optimizer == "amos":
            return 2.0 + 0.1 * math.log2(top["amos"] / v["AMOS_XI"]) + 0.01 * seed
        if v["ADAMW_LR"] == top["adamw"]:
            return None
        return (
            2.0
            + 0.1 * abs(math.log2(v["ADAMW_LR"] / 1e-3))
            + abs(v["WARMUP_FRACTION"] - 0.1)
            + 0.01 * seed
        )

    _fake_tuning(parent / "fake_sobol", sobol, sobol_loss)
    _fake_study2("fake_sobol", "sobol", parent, out, finals, 100)
    _fake_tuning(parent / "fake_4x_retuned", sobol, sobol_loss)
    finals_retuned = {**finals_4x, "adamw": 1.5, "adamw_at_0.5": 1.7, "adamw_at_0.7": 1.6}
    _fake_study2("fake_4x", "sobol", parent, out, finals_retuned, 400, directory="fake_4x_retuned")
    (out / "fake_pending").mkdir(parents=True)
    (out / "fake_pending" / "eval_batches.json").write_text("{}")


def _fake_tuning(parent: Path, settings: list, loss) -> None:
    """Runs for every setting at the first tuning seed and for each optimizer's finalists
    at the second, with final validation loss ``loss(setting, seed)`` (None: diverged)."""
    from launch.study import study2, sweep
    from tests.launch.harness_helpers import fake_run

    def make(setting, seed: int) -> None:
        d = sweep.trial_dir(parent, setting.optimizer, setting.label, seed)
        v = loss(setting, seed)
        if v is None:
            fake_run(d, [3.0], [3.0], status="diverged")
        else:
            fake_run(d, [v + 0.5, v + 0.2, v], [v + 0.6, v + 0.3, v + 0.1])

    first, second = study2.TUNING_SEEDS
    for s in settings:
        make(s, first)
    read = [study2.read_setting(parent, s, (first,)) for s in settings]
    for opt in FAKE_RECIPES:
        for s in study2.finalists(read, opt):
            make(s, second)


def _fake_study2(
    name: str,
    design: str,
    parent: Path,
    out: Path,
    finals: dict[str, float],
    horizon: int,
    picks_from: Path | None = None,
    directory: str | None = None,
) -> None:
    """launch/study2.py's tuning (or a source's picks) of experiment ``name`` over the fake
    runs under parent/<directory>, rows at ``horizon`` steps whose test curves end at
    ``finals`` (plus 0.01 per fresh seed), and its summary under out/<directory>
    (``directory``: default ``name``; another is study2.py's --parent and --results)."""
    from launch.study import study2
    from tests.launch.harness_helpers import fake_run

    directory = directory or name
    recipes = {o: {**r, "TRAIN_STEPS": horizon} for o, r in FAKE_RECIPES.items()}
    if picks_from is None:
        settings = study2.tune(name, design, parent / directory, recipes, horizon, [], run=False)
    else:
        prior = json.loads((picks_from / "study.json").read_text())
        settings = [study2.Setting(**s) for s in prior["settings"] if s["chosen"]]
    rows = study2.rows_for({s.optimizer: s for s in settings if s.chosen}, horizon)
    for row in rows:
        for seed, d in row.dirs(parent / directory):
            f = finals[row.name] + 0.01 * (seed - 10)
            n = row.steps // 10
            curve = [f + 0.05 * (n - 1 - i) for i in range(n)]
            fake_run(d, curve, curve, every=10, slot_bytes=500 if "amos" in row.name else 1000)
    source = None if picks_from is None else str(picks_from)
    record = study2._record(name, design, recipes, settings, horizon, ["study2"], source)
    study2.summarize(
        name, parent / directory, out / directory, record, settings, rows, horizon, ["study2"]
    )


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


def test_tuning_curves_tables_are_the_sweep_and_the_second_edition_tunings(fake_study, tmp_path):
    run("tuning_curves", tmp_path, AMOS_RESULTS=str(fake_study))
    parts = sections((tmp_path / "tuning_curves.md").read_text())
    assert list(parts) == [SECOND, STUDY]  # The second edition first.
    rows = table_rows(parts[STUDY])
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

    second = table_rows(parts[SECOND])
    check_second_tuning(second, fake_study)
    by = {(r["experiment"], r["optimizer"]): r for r in second}
    # The grid: Amos' best trial at seed 0 (xi 0.2) is not its pick; AdamW's 2x diverged.
    grid_amos = by["fake", "amos"]
    assert grid_amos["finalists: mean val loss over the tuning seeds"] == (
        "xi 0.1: 2.0250; xi 0.2: 2.1000"
    )
    assert (grid_amos["pick"], grid_amos["pick on the edge"]) == ("xi 0.1", "no")
    assert by["fake", "adamw"]["trials (finished / diverged)"] == "4 / 1"
    assert by["fake_sobol", "amos"]["pick on the edge"] == "yes: xi highest tried"
    assert by["fake_sobol", "adamw"]["pick on the edge"] == "no"
    assert by["fake_sobol", "adamw"]["trials (finished / diverged)"] == "15 / 1"
    for name in ("tuning_curves.png", "tuning_curves_study2.png"):
        figure = tmp_path / "figures" / name
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def read_studies(results: Path) -> dict[str, dict]:
    """Every second-edition study.json by experiment."""
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted((results / "study2").glob("*/study.json"))
    }


# A second-edition setting as the tables show it: knob names, short.
SHORT_KNOBS = {"xi": "AMOS_XI", "beta": "AMOS_BETA", "lr": "ADAMW_LR", "warmup": "WARMUP_FRACTION"}


def check_setting(cell: str, values: dict[str, float], where) -> None:
    """``xi 0.1, beta 0.998`` or ``lr 0.001, warmup 14%``: the setting's knobs and values."""
    shown = dict(part.split(" ") for part in cell.split(", "))
    assert [SHORT_KNOBS[k] for k in shown] == list(values), (where, cell)
    for short, number in shown.items():
        value = values[SHORT_KNOBS[short]]
        if number.endswith("%"):
            assert close(number[:-1], 100 * value), (where, cell)
        else:
            assert math.isclose(float(number), value, rel_tol=5e-3), (where, cell)


def check_second_tuning(rows: list[dict], results: Path) -> None:
    """Every cell of the second edition's tuning table against the study.json it reads:
    each tuned experiment (not a ladder rung) and optimizer; its trials at the first tuning
    seed; the finalists' mean over both seeds; the pick; the pick's knobs at the lowest or
    highest value tried."""
    tuned = {n: r for n, r in read_studies(results).items() if r["design"] in ("grid", "sobol")}
    assert [(r["experiment"], r["optimizer"]) for r in rows] == [
        (name, opt) for name, record in tuned.items() for opt in record["recipes"]
    ]
    for row in rows:
        record, opt = tuned[row["experiment"]], row["optimizer"]
        where = (row["experiment"], opt)
        first, second = (str(seed) for seed in record["tuning_seeds"])
        mine = [
            s
            for s in record["settings"]
            if s["optimizer"] == opt and s["status"].get(first, "missing") != "missing"
        ]
        diverged = sum(s["status"][first] == "diverged" for s in mine)
        assert row["design"].split(" ")[0] == record["design"], where
        assert row["trials (finished / diverged)"] == f"{len(mine) - diverged} / {diverged}"
        finalists = [s for s in mine if s["status"].get(second, "missing") != "missing"]
        cells = row["finalists: mean val loss over the tuning seeds"].split("; ")
        assert len(cells) == len(finalists) == 2, where
        for cell, s in zip(cells, finalists, strict=True):
            setting, mean = cell.rsplit(": ", 1)
            check_setting(setting, s["values"], where)
            assert close(mean, (s["val_loss"][first] + s["val_loss"][second]) / 2), where
        (chosen,) = [s for s in mine if s["chosen"]]
        assert chosen["values"] == record["picked"][opt]["values"], where
        check_setting(row["pick"], record["picked"][opt]["values"], where)
        edges = []
        for knob, value in chosen["values"].items():
            tried = [s["values"][knob] for s in mine]
            short = {v: k for k, v in SHORT_KNOBS.items()}[knob]
            if value in (min(tried), max(tried)):
                edges.append(f"{short} {'lowest' if value == min(tried) else 'highest'} tried")
        assert row["pick on the edge"] == ("yes: " + ", ".join(edges) if edges else "no"), where


def test_horizon_ladder_puts_each_rung_beside_its_sweep(fake_study, tmp_path):
    run("horizon_ladder", tmp_path, AMOS_RESULTS=str(fake_study))
    parts = sections((tmp_path / "horizon_ladder.md").read_text())
    assert list(parts) == [SECOND, STUDY]  # The second edition first.
    rows = table_rows(parts[STUDY])
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

    second = table_rows(parts[SECOND])
    check_second_ladder(second, fake_study)
    # fake_sobol has no rung: no ladder. fake_4x's untuned Amos never reaches AdamW's loss;
    # the re-tuned rung stands beside it, in fake's ladder.
    rungs = ("fake", "fake_4x", "fake_4x_retuned")
    assert [(r["family"], r["rung"], r["Amos row"]) for r in second] == [
        ("fake", rung, row) for rung in rungs for row in ("amos", "amos_untuned")
    ]
    assert [r["picks"] for r in second[::2]] == [
        "tuned here",
        "carried from fake",
        "re-tuned at this horizon",
    ]
    untuned_4x = second[3]
    assert untuned_4x["step ratio [95% CI]"] == "never [never, never]"
    assert untuned_4x["per seed"] == ", ".join(["never"] * 5)
    # Do the picks carry: fake's grid picks against the Sobol design's at 400 steps, and the
    # fresh seeds' test loss at each (finals + 0.01 * (seed - 10), seeds 10 to 14).
    studies = read_studies(fake_study)
    carry = table_rows(parts[SECOND], which=1)
    assert [(r["family"], r["rung (horizon)"], r["optimizer"]) for r in carry] == [
        ("fake", "fake_4x (400)", "amos"),
        ("fake", "fake_4x (400)", "adamw"),
    ]
    for row in carry:
        opt = row["optimizer"]
        check_setting(row["carried pick"], studies["fake"]["picked"][opt]["values"], row)
        check_setting(
            row["re-tuned pick"], studies["fake_4x_retuned"]["picked"][opt]["values"], row
        )
    adamw = carry[1]
    assert adamw["final test loss, carried"] == "1.7200 ± 0.0158"
    assert adamw["final test loss, re-tuned"] == "1.5200 ± 0.0158"
    for name in ("horizon_ladder.png", "horizon_ladder_study2.png"):
        figure = tmp_path / "figures" / name
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_second_ladder(rows: list[dict], results: Path) -> None:
    """Every cell of the second edition's ladder table against the rung's study.json
    (its horizon) and summary.json (its claims)."""
    studies, summaries = read_studies(results), read_summaries(results)
    for row in rows:
        name, amos_row = row["rung"], row["Amos row"]
        where = (name, amos_row)
        c = summaries[f"study2/{name}"]["claims"][amos_row]
        retunes = studies[name]["experiment"] if not studies[name]["picks_from"] else None
        retunes = retunes if retunes != name else None  # A re-tuned rung: --results.
        family = retunes or name
        while studies.get(family, {}).get("picks_from"):  # Up to the experiment that tuned.
            family = Path(studies[family]["picks_from"]).name
        assert row["family"] == family, where
        source = studies[name]["picks_from"]
        assert row["picks"] == (
            f"carried from {Path(source).name}"
            if source
            else ("re-tuned at this horizon" if retunes else "tuned here")
        ), where
        assert row["horizon (steps)"] == str(studies[name]["train_steps"]), where
        assert row["seeds"] == str(len(c["seeds"])), where
        for column, verdict_column, key in [
            ("test loss − AdamW [95% CI]", "loss verdict", "final_loss_difference"),
            ("step ratio [95% CI]", f"steps verdict (≤ {CLAIMS['steps']:.2f})", "step_ratio"),
        ]:
            check_interval(row[column], c[key], (where, column))
            assert row[verdict_column] == c[key]["verdict"], (where, key)
        assert row["per seed"] == per_seed_cell(c["step_ratio_per_seed"]), where
    # Every rung with a summary and its source, a family's in order of horizon.
    done = {n for n in studies if f"study2/{n}" in summaries}
    rungs = {n for n in done if studies[n]["picks_from"]}
    sources = {Path(studies[n]["picks_from"]).name for n in rungs} & done
    retuned = {n for n in done if studies[n]["experiment"] in rungs - {n}}
    assert {r["rung"] for r in rows} == rungs | sources | retuned
    for family in {r["family"] for r in rows}:
        horizons = [int(r["horizon (steps)"]) for r in rows if r["family"] == family]
        assert horizons == sorted(horizons), family


@pytest.mark.slow  # five notebooks over every committed result: the fast suite's margin
def test_committed_study_tables_are_current(tmp_path):
    """The committed tuning-curve and ladder tables are what their notebooks write now:
    the second edition first, every committed second-edition tuning and ladder rung in it,
    and its figures committed beside the first edition's."""
    for name in ("tuning_curves", "horizon_ladder", "plug_and_play", "ema_timescale", "memory_fit"):
        run(name, tmp_path)
        committed = (REPO / "notebooks" / f"{name}.md").read_text()
        assert committed == (tmp_path / f"{name}.md").read_text(), f"{name}.md is stale"
    tuning = sections((REPO / "notebooks" / "tuning_curves.md").read_text())
    ladder = sections((REPO / "notebooks" / "horizon_ladder.md").read_text())
    assert list(tuning) == list(ladder) == [SECOND, STUDY]
    if read_studies(RESULTS):
        check_second_tuning(table_rows(tuning[SECOND]), RESULTS)
        check_second_ladder(table_rows(ladder[SECOND]), RESULTS)
    for name in ("loss_curves_study2", "tuning_curves_study2", "horizon_ladder_study2"):
        figure = REPO / "notebooks" / "figures" / f"{name}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name}.png is missing"


def test_loss_curves_figures(fake_study, tmp_path):
    notebook = run("loss_curves", tmp_path, AMOS_RESULTS=str(fake_study))
    printed = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    # The study's rows from the fresh seeds the summary lists; the earlier t5 comparison
    # has no run records in this copy.
    assert "fake: amos x2, amos_untuned x2, adamw x2" in printed
    assert "fake_4x: amos x2, amos_untuned x2, adamw x2" in printed
    # The second edition's: every row's seeds, its last step and its mean final test loss,
    # from the run records, are the summary's; an experiment not run yet is absent.
    second = {k: v for k, v in read_summaries(fake_study).items() if k.startswith("study2/")}
    assert set(second) == {
        "study2/fake",
        "study2/fake_4x",
        "study2/fake_sobol",
        "study2/fake_4x_retuned",
    }
    for name, s in second.items():
        for row, v in s["optimizers"].items():
            assert (
                f"{name}: {row} x{len(v['seeds'])} to step {v['train_steps_planned']}, "
                f"final mean test loss {v['final_test_loss_mean']:.4f}"
            ) in printed, (name, row)
    assert "fake_pending" not in printed
    for name in ("loss_curves.png", "loss_curves_earlier.png", "loss_curves_study2.png"):
        figure = tmp_path / "figures" / name
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fake_continued(tmp_path_factory) -> Path:
    """A results/ directory with a sweep's rows continued to 2x, summarized by
    launch/sweep.py's own continuation code from hand-chosen losses: Amos improves on both
    seeds past the horizon, AdamW stays where its schedule ended (its last training record
    at rate 0), the plug-and-play arm improves on one seed of two."""
    from launch.study import sweep
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

    from launch.study import timescale_sweep as ts
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
