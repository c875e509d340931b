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
# # Tuning curves: final validation loss against each optimizer's knob
#
# For every sweep of the study (`launch/sweep.py`, `results/study/<experiment>/sweep.json`;
# a rung of the horizon ladder has no trials of its own and is left out), the final
# validation loss of each trial at the tuning seed against its knob, as a factor of the
# recipe value (AdamW: the peak learning rate; Amos: xi at the guidance 1/sqrt(N)), both
# optimizers in one panel per experiment. The star is each optimizer's pick, a cross on the
# top edge a trial that diverged.
#
# How sensitive each optimizer is, in the table: the spread of the finished trials' losses
# (worst minus best), the loss at the recipe value (factor 1) against the pick's, and the
# diverged trials. A finished trial can still have collapsed (a constant prediction: frozen
# accuracy, flat loss) or stalled, by `launch/compare.py`'s own tests applied to its
# validation curve (its records are copied under `results/study/<experiment>/runs/`): such
# trials are listed in the last column and drawn as open circles; they count in the spread.
# The test loss is never read here: the pick is made on validation.
#
# Writes `notebooks/tuning_curves.md` and `notebooks/figures/tuning_curves.png` (or under
# `$AMOS_NOTEBOOK_OUT`); run from the repository root (`make notebooks`).

# %%
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from IPython.display import Image, Markdown  # noqa: E402

REPO = Path.cwd()
if str(REPO) not in sys.path:  # Run as a script, its own directory comes first instead.
    sys.path.insert(0, str(REPO))
from launch.compare import collapse_reason, stall_reason  # noqa: E402
from launch.trainer import run_folder  # noqa: E402
from notebooks.common import (  # noqa: E402
    RESULTS,
    eval_records,
    markdown_table,
    save_figure,
    write_markdown,
)


def fmt(x, spec: str = ".4f") -> str:
    return "—" if x is None else format(x, spec)


# %% [markdown]
# ## Read every sweep

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

text = "\n".join(
    [
        "# Tuning curves: the study's sweeps",
        "",
        "Written by `notebooks/tuning_curves.py` from `results/study/*/sweep.json` "
        "(`make notebooks`); do not edit by hand. Final validation loss at the tuning seed; "
        'the pick is the lowest (README, "The reproduction study: protocol").',
        "",
        *markdown_table(COLUMNS, rows),
        "",
    ]
    if rows
    else ["# Tuning curves: the study's sweeps", "", "No sweep has run yet.", ""]
)
write_markdown("tuning_curves.md", text)
Markdown(text)

# %% [markdown]
# ## One panel per experiment

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
