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
# # Eval loss against steps and against training time
#
# For every experiment with a `summary.json` under `results/`, each optimizer's eval
# loss from the runs' own records, `results/<experiment>/runs/<optimizer>/seed_<k>/metrics.jsonl`
# (the `"split": "eval"` lines): the mean over seeds and a band from the min to the max,
# against the training step and against training time (the loop's wall time without
# compilation and evaluation, averaged over seeds at each step; measured on a shared
# 2-core machine, so noisier than steps). The dashed line is the summary's target,
# AdamW's mean final eval loss.
#
# One figure, `notebooks/figures/loss_curves.png` (or `$AMOS_NOTEBOOK_OUT/figures/`);
# run from the repository root (`make notebooks`).

# %%
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from IPython.display import Image  # noqa: E402

REPO = Path.cwd()
RESULTS = Path(os.environ.get("AMOS_RESULTS", REPO / "results"))
OUT = Path(os.environ.get("AMOS_NOTEBOOK_OUT", REPO / "notebooks"))
if not RESULTS.is_dir():
    raise FileNotFoundError(f"no {RESULTS}: run the notebook from the repository root")


def eval_records(path: Path) -> list[dict]:
    """The eval lines of a metrics.jsonl; a half-written line is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") == "eval" and "loss" in record:
            records.append(record)
    return records


def seed_curves(run_dir: Path) -> dict[str, list[list[dict]]]:
    """{optimizer: one eval curve per seed} from run_dir/<optimizer>/seed_<k>/."""
    curves: dict[str, list[list[dict]]] = {}
    for metrics in sorted(run_dir.glob("*/seed_*/metrics.jsonl")):
        curve = eval_records(metrics)
        if curve:
            curves.setdefault(metrics.parent.parent.name, []).append(curve)
    return curves


def band(curves: list[list[dict]]) -> dict[str, np.ndarray]:
    """Mean step, mean training time, and mean / min / max loss over seeds, at the steps
    every seed evaluated."""
    steps = sorted(set.intersection(*({r["step"] for r in c} for c in curves)))
    by_step = [{r["step"]: r for r in c} for c in curves]
    loss = np.array([[c[s]["loss"] for s in steps] for c in by_step], dtype=float)
    time = np.array([[c[s].get("train_time_s", np.nan) for s in steps] for c in by_step])
    return {
        "step": np.array(steps, dtype=float),
        "train_time_s": np.nanmean(time, axis=0) if len(steps) else np.array([]),
        "mean": loss.mean(0),
        "min": loss.min(0),
        "max": loss.max(0),
    }


# %% [markdown]
# ## Read the curves

# %%
experiments = {}
for path in sorted(RESULTS.rglob("summary.json")):
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"skipped {path}: {e}")
        continue
    curves = seed_curves(path.parent / "runs")
    order = list(summary.get("optimizers") or {})
    ordered = sorted(curves, key=lambda o: order.index(o) if o in order else len(order))
    experiments[path.parent.relative_to(RESULTS).as_posix()] = {
        "target": summary.get("target_eval_loss"),
        "curves": {opt: curves[opt] for opt in ordered},
    }
for name, e in experiments.items():
    seeds = ", ".join(f"{opt} x{len(c)}" for opt, c in e["curves"].items()) or "no curves"
    print(f"{name}: {seeds}")

# %% [markdown]
# ## One row per experiment: against steps (left) and training time (right)

# %%
fig, axes = plt.subplots(
    max(len(experiments), 1), 2, figsize=(11, 3.2 * max(len(experiments), 1)), squeeze=False
)
# One color per optimizer in every panel, in the order optimizers first appear.
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
        ax.set_ylabel("eval loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
fig.suptitle("Eval loss: mean over seeds, band from min to max", y=1.0)
fig.tight_layout()
figure = OUT / "figures" / "loss_curves.png"
figure.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(figure, dpi=80, bbox_inches="tight")
plt.close(fig)
print(f"wrote {figure}")
Image(filename=str(figure))
