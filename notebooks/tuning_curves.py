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
# diverged trials. The test loss is never read here: the pick is made on validation.
#
# Writes `notebooks/tuning_curves.md` and `notebooks/figures/tuning_curves.png` (or under
# `$AMOS_NOTEBOOK_OUT`); run from the repository root (`make notebooks`).

# %%
import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from IPython.display import Image, Markdown  # noqa: E402

REPO = Path.cwd()
RESULTS = Path(os.environ.get("AMOS_RESULTS", REPO / "results"))
OUT = Path(os.environ.get("AMOS_NOTEBOOK_OUT", REPO / "notebooks"))
if not RESULTS.is_dir():
    raise FileNotFoundError(f"no {RESULTS}: run the notebook from the repository root")


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
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row.values()) + " |" for row in rows),
        "",
    ]
    if rows
    else ["# Tuning curves: the study's sweeps", "", "No sweep has run yet.", ""]
)
OUT.mkdir(parents=True, exist_ok=True)
(OUT / "tuning_curves.md").write_text(text)
print(f"wrote {OUT / 'tuning_curves.md'}")
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
fig.suptitle("Tuning curves: star = pick (on validation), x = diverged", y=1.0)
fig.tight_layout()
figure = OUT / "figures" / "tuning_curves.png"
figure.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(figure, dpi=80, bbox_inches="tight")
plt.close(fig)
print(f"wrote {figure}")
Image(filename=str(figure))
