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
# # Plug-and-play decay schedules: training on past the planned horizon
#
# The plug-and-play schedules (docs/recipes.md; `amos.inverse_square_decay`,
# `amos.inverse_time_decay`) decay Adam's learning rate and weight decay with a half-life T
# and need no total step count. The study compares them as arms of a sweep (`launch/sweep.py
# --experiment schedules_<family> --arms amos,adamw,adam_pnp_isq,adam_pnp_itime`): the same
# number of trials of each arm's knob (AdamW's peak rate, Amos' xi, the half-life T), a pick
# on validation, fresh seeds at the pick, reported on test. Their rows at the planned
# horizon are in the headline table with every other sweep.
#
# What this notebook adds is the property the derivation advertises: with `--continue_to K`
# every row's fresh-seed runs are copied at the planned horizon and trained on to K times
# it, with every schedule's horizon kept (AdamW's linear decay has reached its end rate and
# stays there, as a schedule with a known horizon must without a restart; Amos and the
# plug-and-play schedules have no horizon). Who keeps improving?
#
# Per experiment and row: the test loss at the planned horizon and at K times it (means
# over the seeds continued), the change, how many seeds improved, the validation change,
# and the learning rate at the end. The figure draws the test loss of the continued runs
# (their records hold the planned part too), the planned horizon dashed.
#
# Writes `notebooks/plug_and_play.md` and `notebooks/figures/plug_and_play.png` (or under
# `$AMOS_NOTEBOOK_OUT`); run from the repository root (`make notebooks`).

# %%
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown

from launch.study.results import (
    RESULTS,
    band,
    markdown_table,
    save_figure,
    seed_curves,
    write_markdown,
)

REPO = Path.cwd()


def setting(v: dict) -> str:
    """The row's knob at its value (a tuned pick or Amos' guidance), as the sweep names it."""
    if "knob" not in v:
        return "—"
    kind = "tuned" if v.get("tuned") else "untuned"
    return f"{kind}: {v['knob']} {v['knob_value']:.4g} = {v['knob_factor']:g}x"


def verdict(c: dict) -> str:
    """Whether the row kept improving on test past the horizon, seed by seed. A row whose
    learning rate ended at 0 (AdamW's decay) did not train on: its parameters are frozen,
    and a loss that still moves comes from other state (a ResNet's batch-norm statistics)."""
    n, improved = len(c["continued_seeds"]), c.get("test_seeds_improved")
    rates = c["end_learning_rate"]
    if rates and all(r == 0 for r in rates):
        return "frozen: rate 0 past the horizon"
    if improved is None:
        return "not evaluated on test"
    if improved == n and c["test_loss_change_mean"] < 0:
        return "kept improving"
    if improved == 0:
        return "did not improve"
    return f"improved on {improved} of {n} seeds"


# %% [markdown]
# ## Find the continued sweeps

# %%
continued = {}  # experiment -> (multiple, the continued runs' summary, its directory)
for path in sorted((RESULTS / "study").glob("*/continued_*x/summary.json")):
    multiple = int(path.parent.name.removeprefix("continued_").removesuffix("x"))
    continued[path.parent.parent.name] = (multiple, json.loads(path.read_text()), path.parent)
print("continued sweeps:", ", ".join(f"{e} ({m}x)" for e, (m, *_) in continued.items()) or "none")

# %%
COLUMNS = [
    "experiment",
    "row",
    "setting",
    "seeds",
    "horizon (steps)",
    "test loss at 1x",
    "test loss at Kx",
    "test change",
    "seeds improved (test)",
    "val change",
    "end learning rate",
    "past the horizon",
]
rows = []
for experiment, (multiple, summary, _) in continued.items():
    for name, c in summary["optimizers"].items():
        n = len(c["continued_seeds"])
        has_test = "test_loss_planned_mean" in c
        cells = [
            experiment,
            name,
            setting(c),
            str(n),
            f"{c['planned_steps']} -> {c['continued_steps']} ({multiple}x)",
            f"{c['test_loss_planned_mean']:.4f}" if has_test else "—",
            f"{c['test_loss_continued_mean']:.4f}" if has_test else "—",
            f"{c['test_loss_change_mean']:+.4f}" if has_test else "—",
            f"{c['test_seeds_improved']}/{n}" if has_test else "—",
            f"{c['val_loss_change_mean']:+.4f}",
            ", ".join(f"{r:.3g}" for r in c["end_learning_rate"] if r is not None) or "—",
            verdict(c),
        ]
        rows.append(dict(zip(COLUMNS, cells, strict=True)))

text = "\n".join(
    [
        "# Plug-and-play schedules: training past the planned horizon",
        "",
        "Written by `notebooks/plug_and_play.py` from `results/study/*/continued_*x/summary.json` "
        "(`launch/sweep.py --continue_to K`; `make notebooks`); do not edit by hand. Each row's "
        "fresh-seed runs, copied at the planned horizon and trained on to K times it with every "
        "schedule's horizon kept; means over the seeds continued; change < 0: it improved.",
        "",
        *(markdown_table(COLUMNS, rows) if rows else ["No sweep has been continued yet."]),
        "",
    ]
)
write_markdown("plug_and_play.md", text)
Markdown(text)

# %% [markdown]
# ## The continued runs' test loss
#
# Mean over seeds and a min-max band, one panel per experiment, on a log scale; the dashed
# line is the planned horizon, where AdamW's schedule ended.

# %%
n = max(len(continued), 1)
fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4), squeeze=False)
for ax, (experiment, (multiple, summary, directory)) in zip(
    axes[0], continued.items(), strict=False
):
    for i, (name, curves) in enumerate(seed_curves(directory, summary, "test_loss").items()):
        b = band(curves)
        ax.plot(b["step"], b["mean"], color=f"C{i}", label=f"{name} (n={len(curves)})")
        ax.fill_between(b["step"], b["min"], b["max"], color=f"C{i}", alpha=0.2, lw=0)
    planned_steps = next(iter(summary["optimizers"].values()))["planned_steps"]
    ax.axvline(planned_steps, color="gray", ls="--", lw=1, label="planned horizon")
    ax.set_title(f"{experiment}: continued to {multiple}x", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("test loss")
    ax.set_yscale("log")  # Past the horizon the differences are small against the start.
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
if not continued:
    axes[0, 0].text(0.5, 0.5, "no continued sweep yet", ha="center", transform=axes[0, 0].transAxes)
fig.tight_layout()
Image(filename=str(save_figure(fig, "plug_and_play.png")))
