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
# # Loss against steps and against training time
#
# For every experiment with a `summary.json` under `results/`, each optimizer's loss from
# the runs' own records (the `"split": "eval"` lines of each run's `metrics.jsonl`, copied
# under `results/<experiment>/runs/`): the mean over seeds and a band from the min to the
# max, against the training step and against training time (the loop's wall time without
# compilation and evaluation, averaged over seeds at each step; measured on a 2-core
# machine, so noisier than steps). The dashed line is the summary's target.
#
# Three figures. `figures/loss_curves_study2.png`: the study's second edition
# (`results/study2/*/`), the **test** loss of the five fresh seeds of each row (tuned
# Amos, untuned Amos, tuned AdamW, and AdamW with its whole schedule planned for 0.5 and
# 0.7 of the horizon), against the step only. `figures/loss_curves.png`: the first
# edition (`results/study/*/`), the test loss of the fresh seeds of each row (tuned AdamW,
# tuned Amos, untuned Amos). In both the target is AdamW's mean final test loss.
# `figures/loss_curves_earlier.png`: the earlier untuned comparisons, their eval loss. All
# under `notebooks/` (or `$AMOS_NOTEBOOK_OUT`); run from the repository root
# (`make notebooks`).

# %%
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image

from launch.study.results import (
    band,
    read_second_edition,
    read_summaries,
    save_figure,
    seed_curves,
)

REPO = Path.cwd()

# %% [markdown]
# ## The second edition: every row's test loss over the fresh seeds
#
# One panel per experiment of `results/study2/` with a summary (an experiment not run yet
# is absent): each row's mean test loss over its seeds against the step, with a band from
# the min to the max. The AdamW rows planned for 0.5 and 0.7 of the horizon end there;
# Amos' curves at those steps are what the "at 0.5" and "at 0.7" claims compare with
# them. The dotted line is the target, AdamW's mean final test loss. Losses over decades
# are drawn on a log scale; a first evaluation far above the rest runs off the top.

# %%
second = {}
for name, e in read_second_edition().items():
    if e["summary"] is None:
        continue
    second[name] = {
        "target": e["summary"].get("target_test_loss"),
        "curves": seed_curves(e["dir"], e["summary"], "test_loss"),
    }
for name, e in second.items():
    for opt, curves in e["curves"].items():
        b = band(curves)
        end = f"to step {b['step'][-1]:.0f}, final mean test loss {b['mean'][-1]:.4f}"
        print(f"study2/{name}: {opt} x{len(curves)} {end if len(b['step']) else 'no steps'}")
if not second:
    print("no second-edition summary yet")


# %%
def second_edition_figure(experiments: dict, filename: str) -> Path:
    cols = min(max(len(experiments), 1), 3)
    rows = max(math.ceil(len(experiments) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    names = list(dict.fromkeys(opt for e in experiments.values() for opt in e["curves"]))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {opt: cycle[i % len(cycle)] for i, opt in enumerate(names)}
    for ax, (name, e) in zip(axes.flat, experiments.items(), strict=False):
        lows, highs, later_means = [], [], []
        for opt, curves in e["curves"].items():
            b = band(curves)
            if not len(b["step"]):
                continue
            color, style = colors[opt], "--" if opt.startswith("adamw_at_") else "-"
            ax.plot(b["step"], b["mean"], style, color=color, label=f"{opt} (n={len(curves)})")
            ax.fill_between(b["step"], b["min"], b["max"], color=color, alpha=0.2, lw=0)
            lows.append(b["min"].min())
            highs.append(b["max"].max())
            later_means.extend(b["mean"][1:])
        if isinstance(e["target"], (int, float)):
            ax.axhline(e["target"], color="gray", ls=":", lw=0.8, label="target")
        if lows and min(lows) > 0 and max(highs) / min(lows) > 10:
            ax.set_yscale("log")  # Losses over decades (a classifier that nearly solves it).
        elif later_means and max(highs) > 2 * max(later_means) - min(lows):
            # A first evaluation far above the rest would flatten every curve after it.
            span = max(later_means) - min(lows)
            ax.set_ylim(min(lows) - 0.05 * span, max(later_means) + 0.1 * span)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("test loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(experiments) :]:
        ax.axis("off")
    if not experiments:
        axes[0, 0].text(0.5, 0.5, "no runs yet", ha="center", transform=axes[0, 0].transAxes)
    fig.suptitle(
        "The study, second edition: test loss of the fresh seeds, mean and min-max band", y=1.0
    )
    fig.tight_layout()
    return save_figure(fig, filename)


second_figure = second_edition_figure(second, "loss_curves_study2.png")
Image(filename=str(second_figure))

# %% [markdown]
# ## The first edition and the earlier comparisons: read the curves

# %%
studies, earlier = {}, {}
for name, (path, summary) in read_summaries().items():
    if name.startswith("study2/"):
        continue  # The second edition's, above.
    study = name.startswith("study/")
    key = "test_loss" if study else "loss"
    (studies if study else earlier)[name.removeprefix("study/")] = {
        "target": summary.get("target_test_loss" if study else "target_eval_loss"),
        "curves": seed_curves(path.parent, summary, key),
    }
for name, e in {**studies, **earlier}.items():
    seeds = ", ".join(f"{opt} x{len(c)}" for opt, c in e["curves"].items()) or "no curves"
    print(f"{name}: {seeds}")


# %% [markdown]
# ## One row per experiment: against steps (left) and training time (right)


# %%
def figure(experiments: dict, ylabel: str, title: str, filename: str) -> Path:
    n = max(len(experiments), 1)
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.2 * n), squeeze=False)
    # One color per row name in every panel, in the order they first appear.
    names = list(dict.fromkeys(opt for e in experiments.values() for opt in e["curves"]))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {opt: cycle[i % len(cycle)] for i, opt in enumerate(names)}
    for (name, e), row in zip(experiments.items(), axes, strict=False):
        for opt, curves in e["curves"].items():
            b = band(curves)
            if not len(b["step"]):
                continue
            for ax, key in zip(row, ["step", "train_time_s"], strict=True):
                color = colors[opt]
                ax.plot(b[key], b["mean"], color=color, label=f"{opt} (n={len(curves)})")
                ax.fill_between(b[key], b["min"], b["max"], color=color, alpha=0.2, lw=0)
        for ax, xlabel in zip(row, ["step", "training time (s)"], strict=True):
            if isinstance(e["target"], (int, float)):
                ax.axhline(e["target"], color="gray", ls="--", lw=0.8, label="target")
            ax.set_title(name, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if not experiments:
        axes[0, 0].text(0.5, 0.5, "no runs yet", ha="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return save_figure(fig, filename)


study_figure = figure(
    studies,
    "test loss",
    "The study: test loss of the fresh seeds, mean and min-max band",
    "loss_curves.png",
)
earlier_figure = figure(
    earlier,
    "eval loss",
    "Earlier untuned comparisons: eval loss, mean and min-max band over seeds",
    "loss_curves_earlier.png",
)
Image(filename=str(study_figure))

# %%
Image(filename=str(earlier_figure))
