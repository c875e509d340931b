"""The study's second edition for one experiment (docs/study.md, "The study's second edition:
protocol"): two tuning seeds, five fresh seeds per row, AdamW also planned for shorter
horizons, and verdicts from bootstrap intervals.

  .venv/bin/python launch/study2.py --experiment quickstart [--design grid|sobol]
      [--gin.EVAL_BATCHES=N ...]
  .venv/bin/python launch/study2.py --experiment quickstart_4x \
      --picks_from results/study2/quickstart            # a rung of the horizon ladder
  .venv/bin/python launch/study2.py --experiment quickstart --measure_eval_batches 10,40,160
  .venv/bin/python launch/study2.py --experiment quickstart --resummarize

Tuning, at seed 0 (TUNING_SEEDS[0]): `--design grid` is the first edition's one-knob log
grid with its edge rule (launch/sweep.py; up to MAX_ROUNDS rounds); `--design sobol` is
SOBOL_TRIALS trials per optimizer on one 2-D scrambled Sobol design (launch/study/designs.py)
mapped to each optimizer's two knobs: AdamW's peak rate and warmup fraction, Amos' xi and
beta. The two best trials of each optimizer (lowest final validation loss) are run again
at seed 1 (TUNING_SEEDS[1]); the pick is the lower mean of the two seeds. The test split
is evaluated but never read by a pick.

Rows, each at FRESH_SEEDS: `adamw` and `amos` at their picks; `amos_untuned` at the
experiment's own values (the guidance xi, the paper's beta); and `adamw_at_0.5`,
`adamw_at_0.7`: AdamW at its pick with the whole schedule (warmup included) planned for
that fraction of TRAIN_STEPS. Every run is evaluated every tenth of TRAIN_STEPS (so that
Amos' curve has a point at 0.5 and 0.7 of the horizon) on validation and test.

`--picks_from DIR` (a finished second-edition summary): no tuning; its picks are trained
at this experiment's horizon (the ladder), a warmup fraction carried as a fraction.

`--measure_eval_batches N1,N2,..` sizes EVAL_BATCHES before a sweep: it retrains the
first edition's picks (results/study/<experiment>/sweep.json) at seed 0 and evaluates
their final checkpoints (`run.py --eval_only`) with each N, recording the validation
loss's standard error against a tenth of the smallest gap between the first edition's
two best trials of either optimizer (RESULTS/eval_batches.{json,md}).

Runs live in PARENT/<optimizer>/<setting>/seed_<k> (as launch/sweep.py's); finished and
diverged runs are skipped, interrupted ones resume. RESULTS gets study.json (every trial,
both tuning seeds, the picks), summary.json (launch/compare.py's numbers over the fresh
seeds, plus `claims`: per-seed step ratios, 95% bootstrap intervals and verdicts),
summary.md, the plots, the operative configs and every run's records under runs/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from experiments.errors import ConfigError
from launch.provenance import git_revision
from launch.study import compare, designs, intervals, sweep
from launch.trainer import run_folder

REPO = Path(__file__).resolve().parents[2]

TUNING_SEEDS = (0, 1)
FRESH_SEEDS = (10, 11, 12, 13, 14)
SOBOL_TRIALS = 16
SOBOL_SEED = 0
MAX_ROUNDS = 5  # rounds of the grid's edge rule
GRID_TRIALS = 5
FINALISTS = 2  # trials per optimizer re-run at the second tuning seed
HORIZON_FRACTIONS = (0.5, 0.7)
EVAL_POINTS = 10  # evaluations per run: every tenth of TRAIN_STEPS
ARMS = ("amos", "adamw")
UNTUNED = sweep.UNTUNED
# Not a gin macro: AdamW's warmup as a fraction of the run's TRAIN_STEPS, bound as
# WARMUP_STEPS, so that a pick carries to another horizon as a fraction.
WARMUP_FRACTION = "WARMUP_FRACTION"
STUDY_SETS = ("MODEL_DIR", "SEED", "EVAL_SPLITS", "EVAL_EVERY")  # per run; not --gin


def sobol_knobs(optimizer: str, recipe: dict[str, float]) -> list[designs.Knob]:
    """The tuned knobs of an optimizer in the Sobol design, as its factory declares them
    (launch/optimizers.py, `Tuning.design`), ranges relative to its recipe values scaled:
    AdamW's peak rate (1/16 to 4 times) and warmup fraction (0 to 0.2); Amos' xi (1/16 to 4
    times the guidance) and beta (1 - beta from 5e-2 down to 1e-4, log)."""
    knobs = sweep.TUNINGS[optimizer].design if optimizer in sweep.TUNINGS else ()
    if not knobs:
        raise ConfigError(
            f"--design sobol has no knobs for {optimizer!r} (its Tuning declares no design); "
            f"it tunes {', '.join(ARMS)}"
        )
    return [
        designs.Knob(
            k.name,
            k.low * recipe[k.name] if k.relative else k.low,
            k.high * recipe[k.name] if k.relative else k.high,
            k.scale,
        )
        for k in knobs
    ]


# ------------------------------------------------------------------------- the settings
@dataclass
class Setting:
    """One optimizer's tuned values (knob -> value), and its tuning outcomes by seed."""

    optimizer: str
    values: dict[str, float]
    label: str
    val_loss: dict[str, float | None] = field(default_factory=dict)  # seed -> loss
    status: dict[str, str] = field(default_factory=dict)  # seed -> finished/diverged/missing
    chosen: bool = False

    def mean_val_loss(self) -> float:
        """The mean final validation loss over the tuning seeds run (inf if one diverged
        or is missing)."""
        losses = [self.val_loss.get(str(s)) for s in TUNING_SEEDS if str(s) in self.status]
        if not losses or any(x is None or not math.isfinite(x) for x in losses):
            return math.inf
        return sum(losses) / len(losses)


def setting_label(values: dict[str, float]) -> str:
    """The setting's directory name: its knobs and values, so that a changed value never
    reuses a run made at another."""
    return "_".join(f"{sweep.KNOB_LABELS[name]}_{value:.4g}" for name, value in values.items())


def setting_bindings(
    user: list[str], setting: Setting, recipe: dict[str, float], steps: int, horizon: int
) -> list[str]:
    """The user's bindings, then the setting's knobs and the settings coupled to them
    (scaled as the knob, launch/sweep.py's COUPLED), TRAIN_STEPS (`steps`), the warmup, an
    evaluation every tenth of the `horizon` on validation and test."""
    out = [*user, f"--gin.TRAIN_STEPS={steps}"]
    for name, value in setting.values.items():
        if name == WARMUP_FRACTION:
            out.append(f"--gin.WARMUP_STEPS={round(value * steps)}")
            continue
        out.append(f"--gin.{name}={value!r}")
        for coupled in sweep.COUPLED.get(name, ()):
            out.append(f"--gin.{coupled}={recipe[coupled] * value / recipe[name]!r}")
    if steps != horizon and WARMUP_FRACTION not in setting.values:  # The schedule, shrunk.
        out.append(f"--gin.WARMUP_STEPS={round(recipe['WARMUP_STEPS'] * steps / horizon)}")
    return [
        *out,
        f"--gin.EVAL_EVERY={horizon // EVAL_POINTS}",
        f"--gin.EVAL_SPLITS={sweep.EVAL_SPLITS}",
    ]


def recipe_of(experiment: str, optimizer: str, user: list[str]) -> dict[str, float]:
    """The optimizer's knobs and coupled settings, TRAIN_STEPS and WARMUP_STEPS, as the
    experiment's gin files (+ `user`) give them."""
    names = (
        ["TRAIN_STEPS", "WARMUP_STEPS", "AMOS_BETA"]
        if optimizer == "amos"
        else [
            "TRAIN_STEPS",
            "WARMUP_STEPS",
        ]
    )
    values = {
        **sweep.recipe_settings(experiment, optimizer, user),
        **sweep.gin_values(experiment, optimizer, user, names),
    }
    steps = values["TRAIN_STEPS"]
    if steps % EVAL_POINTS or any(
        round(f * steps) % (steps // EVAL_POINTS) for f in HORIZON_FRACTIONS
    ):
        raise ConfigError(
            f"TRAIN_STEPS = {steps} in {experiment}.gin: the second edition evaluates every "
            f"tenth of it, so it must divide by {EVAL_POINTS}"
        )
    return values


def read_setting(parent: Path, setting: Setting, seeds=TUNING_SEEDS) -> Setting:
    """Fills in the setting's outcome at each tuning seed whose run exists or is due."""
    for seed in seeds:
        d = sweep.trial_dir(parent, setting.optimizer, setting.label, seed)
        status, loss = sweep.run_status(d)
        setting.status[str(seed)], setting.val_loss[str(seed)] = status, loss
    return setting


def grid_settings(parent: Path, recipes: dict[str, dict[str, float]]) -> list[Setting]:
    """The grid's settings at seed 0 so far: launch/sweep.py's grid and edge rule (the
    next round planned when the finished trials call for one)."""
    knobs = {opt: recipes[opt][sweep.KNOBS[opt]] for opt in recipes}
    factors, _ = sweep.planned_factors(parent, knobs, GRID_TRIALS, MAX_ROUNDS)
    return [
        Setting(t.optimizer, {t.knob: t.value}, t.label)
        for t in sweep.read_trials(parent, knobs, factors)
    ]


def sobol_settings(recipes: dict[str, dict[str, float]]) -> list[Setting]:
    """SOBOL_TRIALS settings per optimizer, from the same unit points."""
    out = []
    for opt, recipe in recipes.items():
        for values in designs.design(SOBOL_TRIALS, sobol_knobs(opt, recipe), SOBOL_SEED):
            out.append(Setting(opt, values, setting_label(values)))
    return out


def finalists(settings: list[Setting], optimizer: str) -> list[Setting]:
    """The FINALISTS best settings of an optimizer by their seed-0 validation loss."""
    seed = str(TUNING_SEEDS[0])
    done = [
        s
        for s in settings
        if s.optimizer == optimizer
        and s.val_loss.get(seed) is not None
        and math.isfinite(s.val_loss[seed])
    ]
    return sorted(done, key=lambda s: (s.val_loss[seed], s.label))[:FINALISTS]


def choose(settings: list[Setting], optimizer: str) -> Setting | None:
    """The pick: the finalist with the lower mean validation loss over both tuning seeds
    (a tie: the better seed-0 loss)."""
    best = finalists(settings, optimizer)
    seed = str(TUNING_SEEDS[0])
    return min(best, key=lambda s: (s.mean_val_loss(), s.val_loss[seed]), default=None)


# ---------------------------------------------------------------------------- the rows
@dataclass
class Row:
    """A reported row: an optimizer at a setting, trained at FRESH_SEEDS for `steps`."""

    name: str
    setting: Setting
    label: str  # its runs' directory name
    steps: int
    tuned: bool

    def dirs(self, parent: Path) -> list[tuple[int, Path]]:
        opt = self.setting.optimizer
        return [(k, sweep.trial_dir(parent, opt, self.label, k)) for k in FRESH_SEEDS]


def rows_for(picks: dict[str, Setting], horizon: int) -> list[Row]:
    """amos, amos_untuned, adamw and AdamW planned for each of HORIZON_FRACTIONS."""
    rows = []
    if "amos" in picks:
        rows.append(Row("amos", picks["amos"], picks["amos"].label, horizon, tuned=True))
    rows.append(Row(UNTUNED, Setting("amos", {}, "guidance"), "guidance", horizon, tuned=False))
    if "adamw" in picks:
        best = picks["adamw"]
        rows.append(Row("adamw", best, best.label, horizon, tuned=True))
        for f in HORIZON_FRACTIONS:
            steps = round(f * horizon)
            rows.append(Row(f"adamw_at_{f:g}", best, f"{best.label}_steps_{steps}", steps, True))
    return rows


# ----------------------------------------------------------------------------- the claims
def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "never"


def _interval(iv: intervals.Interval, threshold: float) -> dict:
    # A loss difference claims Amos lower (strictly); a step ratio at most 0.70.
    strict = threshold == 0.0
    return {
        "point": _finite(iv.point),
        "low": _finite(iv.low),
        "high": _finite(iv.high),
        "level": iv.level,
        "seeds": iv.seeds,
        "threshold": threshold,
        "verdict": intervals.verdict(iv, threshold, strict=strict),
    }


def _loss_at(curve: list[dict], step: int, key: str) -> float | None:
    return next((r[key] for r in curve if r["step"] == step and key in r), None)


def claims(runs: dict[str, list[dict]], horizon: int) -> dict:
    """Each Amos row against AdamW, over the seeds both finished, on the test split: the
    final loss difference, the step ratio (the paper's question) with per-seed ratios,
    and Amos at each fraction of the horizon against AdamW planned for it (the
    time-to-result question)."""
    key = "test_loss"
    out = {}
    by_seed = {name: {r["seed"]: r for r in rs} for name, rs in runs.items()}
    adamw = by_seed.get("adamw", {})
    for name in ("amos", UNTUNED):
        mine = by_seed.get(name, {})
        seeds = sorted(mine.keys() & adamw.keys())
        entry: dict = {"against": "adamw", "seeds": seeds, "split": "test"}
        out[name] = entry
        if len(seeds) < 2:
            entry["note"] = "fewer than 2 seeds with both rows finished: no interval"
            continue
        a_final = [mine[s]["final"]["eval"][key] for s in seeds]
        b_final = [adamw[s]["final"]["eval"][key] for s in seeds]
        a_curves = [mine[s]["curve"] for s in seeds]
        b_curves = [adamw[s]["curve"] for s in seeds]
        entry["final_loss_difference"] = _interval(
            intervals.final_loss_difference(a_final, b_final), 0.0
        )
        entry["step_ratio"] = _interval(
            intervals.step_ratio(a_curves, b_curves, b_final, loss_key=key),
            intervals.STEP_RATIO_CLAIM,
        )
        entry["step_ratio_per_seed"] = [
            _finite(x) for x in intervals.per_seed_step_ratios(a_curves, b_curves, b_final, key)
        ]
        for f in HORIZON_FRACTIONS:
            short = by_seed.get(f"adamw_at_{f:g}", {})
            pair = [s for s in seeds if s in short]
            step = round(f * horizon)
            at = [_loss_at(mine[s]["curve"], step, key) for s in pair]
            if len(pair) < 2 or any(x is None for x in at):
                entry[f"at_{f:g}"] = {"note": f"no pairs at step {step}", "seeds": pair}
                continue
            iv = intervals.final_loss_difference(at, [short[s]["final"]["eval"][key] for s in pair])
            entry[f"at_{f:g}"] = {**_interval(iv, 0.0), "step": step, "seeds_paired": pair}
    return out


def _ci(c: dict | None, spec: str) -> str:
    if not c or "point" not in c:
        return "—"

    def f(x):
        return x if isinstance(x, str) else format(x, spec)

    return f"{f(c['point'])} [{f(c['low'])}, {f(c['high'])}]"


def claims_markdown(claims_: dict) -> str:
    lines = [
        "## Verdicts (test split, 95% bootstrap intervals over the fresh seeds)",
        "",
        "| Amos row | seeds | final loss − AdamW | verdict | step ratio | per seed | verdict | "
        + " | ".join(f"at {f:g}: − AdamW planned for {f:g} | verdict" for f in HORIZON_FRACTIONS)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|---|" * len(HORIZON_FRACTIONS),
    ]
    for name, c in claims_.items():
        if "final_loss_difference" not in c:
            lines.append(f"| {name} | {len(c['seeds'])} | {c.get('note', '')} |")
            continue
        per_seed = ", ".join(
            x if isinstance(x, str) else f"{x:.2f}" for x in c["step_ratio_per_seed"]
        )
        cells = [
            name,
            str(len(c["seeds"])),
            _ci(c["final_loss_difference"], ".4f"),
            c["final_loss_difference"]["verdict"],
            _ci(c["step_ratio"], ".3f"),
            per_seed,
            c["step_ratio"]["verdict"],
        ]
        for f in HORIZON_FRACTIONS:
            at = c.get(f"at_{f:g}", {})
            cells += [_ci(at, ".4f"), at.get("verdict", at.get("note", "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "A claim is met when its whole interval is on its side of the threshold (difference "
        "below 0; step ratio at most 0.70), not met when none of it is, inconclusive "
        "otherwise (launch/study/intervals.py). The step ratio: Amos' seed-mean test curve "
        "reaching AdamW's mean final test loss, over AdamW's own steps to it (\"never\": it "
        "does not). \"at f\": Amos' test loss at f of the horizon minus AdamW's with its "
        "schedule planned for f of it. Times are in the table above, left out of the verdicts "
        "(docs/study.md).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------- the summary
def tuning_markdown(record: dict) -> str:
    if record.get("picks_from"):
        head = (
            f"No tuning here: the picks of `{record['picks_from']}` trained at this "
            f"experiment's horizon ({record['train_steps']} steps)."
        )
    else:
        head = (
            f"Design: {record['design']}. Seed {TUNING_SEEDS[0]} for every trial, seed "
            f"{TUNING_SEEDS[1]} for the {FINALISTS} best of each optimizer; the pick is the "
            "lower mean final validation loss of the two seeds (test never read)."
        )
    lines = [
        f"# {record['experiment']}: the study's second edition (launch/study2.py)",
        "",
        head,
        "",
        "| optimizer | setting | val loss seed 0 | val loss seed 1 | mean | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for s in record["settings"]:
        v = s["val_loss"]
        mean = Setting(**s).mean_val_loss() if str(TUNING_SEEDS[1]) in s["status"] else None
        lines.append(
            f"| {s['optimizer']} | {s['label']} | {sweep._fmt(v.get('0'), '.4f')} | "
            f"{sweep._fmt(v.get('1'), '.4f')} | "
            f"{sweep._fmt(mean if mean is None or math.isfinite(mean) else None, '.4f')} | "
            f"{'yes' if s['chosen'] else ''} |"
        )
    return "\n".join(lines) + "\n\n"


def plot_design(settings: list[Setting], path: Path, title: str) -> None:
    """Each optimizer's trials in its two knobs, coloured by the seed-0 validation loss."""
    import matplotlib  # here: slow to import, and only drawing needs it

    matplotlib.use("Agg")  # no display; before pyplot loads
    import matplotlib.pyplot as plt

    opts = list(dict.fromkeys(s.optimizer for s in settings))
    fig, axes = plt.subplots(1, len(opts), figsize=(5.5 * len(opts), 4), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        mine = [s for s in settings if s.optimizer == opt and s.val_loss.get("0") is not None]
        names = list(mine[0].values) if mine else []
        if len(names) != 2:
            continue
        xs = [s.values[names[0]] for s in mine]
        ys = [s.values[names[1]] for s in mine]
        sc = ax.scatter(xs, ys, c=[s.val_loss["0"] for s in mine], cmap="viridis_r")
        for s in mine:
            if s.chosen:
                ax.plot(s.values[names[0]], s.values[names[1]], "*", ms=18, color="C3")
        ax.set_xscale("log")
        if names[1] == "AMOS_BETA":
            ax.set_yscale("function", functions=(lambda b: -_log1m(b), lambda y: 1 - 10.0**y))
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_title(f"{opt} (star: pick)")
        fig.colorbar(sc, ax=ax, label="final validation loss, seed 0")
    fig.suptitle(f"{title}: tuning design")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _log1m(b):
    return np.log10(np.maximum(1 - np.asarray(b, float), 1e-12))


def summarize(
    experiment: str,
    parent: Path,
    out: Path,
    record: dict,
    settings: list[Setting],
    rows: list[Row],
    horizon: int,
    command: list[str],
) -> dict:
    """study.json, compare's summary over the fresh seeds of each row with the claims'
    intervals and verdicts added, the plots and every run's records."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(record, indent=2))
    row_dirs = {row.name: row.dirs(parent) for row in rows}
    fields = {
        row.name: {
            "tuned": row.tuned,
            "setting": row.setting.values,
            "trial": row.label,
            "train_steps_planned": row.steps,
        }
        for row in rows
    }
    summary = compare.summarize_runs(
        experiment,
        parent,
        row_dirs,
        out,
        command,
        row_fields=fields,
        fields={"edition": 2, "study": "study.json", "fresh_seeds": list(FRESH_SEEDS)},
    )
    summary["claims"] = claims(compare.collect_runs(row_dirs), horizon)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    tuning = [
        Path(sweep.trial_dir(parent, s.optimizer, s.label, int(k)))
        for s in settings
        for k, status in s.status.items()
        if status != "missing"
    ]
    compare.copy_run_records(parent, tuning, out)
    if record.get("design") == "sobol":
        plot_design(settings, out / "tuning_design.png", experiment)
    (out / "summary.md").write_text(
        tuning_markdown(record) + claims_markdown(summary["claims"]) + compare.markdown(summary)
    )
    return summary


# ----------------------------------------------------------------- sizing EVAL_BATCHES
def first_edition_gap(sweep_json: Path) -> tuple[float, dict]:
    """The smallest gap between the two best trials of either optimizer in the first
    edition's sweep, and each optimizer's picked trial."""
    if not sweep_json.is_file():
        raise ConfigError(f"no first-edition sweep at {sweep_json}: nothing to size against")
    record = json.loads(sweep_json.read_text())
    gaps, picked = {}, {}
    for opt in record["knobs"]:
        losses = sorted(
            t["final_val_loss"]
            for t in record["trials"]
            if t["optimizer"] == opt
            and t["final_val_loss"] is not None
            and math.isfinite(t["final_val_loss"])
        )
        if len(losses) >= 2:
            gaps[opt] = losses[1] - losses[0]
        picked[opt] = next(t for t in record["trials"] if t["optimizer"] == opt and t["chosen"])
    return min(gaps.values()), {"gaps": gaps, "picked": picked}


def measure_eval_batches(
    experiment: str, parent: Path, out: Path, counts: list[int], user: list[str], command: list[str]
) -> dict:
    """Retrains the first edition's picks at seed 0 and records each final checkpoint's
    validation loss standard error with each EVAL_BATCHES in `counts`."""
    gap, first = first_edition_gap(REPO / "results" / "study" / experiment / "sweep.json")
    measured: dict[str, dict[str, float | None]] = {}
    commands = []
    for opt, trial in first["picked"].items():
        recipe = sweep.recipe_settings(experiment, opt, user)
        d = parent / "eval_batches" / opt / trial["label"]
        bindings = [
            *user,
            f"--gin.{trial['knob']}={trial['value']!r}",
            *[f"--gin.{c}={recipe[c] * trial['factor']!r}" for c in sweep.COUPLED[trial["knob"]]],
        ]
        sweep.train(experiment, opt, TUNING_SEEDS[0], d, bindings)
        measured[opt] = {}
        for n in counts:
            cmd = [
                *compare.train_command(experiment, opt, TUNING_SEEDS[0], d, bindings),
                f"--gin.EVAL_BATCHES={n}",
                "--eval_only",
            ]
            commands.append(cmd)
            print("[study2] " + " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=REPO).returncode:
                raise SystemExit(f"[study2] --eval_only failed: {d}")
            result = json.loads(
                max(
                    d.glob(run_folder.EVAL_JSON_PATTERN), key=lambda p: p.stat().st_mtime
                ).read_text()
            )
            measured[opt][str(n)] = result["loss_standard_error"].get("val")
    threshold = gap / 10
    fits = [
        n
        for n in counts
        if all(
            measured[o][str(n)] is not None and measured[o][str(n)] < threshold for o in measured
        )
    ]
    record = {
        "experiment": experiment,
        "rule": "the validation loss's standard error over its batches (each optimizer's "
        "first-edition pick, retrained at seed 0, at its end) below a tenth of the smallest "
        "gap between the first edition's two best trials of either optimizer",
        "smallest_gap": gap,
        "gaps": first["gaps"],
        "threshold": threshold,
        "standard_error": measured,
        "eval_batches": min(fits) if fits else None,
        "commands": commands,
        "command": command,
        "git": git_revision(),
        "machine": platform.node(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_batches.json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# {experiment}: sizing EVAL_BATCHES (launch/study2.py --measure_eval_batches)",
        "",
        f"Smallest gap between the first edition's two best trials: {gap:.4g} "
        f"({', '.join(f'{o} {g:.4g}' for o, g in first['gaps'].items())}); threshold "
        f"{threshold:.4g}.",
        "",
        "| EVAL_BATCHES | " + " | ".join(f"{o} SE" for o in measured) + " |",
        "|---|" + "---|" * len(measured),
    ]
    for n in counts:
        lines.append(
            f"| {n} | "
            + " | ".join(sweep._fmt(measured[o][str(n)], ".4g") for o in measured)
            + " |"
        )
    lines += ["", f"Chosen: {record['eval_batches'] or 'none of these (measure more)'}.", ""]
    (out / "eval_batches.md").write_text("\n".join(lines))
    return record


# ---------------------------------------------------------------------------------- main
def _record(experiment, design, recipes, settings, horizon, command, picks_from=None) -> dict:
    return {
        "experiment": experiment,
        "edition": 2,
        "design": design,
        "sobol_trials": SOBOL_TRIALS if design == "sobol" else None,
        "sobol_seed": SOBOL_SEED if design == "sobol" else None,
        "recipes": recipes,
        "train_steps": horizon,
        "tuning_seeds": list(TUNING_SEEDS),
        "fresh_seeds": list(FRESH_SEEDS),
        "horizon_fractions": list(HORIZON_FRACTIONS),
        "settings": [asdict(s) for s in settings],
        "picked": {
            s.optimizer: {"label": s.label, "values": s.values} for s in settings if s.chosen
        },
        "picks_from": picks_from,
        "command": command,
        "git": git_revision(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _train_setting(
    experiment: str,
    directory: Path,
    setting: Setting,
    seed: int,
    recipe: dict[str, float],
    steps: int,
    horizon: int,
    user: list[str],
) -> None:
    bindings = setting_bindings(user, setting, recipe, steps, horizon)
    sweep.train(experiment, setting.optimizer, seed, directory, bindings)


def tune(
    experiment: str,
    design: str,
    parent: Path,
    recipes: dict,
    horizon: int,
    user: list[str],
    run: bool,
) -> list[Setting]:
    """Seed 0 for every trial (the grid's edge rule round by round), then seed 1 for
    each optimizer's finalists; the picks are marked `chosen`."""
    while True:
        settings = grid_settings(parent, recipes) if design == "grid" else sobol_settings(recipes)
        settings = [read_setting(parent, s, TUNING_SEEDS[:1]) for s in settings]
        missing = [s for s in settings if s.status["0"] == "missing"]
        if not missing or not run:
            break
        for s in missing:  # The grid: then its edge rule's next round, if any.
            d = sweep.trial_dir(parent, s.optimizer, s.label, TUNING_SEEDS[0])
            _train_setting(
                experiment, d, s, TUNING_SEEDS[0], recipes[s.optimizer], horizon, horizon, user
            )
    for opt in recipes:
        for s in finalists(settings, opt):
            read_setting(parent, s)
            if run and s.status[str(TUNING_SEEDS[1])] == "missing":
                d = sweep.trial_dir(parent, s.optimizer, s.label, TUNING_SEEDS[1])
                _train_setting(
                    experiment, d, s, TUNING_SEEDS[1], recipes[opt], horizon, horizon, user
                )
                read_setting(parent, s)
        best = choose(settings, opt)
        if best is not None:
            best.chosen = True
    return settings


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["launch/study2.py", *argv]
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="name X of gin_configs/experiments/X.gin")
    p.add_argument("--design", choices=("grid", "sobol"), default="grid")
    p.add_argument("--parent", default=None, help="run directories (default runs/study2/<exp>)")
    p.add_argument("--results", default=None, help="summary dir (default results/study2/<exp>)")
    p.add_argument("--picks_from", default=None, help="a finished second-edition results dir")
    p.add_argument("--measure_eval_batches", default=None, help="EVAL_BATCHES values, e.g. 10,40")
    p.add_argument("--resummarize", action="store_true", help="only summarize existing runs")
    args, rest = p.parse_known_args(argv)
    sweep.check_tool_args(p, args.experiment, rest, STUDY_SETS, "study")
    parent = Path(args.parent or REPO / "runs" / "study2" / args.experiment).resolve()
    out = Path(args.results or REPO / "results" / "study2" / args.experiment).resolve()
    try:
        if args.measure_eval_batches:
            try:
                counts = [int(n) for n in args.measure_eval_batches.split(",") if n]
            except ValueError:
                counts = []
            if not counts or min(counts) < 1:
                raise ConfigError(
                    f"--measure_eval_batches={args.measure_eval_batches}: positive integers"
                )
            record = measure_eval_batches(args.experiment, parent, out, counts, rest, command)
            print((out / "eval_batches.md").read_text())
            return 0
        recipes = {opt: recipe_of(args.experiment, opt, rest) for opt in ARMS}
        horizon = int(recipes["adamw"]["TRAIN_STEPS"])
        if args.picks_from:
            source = Path(args.picks_from).resolve() / "study.json"
            if not source.is_file():
                raise ConfigError(f"--picks_from={args.picks_from}: no study.json there")
            prior = json.loads(source.read_text())
            settings = [Setting(**s) for s in prior["settings"] if s["chosen"]]
            if sorted(s.optimizer for s in settings) != sorted(ARMS):
                raise ConfigError(
                    f"--picks_from={args.picks_from}: it picked no setting for every arm"
                )
    except ConfigError as e:
        print(f"ERROR: configuration: {e}", file=sys.stderr)
        return 2
    run = not args.resummarize
    t0 = time.time()
    if not args.picks_from:
        settings = tune(args.experiment, args.design, parent, recipes, horizon, rest, run)
    picks = {s.optimizer: s for s in settings if s.chosen}
    rows = rows_for(picks, horizon)
    if run:
        for seed in FRESH_SEEDS:  # Seed-major: a partial study already compares the rows.
            for row in rows:
                d = sweep.trial_dir(parent, row.setting.optimizer, row.label, seed)
                recipe = recipes[row.setting.optimizer]
                _train_setting(
                    args.experiment, d, row.setting, seed, recipe, row.steps, horizon, rest
                )
        print(f"[study2] trained in {time.time() - t0:.0f} s on {platform.node()}", flush=True)
    record = _record(
        args.experiment,
        "picks" if args.picks_from else args.design,
        recipes,
        settings,
        horizon,
        command,
        picks_from=args.picks_from,
    )
    summarize(args.experiment, parent, out, record, settings, rows, horizon, command)
    print((out / "summary.md").read_text())
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(parent))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
