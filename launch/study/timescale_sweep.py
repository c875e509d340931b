"""The weight-decay timescale study of one experiment (Wang & Aitchison 2024; issue 12).

  .venv/bin/python launch/timescale_sweep.py --experiment timescale_resnet_cpu \\
      [--fractions 1,0.25] [--widths 16,8] [--taus 7] [--extensions 3] [--horizon epochs] \\
      [--new_fraction 0.5] [--new_width 16] [--parent runs/timescale/<exp>] \\
      [--results results/timescale/<exp>] [--gin.NAME=VALUE ...]
  .venv/bin/python launch/timescale_sweep.py --experiment timescale_resnet_cpu --resummarize

The claim (Wang & Aitchison, 2024): AdamW's weights are an EMA of its updates with timescale
tau_iter = 1 / (lr * wd) iterations, and the best timescale in epochs,

    tau_epoch = tau_iter / (N / B) = B / (lr * wd * N)    (N train examples, batch B),

stays roughly the same as the training-set size and the model width change. So for a
chosen tau_epoch, wd = B / (lr * N * tau_epoch) (`amos.weight_decay_from_timescale`).

AdamW at the experiment's fixed peak learning rate (ADAMW_LR), its weight decay set by
ADAMW_TAU_EPOCHS (the experiment file binds `adamw_optimizer.tau_epochs` and the task's
train-set size, `@train_examples()`), is trained at seed 0 for every tau_epoch of a log grid
(--taus 7: 1/8 .. 8 times the experiment's ADAMW_TAU_EPOCHS, in powers of 2) at every setting
(training-set fraction TRAIN_SUBSET, model width MODEL_WIDTH) of --fractions x --widths. The
first fraction and first width are the reference setting. Where a setting's best trial is
an end of its grid, the optimum may lie beyond: launch/sweep.py's edge rule then adds one
trial a factor of 2 beyond that end, at most --extensions rounds (the direct sweep below
likewise). `--horizon epochs` (the default)
trains every setting for the reference's number of epochs (TRAIN_STEPS and WARMUP_STEPS
scaled by N / N_reference): a timescale in epochs is then the same fraction of every run;
`--horizon steps` keeps TRAIN_STEPS, so a smaller training set is seen for more epochs.

Then the transfer check: the best tau_epoch at the reference setting (lowest final
validation loss; the test loss is never used to choose) gives the weight decay for a new
setting (--new_fraction, --new_width), wd = B / (lr * N_new * tau_best), and a direct sweep
of ADAMW_WEIGHT_DECAY at that setting (the same number of trials, factors of that
prediction) shows where the best weight decay there really is.

Runs: PARENT/<setting>/tau_<value>/seed_0 and PARENT/transfer_<setting>/wd_<value>/seed_0
(<setting>: `subset_0.25_width_16`), each a launch/run.py process (launch/sweep.py's
`train`: finished and diverged runs are skipped, interrupted ones resume). RESULTS gets
timescale.json (per setting: its train examples, steps and epochs, and per tau_epoch its
weight decay and final validation and test loss; the best of each and the transfer check),
summary.md, timescale.png and every run's records under runs/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gin

import amos
from experiments.errors import ConfigError
from launch.provenance import git_revision
from launch.study import compare, sweep
from launch.trainer import run_folder

REPO = Path(__file__).resolve().parents[2]

OPTIMIZER = "adamw"
TAU = "ADAMW_TAU_EPOCHS"
WEIGHT_DECAY = "ADAMW_WEIGHT_DECAY"
# The experiment's values the sweep reads (MODEL_WIDTH, TRAIN_STEPS and WARMUP_STEPS it then
# sets per setting).
SETTINGS = ["ADAMW_LR", TAU, "BATCH_SIZE", "TRAIN_STEPS", "WARMUP_STEPS", "MODEL_WIDTH"]
# Set by --fractions, --widths and each trial; --gin.TRAIN_STEPS, WARMUP_STEPS and
# ADAMW_TAU_EPOCHS move the reference's horizon and the grid's center.
OWN = ("TRAIN_SUBSET", "MODEL_WIDTH", WEIGHT_DECAY)
HORIZON_NOTES = {
    "epochs": "every setting trains the reference's epochs",
    "steps": "every setting trains TRAIN_STEPS",
}


def tau_factors(n: int) -> list[float]:
    """The log grid, in powers of 2 around the recipe value: 7 trials 1/8 .. 8, 5 trials
    1/4 .. 4 (an even count has one more below than above)."""
    if n < 1:
        raise ConfigError(f"--taus={n} must be at least 1")
    return [2.0**k for k in range(-(n // 2), n - n // 2)]


_fmt = sweep._fmt  # the sweep's number formatter ("—" for none)


def setting_label(fraction: float, width: int) -> str:
    return f"subset_{fraction:g}_width_{width}"


def train_examples(experiment: str, bindings: list[str]) -> int:
    """The training-set size the task of the experiment (+ `bindings`) has, as the AdamW
    arm's `@train_examples()` counts it (launch/optimizers.py)."""
    with sweep.experiment_config(experiment, OPTIMIZER, bindings):
        try:
            return gin.get_configurable("train_examples")()
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"experiments/{experiment}.gin binds no task for train_examples "
                f"(train_examples.task = @<the task>()): {e}"
            ) from e


@dataclass
class Setting:
    """One (training-set fraction, width) and its horizon."""

    fraction: float
    width: int
    train_examples: int
    train_steps: int
    warmup_steps: int
    batch_size: int
    label: str = ""
    epochs: float = 0.0
    trials: list[sweep.Trial] = field(default_factory=list)

    def __post_init__(self):
        self.label = self.label or setting_label(self.fraction, self.width)
        self.epochs = self.train_steps * self.batch_size / self.train_examples

    def bindings(self) -> list[str]:
        return [
            f"--gin.TRAIN_SUBSET={self.fraction!r}",
            f"--gin.MODEL_WIDTH={self.width}",
            f"--gin.TRAIN_STEPS={self.train_steps}",
            f"--gin.WARMUP_STEPS={self.warmup_steps}",
        ]


def make_setting(
    experiment: str,
    user: list[str],
    fraction: float,
    width: int,
    recipe: dict,
    reference_examples: int | None,
    horizon: str,
) -> Setting:
    """The setting, its train examples counted by the task; with `horizon='epochs'` its
    steps and warmup scaled from the recipe's by its examples / the reference's."""
    plain = [f"--gin.TRAIN_SUBSET={fraction!r}", f"--gin.MODEL_WIDTH={width}"]
    n = train_examples(experiment, [*user, *plain])
    steps, warmup = recipe["TRAIN_STEPS"], recipe["WARMUP_STEPS"]
    if horizon == "epochs" and reference_examples is not None:
        scale = n / reference_examples
        steps, warmup = max(1, round(steps * scale)), round(warmup * scale)
    return Setting(fraction, width, n, steps, min(warmup, steps - 1), recipe["BATCH_SIZE"])


def plan_trials(
    parent: Path,
    setting: Setting,
    knob: str,
    center: float,
    factors: int | list[float],
    prefix: str = "",
) -> list[sweep.Trial]:
    """The setting's trials of `knob` at `center` times each factor (a count n: the grid,
    tau_factors(n)), with their outcome so far, under PARENT/<prefix><setting>/."""
    out = []
    for factor in tau_factors(factors) if isinstance(factors, int) else sorted(factors):
        value = center * factor
        label = sweep.trial_label(knob, value)
        d = sweep.trial_dir(parent, prefix + setting.label, label, sweep.TUNING_SEED)
        status, loss = sweep.run_status(d)
        out.append(sweep.Trial(OPTIMIZER, knob, factor, value, label, str(d), status, loss))
    return out


def extend_at_edge(
    parent: Path,
    setting: Setting,
    knob: str,
    center: float,
    factors: list[float],
    rounds: int,
    train_new: Callable[[list[sweep.Trial]], None] | None,
    prefix: str = "",
) -> list[float]:
    """launch/sweep.py's edge rule (`sweep.extension_factors`, one series) for one
    setting's sweep: while its best trial on validation is the grid's smallest or largest
    factor, one more trial a factor of 2 beyond that edge, at most `rounds` times; the
    factors then swept. A one-value grid is not extended. `train_new` trains an added
    trial; None (--resummarize) counts only the trials already on disk."""
    factors = sorted(factors)
    for _ in range(rounds if len(factors) > 1 else 0):
        trials = plan_trials(parent, setting, knob, center, factors, prefix)
        nxt = sweep.extension_factors(trials, {OPTIMIZER: factors})
        if nxt is None:
            break
        beyond = nxt[OPTIMIZER]
        (trial,) = plan_trials(parent, setting, knob, center, [beyond], prefix)
        if train_new is None and trial.status == "missing":
            break
        if train_new is not None:
            train_new([trial])
        factors = sorted([*factors, beyond])
    return factors


def trial_bindings(user: list[str], setting: Setting, trial: sweep.Trial) -> list[str]:
    """The user's bindings, the setting's, then the trial's timescale (or, for the direct
    sweep, its weight decay with no timescale) and the evaluation splits."""
    if trial.knob == TAU:
        own = [f"--gin.{TAU}={trial.value!r}"]
    else:
        own = [f"--gin.{TAU}=None", f"--gin.{WEIGHT_DECAY}={trial.value!r}"]
    return [*user, *setting.bindings(), *own, f"--gin.EVAL_SPLITS={sweep.EVAL_SPLITS}"]


def _test_loss(trial: sweep.Trial) -> float | None:
    path = Path(trial.run_dir) / run_folder.FINAL_JSON
    return json.loads(path.read_text())["eval"].get("test_loss") if path.exists() else None


def trial_record(trial: sweep.Trial, setting: Setting, learning_rate: float) -> dict:
    """A trial's timescale and weight decay (one from the other) and its final losses."""
    lr, b, n = learning_rate, setting.batch_size, setting.train_examples
    if trial.knob == TAU:
        tau, wd = trial.value, amos.weight_decay_from_timescale(lr, trial.value, b, n)
    else:
        tau, wd = amos.timescale_from_weight_decay(lr, trial.value, b, n), trial.value
    return {
        "tau_epochs": tau,
        "tau_iterations": 1.0 / (lr * wd),
        "weight_decay": wd,
        "factor": trial.factor,
        "status": trial.status,
        "final_val_loss": trial.final_val_loss,
        "final_test_loss": _test_loss(trial),
        "chosen": trial.chosen,
        "run_dir": trial.run_dir,
    }


def best_record(trials: list[sweep.Trial], setting: Setting, lr: float) -> dict | None:
    """The trial of lowest final validation loss (sweep.pick), marked chosen, with whether it
    sits at an end of the grid (the optimum may then lie beyond it)."""
    best = sweep.pick(trials)
    if best is None:
        return None
    best.chosen = True
    factors = [t.factor for t in trials]
    return {
        **trial_record(best, setting, lr),
        "at_grid_edge": best.factor in (min(factors), max(factors)),
    }


def setting_record(setting: Setting, lr: float) -> dict:
    best = best_record(setting.trials, setting, lr)
    record = {k: v for k, v in asdict(setting).items() if k != "trials"}
    return {
        **record,
        "iterations_per_epoch": setting.train_examples / setting.batch_size,
        "trials": [trial_record(t, setting, lr) for t in setting.trials],
        "best": best,
    }


def transfer_record(
    reference: dict, new: Setting, direct: list[sweep.Trial], lr: float, predicted: float
) -> dict:
    """The check: the weight decay predicted for the new setting from the reference's best
    timescale, against the best of the direct weight-decay sweep there."""
    best = best_record(direct, new, lr)
    at_prediction = next(t for t in direct if t.factor == 1.0)
    out = {
        "setting": {k: v for k, v in asdict(new).items() if k != "trials"},
        "reference_best_tau_epochs": reference["best"]["tau_epochs"],
        "predicted_weight_decay": predicted,
        "val_loss_at_prediction": at_prediction.final_val_loss,
        "trials": [trial_record(t, new, lr) for t in direct],
        "best": best,
    }
    if best is not None:
        out["best_over_predicted"] = best["weight_decay"] / predicted
        out["log2_best_over_predicted"] = math.log2(best["weight_decay"] / predicted)
        if at_prediction.final_val_loss is not None:
            out["val_loss_excess_at_prediction"] = (
                at_prediction.final_val_loss - best["final_val_loss"]
            )
    return out


def markdown(record: dict) -> str:
    lines = [
        f"# {record['experiment']}: AdamW weight decay as an EMA timescale "
        "(launch/timescale_sweep.py)",
        "",
        f"Fixed peak learning rate {record['learning_rate']:g}, batch {record['batch_size']}; "
        f"wd = B / (lr * N * tau_epoch). Horizon: {record['horizon']} "
        f"({HORIZON_NOTES[record['horizon']]}). "
        "Seed 0; the best is the lowest final validation loss.",
        "",
        "| setting | N | steps | epochs | tau_epoch | wd | status | val loss | test loss | best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in record["settings"]:
        for t in s["trials"]:
            lines.append(
                f"| {s['label']} | {s['train_examples']} | {s['train_steps']} | "
                f"{s['epochs']:.3g} | {t['tau_epochs']:.4g} | {t['weight_decay']:.4g} | "
                f"{t['status']} | {_fmt(t['final_val_loss'], '.4f')} | "
                f"{_fmt(t['final_test_loss'], '.4f')} | {'yes' if t['chosen'] else ''} |"
            )
    lines += [
        "",
        "Where the optimum falls (grid steps of 2 from the reference's best tau_epoch):",
        "",
        "| setting | best tau_epoch | its wd | val loss | steps from reference | at grid edge |",
        "|---|---|---|---|---|---|",
    ]
    ref = record["settings"][0]["best"]
    for s in record["settings"]:
        b = s["best"]
        if b is None:
            lines.append(f"| {s['label']} | no finished trial | | | | |")
            continue
        shift = math.log2(b["tau_epochs"] / ref["tau_epochs"]) if ref else None
        lines.append(
            f"| {s['label']} | {b['tau_epochs']:.4g} | {b['weight_decay']:.4g} | "
            f"{b['final_val_loss']:.4f} | {_fmt(shift, '+.0f')} | "
            f"{'yes' if b['at_grid_edge'] else ''} |"
        )
    tr = record.get("transfer")
    if tr:
        s = tr["setting"]
        lines += [
            "",
            f"Transfer to {s['label']} (N = {s['train_examples']}, {s['train_steps']} steps): "
            f"the reference's best tau_epoch {tr['reference_best_tau_epochs']:.4g} predicts "
            f"wd = {tr['predicted_weight_decay']:.4g} (val loss "
            f"{_fmt(tr['val_loss_at_prediction'], '.4f')}); a direct sweep of the weight decay:",
            "",
            "| wd | tau_epoch | status | val loss | test loss | best |",
            "|---|---|---|---|---|---|",
        ]
        for t in tr["trials"]:
            lines.append(
                f"| {t['weight_decay']:.4g} | {t['tau_epochs']:.4g} | {t['status']} | "
                f"{_fmt(t['final_val_loss'], '.4f')} | {_fmt(t['final_test_loss'], '.4f')} | "
                f"{'yes' if t['chosen'] else ''} |"
            )
        if tr["best"] is not None:
            lines += [
                "",
                f"Best direct wd / predicted = {tr['best_over_predicted']:.3g} "
                f"({tr['log2_best_over_predicted']:+.0f} grid steps)"
                + (" — at the grid's edge" if tr["best"]["at_grid_edge"] else "")
                + ".",
            ]
    g = record["git"]
    lines += [
        "",
        f"- command: `{' '.join(record['command'])}`",
        f"- git: {g['revision']} (dirty: {g['dirty']})",
        f"- runs: {record['run_parent']}",
        f"- written: {record['written']}",
        "",
    ]
    return "\n".join(lines)


def draw(record: dict, axes) -> None:
    """On two axes: final validation loss against tau_epoch per setting, and the transfer
    check's against the weight decay with the prediction marked (the second axis is left
    empty when the record has no transfer check)."""
    ax = axes[0]
    for s in record["settings"]:
        done = [t for t in s["trials"] if t["final_val_loss"] is not None]
        ax.plot(
            [t["tau_epochs"] for t in done],
            [t["final_val_loss"] for t in done],
            "o-",
            label=s["label"],
        )
        if s["best"]:
            ax.plot(s["best"]["tau_epochs"], s["best"]["final_val_loss"], "*", ms=14, color="k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tau_epoch (EMA timescale, epochs)")
    ax.set_ylabel("final validation loss (seed 0)")
    ax.set_title(f"{record['experiment']}: the timescale sweep (star: best)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    tr = record.get("transfer")
    ax = axes[1]
    if not tr:
        ax.axis("off")
        return
    done = [t for t in tr["trials"] if t["final_val_loss"] is not None]
    ax.plot([t["weight_decay"] for t in done], [t["final_val_loss"] for t in done], "o-")
    ax.axvline(tr["predicted_weight_decay"], color="C3", ls="--", label="predicted")
    if tr["best"]:
        ax.plot(
            tr["best"]["weight_decay"],
            tr["best"]["final_val_loss"],
            "*",
            ms=14,
            color="k",
            label="best",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("weight decay")
    ax.set_title(f"direct sweep at {tr['setting']['label']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot(record: dict, path: Path) -> None:
    """`draw` as a figure of its own (RESULTS/timescale.png)."""
    import matplotlib  # here: slow to import, and only drawing needs it

    matplotlib.use("Agg")  # no display; before pyplot loads
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    draw(record, axes)
    fig.suptitle(f"{record['experiment']}: AdamW weight decay as an EMA timescale")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_all(experiment: str, user: list[str], setting: Setting, trials: list) -> None:
    for t in trials:
        bindings = trial_bindings(user, setting, t)
        sweep.train(experiment, OPTIMIZER, sweep.TUNING_SEED, Path(t.run_dir), bindings)


def plan_settings(args: argparse.Namespace, user: list[str]) -> tuple[dict, list[Setting], Setting]:
    """(the recipe's values, the swept settings, the transfer check's setting)."""
    tau_factors(args.taus)
    recipe = sweep.gin_values(args.experiment, OPTIMIZER, user, SETTINGS)
    tau = recipe[TAU]
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ConfigError(f"{TAU} = {tau!r} in {args.experiment}.gin: a positive number is swept")
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f]
        widths = [int(w) for w in (args.widths or "").split(",") if w]
    except ValueError as e:
        raise ConfigError(f"--fractions={args.fractions} / --widths={args.widths}: {e}") from e
    widths = widths or [recipe["MODEL_WIDTH"], recipe["MODEL_WIDTH"] // 2]
    if not fractions:
        raise ConfigError("--fractions needs a value")

    def setting(fraction: float, width: int, reference: int | None) -> Setting:
        return make_setting(args.experiment, user, fraction, width, recipe, reference, args.horizon)

    reference = setting(fractions[0], widths[0], None).train_examples
    settings = [setting(f, w, reference) for f in fractions for w in widths]
    new = setting(args.new_fraction, args.new_width or widths[0], reference)
    return recipe, settings, new


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["launch/timescale_sweep.py", *argv]
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="name X of gin_configs/experiments/X.gin")
    p.add_argument(
        "--fractions", default="1,0.25", help="TRAIN_SUBSET values; the first is the reference"
    )
    p.add_argument(
        "--widths",
        default=None,
        help="MODEL_WIDTH values; the first is the reference (default: the experiment's "
        "width, and half of it)",
    )
    p.add_argument("--taus", type=int, default=7, help="tau_epoch values per setting")
    p.add_argument(
        "--extensions",
        type=int,
        default=sweep.MAX_EXTENSIONS,
        help="at most this many rounds of the edge rule per setting (0: the grid only)",
    )
    p.add_argument("--horizon", choices=list(HORIZON_NOTES), default="epochs")
    p.add_argument(
        "--new_fraction", type=float, default=0.5, help="the transfer check's TRAIN_SUBSET"
    )
    p.add_argument(
        "--new_width",
        type=int,
        default=None,
        help="the transfer check's MODEL_WIDTH (default: the reference's)",
    )
    p.add_argument("--parent", default=None, help="run directories (default runs/timescale/<exp>)")
    p.add_argument("--results", default=None, help="summary dir (default results/timescale/<exp>)")
    p.add_argument(
        "--resummarize", action="store_true", help="only summarize existing run directories"
    )
    args, rest = p.parse_known_args(argv)
    sweep.check_tool_args(p, args.experiment, rest, (*sweep.SWEEP_SETS, *OWN), "sweep")
    if args.extensions < 0:
        p.error(f"--extensions={args.extensions} must be 0 or more")
    parent = Path(args.parent or REPO / "runs" / "timescale" / args.experiment).resolve()
    out = Path(args.results or REPO / "results" / "timescale" / args.experiment).resolve()
    try:
        recipe, settings, new = plan_settings(args, rest)
    except ConfigError as e:  # One line: gin appends where the task was called.
        print(f"ERROR: configuration: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    lr, tau = float(recipe["ADAMW_LR"]), float(recipe[TAU])

    def trainer(setting: Setting) -> Callable[[list[sweep.Trial]], None] | None:
        if args.resummarize:
            return None
        return lambda trials: train_all(args.experiment, rest, setting, trials)

    t0 = time.time()
    for s in settings:
        s.trials = plan_trials(parent, s, TAU, tau, args.taus)
    if not args.resummarize:
        for factor in tau_factors(args.taus):  # Factor by factor: a partial sweep compares.
            for s in settings:
                train_all(args.experiment, rest, s, [t for t in s.trials if t.factor == factor])
    for s in settings:  # Their outcomes, the grid extended where its best is on an edge.
        factors = extend_at_edge(
            parent, s, TAU, tau, tau_factors(args.taus), args.extensions, trainer(s)
        )
        s.trials = plan_trials(parent, s, TAU, tau, factors)
    records = [setting_record(s, lr) for s in settings]
    record = {
        "experiment": args.experiment,
        "learning_rate": lr,
        "batch_size": recipe["BATCH_SIZE"],
        "horizon": args.horizon,
        "recipe_tau_epochs": tau,
        "tau_factors": tau_factors(args.taus),
        "max_extensions": args.extensions,
        "tuning_seed": sweep.TUNING_SEED,
        "pick": "lowest final validation loss at seed 0; a tie goes to the smaller value; "
        "the test loss is not used",
        "settings": records,
    }
    dirs = [Path(t.run_dir) for s in settings for t in s.trials]
    if records[0]["best"] is None:
        print("[timescale] no finished trial at the reference setting: no transfer check")
    else:
        best_tau = records[0]["best"]["tau_epochs"]
        predicted = amos.weight_decay_from_timescale(
            lr, best_tau, new.batch_size, new.train_examples
        )
        direct = plan_trials(parent, new, WEIGHT_DECAY, predicted, args.taus, "transfer_")
        if not args.resummarize:
            train_all(args.experiment, rest, new, direct)
        factors = extend_at_edge(
            parent,
            new,
            WEIGHT_DECAY,
            predicted,
            tau_factors(args.taus),
            args.extensions,
            trainer(new),
            "transfer_",
        )
        direct = plan_trials(parent, new, WEIGHT_DECAY, predicted, factors, "transfer_")
        record["transfer"] = transfer_record(records[0], new, direct, lr, predicted)
        dirs += [Path(t.run_dir) for t in direct]
    if not args.resummarize:
        print(f"[timescale] trained in {time.time() - t0:.0f} s on {platform.node()}", flush=True)
    record.update(
        command=command,
        git=git_revision(),
        run_parent=str(parent),
        written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "timescale.json").write_text(json.dumps(record, indent=2))
    (out / "summary.md").write_text(markdown(record))
    compare.copy_run_records(parent, [d for d in dirs if d.exists()], out)
    if any(t["final_val_loss"] is not None for s in records for t in s["trials"]):
        plot(record, out / "timescale.png")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
