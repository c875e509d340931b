"""The study's tuning sweep of one experiment: equal trials per optimizer, a pick on
validation, fresh seeds at the pick, and the summary on test (README, "The reproduction
study: protocol").

  .venv/bin/python launch/sweep.py --experiment quickstart [--trials 5] [--seeds 3]
      [--parent runs/study/quickstart] [--results results/study/quickstart]
      [--gin.NAME=VALUE ...]
  .venv/bin/python launch/sweep.py --experiment quickstart_4x \
      --picks_from results/study/quickstart            # the horizon ladder
  .venv/bin/python launch/sweep.py --experiment quickstart --resummarize

Per optimizer, its main knob (AdamW: ADAMW_LR; Amos: AMOS_XI), read from the experiment's
gin files as run.py reads them (the --gin bindings applied), is tried on a log grid of
factors of that recipe value (--trials 5: 1/8, 1/4, 1/2, 1 and 2) at tuning seed 0, every
run evaluated on validation and test. A setting coupled to a knob (AdamW's ADAMW_MIN_LR,
the rate its schedule ends at) moves by the same factor, so that every trial keeps the
recipe's schedule shape. The pick is the trial with the lowest final validation loss (a
tie goes to the smaller value); the test loss is never looked at. The pick is then trained
at fresh seeds 1..S, and so is Amos at its guidance value (factor 1), as the row
`amos_untuned`. A trial that diverges is recorded as such and never picked.

`--picks_from DIR` is the horizon ladder: no trials; the picks (and the guidance value) of
the finished sweep in DIR, made at its experiment's horizon, are trained at fresh seeds at
this experiment's (a longer one), so that the two summaries compare the same settings.

Each run is its own launch/run.py process (compare.py's command), in
PARENT/<optimizer>/<trial>/seed_<k> with <trial> the knob and its value (`lr_0.001`,
`xi_0.053`); finished and diverged runs are skipped, interrupted ones resume. RESULTS gets
sweep.json (every trial: knob value, final validation loss, chosen), summary.json (compare's
format, over the fresh seeds of amos, amos_untuned and adamw, with `tuned` flags and the
picked values), summary.md, tuning_curves.png, loss_curves.png, the operative configs and
every run's records under runs/. `--resummarize` only re-reads the run directories.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments.errors import ConfigError  # noqa: E402
from launch import compare  # noqa: E402
from launch.run import git_revision  # noqa: E402

# The main knob of each optimizer: the peak learning rate of AdamW's recipe, and Amos' xi
# at the guidance 1/sqrt(N). The first optimizer's runs are listed first everywhere.
KNOBS: dict[str, str] = {"amos": "AMOS_XI", "adamw": "ADAMW_LR"}
KNOB_LABELS: dict[str, str] = {"AMOS_XI": "xi", "ADAMW_LR": "lr"}
# Settings scaled with a knob, so that a trial changes the knob and not the schedule's
# shape: nanoGPT's cosine ends at min_lr = lr / 10, the paper's linear decay at 0.
COUPLED: dict[str, tuple[str, ...]] = {"AMOS_XI": (), "ADAMW_LR": ("ADAMW_MIN_LR",)}
TUNING_SEED = 0
EVAL_SPLITS = "['val', 'test']"
UNTUNED = "amos_untuned"  # Amos at its guidance value: the paper's "no tuning" claim.
SWEEP_SETS = ("MODEL_DIR", "SEED", "EVAL_SPLITS")  # per run; not for --gin bindings


# ------------------------------------------------------------------------------ the grid
def grid_factors(trials: int) -> list[float]:
    """The protocol's log grid, in powers of 2 of the recipe value: factor 1 always, one
    step above it (2) from two trials on, the rest below (5 trials: 1/8, 1/4, 1/2, 1, 2)."""
    if trials < 1:
        raise ConfigError(f"--trials={trials} must be at least 1")
    up = 1 if trials >= 2 else 0
    return [2.0**k for k in range(up - trials + 1, up + 1)]


def grid(recipe: float, trials: int) -> list[float]:
    """The knob values tried: the recipe value times each factor (exact: powers of 2)."""
    return [recipe * f for f in grid_factors(trials)]


def trial_label(knob: str, value: float) -> str:
    """The trial's directory name: the knob and its value, so that a changed recipe value
    can never reuse a run made at another value."""
    return f"{KNOB_LABELS[knob]}_{value:.6g}"


def trial_dir(parent: Path, optimizer: str, label: str, seed: int) -> Path:
    return parent / optimizer / label / f"seed_{seed}"


def recipe_settings(experiment: str, optimizer: str, bindings: list[str]) -> dict[str, float]:
    """The optimizer's knob and the settings coupled to it, with their values in the
    experiment's gin files (+ `bindings`), parsed as run.py parses them."""
    import gin

    from launch.run import load_gin, parse_args

    args, parsed = parse_args(
        [f"--gin_file={compare.experiment_file(experiment)}", f"--optimizer={optimizer}", *bindings]
    )
    search_paths = [p for p in args.gin_search_paths.split(",") if p]
    load_gin(args.gin_file, parsed, search_paths)
    knob = KNOBS[optimizer]
    values = {}
    try:
        for name in (knob, *COUPLED[knob]):
            try:
                values[name] = gin.query_parameter(f"%{name}")
            except ValueError as e:
                raise ConfigError(f"experiments/{experiment}.gin defines no {name}: {e}") from e
    finally:
        gin.clear_config()
    for name, value in values.items():
        low = 0 if name != knob else None  # a coupled setting may be 0 (decay to zero)
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not (value > 0 or (low is not None and value == low)):
            wanted = "a positive number is tuned" if name == knob else "a number >= 0 is scaled"
            raise ConfigError(f"{name} = {value!r} in {experiment}.gin: {wanted}")
    return {name: float(value) for name, value in values.items()}


def recipe_value(experiment: str, optimizer: str, bindings: list[str]) -> float:
    """The knob's value in the experiment's gin files (+ `bindings`)."""
    return recipe_settings(experiment, optimizer, bindings)[KNOBS[optimizer]]


# ---------------------------------------------------------------------------- the trials
@dataclass
class Trial:
    """One tuning run, and what it ended with."""

    optimizer: str
    knob: str
    factor: float
    value: float
    label: str
    run_dir: str
    status: str = "missing"  # finished, diverged or missing (not run, or interrupted)
    final_val_loss: float | None = None
    chosen: bool = False


def run_status(directory: Path) -> tuple[str, float | None]:
    """(finished | diverged | missing, final validation loss) of a run directory."""
    if (directory / "final.json").exists():
        final = json.loads((directory / "final.json").read_text())
        return "finished", float(final["eval"]["loss"])
    info = directory / "run.json"
    if info.exists() and json.loads(info.read_text()).get("status") == "diverged":
        return "diverged", None
    return "missing", None


def read_trials(
    parent: Path, recipes: dict[str, float], trials: int, seed: int = TUNING_SEED
) -> list[Trial]:
    """Every planned trial with its outcome so far, optimizer by optimizer."""
    out = []
    for opt, recipe in recipes.items():
        knob = KNOBS[opt]
        for factor, value in zip(grid_factors(trials), grid(recipe, trials), strict=True):
            label = trial_label(knob, value)
            d = trial_dir(parent, opt, label, seed)
            status, loss = run_status(d)
            out.append(Trial(opt, knob, factor, value, label, str(d), status, loss))
    return out


def pick(trials: list[Trial]) -> Trial | None:
    """The trial with the lowest final validation loss (a tie: the smaller knob value);
    None if no trial finished. Only validation counts: nothing is chosen on test."""
    done = [t for t in trials if t.final_val_loss is not None and math.isfinite(t.final_val_loss)]
    return min(done, key=lambda t: (t.final_val_loss, t.value), default=None)


def train(experiment: str, optimizer: str, seed: int, directory: Path, bindings: list[str]) -> str:
    """Runs (or resumes) one run unless it finished or diverged; returns its status. A
    diverged run is an outcome of the sweep (e.g. a learning rate too high), not an error."""
    status, _ = run_status(directory)
    if status != "missing":
        print(f"[sweep] {directory} already {status}; skipping", flush=True)
        return status
    cmd = compare.train_command(experiment, optimizer, seed, directory, bindings)
    print("[sweep] " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    status, _ = run_status(directory)
    if (code, status) in ((0, "finished"), (3, "diverged")):  # run.py: 3 = diverged
        return status
    raise SystemExit(f"[sweep] run failed (exit {code}): {directory}")


def run_bindings(user: list[str], trial: Trial, recipe: dict[str, float]) -> list[str]:
    """The user's --gin bindings, then the trial's knob, the settings coupled to it (their
    recipe values times the trial's factor) and the evaluation splits (last, so that they
    win)."""
    coupled = [f"--gin.{n}={recipe[n] * trial.factor!r}" for n in COUPLED[trial.knob]]
    return [
        *user,
        f"--gin.{trial.knob}={trial.value!r}",
        *coupled,
        f"--gin.EVAL_SPLITS={EVAL_SPLITS}",
    ]


# --------------------------------------------------------------------------- the summary
@dataclass
class Row:
    """A row of the summary: an optimizer at one knob value over the fresh seeds."""

    name: str
    trial: Trial
    tuned: bool

    def seed_dirs(self, parent: Path, seeds: list[int]) -> list[tuple[int, Path]]:
        t = self.trial
        return [(k, trial_dir(parent, t.optimizer, t.label, k)) for k in seeds]

    def fields(self) -> dict:
        t = self.trial
        return {
            "tuned": self.tuned,
            "knob": t.knob,
            "knob_value": t.value,
            "knob_factor": t.factor,
            "trial": t.label,
            "tuning_val_loss": t.final_val_loss,
        }


def summary_rows(trials: list[Trial]) -> list[Row]:
    """amos (tuned), amos_untuned (factor 1) and adamw (tuned), those that exist."""
    rows = []
    for opt in KNOBS:
        best = pick([t for t in trials if t.optimizer == opt])
        if best is None:
            print(f"[sweep] no finished trial of {opt}: no row for it", flush=True)
            continue
        rows.append(Row(opt, best, tuned=True))
        if opt == "amos":
            guidance = next(t for t in trials if t.optimizer == opt and t.factor == 1.0)
            rows.append(Row(UNTUNED, guidance, tuned=False))
    return rows


def ladder_rows(source_dir: Path, recipes: dict[str, float]) -> tuple[dict, list[Row]]:
    """The finished sweep in `source_dir` (its sweep.json) and its rows, to be trained at
    another horizon: each optimizer's pick and Amos' guidance value, with the tuning
    trial's record (its validation loss at the sweep's horizon)."""
    path = source_dir / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"--picks_from={source_dir}: no sweep.json there (run its sweep first)")
    source = json.loads(path.read_text())
    if source.get("picks_from"):
        raise ConfigError(f"--picks_from={source_dir}: a ladder rung, not a sweep with trials")
    for opt, recipe in recipes.items():
        theirs = source["recipe_values"].get(opt)
        if theirs != recipe:  # The factors would mean other values here.
            raise ConfigError(
                f"--picks_from={source_dir}: its {KNOBS[opt]} recipe value is {theirs}, "
                f"this experiment's is {recipe}; a ladder keeps the recipe"
            )
    trials = [Trial(**t) for t in source["trials"]]
    rows = []
    for opt in KNOBS:
        best = next((t for t in trials if t.optimizer == opt and t.chosen), None)
        if best is None:
            raise ConfigError(f"--picks_from={source_dir}: its sweep picked no {opt} trial")
        rows.append(Row(opt, best, tuned=True))
        if opt == "amos":
            guidance = next(t for t in trials if t.optimizer == opt and t.factor == 1.0)
            rows.append(Row(UNTUNED, replace(guidance, chosen=False), tuned=False))
    return source, rows


def sweep_record(
    experiment: str,
    recipes: dict[str, float],
    trials: list[Trial],
    seeds: list[int],
    command: list[str],
) -> dict:
    return {
        "experiment": experiment,
        "knobs": {opt: KNOBS[opt] for opt in recipes},
        "recipe_values": recipes,
        "factors": sorted({t.factor for t in trials}),
        "tuning_seed": TUNING_SEED,
        "fresh_seeds": seeds,
        "pick": "lowest final validation loss at the tuning seed; a tie goes to the smaller "
        "value; the test loss is not used",
        "trials": [asdict(t) for t in trials],
        "picked": {
            t.optimizer: {"knob": t.knob, "value": t.value, "factor": t.factor, "trial": t.label}
            for t in trials
            if t.chosen
        },
        "command": command,
        "git": git_revision(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def sweep_markdown(record: dict) -> str:
    """The tuning table that heads summary.md."""
    if record.get("picks_from"):
        head = [
            f"# {record['experiment']}: a rung of the horizon ladder (launch/sweep.py)",
            "",
            f"No trials here: the picks of the sweep of {record['source_experiment']} "
            f"(`{record['picks_from']}`, at git {record['source_git']['revision']}), trained at "
            f"this experiment's horizon with seeds {', '.join(map(str, record['fresh_seeds']))}"
            f", and Amos at its guidance value as {UNTUNED}. That sweep's trials:",
        ]
    else:
        head = [
            f"# {record['experiment']}: the tuning sweep (launch/sweep.py)",
            "",
            f"{len(record['factors'])} trials per optimizer at seed {record['tuning_seed']}, "
            f"factors {', '.join(f'{f:g}' for f in record['factors'])} of the recipe value; "
            f"pick: {record['pick']}. Then seeds {', '.join(map(str, record['fresh_seeds']))} at "
            f"the pick, and Amos at its guidance value (factor 1) as {UNTUNED}.",
        ]
    lines = [
        *head,
        "",
        "| optimizer | knob | factor | value | status | final val loss | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in record["trials"]:
        lines.append(
            f"| {t['optimizer']} | {t['knob']} | {t['factor']:g} | {t['value']:.6g} | "
            f"{t['status']} | {_fmt(t['final_val_loss'], '.4f')} | "
            f"{'yes' if t['chosen'] else ''} |"
        )
    return "\n".join(lines) + "\n\n"


def plot_tuning(trials: list[Trial], recipes: dict[str, float], path: Path, title: str) -> None:
    """Final validation loss against the knob, one panel per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(recipes), figsize=(5.5 * len(recipes), 4), squeeze=False)
    for ax, (opt, recipe) in zip(axes[0], recipes.items(), strict=True):
        mine = [t for t in trials if t.optimizer == opt]
        done = [t for t in mine if t.final_val_loss is not None]
        ax.plot([t.value for t in done], [t.final_val_loss for t in done], "o-", label="trials")
        for t in mine:
            if t.chosen:
                ax.plot(t.value, t.final_val_loss, "*", ms=16, color="C3", label="pick")
            elif t.status == "diverged":
                ax.axvline(t.value, color="C3", ls=":", lw=1, label="diverged")
        ax.axvline(recipe, color="gray", ls="--", lw=0.8, label="recipe value")
        ax.set_xscale("log", base=2)
        ax.set_xticks([t.value for t in mine], [f"{t.value:.3g}" for t in mine])
        ax.minorticks_off()
        ax.set_xlabel(KNOBS[opt])
        ax.set_ylabel("final validation loss (seed 0)")
        ax.set_title(opt)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys())
    fig.suptitle(f"{title}: tuning trials")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(
    experiment: str,
    parent: Path,
    out: Path,
    recipes: dict[str, float],
    trials: list[Trial],
    seeds: list[int],
    command: list[str],
    ladder: tuple[Path, dict] | None = None,
) -> dict:
    """sweep.json, then compare's summary over the fresh seeds of each row, then the plots
    and every run's records. `ladder`: (the source sweep's directory, its sweep.json) when
    the rows are its picks, trained here at another horizon; `trials` are then its trials."""
    if ladder is None:
        rows = summary_rows(trials)
        for row in rows:
            if row.tuned:
                row.trial.chosen = True
    else:
        rows = ladder_rows(ladder[0], recipes)[1]
    record = sweep_record(experiment, recipes, trials, seeds, command)
    if ladder is not None:
        source_dir, source = ladder
        record.update(
            picks_from=str(
                source_dir.relative_to(REPO) if source_dir.is_relative_to(REPO) else source_dir
            ),
            source_experiment=source["experiment"],
            source_git=source["git"],
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(record, indent=2))
    if not rows:
        raise SystemExit(f"[sweep] no finished trial under {parent}")
    diverged = {
        row.name: [k for k, d in row.seed_dirs(parent, seeds) if run_status(d)[0] == "diverged"]
        for row in rows
    }
    extra = {"picks_from": record["picks_from"]} if ladder is not None else {}
    summary = compare.summarize_runs(
        experiment,
        parent,
        {row.name: row.seed_dirs(parent, seeds) for row in rows},
        out,
        command,
        row_fields={row.name: row.fields() for row in rows},
        fields={
            "sweep": "sweep.json",
            "tuning_seed": TUNING_SEED,
            "picked": record["picked"],
            "untuned": {UNTUNED: f"amos at its guidance value, {KNOBS['amos']} factor 1"},
            "diverged_runs": {name: seeds for name, seeds in diverged.items() if seeds},
            **extra,
        },
    )
    if ladder is None:
        compare.copy_run_records(
            parent, [Path(t.run_dir) for t in trials if Path(t.run_dir).exists()], out
        )
        plot_tuning(trials, recipes, out / "tuning_curves.png", experiment)
    (out / "summary.md").write_text(sweep_markdown(record) + compare.markdown(summary))
    return summary


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["launch/sweep.py", *argv]
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="name X of gin_configs/experiments/X.gin")
    p.add_argument("--trials", type=int, default=5, help="knob values per optimizer")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds 1 .. N at the pick")
    p.add_argument("--parent", default=None, help="run directories (default runs/study/<exp>)")
    p.add_argument("--results", default=None, help="summary dir (default results/study/<exp>)")
    p.add_argument(
        "--picks_from",
        default=None,
        help="a finished sweep's results directory: train its picks at this experiment's "
        "horizon, no trials (the horizon ladder)",
    )
    p.add_argument(
        "--resummarize", action="store_true", help="only summarize existing run directories"
    )
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--gin")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    fixed = [a for a in rest if a.split("=", 1)[0] in {f"--gin.{n}" for n in SWEEP_SETS}]
    if fixed:
        p.error(f"{' '.join(fixed)}: the sweep sets {', '.join(SWEEP_SETS)} itself")
    if not (REPO / "gin_configs" / compare.experiment_file(args.experiment)).exists():
        p.error(f"no experiment file for --experiment {args.experiment!r}")
    if args.seeds < 1:
        p.error(f"--seeds={args.seeds} must be at least 1")
    parent = Path(args.parent or REPO / "runs" / "study" / args.experiment).resolve()
    out = Path(args.results or REPO / "results" / "study" / args.experiment).resolve()
    seeds = list(range(1, args.seeds + 1))
    try:
        grid_factors(args.trials)
        settings = {opt: recipe_settings(args.experiment, opt, rest) for opt in KNOBS}
        recipes = {opt: settings[opt][KNOBS[opt]] for opt in KNOBS}
        ladder = None
        if args.picks_from:
            source_dir = Path(args.picks_from).resolve()
            source, rows = ladder_rows(source_dir, recipes)
            ladder = (source_dir, source)
    except ConfigError as e:
        print(f"ERROR: configuration: {e}", file=sys.stderr)
        return 2

    if not args.resummarize:
        t0 = time.time()
        if ladder is None:
            # Factor by factor, both optimizers: a partial sweep already compares them.
            planned = read_trials(parent, recipes, args.trials)
            for factor in grid_factors(args.trials):
                for t in (t for t in planned if t.factor == factor):
                    bindings = run_bindings(rest, t, settings[t.optimizer])
                    train(args.experiment, t.optimizer, TUNING_SEED, Path(t.run_dir), bindings)
            rows = summary_rows(read_trials(parent, recipes, args.trials))
        for seed in seeds:  # Seed-major, as compare.py.
            for row in rows:
                t = row.trial
                d = trial_dir(parent, t.optimizer, t.label, seed)
                train(
                    args.experiment,
                    t.optimizer,
                    seed,
                    d,
                    run_bindings(rest, t, settings[t.optimizer]),
                )
        print(f"[sweep] trained in {time.time() - t0:.0f} s on {platform.node()}", flush=True)
    if ladder is None:
        trials = read_trials(parent, recipes, args.trials)
    else:
        trials = [Trial(**t) for t in ladder[1]["trials"]]
    summarize(args.experiment, parent, out, recipes, trials, seeds, command, ladder)
    print((out / "summary.md").read_text())
    print(f"TensorBoard: tensorboard --logdir {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
