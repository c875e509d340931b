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
# # AdamW's weight decay as an EMA timescale: does the best timescale stay put?
#
# Wang & Aitchison (2024, arXiv:2405.13698): AdamW's weights are an exponential moving
# average of its updates with timescale 1 / (lr * wd) iterations, and the best timescale
# in epochs, tau_epoch = B / (lr * wd * N), stays roughly the same when the training-set
# size N and the model width change. `launch/timescale_sweep.py` sweeps tau_epoch on a log
# grid (factors of 2) at a fixed learning rate for every setting of training-set fraction
# and width, picks the best of each on validation (seed 0), and then checks the transfer:
# the reference setting's best tau_epoch gives, through `amos.weight_decay_from_timescale`,
# the weight decay for a new setting, against the best of a direct weight-decay sweep there.
#
# Per experiment (`results/timescale/<experiment>/timescale.json`): where each setting's
# optimum falls, in grid steps of 2 from the reference setting's (the first), and whether
# it sits at the grid's edge (the optimum may then lie beyond); the transfer check; and the
# figure of both sweeps. "Stays" means within one grid step (a factor of 2), the grid's
# resolution; the test loss is never used to choose.
#
# Writes `notebooks/ema_timescale.md` and `notebooks/figures/ema_timescale.png` (or under
# `$AMOS_NOTEBOOK_OUT`); run from the repository root (`make notebooks`).

# %%
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown

from launch.study.results import RESULTS, markdown_table, save_figure, write_markdown
from launch.study.timescale_sweep import draw  # (the sweep's own figure, per row)

REPO = Path.cwd()


def steps_of_two(x: float, reference: float) -> float:
    return math.log2(x / reference)


def stays(shift: float, at_edge: bool) -> str:
    if abs(shift) <= 1:
        return "stays" + (" (at the grid's edge)" if at_edge else "")
    return f"moves {shift:+.0f} steps" + (" (at the grid's edge)" if at_edge else "")


# %% [markdown]
# ## Read the sweeps

# %%
records = {
    p.parent.name: json.loads(p.read_text())
    for p in sorted((RESULTS / "timescale").glob("*/timescale.json"))
}
print("timescale sweeps:", ", ".join(records) or "none yet")

# %%
OPTIMUM = [
    "experiment",
    "setting",
    "train examples",
    "width",
    "epochs",
    "best tau_epoch",
    "its weight decay",
    "val loss",
    "steps of 2 from the reference",
    "optimum",
]
TRANSFER = [
    "experiment",
    "new setting",
    "reference best tau_epoch",
    "predicted weight decay",
    "val loss at prediction",
    "best direct weight decay",
    "best / predicted",
    "val loss at best",
    "excess at prediction",
    "prediction",
]
optimum_rows, transfer_rows = [], []
for experiment, record in records.items():
    reference = record["settings"][0]["best"]
    for s in record["settings"]:
        b = s["best"]
        cells = [experiment, s["label"], str(s["train_examples"]), str(s["width"])]
        cells.append(f"{s['epochs']:.3g}")
        if b is None or reference is None:
            cells += ["no finished trial", "—", "—", "—", "—"]
        else:
            shift = steps_of_two(b["tau_epochs"], reference["tau_epochs"])
            cells += [
                f"{b['tau_epochs']:.4g}",
                f"{b['weight_decay']:.4g}",
                f"{b['final_val_loss']:.4f}",
                f"{shift:+.0f}",
                (
                    "reference" + (" (at the grid's edge)" if b["at_grid_edge"] else "")
                    if s is record["settings"][0]
                    else stays(shift, b["at_grid_edge"])
                ),
            ]
        optimum_rows.append(dict(zip(OPTIMUM, cells, strict=True)))
    tr = record.get("transfer")
    if tr:
        best = tr["best"]
        at_prediction = tr["val_loss_at_prediction"]
        cells = [
            experiment,
            tr["setting"]["label"],
            f"{tr['reference_best_tau_epochs']:.4g}",
            f"{tr['predicted_weight_decay']:.4g}",
            f"{at_prediction:.4f}" if at_prediction is not None else "not finished",
        ]
        if best is None:
            cells += ["no finished trial", "—", "—", "—", "—"]
        else:
            ratio = tr["best_over_predicted"]
            excess = tr.get("val_loss_excess_at_prediction")
            edge = " (at the grid's edge)" if best["at_grid_edge"] else ""
            cells += [
                f"{best['weight_decay']:.4g}",
                f"{ratio:.3g}",
                f"{best['final_val_loss']:.4f}",
                f"{excess:+.4f}" if excess is not None else "—",
                ("within 2x of the best" if abs(math.log2(ratio)) <= 1 else "off by more than 2x")
                + edge,
            ]
        transfer_rows.append(dict(zip(TRANSFER, cells, strict=True)))


text = "\n".join(
    [
        "# AdamW's weight decay as an EMA timescale",
        "",
        "Written by `notebooks/ema_timescale.py` from `results/timescale/*/timescale.json` "
        "(`launch/timescale_sweep.py`; `make notebooks`); do not edit by hand. Best: lowest "
        "final validation loss at seed 0; a grid step is a factor of 2.",
        "",
        "## Where the optimum falls",
        "",
        *(
            markdown_table(OPTIMUM, optimum_rows)
            if optimum_rows
            else ["No timescale sweep has run yet."]
        ),
        "",
        "## The transfer check",
        "",
        *(
            markdown_table(TRANSFER, transfer_rows)
            if transfer_rows
            else ["No transfer check has run yet."]
        ),
        "",
    ]
)
write_markdown("ema_timescale.md", text)
Markdown(text)

# %% [markdown]
# ## Validation loss against the timescale, and the direct sweep at the new setting
#
# One row per experiment: left, each setting's final validation loss against tau_epoch
# (star: its best); right, the direct weight-decay sweep at the new setting, the predicted
# weight decay dashed.

# %%
n = max(len(records), 1)
fig, axes = plt.subplots(n, 2, figsize=(11, 4 * n), squeeze=False)
for row, (name, record) in zip(axes, records.items(), strict=False):
    draw(record, row)
    row[0].set_title(f"{name}: the timescale sweep (star: best)", fontsize=10)  # its directory
if not records:
    axes[0, 0].text(0.5, 0.5, "no timescale sweep yet", ha="center", transform=axes[0, 0].transAxes)
fig.tight_layout()
Image(filename=str(save_figure(fig, "ema_timescale.png")))
