"""The study's tuning sweep of one experiment: equal trials per optimizer, a pick on
validation, fresh seeds at the pick, and the summary on test (docs/study.md, "The reproduction
study: protocol").

  .venv/bin/python launch/sweep.py --experiment quickstart [--trials 5] [--seeds 3]
      [--parent runs/study/quickstart] [--results results/study/quickstart]
      [--gin.NAME=VALUE ...]
  .venv/bin/python launch/sweep.py --experiment quickstart_4x \
      --picks_from results/study/quickstart            # the horizon ladder
  .venv/bin/python launch/sweep.py --experiment quickstart --resummarize
  .venv/bin/python launch/sweep.py --experiment schedules_nanogpt_cpu \
      --arms amos,adamw,adam_pnp_isq,adam_pnp_itime --continue_to 2

`--arms` are the optimizers compared (default amos,adamw), in the order of every listing.
Per optimizer, its main knob (AdamW: ADAMW_LR; Amos: AMOS_XI; Adam with the plug-and-play
schedules, adam_pnp_isq and adam_pnp_itime: their half-life PNP_HALF_LIFE), read from the
experiment's gin files as run.py reads them (the --gin bindings applied), is tried on a
log grid of factors of that recipe value (--trials 5: 1/8, 1/4, 1/2, 1 and 2) at tuning
seed 0, every run evaluated on validation and test. A setting coupled to a knob (AdamW's
ADAMW_MIN_LR, the rate its schedule ends at) moves by the same factor, so that every trial
keeps the recipe's schedule shape. The pick is the trial with the lowest final validation loss (a
tie goes to the smaller value); the test loss is never looked at. While a pick is the
smallest or largest factor of its optimizer's grid, every optimizer gets one more trial
(the edge rule, at most --extensions rounds: the one on the edge one factor of 2 beyond
it, the others beyond the edge on their pick's better side). The pick is then trained
at fresh seeds 1..S, and so is Amos at its guidance value (factor 1), as the row
`amos_untuned`. A trial that diverges is recorded as such and never picked.

`--picks_from DIR` is the horizon ladder: no trials; the picks (and the guidance value) of
the finished sweep in DIR, made at its experiment's horizon, are trained at fresh seeds at
this experiment's (a longer one), so that the two summaries compare the same settings.

`--continue_to K` then trains every row's fresh-seed runs on past the planned horizon, to K
times TRAIN_STEPS: each run is copied (the planned runs stay as they are) to
PARENT_continued_<K>x/<optimizer>/<trial>/seed_<k> and resumed there from its last
checkpoint, with every schedule's horizon kept at the planned TRAIN_STEPS (AdamW's decay
then stays at its end rate; Amos and the plug-and-play schedules have no horizon). Its
summary, RESULTS/continued_<K>x/, has each row's final validation and test loss at 1x and
at Kx beside compare's numbers for the continued runs.

Each run is its own launch/run.py process (compare.py's command), in
PARENT/<optimizer>/<trial>/seed_<k> with <trial> the knob and its value (`lr_0.001`,
`xi_0.053`); finished and diverged runs are skipped, interrupted ones resume. RESULTS gets
sweep.json (every trial: knob value, final validation loss, chosen), summary.json (compare's
format, over the fresh seeds of amos, amos_untuned, adamw and any other arm, with `tuned`
flags and the picked values), summary.md, tuning_curves.png, loss_curves.png, the
operative configs and every run's records under runs/. `--resummarize` only re-reads the
run directories.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gin

from experiments.errors import ConfigError
from launch import optimizers
from launch.provenance import git_revision
from launch.run import OPTIMIZERS, load_gin, parse_args
from launch.study import compare
from launch.summary_writer import read_metrics
from launch.trainer import run_folder

REPO = Path(__file__).resolve().parents[2]

# What the study tunes of each arm, as its optimizer factory declares it
# (launch/optimizers.py's `Tuning`): the main knob (AdamW's peak rate, Amos' xi at the
# guidance 1/sqrt(N), the plug-and-play schedules' half-life T), the knobs' short names,
# the settings scaled with a knob (nanoGPT's cosine ends at min_lr = lr / 10) and the
# binding that keeps a schedule's horizon at the planned TRAIN_STEPS while a run continues
# past it (--continue_to; arms without a horizon have none). An arm's runs and rows are
# listed in the order of --arms.
DEFAULT_ARMS = ("amos", "adamw")
TUNINGS = {
    arm: optimizers.arm_tuning(arm)
    for arm in [*DEFAULT_ARMS, *(a for a in OPTIMIZERS if a not in DEFAULT_ARMS)]
}
KNOBS: dict[str, str] = {arm: t.knob for arm, t in TUNINGS.items()}
KNOB_LABELS: dict[str, str] = {k: v for t in TUNINGS.values() for k, v in t.labels.items()}
COUPLED: dict[str, tuple[str, ...]] = {t.knob: t.coupled for t in TUNINGS.values()}
HORIZON_BINDINGS: dict[str, str] = {
    arm: t.horizon_binding for arm, t in TUNINGS.items() if t.horizon_binding
}
# What a continued run does not take from the run it copies: its end (final.json, whose
# presence means finished), the planned run's lock and evaluation-only records.
NOT_CONTINUED = (
    run_folder.FINAL_JSON,
    run_folder.LOCK_FILE,
    run_folder.EVAL_JSON_PATTERN,
    run_folder.WRITE_PROBE_PATTERN,
)
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


@contextlib.contextmanager
def experiment_config(experiment: str, optimizer: str, bindings: list[str]) -> Iterator[None]:
    """Within the block, gin holds the experiment's configuration with the optimizer's
    (+ `bindings`), parsed as run.py parses them; cleared after."""
    args, parsed = parse_args(
        [f"--gin_file={compare.experiment_file(experiment)}", f"--optimizer={optimizer}", *bindings]
    )
    search_paths = [p for p in args.gin_search_paths.split(",") if p]
    try:
        load_gin(args.gin_file, parsed, search_paths)
        yield
    finally:
        gin.clear_config()


def gin_values(experiment: str, optimizer: str, bindings: list[str], names: list[str]) -> dict:
    """The values of the macros `names` in the experiment's gin files with the optimizer's
    (+ `bindings`), parsed as run.py parses them; a macro bound to a call (`AMOS_XI =
    @xi_guidance()`, which builds the task to count its examples) is what the call returns."""
    values = {}
    with experiment_config(experiment, optimizer, bindings):
        for name in names:
            try:
                value = gin.query_parameter(f"%{name}")
            except ValueError as e:
                raise ConfigError(f"experiments/{experiment}.gin defines no {name}: {e}") from e
            if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
                value = value.scoped_configurable_fn()
            values[name] = value
    return values


def recipe_settings(experiment: str, optimizer: str, bindings: list[str]) -> dict[str, float]:
    """The optimizer's knob and the settings coupled to it, with their values in the
    experiment's gin files (+ `bindings`), parsed as run.py parses them."""
    knob = KNOBS[optimizer]
    values = gin_values(experiment, optimizer, bindings, [knob, *COUPLED[knob]])
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
    if (directory / run_folder.FINAL_JSON).exists():
        final = json.loads((directory / run_folder.FINAL_JSON).read_text())
        return "finished", float(final["eval"]["loss"])
    info = directory / run_folder.RUN_JSON
    if info.exists() and json.loads(info.read_text()).get("status") == "diverged":
        return "diverged", None
    return "missing", None


def read_trials(
    parent: Path,
    recipes: dict[str, float],
    trials: int | Mapping[str, list[float]],
    seed: int = TUNING_SEED,
) -> list[Trial]:
    """Every planned trial with its outcome so far, optimizer by optimizer, each in
    increasing factor: `trials` is the grid's size, or each optimizer's factors (the grid
    and its edge extensions, `planned_factors`)."""
    factors = trials if isinstance(trials, Mapping) else dict.fromkeys(recipes, None)
    out = []
    for opt, recipe in recipes.items():
        knob = KNOBS[opt]
        mine = sorted(factors[opt] or grid_factors(trials))  # type: ignore[arg-type]
        for factor in mine:
            value = recipe * factor  # exact: powers of 2
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


MAX_EXTENSIONS = 3  # rounds of the edge rule


def _loss_or_inf(trials: list[Trial], factor: float) -> float:
    t = next((t for t in trials if t.factor == factor), None)
    if t is None or t.final_val_loss is None or not math.isfinite(t.final_val_loss):
        return math.inf  # not tried, or diverged
    return t.final_val_loss


def extension_factors(
    trials: list[Trial], factors: Mapping[str, list[float]]
) -> dict[str, float] | None:
    """The next round of the edge rule (docs/study.md, protocol): while some optimizer's pick is
    the smallest or the largest factor of its grid, every optimizer gets one more trial,
    so that the budget stays equal. The one on an edge goes one factor of 2 beyond it; the
    others one factor of 2 beyond the edge on the side of their pick's better neighbour
    (a diverged or missing neighbour counts as worst). None when no pick is on an edge,
    or an optimizer has no finished trial yet."""
    picks = {opt: pick([t for t in trials if t.optimizer == opt]) for opt in factors}
    if any(p is None for p in picks.values()):
        return None

    def edge(opt: str) -> str | None:
        f = picks[opt].factor
        return "up" if f == max(factors[opt]) else "down" if f == min(factors[opt]) else None

    if not any(edge(opt) for opt in factors):
        return None
    nxt = {}
    for opt, mine in factors.items():
        side = edge(opt)
        if side is None:
            f, own = picks[opt].factor, [t for t in trials if t.optimizer == opt]
            side = "up" if _loss_or_inf(own, 2 * f) < _loss_or_inf(own, f / 2) else "down"
        nxt[opt] = 2 * max(mine) if side == "up" else min(mine) / 2
    return nxt


def planned_factors(
    parent: Path, recipes: dict[str, float], trials: int, max_rounds: int = MAX_EXTENSIONS
) -> tuple[dict[str, list[float]], int]:
    """Each optimizer's factors so far: the grid, then every edge-rule round whose trials
    exist (finished or diverged), and the next round to run if the finished ones call for
    one; and the number of rounds. A round's trials are decided by the finished trials
    alone, so a resumed sweep plans the same rounds."""
    factors = {opt: grid_factors(trials) for opt in recipes}
    for rounds in range(max_rounds + 1):
        current = read_trials(parent, recipes, factors)
        if any(t.status == "missing" for t in current) or rounds == max_rounds:
            return factors, rounds
        nxt = extension_factors(current, factors)
        if nxt is None:
            return factors, rounds
        factors = {opt: [*mine, nxt[opt]] for opt, mine in factors.items()}
    return factors, max_rounds


def train(experiment: str, optimizer: str, seed: int, directory: Path, bindings: list[str]) -> str:
    """Runs (or resumes) one run unless it finished or diverged; returns its status. A
    diverged run is an outcome of the sweep (e.g. a learning rate too high), not an error."""
    status, _ = run_status(directory)
    cmd = compare.train_command(experiment, optimizer, seed, directory, bindings)
    if status != "missing":
        compare.check_reuse(directory, cmd, "sweep")
        print(f"[sweep] {directory} already {status}; skipping", flush=True)
        return status
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
    """Each arm's pick (tuned), in the trials' order, and after amos amos_untuned (factor
    1): amos, amos_untuned and adamw by default; those that exist."""
    rows = []
    for opt in dict.fromkeys(t.optimizer for t in trials):
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
    for opt in recipes:
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
        # Each optimizer's: the grid and the edge rule's extensions (equal in number).
        "optimizer_factors": {
            opt: sorted(t.factor for t in trials if t.optimizer == opt) for opt in recipes
        },
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
            f"{len(record['trials']) // len(record['knobs'])} trials per optimizer at seed "
            f"{record['tuning_seed']}, factors of the recipe value ("
            + "; ".join(
                f"{opt}: {', '.join(f'{f:g}' for f in fs)}"
                for opt, fs in record.get("optimizer_factors", {}).items()
            )
            + ", the grid and the edge rule's extensions, docs/study.md protocol); "
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
    import matplotlib  # here: slow to import, and only drawing needs it

    matplotlib.use("Agg")  # no display; before pyplot loads
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


# ------------------------------------------------------------- past the planned horizon
def continued_parent(parent: Path, multiple: int) -> Path:
    """Where the runs continued to `multiple` times the horizon live: beside PARENT, so
    that PARENT keeps only optimizers' directories."""
    return parent.with_name(f"{parent.name}_continued_{multiple}x")


def planned_steps(experiment: str, optimizer: str, bindings: list[str]) -> int:
    """TRAIN_STEPS of the experiment (+ `bindings`): the planned horizon."""
    steps = gin_values(experiment, optimizer, bindings, ["TRAIN_STEPS"])["TRAIN_STEPS"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"TRAIN_STEPS = {steps!r} in {experiment}.gin: a positive integer")
    return steps


def continuation_bindings(
    user: list[str], trial: Trial, recipe: dict[str, float], planned: int, multiple: int
) -> list[str]:
    """The run's own bindings (`run_bindings`), then TRAIN_STEPS at `multiple` times the
    planned horizon and, for an arm whose schedule has a horizon, that horizon pinned at
    the planned `planned` steps."""
    pin = HORIZON_BINDINGS.get(trial.optimizer)
    return [
        *run_bindings(user, trial, recipe),
        f"--gin.TRAIN_STEPS={planned * multiple}",
        *([f"--gin.{pin}={planned}"] if pin else []),
    ]


def copy_for_continuation(source: Path, dest: Path, planned: int) -> None:
    """`dest`: a copy of the finished run `source` (checkpoints, metrics.jsonl, run.json,
    config.gin, TensorBoard events; not final.json, the lock or eval-only records), which
    launch/run.py resumes from its checkpoint at step `planned` and extends, appending to
    its metrics. Nothing is done if `dest` exists (a copy made before: train() resumes or
    skips it); the copy is made under another name and renamed, so that an interrupted
    copy is never taken for a run."""
    if dest.exists():
        return
    final = json.loads((source / run_folder.FINAL_JSON).read_text())
    if (
        final.get("step") != planned
        or not (source / run_folder.CHECKPOINTS / str(planned)).is_dir()
    ):
        raise ConfigError(
            f"{source} ended at step {final.get('step')} with no checkpoint of step {planned} "
            f"under checkpoints/: it cannot be continued from the planned horizon"
        )
    partial = dest.with_name(dest.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*NOT_CONTINUED))
    partial.rename(dest)


def continue_rows(
    experiment: str,
    parent: Path,
    rows: list[Row],
    seeds: list[int],
    settings: dict[str, dict[str, float]],
    user: list[str],
    planned: int,
    multiple: int,
) -> None:
    """Copies each row's finished fresh-seed runs and trains the copies on to `multiple`
    times the planned horizon (seed-major, as the seeds were trained)."""
    target = continued_parent(parent, multiple)
    for seed in seeds:
        for row in rows:
            t = row.trial
            source = trial_dir(parent, t.optimizer, t.label, seed)
            if run_status(source)[0] != "finished":
                print(f"[sweep] {source} did not finish: not continued", flush=True)
                continue
            dest = trial_dir(target, t.optimizer, t.label, seed)
            copy_for_continuation(source, dest, planned)
            bindings = continuation_bindings(user, t, settings[t.optimizer], planned, multiple)
            train(experiment, t.optimizer, seed, dest, bindings)


def _final_losses(directory: Path) -> tuple[float, float | None] | None:
    """(final validation loss, final test loss or None) of a finished run, else None."""
    if not (directory / run_folder.FINAL_JSON).exists():
        return None
    final = json.loads((directory / run_folder.FINAL_JSON).read_text())["eval"]
    return float(final["loss"]), final.get("test_loss")


def _end_learning_rate(directory: Path) -> float | None:
    """The learning rate of the last training record (the global rate: Amos' xi, the
    plug-and-play alpha_0 * decay, AdamW's scheduled rate)."""
    rates = [r["learning_rate"] for r in read_metrics(str(directory)) if "learning_rate" in r]
    return rates[-1] if rates else None


# A continued seed improved when its loss fell by more than float32 rounding: a run frozen
# at rate 0 re-evaluates its unchanged parameters to within ~1e-7 (summation order).
ROUNDING = 1e-6


def continuation_fields(
    row: Row, parent: Path, seeds: list[int], planned: int, multiple: int
) -> dict | None:
    """A row's final losses at the planned horizon and at `multiple` times it, over the
    seeds finished at both, with the mean change (negative: it kept improving) and the
    seeds that improved; None if no seed finished both."""
    t = row.trial
    pairs = []
    for seed in seeds:
        before = _final_losses(trial_dir(parent, t.optimizer, t.label, seed))
        after_dir = trial_dir(continued_parent(parent, multiple), t.optimizer, t.label, seed)
        after = _final_losses(after_dir)
        if before is not None and after is not None:
            pairs.append((seed, before, after, _end_learning_rate(after_dir)))
    if not pairs:
        return None

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    out = {
        "continued_seeds": [seed for seed, *_ in pairs],
        "planned_steps": planned,
        "continued_steps": planned * multiple,
        "end_learning_rate": [rate for *_, rate in pairs],
    }
    for split, i in (("val", 0), ("test", 1)):
        if any(b[i] is None or a[i] is None for _, b, a, _ in pairs):
            continue  # Not evaluated on this split.
        planned_losses = [b[i] for _, b, _, _ in pairs]
        continued_losses = [a[i] for _, _, a, _ in pairs]
        out.update(
            {
                f"{split}_loss_planned": planned_losses,
                f"{split}_loss_continued": continued_losses,
                f"{split}_loss_planned_mean": mean(planned_losses),
                f"{split}_loss_continued_mean": mean(continued_losses),
                f"{split}_loss_change_mean": mean(continued_losses) - mean(planned_losses),
                f"{split}_seeds_improved": sum(
                    a < b * (1 - ROUNDING)
                    for a, b in zip(continued_losses, planned_losses, strict=True)
                ),
            }
        )
    return out


def continuation_markdown(experiment: str, multiple: int, planned: int, rows: dict) -> str:
    """The table that heads the continued runs' summary.md."""
    lines = [
        f"# {experiment}: continued to {multiple}x the planned horizon "
        f"({planned} -> {planned * multiple} steps, launch/sweep.py --continue_to {multiple})",
        "",
        "Each row's fresh-seed runs, copied at the planned horizon and trained on, every "
        "schedule's horizon kept at the planned steps (AdamW's decay stays at its end rate; "
        "Amos and the plug-and-play schedules have none). Means over the seeds finished at "
        "both; change < 0: it kept improving. A run whose rate has reached 0 keeps its "
        "parameters from the horizon on (its loss moves only through other state, such as "
        "batch-norm statistics), which compare's checks below may flag as stalled or collapsed.",
        "",
        f"| row | seeds | val loss at 1x | at {multiple}x | change | seeds improved | "
        f"test loss at 1x | at {multiple}x | change | end learning rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in rows.items():
        n = len(c["continued_seeds"])
        test = (
            f"{c['test_loss_planned_mean']:.4f} | {c['test_loss_continued_mean']:.4f} | "
            f"{c['test_loss_change_mean']:+.4f}"
            if "test_loss_planned_mean" in c
            else "— | — | —"
        )
        rates = ", ".join(_fmt(r, ".3g") for r in c["end_learning_rate"])
        lines.append(
            f"| {name} | {n} | {c['val_loss_planned_mean']:.4f} | "
            f"{c['val_loss_continued_mean']:.4f} | {c['val_loss_change_mean']:+.4f} | "
            f"{c['val_seeds_improved']}/{n} | {test} | {rates} |"
        )
    return "\n".join(lines) + "\n\n"


def summarize_continuation(
    experiment: str,
    parent: Path,
    out: Path,
    rows: list[Row],
    seeds: list[int],
    planned: int,
    multiple: int,
    command: list[str],
) -> dict:
    """compare's summary of the continued runs in out (RESULTS/continued_<K>x), each row
    with its continuation fields (losses at 1x and Kx), and summary.md headed by them."""
    target = continued_parent(parent, multiple)
    continued = {}
    for row in rows:
        fields = continuation_fields(row, parent, seeds, planned, multiple)
        if fields is None:
            print(f"[sweep] no continued run of {row.name} finished: no row for it", flush=True)
            continue
        continued[row.name] = fields
    if not continued:
        raise SystemExit(f"[sweep] no continued run finished under {target}")
    kept = [row for row in rows if row.name in continued]
    summary = compare.summarize_runs(
        experiment,
        target,
        {row.name: row.seed_dirs(target, continued[row.name]["continued_seeds"]) for row in kept},
        out,
        command,
        row_fields={row.name: {**row.fields(), **continued[row.name]} for row in kept},
        fields={
            "continued_from": str(parent),
            "continue_to": multiple,
            "planned_steps": planned,
            "horizon_bindings": {
                row.name: f"{HORIZON_BINDINGS[row.trial.optimizer]} = {planned}"
                for row in kept
                if row.trial.optimizer in HORIZON_BINDINGS
            },
        },
    )
    md = continuation_markdown(experiment, multiple, planned, continued)
    (out / "summary.md").write_text(md + compare.markdown(summary))
    return summary


def check_tool_args(
    p: argparse.ArgumentParser, experiment: str, rest: list[str], sets: tuple, tool: str
) -> None:
    """The checks every study tool makes of its command line (argparse's exit 2 on each):
    what is left over are --gin bindings, none of them one that the tool sets per run
    (`sets`), and the experiment has a gin file."""
    bad = [a for a in rest if not a.startswith("--gin.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    fixed = [a for a in rest if a.split("=", 1)[0] in {f"--gin.{n}" for n in sets}]
    if fixed:
        p.error(f"{' '.join(fixed)}: the {tool} sets {', '.join(sets)} itself")
    if not (REPO / "gin_configs" / compare.experiment_file(experiment)).exists():
        p.error(f"no experiment file for --experiment {experiment!r}")


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["launch/sweep.py", *argv]
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="name X of gin_configs/experiments/X.gin")
    p.add_argument("--trials", type=int, default=5, help="knob values per optimizer")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds 1 .. N at the pick")
    p.add_argument(
        "--extensions",
        type=int,
        default=MAX_EXTENSIONS,
        help="at most this many rounds of the edge rule (0: the grid only)",
    )
    p.add_argument("--parent", default=None, help="run directories (default runs/study/<exp>)")
    p.add_argument("--results", default=None, help="summary dir (default results/study/<exp>)")
    p.add_argument(
        "--picks_from",
        default=None,
        help="a finished sweep's results directory: train its picks at this experiment's "
        "horizon, no trials (the horizon ladder)",
    )
    p.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"the optimizers compared, in this order; any of {', '.join(KNOBS)}",
    )
    p.add_argument(
        "--continue_to",
        type=int,
        default=None,
        help="then train every row's fresh-seed runs on to this many times TRAIN_STEPS "
        "(copies; schedules keep the planned horizon)",
    )
    p.add_argument(
        "--resummarize", action="store_true", help="only summarize existing run directories"
    )
    args, rest = p.parse_known_args(argv)
    check_tool_args(p, args.experiment, rest, SWEEP_SETS, "sweep")
    if args.seeds < 1:
        p.error(f"--seeds={args.seeds} must be at least 1")
    if args.extensions < 0:
        p.error(f"--extensions={args.extensions} must be 0 or more")
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in KNOBS or a not in OPTIMIZERS]
    if unknown or not arms or len(set(arms)) < len(arms):
        p.error(f"--arms={args.arms}: a list without repeats of {', '.join(KNOBS)}")
    if args.continue_to is not None and args.continue_to < 2:
        p.error(f"--continue_to={args.continue_to} must be at least 2 (times TRAIN_STEPS)")
    parent = Path(args.parent or REPO / "runs" / "study" / args.experiment).resolve()
    out = Path(args.results or REPO / "results" / "study" / args.experiment).resolve()
    seeds = list(range(1, args.seeds + 1))
    try:
        grid_factors(args.trials)
        settings = {opt: recipe_settings(args.experiment, opt, rest) for opt in arms}
        recipes = {opt: settings[opt][KNOBS[opt]] for opt in arms}
        ladder = None
        if args.picks_from:
            source_dir = Path(args.picks_from).resolve()
            source, rows = ladder_rows(source_dir, recipes)
            ladder = (source_dir, source)
        if args.continue_to:
            horizon = planned_steps(args.experiment, arms[0], rest)
    except ConfigError as e:
        print(f"ERROR: configuration: {e}", file=sys.stderr)
        return 2

    if not args.resummarize:
        t0 = time.time()
        if ladder is None:
            # Factor by factor, every arm: a partial sweep already compares them. Then the
            # edge rule's rounds, one trial per arm each, until every pick is inside.
            while True:
                factors, _ = planned_factors(parent, recipes, args.trials, args.extensions)
                planned = read_trials(parent, recipes, factors)
                missing = [t for t in planned if t.status == "missing"]
                if not missing:
                    break
                for t in sorted(missing, key=lambda t: t.factor):
                    bindings = run_bindings(rest, t, settings[t.optimizer])
                    train(args.experiment, t.optimizer, TUNING_SEED, Path(t.run_dir), bindings)
            rows = summary_rows(planned)
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
        factors, _ = planned_factors(parent, recipes, args.trials, args.extensions)
        trials = read_trials(parent, recipes, factors)
    else:
        trials = [Trial(**t) for t in ladder[1]["trials"]]
    summarize(args.experiment, parent, out, recipes, trials, seeds, command, ladder)
    print((out / "summary.md").read_text())
    if args.continue_to:
        rows = summary_rows(trials) if ladder is None else ladder_rows(ladder[0], recipes)[1]
        k = args.continue_to
        try:
            if not args.resummarize:
                continue_rows(args.experiment, parent, rows, seeds, settings, rest, horizon, k)
        except ConfigError as e:
            print(f"ERROR: configuration: {e}", file=sys.stderr)
            return 2
        cont = out / f"continued_{k}x"
        summarize_continuation(args.experiment, parent, cont, rows, seeds, horizon, k, command)
        print((cont / "summary.md").read_text())
        print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(continued_parent(parent, k)))}")
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(parent))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
