# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tuning curves: final validation loss against each optimizer's knobs
#
# **The second edition** (`launch/study2.py`, `results/study2/<experiment>/study.json`):
# every trial of an experiment's design ran at the first tuning seed, each optimizer's
# two best trials (the finalists) again at the second, and the pick is the finalist with
# the lower mean final validation loss over the two seeds. A *grid* design tunes one knob
# (AdamW's peak learning rate, Amos' xi) on the first edition's log grid and edge rule: its
# panel is the validation loss against the knob, one line per tuning seed. A *sobol*
# design tunes two knobs per optimizer (AdamW: peak rate and warmup fraction; Amos: xi and
# beta) at 16 scrambled Sobol points: its panel is one knob against the other, each trial
# coloured by its validation loss at the first seed. A ladder rung (design "picks") tunes
# nothing and is left out. The table lists per experiment and optimizer the range
# searched, the finalists' mean losses, the pick, and whether the pick is on the edge of
# what was tried (its value of a knob the lowest or highest tried: the optimum may lie
# beyond).
#
# **The first edition** (`launch/sweep.py`, `results/study/<experiment>/sweep.json`; a rung
# of the horizon ladder has no trials of its own and is left out): the final validation
# loss of each trial at the tuning seed against its knob, as a factor of the recipe value
# (AdamW: the peak learning rate; Amos: xi at the guidance 1/sqrt(N)), both optimizers in
# one panel per experiment. The star is each optimizer's pick, a cross on the top edge a
# trial that diverged.
#
# How sensitive each optimizer is, in the first edition's table: the spread of the
# finished trials' losses (worst minus best), the loss at the recipe value (factor 1)
# against the pick's, and the diverged trials. A finished trial can still have collapsed
# (a constant prediction: frozen accuracy, flat loss) or stalled, by `launch/compare.py`'s
# own tests applied to its validation curve (its records are copied under
# `results/study/<experiment>/runs/`): such trials are listed in the last column and drawn
# as open circles; they count in the spread. The test loss is never read here: the picks
# are made on validation.
#
# Writes `notebooks/tuning_curves.md`, `notebooks/figures/tuning_curves_study2.png` and
# `notebooks/figures/tuning_curves.png` (or under `$AMOS_NOTEBOOK_OUT`); run from the
# repository root (`make notebooks`).

# %%
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from launch.study import study2
from launch.study.compare import collapse_reason, stall_reason
from launch.study.designs import Knob
from launch.study.results import (
    KNOB_NAMES,
    RESULTS,
    eval_records,
    markdown_table,
    read_second_edition,
    save_figure,
    setting_text,
    write_markdown,
)
from launch.trainer import run_folder

REPO = Path.cwd()


def fmt(x, spec: str = ".4f") -> str:
    return "—" if x is None else format(x, spec)


# %% [markdown]
# ## The second edition: read every tuning

# %%
tunings = {
    name: e["study"]
    for name, e in read_second_edition().items()
    if e["study"] is not None and e["study"].get("design") in ("grid", "sobol")
}
print(f"{len(tunings)} second-edition tunings:", ", ".join(tunings) or "none yet")


def trials_of(record: dict, optimizer: str) -> list[dict]:
    """The optimizer's settings that ran at the first tuning seed (finished or diverged)."""
    first = str(record["tuning_seeds"][0])
    return [
        s
        for s in record["settings"]
        if s["optimizer"] == optimizer and s["status"].get(first, "missing") != "missing"
    ]


def is_finalist(record: dict, setting: dict) -> bool:
    """Run again at the second tuning seed (a finalist)."""
    return setting["status"].get(str(record["tuning_seeds"][1]), "missing") != "missing"


def mean_val_loss(record: dict, setting: dict) -> float | None:
    """The mean final validation loss over the tuning seeds; None if one diverged."""
    losses = [setting["val_loss"].get(str(seed)) for seed in record["tuning_seeds"]]
    return None if None in losses else sum(losses) / len(losses)


def knobs_of(record: dict, optimizer: str) -> list:
    """The knobs a design searched, as launch/study/designs.Knob (name, low, high, scale): the
    Sobol design's from its recipe (launch/study2.py), the grid's its one knob over the
    values tried, on a log scale."""
    if record["design"] == "sobol":
        return study2.sobol_knobs(optimizer, record["recipes"][optimizer])
    trials = trials_of(record, optimizer)
    names = list(dict.fromkeys(k for s in trials for k in s["values"]))
    return [
        Knob(
            name,
            min(s["values"][name] for s in trials),
            max(s["values"][name] for s in trials),
        )
        for name in names
    ]


def edge(record: dict, optimizer: str, pick: dict) -> str:
    """Which of the pick's values are the lowest or highest tried of their knob."""
    trials = trials_of(record, optimizer)
    out = []
    for name, value in pick["values"].items():
        tried = [s["values"][name] for s in trials]
        short = KNOB_NAMES.get(name, name)
        if value == min(tried):
            out.append(f"{short} lowest tried")
        elif value == max(tried):
            out.append(f"{short} highest tried")
    return "yes: " + ", ".join(out) if out else "no"


# How each design spaced a knob's values (launch/study/designs.py's scales).
SCALES = {
    ("grid", "log"): "log grid, factors of 2",
    ("sobol", "log"): "log",
    ("sobol", "linear"): "linear",
    ("sobol", "log1m"): "log in 1 - value",
}
SECOND_COLUMNS = [
    "experiment",
    "optimizer",
    "design",
    "searched",
    "trials (finished / diverged)",
    "finalists: mean val loss over the tuning seeds",
    "pick",
    "pick on the edge",
]
second_rows = []
for name, record in tunings.items():
    for opt in record["recipes"]:
        trials = trials_of(record, opt)
        diverged = [s for s in trials if s["val_loss"].get(str(record["tuning_seeds"][0])) is None]
        pick = next((s for s in trials if s["chosen"]), None)
        knobs = knobs_of(record, opt) if trials else []
        finalists = [
            f"{setting_text(s['values'])}: {fmt(mean_val_loss(record, s))}"
            for s in trials
            if is_finalist(record, s)
        ]
        values = [
            name,
            opt,
            f"{record['design']}"
            + (f" (seed {record['sobol_seed']})" if record["design"] == "sobol" else ""),
            ", ".join(
                f"{k.name} {k.low:.4g} to {k.high:.4g} ({SCALES[record['design'], k.scale]})"
                for k in knobs
            )
            or "—",
            f"{len(trials) - len(diverged)} / {len(diverged)}",
            "; ".join(finalists) or "—",
            setting_text(pick["values"]) if pick else "—",
            edge(record, opt, pick) if pick else "—",
        ]
        second_rows.append(dict(zip(SECOND_COLUMNS, values, strict=True)))
print(f"{len(second_rows)} second-edition rows")

# %% [markdown]
# ## The first edition: read every sweep

# %%
sweeps = {}
for path in sorted((RESULTS / "study").glob("*/sweep.json")):
    record = json.loads(path.read_text())
    if record.get("picks_from"):
        continue  # A ladder rung: the trials are its source sweep's.
    sweeps[path.parent.name] = record
print(f"{len(sweeps)} sweeps:", ", ".join(sweeps) or "none yet")


def flag(name: str, record: dict, trial: dict) -> str | None:
    """COLLAPSED or STALLED with compare's reason, from the trial's validation curve."""
    run = RESULTS / "study" / name / "runs" / trial["optimizer"] / trial["label"]
    metrics = run / f"seed_{record['tuning_seed']}" / run_folder.METRICS_JSONL
    curve = eval_records(metrics, "loss") if metrics.is_file() else []
    if (reason := collapse_reason(curve)) is not None:
        return f"COLLAPSED ({reason})"
    if (reason := stall_reason(curve)) is not None:
        return f"STALLED ({reason})"
    return None


for name, record in sweeps.items():
    for t in record["trials"]:
        t["flag"] = flag(name, record, t) if t["final_val_loss"] is not None else None

# %%
COLUMNS = [
    "experiment",
    "optimizer",
    "knob",
    "recipe value",
    "trials (finished / diverged)",
    "picked factor",
    "picked value",
    "val loss at pick",
    "val loss at factor 1",
    "spread (worst - best)",
    "flagged trials",
]
rows = []
for name, record in sweeps.items():
    for opt, knob in record["knobs"].items():
        trials = [t for t in record["trials"] if t["optimizer"] == opt]
        done = [t for t in trials if t["final_val_loss"] is not None]
        diverged = [t for t in trials if t["status"] == "diverged"]
        chosen = next((t for t in trials if t["chosen"]), None)
        recipe = next((t for t in trials if t["factor"] == 1.0), None)
        losses = [t["final_val_loss"] for t in done]
        values = [
            name,
            opt,
            knob,
            f"{record['recipe_values'][opt]:.6g}",
            f"{len(done)} / {len(diverged)}",
            fmt(chosen and chosen["factor"], "g"),
            fmt(chosen and chosen["value"], ".6g"),
            fmt(chosen and chosen["final_val_loss"]),
            fmt(recipe and recipe["final_val_loss"]),
            fmt(max(losses) - min(losses) if losses else None),
            "; ".join(f"{t['factor']:g}x {t['flag']}" for t in done if t["flag"]) or "none",
        ]
        rows.append(dict(zip(COLUMNS, values, strict=True)))

# %% [markdown]
# ## The table: the second edition, then the first

# %%
text = "\n".join(
    [
        "# Tuning curves: the study's sweeps",
        "",
        "Written by `notebooks/tuning_curves.py` from `results/study2/*/study.json` and "
        "`results/study/*/sweep.json` (`make notebooks`); do not edit by hand.",
        "",
        '## The study, second edition (docs/study.md, "The study\'s second edition: protocol")',
        "",
        *(
            [
                "Every trial of the design at the first tuning seed, each optimizer's two "
                "best (the finalists) again at the second; the pick is the lower mean final "
                "validation loss over the two seeds. On the edge: the pick's value of a knob "
                "is the lowest or highest tried.",
                "",
                *markdown_table(SECOND_COLUMNS, second_rows),
            ]
            if second_rows
            else ["No family of the second edition has been tuned yet."]
        ),
        "",
        '## The study, first edition (docs/study.md, "The reproduction study: protocol")',
        "",
        *(
            [
                "Final validation loss at the tuning seed; the pick is the lowest.",
                "",
                *markdown_table(COLUMNS, rows),
            ]
            if rows
            else ["No sweep has run yet."]
        ),
        "",
    ]
)
write_markdown("tuning_curves.md", text)
Markdown(text)

# %% [markdown]
# ## The second edition: one row per experiment, one panel per optimizer
#
# A grid: the final validation loss against the knob at each tuning seed (the second only
# for the finalists); the star is the pick at its mean over the two seeds, a cross on the
# top edge a trial that diverged, the dashed line the recipe value. A Sobol design: each
# trial at its two knobs, coloured by its validation loss at the first seed, on the scale
# it was sampled on (beta as 1 - beta on a log scale); rings are the finalists, the star
# the pick, a grey cross a trial that diverged, dotted lines the range searched.


# %%
def axis_value(knob, value: float) -> float:
    """Where a knob's value is drawn: 1 - value for a knob sampled in log(1 - value)."""
    return 1 - value if knob.scale == "log1m" else value


def set_knob_axis(ax, which: str, knob) -> None:
    """The axis of one knob: log where it was sampled on a log scale, its range dotted."""
    scale = "linear" if knob.scale == "linear" else "log"
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)(scale)
    label = knob.name
    if knob.scale == "log":  # Ticks at 1, 2 and 5 times powers of 10, as plain numbers.
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    if knob.scale == "log1m":  # 1 - beta on a log scale, labelled in beta, larger beta up.
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{1 - v:g}"))
        axis.set_minor_formatter(NullFormatter())
        (ax.invert_xaxis if which == "x" else ax.invert_yaxis)()
        label += " (log in 1 - value)"
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(label)
    for bound in (knob.low, knob.high):
        line = ax.axvline if which == "x" else ax.axhline
        line(axis_value(knob, bound), color="gray", ls=":", lw=0.8)


def grid_panel(ax, record: dict, optimizer: str) -> None:
    trials = sorted(trials_of(record, optimizer), key=lambda s: list(s["values"].values()))
    (knob,) = knobs_of(record, optimizer)
    finished = [v for s in trials for v in s["val_loss"].values() if v is not None]
    top = max(finished, default=1.0)
    for i, seed in enumerate(record["tuning_seeds"]):
        points = [
            (s["values"][knob.name], s["val_loss"][str(seed)])
            for s in trials
            if s["val_loss"].get(str(seed)) is not None
        ]
        label = f"seed {seed}" + (" (finalists)" if i else "")
        if points:
            ax.plot(*zip(*points, strict=True), "o-" if i == 0 else "s", color=f"C{i}", label=label)
    for s in trials:
        value = s["values"][knob.name]
        if s["chosen"] and mean_val_loss(record, s) is not None:
            ax.plot(value, mean_val_loss(record, s), "*", ms=16, color="C3", mec="k", label="pick")
        if s["val_loss"].get(str(record["tuning_seeds"][0])) is None:
            ax.plot(value, top, "x", ms=10, mew=2, color="C0", clip_on=False)
    recipe = record["recipes"][optimizer].get(knob.name)
    if recipe is not None:
        ax.axvline(recipe, color="gray", ls="--", lw=0.8, label="recipe")
    ax.set_xscale("log")
    tried = [s["values"][knob.name] for s in trials]
    ax.set_xticks(tried, [f"{v:.2g}" for v in tried], rotation=45, fontsize=7)
    ax.minorticks_off()
    if finished and min(finished) > 0 and max(finished) / min(finished) > 10:
        ax.set_yscale("log")  # Losses over decades (a classifier that nearly solves it).
    ax.set_xlabel(f"{knob.name} (log scale)")
    ax.set_ylabel("final validation loss")
    ax.legend(fontsize=7)


def sobol_panel(fig, ax, record: dict, optimizer: str) -> None:
    trials = trials_of(record, optimizer)
    knobs = knobs_of(record, optimizer)
    first = str(record["tuning_seeds"][0])

    def at(s: dict) -> tuple[float, float]:
        x, y = (axis_value(k, s["values"][k.name]) for k in knobs)
        return x, y

    done = [s for s in trials if s["val_loss"].get(first) is not None]
    if done:
        xs, ys = zip(*map(at, done), strict=True)
        dots = ax.scatter(xs, ys, c=[s["val_loss"][first] for s in done], cmap="viridis_r")
        fig.colorbar(dots, ax=ax, label=f"final validation loss, seed {first}")
    for s in trials:
        x, y = at(s)
        if s["val_loss"].get(first) is None:
            ax.plot(x, y, "x", ms=9, mew=2, color="gray")
        if is_finalist(record, s):
            ax.plot(x, y, "o", ms=14, mfc="none", mec="k")
        if s["chosen"]:
            ax.plot(x, y, "*", ms=16, color="C3", mec="k")
    for which, knob in zip("xy", knobs, strict=True):
        set_knob_axis(ax, which, knob)
    ax.plot([], [], "o", ms=10, mfc="none", mec="k", label="finalist")
    ax.plot([], [], "*", ms=12, color="C3", mec="k", label="pick")
    if len(done) < len(trials):
        ax.plot([], [], "x", mew=2, color="gray", label="diverged")
    ax.legend(fontsize=7)


n = max(len(tunings), 1)
fig, axes = plt.subplots(n, 2, figsize=(11, 3.8 * n), squeeze=False)
for row, (name, record) in zip(axes, tunings.items(), strict=False):
    for ax, opt in zip(row, record["recipes"], strict=False):
        if not trials_of(record, opt):
            ax.text(0.5, 0.5, "no trials", ha="center", transform=ax.transAxes)
        elif record["design"] == "sobol":
            sobol_panel(fig, ax, record, opt)
        else:
            grid_panel(ax, record, opt)
        ax.set_title(f"{name}: {opt} ({record['design']})", fontsize=10)
        ax.grid(alpha=0.3)
if not tunings:
    axes[0, 0].text(0.5, 0.5, "no second-edition tuning yet", ha="center", va="center")
fig.suptitle("The study, second edition: tuning at two seeds (star = pick, on validation)", y=1.0)
fig.tight_layout()
second_figure = save_figure(fig, "tuning_curves_study2.png")
Image(filename=str(second_figure))

# %% [markdown]
# ## The first edition: one panel per experiment

# %%
n = max(len(sweeps), 1)
cols = min(n, 3)
fig, axes = plt.subplots(
    math.ceil(n / cols), cols, figsize=(4.6 * cols, 3.6 * math.ceil(n / cols)), squeeze=False
)
for ax, (name, record) in zip(axes.flat, sweeps.items(), strict=False):
    finished = [t["final_val_loss"] for t in record["trials"] if t["final_val_loss"] is not None]
    top = max(finished) if finished else 1.0
    for i, (opt, knob) in enumerate(record["knobs"].items()):
        color = f"C{i}"
        trials = sorted(
            (t for t in record["trials"] if t["optimizer"] == opt), key=lambda t: t["factor"]
        )
        done = [t for t in trials if t["final_val_loss"] is not None]
        ax.plot(
            [t["factor"] for t in done],
            [t["final_val_loss"] for t in done],
            "o-",
            color=color,
            label=f"{opt} ({knob} = {record['recipe_values'][opt]:.3g} x factor)",
        )
        for t in trials:
            if t["flag"]:
                ax.plot(t["factor"], t["final_val_loss"], "o", ms=11, mfc="none", color=color)
            if t["chosen"]:
                ax.plot(t["factor"], t["final_val_loss"], "*", ms=15, color=color, mec="k")
            elif t["status"] == "diverged":
                ax.plot(t["factor"], top, "x", ms=10, mew=2, color=color, clip_on=False)
    ax.set_xscale("log", base=2)
    if finished and min(finished) > 0 and max(finished) / min(finished) > 10:
        ax.set_yscale("log")  # Losses over decades (a classifier that nearly solves it).
    factors = record["factors"]
    ax.set_xticks(factors, [f"{f:g}" for f in factors])
    ax.minorticks_off()
    ax.axvline(1.0, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("factor of the recipe value")
    ax.set_ylabel("final validation loss (seed 0)")
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
for ax in list(axes.flat)[len(sweeps) :]:
    ax.axis("off")
if not sweeps:
    axes.flat[0].text(0.5, 0.5, "no sweep yet", ha="center", va="center")
fig.suptitle(
    "Tuning curves: star = pick (on validation), x = diverged, ring = collapsed or stalled",
    y=1.0,
)
fig.tight_layout()
figure = save_figure(fig, "tuning_curves.png")
Image(filename=str(figure))
