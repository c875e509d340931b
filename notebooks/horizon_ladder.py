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
# tuned comparison is repeated at longer horizons: the same picks and Amos' guidance
# value, trained with fresh seeds at the longer horizon, no new tuning. A ladder is a
# family's tuned experiment and its rungs, the experiments that train its picks.
#
# **The second edition** (`launch/study2.py --picks_from`, `results/study2/*/`; rungs at 4x
# and 16x): a rung's `study.json` names its source in `picks_from`. A rung may also be
# re-tuned at its own horizon (`launch/study2.py --results`, a directory whose `study.json`
# tuned the rung's experiment): it stands beside the carried rung, and a table compares the
# two picks, and the test loss at each, to show whether the picks carry. Per rung and Amos
# row (tuned, untuned), from its `summary.json`'s `claims` over the five fresh seeds: Amos'
# final test loss minus AdamW's and the step ratio (Amos' seed-mean test curve reaching
# AdamW's mean final test loss, over AdamW's own steps to it; "never" when it does not),
# each with its 95% bootstrap interval and verdict (*met* when the whole interval is on the
# claim's side: a difference below 0, a ratio at most 0.70; *not met* when none of it is;
# *inconclusive* otherwise).
#
# **The first edition** (`launch/sweep.py --picks_from`, `results/study/*/`; rungs at 4x):
# each ladder is a sweep and the rungs whose `sweep.json` names it in `picks_from`. Per
# rung and optimizer: the horizon, the final test loss (mean ± std over the seeds), the
# steps and training-time ratios to AdamW's final test loss at that rung ("never" when
# Amos' seed-mean test curve does not reach it), and the paper's claim (<= 0.70).
#
# Writes `notebooks/horizon_ladder.md`, `notebooks/figures/horizon_ladder_study2.png` and
# `notebooks/figures/horizon_ladder.png` (or under `$AMOS_NOTEBOOK_OUT`); run from the
# repository root (`make notebooks`).

# %%
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown

from launch.study.results import (
    NOT_RUN,
    RESULTS,
    fmt,
    interval,
    is_number,
    markdown_table,
    read_second_edition,
    save_figure,
    setting_text,
    write_markdown,
)

REPO = Path.cwd()

CLAIM = 0.70  # Steps and time to AdamW's loss (the paper's abstract).
AMOS_ROWS = ("amos", "amos_untuned")  # The rows study2.py's claims compare with AdamW.

# %% [markdown]
# ## The second edition: find the ladders
#
# A family's rungs are the experiments whose `picks_from` chain leads to it; a family
# counts as a ladder once a rung has a summary. An experiment not run yet is absent.

# %%
second = {n: e for n, e in read_second_edition().items() if e["summary"] is not None}
second_ladders: dict[str, list[str]] = {}  # family -> its experiments, by horizon
for name, e in second.items():
    second_ladders.setdefault(e["family"], []).append(name)
second_ladders = {
    family: names
    for family, names in second_ladders.items()
    if any((second[n]["study"] or {}).get("picks_from") for n in names)
}
print("second-edition ladders:", second_ladders or "none yet")


# %%
def picks_origin(e: dict) -> str:
    """Where a second-edition experiment's picks come from."""
    source = (e["study"] or {}).get("picks_from")
    if source:
        return f"carried from {Path(source).name}"
    return "re-tuned at this horizon" if e["retunes"] else "tuned here"


SECOND_COLUMNS = [
    "family",
    "rung",
    "picks",
    "horizon (steps)",
    "Amos row",
    "seeds",
    "test loss − AdamW [95% CI]",
    "loss verdict",
    "step ratio [95% CI]",
    "per seed",
    f"steps verdict (≤ {CLAIM:.2f})",
]
second_rows = []
for family, names in second_ladders.items():
    for name in names:
        claims = second[name]["summary"].get("claims") or {}
        for row in AMOS_ROWS:
            c = claims.get(row)
            if c is None:
                continue
            per_seed = ", ".join(fmt(x, ".2f") for x in c.get("step_ratio_per_seed", []))
            values = [
                family,
                name,
                picks_origin(second[name]),
                fmt(second[name]["horizon"], ".0f"),
                row,
                str(len(c.get("seeds", []))),
                interval(c.get("final_loss_difference"), ".4f"),
                (c.get("final_loss_difference") or {}).get("verdict", NOT_RUN),
                interval(c.get("step_ratio"), ".3f"),
                per_seed or NOT_RUN,
                (c.get("step_ratio") or {}).get("verdict", NOT_RUN),
            ]
            second_rows.append(dict(zip(SECOND_COLUMNS, values, strict=True)))
print(f"{len(second_rows)} second-edition rows")

# %% [markdown]
# ## The second edition: do the picks carry?
#
# Per re-tuned rung and optimizer: the pick carried from the family's tuning, the pick of
# the tuning at the rung's horizon (same design and budget), and each pick's final test
# loss over the fresh seeds at the rung (mean ± std). Where the re-tuned pick tests about
# as the carried one does, the carried picks stand; where it tests lower, the carried
# rung's verdicts were read at a pick that does not carry.


# %%
def picked_text(e: dict, opt: str) -> str:
    picked = ((e["study"] or {}).get("picked") or {}).get(opt)
    return setting_text(picked["values"]) if picked else NOT_RUN


def test_loss_text(e: dict, row: str) -> str:
    v = (e["summary"]["optimizers"] or {}).get(row)
    if not v:
        return NOT_RUN
    return f"{v['final_test_loss_mean']:.4f} ± {v['final_test_loss_std']:.4f}"


CARRY_COLUMNS = [
    "family",
    "rung (horizon)",
    "optimizer",
    "carried pick",
    "re-tuned pick",
    "final test loss, carried",
    "final test loss, re-tuned",
]
carry_rows = []
for e in second.values():
    rung = second.get(e["retunes"] or "")
    if rung is None:
        continue
    for opt in ("amos", "adamw"):
        values = [
            e["family"],
            f"{rung['dir'].name} ({fmt(e['horizon'], '.0f')})",
            opt,
            picked_text(rung, opt),
            picked_text(e, opt),
            test_loss_text(rung, opt),
            test_loss_text(e, opt),
        ]
        carry_rows.append(dict(zip(CARRY_COLUMNS, values, strict=True)))
print(f"{len(carry_rows)} rows on whether the picks carry")

# %% [markdown]
# ## The first edition: find the ladders

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

# %% [markdown]
# ## The tables: the second edition, then the first

# %%
text = "\n".join(
    [
        "# The horizon ladder",
        "",
        "Written by `notebooks/horizon_ladder.py` from `results/study2/*/` and "
        "`results/study/*/summary.json` (`make notebooks`); do not edit by hand. Each rung "
        "trains the picks of the family's tuning at a longer horizon.",
        "",
        '## The study, second edition (docs/study.md, "The study\'s second edition: protocol")',
        "",
        *(
            [
                "Amos' rows against AdamW at each rung, on **test**, over the fresh seeds: "
                "the final loss difference and the step ratio to AdamW's mean final test "
                "loss, each with its 95% bootstrap interval over seeds and its verdict "
                "(met: the whole interval below 0, or at most 0.70; not met: none of it; "
                'inconclusive otherwise; "never": Amos\' curve does not reach the target).',
                "",
                *markdown_table(SECOND_COLUMNS, second_rows),
            ]
            if second_rows
            else ["No ladder of the second edition has run yet."]
        ),
        *(
            [
                "",
                "Do the picks carry? Each re-tuned rung's picks (the same design and budget "
                "as the family's tuning, at the rung's horizon) beside the carried ones, and "
                "each pick's final test loss over the fresh seeds at the rung (mean ± std).",
                "",
                *markdown_table(CARRY_COLUMNS, carry_rows),
            ]
            if carry_rows
            else []
        ),
        "",
        '## The study, first edition (docs/study.md, "The reproduction study: protocol")',
        "",
        *(
            [
                "Ratios are Amos / AdamW to AdamW's mean final test loss at that rung.",
                "",
                *markdown_table(COLUMNS, rows),
            ]
            if rows
            else ["No ladder has run yet."]
        ),
        "",
    ]
)
write_markdown("horizon_ladder.md", text)
Markdown(text)

# %% [markdown]
# ## The second edition: the step ratio and the loss difference against the horizon
#
# Per family (colour) and Amos row (tuned: solid, untuned: dotted, drawn a little to the
# right), the point estimate with its 95% interval; a re-tuned rung is a diamond beside its
# carried rung, off the line (the line joins the carried picks). A step ratio or bound that
# is "never" (Amos' curve does not reach AdamW's loss) is drawn at the top edge, marked
# "never", the point as an open marker. The verdicts are the table's.


# %%
def bounds(c: dict, top: float) -> tuple[float, float, float] | None:
    """(point, low, high) of a claim's interval to draw, "never" at ``top``; None without
    an interval."""
    if not c or "point" not in c:
        return None
    values = [c[k] for k in ("point", "low", "high")]
    if any(not is_number(x) and x != "never" for x in values):
        return None
    point, low, high = (x if is_number(x) else top for x in values)
    return point, low, high


finite_ratios = [
    x
    for n in second
    for c in (second[n]["summary"].get("claims") or {}).values()
    for x in [(c.get("step_ratio") or {}).get(k) for k in ("point", "low", "high")]
    if is_number(x)
]
RATIO_TOP = max([1.25, *finite_ratios]) * 1.05
fig, (ratio_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.4))
for i, (family, names) in enumerate(second_ladders.items()):
    for j, row in enumerate(AMOS_ROWS):
        for ax, key, top in [
            (ratio_ax, "step_ratio", RATIO_TOP),
            (loss_ax, "final_loss_difference", None),
        ]:
            points = {False: [], True: []}  # Carried (the line), re-tuned (apart).
            for name in names:
                c = (second[name]["summary"].get("claims") or {}).get(row) or {}
                drawn = bounds(c.get(key), top)
                retuned = bool(second[name]["retunes"])
                if drawn is not None and second[name]["horizon"]:
                    x = second[name]["horizon"] * 1.12**j * (1.05 if retuned else 1.0)
                    points[retuned].append((x, *drawn, c[key]["point"]))
            color, style = f"C{i}", "-" if row == "amos" else ":"
            for retuned, drawn_points in points.items():
                if not drawn_points:
                    continue
                xs, ys, lows, highs, raw = zip(*drawn_points, strict=True)
                if not retuned:
                    ax.plot(xs, ys, style, color=color, label=f"{family}: {row}")
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[
                        [y - lo for y, lo in zip(ys, lows, strict=True)],
                        [hi - y for y, hi in zip(ys, highs, strict=True)],
                    ],
                    fmt="none",
                    ecolor=color,
                    capsize=3,
                    lw=1,
                )
                marker = "D" if retuned else "o"
                for x, y, r in zip(xs, ys, raw, strict=True):
                    face = "white" if not is_number(r) else color
                    ax.plot(x, y, marker, color=color, mfc=face, clip_on=False)
claim_line = ratio_ax.axhline(CLAIM, color="C3", ls="--", lw=1, label=f"paper's claim ({CLAIM})")
ratio_ax.axhline(1.0, color="gray", lw=0.8)
ratio_ax.set_ylim(0, RATIO_TOP + 0.05)
ticks = [t for t in ratio_ax.get_yticks() if 0 <= t < RATIO_TOP - 0.1]
ratio_ax.set_yticks([*ticks, RATIO_TOP], [f"{t:g}" for t in ticks] + ["never"])
ratio_ax.set_ylabel("Amos / AdamW steps to AdamW's test loss")
ratio_ax.set_title("Step ratio, 95% interval over seeds")
loss_ax.axhline(0.0, color="C3", ls="--", lw=1, label="Amos lower below")
loss_ax.set_ylabel("Amos' final test loss − AdamW's")
loss_ax.set_title("Final test loss difference, 95% interval over seeds")
horizons = sorted({second[n]["horizon"] for ns in second_ladders.values() for n in ns} - {None})
for ax in (ratio_ax, loss_ax):
    ax.set_xscale("log", base=2)
    if horizons:
        ax.set_xticks(horizons, [f"{h:g}" for h in horizons], fontsize=8)
        ax.minorticks_off()
    ax.set_xlabel("horizon (training steps)")
    ax.grid(alpha=0.3)
    if not second_ladders:
        ax.text(0.5, 0.5, "no ladder yet", transform=ax.transAxes, ha="center")
ratio_ax.legend(handles=[claim_line], fontsize=7, loc="lower right")
loss_ax.legend(fontsize=7)
fig.suptitle("The horizon ladder, second edition", y=1.0)
fig.tight_layout()
second_figure = save_figure(fig, "horizon_ladder_study2.png")
Image(filename=str(second_figure))

# %% [markdown]
# ## The first edition: the step ratio against the horizon
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
