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
# # The horizon ladder: how Amos' step ratio moves as training gets longer
#
# The paper's runs are 300k steps; the study's are a few hundred. So for some families the
# tuned comparison is repeated at 4x the horizon (`launch/sweep.py --picks_from`): the
# same picks and Amos' guidance value, trained with fresh seeds at the longer horizon, no
# new tuning (README, "The reproduction study: protocol"). Each ladder is a sweep
# (`results/study/<experiment>/`) and the rungs whose `sweep.json` names it in
# `picks_from`.
#
# Per rung and optimizer: the horizon, the final test loss (mean ± std over the seeds),
# the steps and training-time ratios to AdamW's final test loss at that rung ("never" when
# Amos' seed-mean test curve does not reach it), and the paper's claim (<= 0.70).
#
# Writes `notebooks/horizon_ladder.md` and `notebooks/figures/horizon_ladder.png` (or under
# `$AMOS_NOTEBOOK_OUT`); run from the repository root (`make notebooks`).

# %%
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from IPython.display import Image, Markdown  # noqa: E402

REPO = Path.cwd()
if str(REPO) not in sys.path:  # Run as a script, its own directory comes first instead.
    sys.path.insert(0, str(REPO))
from notebooks.common import RESULTS, markdown_table, save_figure, write_markdown  # noqa: E402

CLAIM = 0.70  # Steps and time to AdamW's loss (reference section 3).


def fmt(x, spec: str) -> str:
    """A number in ``spec``; "never" (compare.py's word) as it is."""
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


# %% [markdown]
# ## Find the ladders

# %%
study = RESULTS / "study"
records = {p.parent.name: json.loads(p.read_text()) for p in sorted(study.glob("*/sweep.json"))}
ladders: dict[str, list[str]] = {}
for name, record in records.items():
    if record.get("picks_from"):
        ladders.setdefault(record["source_experiment"], []).append(name)
summaries = {}
for base, rungs in ladders.items():
    for name in [base, *rungs]:
        path = study / name / "summary.json"
        if path.is_file():
            summaries[name] = json.loads(path.read_text())
for base in list(ladders):
    if base not in summaries:
        print(f"{base}: its sweep has no summary yet; ladder left out")
        del ladders[base]
    else:
        ladders[base] = [r for r in ladders[base] if r in summaries]
print("ladders:", {b: r for b, r in ladders.items()} or "none yet")

# %%
COLUMNS = [
    "family",
    "rung",
    "horizon (steps)",
    "optimizer",
    "seeds",
    "final test loss",
    "steps to test target",
    "steps ratio",
    f"steps claim (≤ {CLAIM:.2f})",
    "time ratio",
]
rows = []
series: dict[str, dict[str, list]] = {}  # family -> optimizer -> [(horizon, ratio)]
for base, rungs in ladders.items():
    ordered = sorted(
        [base, *rungs], key=lambda n: summaries[n]["optimizers"]["adamw"]["train_steps"]
    )
    for name in ordered:
        s = summaries[name]
        for opt, v in s["optimizers"].items():
            horizon = v["train_steps"]
            ratio = v.get("test_steps_ratio_to_baseline")
            if opt == s["baseline"]:
                claim = "baseline"
            elif ratio == "never":
                claim = "never reached"
            else:
                claim = "met" if ratio <= CLAIM else "not met"
            rows.append(
                dict(
                    zip(
                        COLUMNS,
                        [
                            base,
                            name,
                            str(horizon),
                            opt,
                            str(len(v["seeds"])),
                            f"{v['final_test_loss_mean']:.4f} ± {v['final_test_loss_std']:.4f}",
                            fmt(v["steps_to_test_target_mean"], ".0f"),
                            fmt(ratio, ".3f"),
                            claim,
                            fmt(v.get("test_time_ratio_to_baseline"), ".3f"),
                        ],
                        strict=True,
                    )
                )
            )
            if opt != s["baseline"]:
                series.setdefault(base, {}).setdefault(opt, []).append((horizon, ratio))

text = "\n".join(
    [
        "# The horizon ladder",
        "",
        "Written by `notebooks/horizon_ladder.py` from `results/study/*/summary.json` "
        "(`make notebooks`); do not edit by hand. Each rung trains the picks of the family's "
        "sweep at a longer horizon; ratios are Amos / AdamW to AdamW's mean final test loss "
        "at that rung.",
        "",
        *(markdown_table(COLUMNS, rows) if rows else ["No ladder has run yet."]),
        "",
    ]
)
write_markdown("horizon_ladder.md", text)
Markdown(text)

# %% [markdown]
# ## The step ratio against the horizon
#
# One line per family and Amos row (tuned, untuned). A rung where Amos never reached
# AdamW's loss is drawn on the top edge as an open marker labelled "never".

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
TOP = 1.25
for i, (base, by_opt) in enumerate(series.items()):
    for opt, points in by_opt.items():
        points.sort()
        style = "-" if opt == "amos" else ":"
        xs = [h for h, _ in points]
        ys = [r if isinstance(r, (int, float)) else TOP for _, r in points]
        ax.plot(xs, ys, style, color=f"C{i}", marker="o", label=f"{base}: {opt}")
        for h, r in points:
            if not isinstance(r, (int, float)):
                ax.plot(h, TOP, "o", ms=11, mfc="white", color=f"C{i}", clip_on=False)
                ax.annotate("never", (h, TOP), textcoords="offset points", xytext=(4, -12))
ax.axhline(CLAIM, color="C3", ls="--", lw=1, label=f"paper's claim ({CLAIM})")
ax.axhline(1.0, color="gray", lw=0.8)
ax.set_xscale("log", base=2)
ax.set_ylim(0, TOP + 0.05)
ax.set_xlabel("horizon (training steps)")
ax.set_ylabel("Amos / AdamW steps to AdamW's test loss")
ax.grid(alpha=0.3)
if series:
    ax.legend(fontsize=7, loc="lower right")
else:
    ax.text(0.5, 0.5, "no ladder yet", transform=ax.transAxes, ha="center")
ax.set_title("The horizon ladder")
fig.tight_layout()
figure = save_figure(fig, "horizon_ladder.png")
Image(filename=str(figure))
