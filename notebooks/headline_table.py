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
# # Headline table: Amos against AdamW, per experiment
#
# One row per experiment and optimizer, read from the `summary.json` files under
# `results/`, beside the paper's three claims (its abstract, Tian & Parikh 2022):
# Amos reaches AdamW's loss within **70% of the steps** and **70% of the time**, with at
# most **51% of AdamW's optimizer-slot memory**.
#
# Two tables. **The study** (`results/study/*/`, `launch/sweep.py`): each optimizer tuned
# with the same budget on validation, its pick and Amos at its untuned guidance value
# trained with fresh seeds, everything reported on the **test** split; the target is
# AdamW's mean final test loss. Ladder rungs (`*_4x`) train a sweep's picks at 4x its
# horizon. **The earlier comparisons** (`results/*/`, `launch/compare.py`, before the
# protocol): one untuned setting per optimizer, judged on the held-out split they report
# (the target is AdamW's mean final eval loss on it).
#
# Verdicts: *met* / *not met* compare the recorded ratio with the claim; *never reached*
# means Amos's seed-mean curve never got down to the target; *not run yet* marks a value
# the summary does not hold. Rows whose summary lists collapsed or stalled runs say so in
# the last column.
#
# The table goes to `notebooks/headline_table.md` (or `$AMOS_NOTEBOOK_OUT`), which README's
# Results section includes; run from the repository root (`make notebooks`).

# %%
import math
from pathlib import Path

from IPython.display import Markdown

from launch.study.results import (
    NOT_RUN,
    fmt,
    interval,
    is_number,
    markdown_table,
    read_summaries,
    setting_text,
    write_markdown,
)

REPO = Path.cwd()

# The paper's claims (its abstract), as upper bounds on Amos / AdamW ratios.
CLAIMS = {"steps": 0.70, "time": 0.70, "memory": 0.51}
# The summary fields of each split: the study reports test, the earlier comparisons eval.
FIELDS = {
    "test": {
        "loss": "final_test_loss",
        "steps": "steps_to_test_target_mean",
        "steps ratio": "test_steps_ratio_to_baseline",
        "time ratio": "test_time_ratio_to_baseline",
        "target": "target_test_loss",
        "definition": "target_test_definition",
    },
    "eval": {
        "loss": "final_eval_loss",
        "steps": "steps_to_target_mean",
        "steps ratio": "steps_ratio_to_baseline",
        "time ratio": "time_ratio_to_baseline",
        "target": "target_eval_loss",
        "definition": "target_definition",
    },
}


def verdict(ratio, claim: float) -> str:
    """met / not met against ``claim``; never reached; not run yet."""
    if ratio is None:
        return NOT_RUN
    if ratio == "never":
        return "never reached"
    if is_number(ratio) and math.isfinite(ratio):
        return "met" if ratio <= claim else "not met"
    return f"unreadable ({ratio})"


def mean_std(v: dict, key: str) -> str:
    """``mean ± std`` of the summary's ``key`` over seeds (its _mean and _std fields, or
    the per-seed list)."""
    mean, std, values = v.get(f"{key}_mean"), v.get(f"{key}_std"), v.get(key)
    if mean is None and isinstance(values, list) and values and all(map(is_number, values)):
        mean = sum(values) / len(values)
        n = len(values)
        std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0
    if mean is None:
        return NOT_RUN
    return fmt(mean, ".4f") + ("" if std is None else " ± " + fmt(std, ".4f"))


def flagged(v: dict) -> str:
    """The collapsed and stalled seeds that compare.py listed for one optimizer."""
    if "collapsed_runs" not in v and "stalled_runs" not in v:
        return "not checked"
    parts = []
    for key, label in [("collapsed_runs", "COLLAPSED"), ("stalled_runs", "STALLED")]:
        seeds = sorted(v.get(key) or {}, key=str)
        if seeds:
            parts.append(f"{label}: seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}")
    return "; ".join(parts) or "none"


def settings(v: dict) -> str:
    """tuned or untuned, with the knob's value where a sweep recorded it."""
    name = "tuned" if v.get("tuned") is True else "untuned"
    if v.get("setting"):  # The second edition's: every tuned knob.
        return f"{name} ({setting_text(v['setting'])})"
    if "knob" in v and is_number(v.get("knob_value")):
        label = {"AMOS_XI": "xi", "ADAMW_LR": "lr"}.get(v["knob"], v["knob"])
        return f"{name} ({label} {v['knob_value']:.3g} = {v.get('knob_factor', 1):g}x)"
    return name


def revisions(s: dict) -> str:
    gits = s.get("run_gits") or [s.get("run_git") or {}]
    revs = [g.get("revision") for g in gits]
    clean = all(g.get("dirty") is False for g in gits)
    if not any(revs):
        return NOT_RUN
    return ", ".join(r[:7] for r in revs if r) + ("" if clean else " (not all clean)")


# %% [markdown]
# ## Read every summary

# %%
second, studies, earlier = {}, {}, {}
for name, (_, summary) in read_summaries().items():
    if name.startswith("study2/"):
        second[name] = summary
    else:
        (studies if name.startswith("study/") else earlier)[name] = summary
print(f"{len(second)} second-edition summaries:", ", ".join(second) or "none yet")
print(f"{len(studies)} study summaries:", ", ".join(studies) or "none yet")
print(f"{len(earlier)} earlier summaries:", ", ".join(earlier))


# %% [markdown]
# ## The second edition: verdicts from intervals
#
# `results/study2/*/` (`launch/study2.py`): picks from two tuning seeds, every row over
# five fresh seeds, and each claim's verdict read from a 95% bootstrap interval over those
# seeds (`summary.json`'s `claims`): *met* when the whole interval is on the claim's side,
# *not met* when none of it is, *inconclusive* otherwise. Time ratios are shown, not judged.

# %%
SECOND_COLUMNS = [
    "experiment",
    "Amos row",
    "seeds",
    "test loss − AdamW [95% CI]",
    "loss verdict",
    "step ratio [95% CI]",
    "per seed",
    f"steps verdict (≤ {CLAIMS['steps']:.2f})",
    "at 0.7: − AdamW planned for 0.7 [95% CI]",
    "time-to-result verdict",
    "slot-bytes ratio",
    "memory claim",
    "time ratio (not judged)",
    "flagged runs",
]


def second_rows(summaries: dict[str, dict]) -> list[dict[str, str]]:
    rows = []
    for name, s in summaries.items():
        opts = s.get("optimizers") or {}
        for row, c in (s.get("claims") or {}).items():
            v = opts.get(row, {})
            at = c.get("at_0.7")
            per_seed = ", ".join(fmt(x, ".2f") for x in c.get("step_ratio_per_seed", []))
            values = [
                name.removeprefix("study2/"),
                f"{row} ({settings(v)})" if v else row,
                str(len(c.get("seeds", []))),
                interval(c.get("final_loss_difference"), ".4f"),
                (c.get("final_loss_difference") or {}).get("verdict", NOT_RUN),
                interval(c.get("step_ratio"), ".3f"),
                per_seed or NOT_RUN,
                (c.get("step_ratio") or {}).get("verdict", NOT_RUN),
                interval(at, ".4f"),
                (at or {}).get("verdict", NOT_RUN),
                fmt(v.get("slot_bytes_ratio_to_baseline"), ".3f"),
                verdict(v.get("slot_bytes_ratio_to_baseline"), CLAIMS["memory"]),
                fmt(v.get("test_time_ratio_to_baseline"), ".3f"),
                flagged(v),
            ]
            rows.append(dict(zip(SECOND_COLUMNS, values, strict=True)))
    return rows


second_table = second_rows(second)
print(f"{len(second_table)} second-edition rows")

# %%
COLUMNS = [
    "experiment",
    "optimizer",
    "settings",
    "seeds",
    "final loss (mean ± std)",
    "steps to target",
    "steps ratio",
    f"steps claim (≤ {CLAIMS['steps']:.2f})",
    "time ratio",
    f"time claim (≤ {CLAIMS['time']:.2f})",
    "slot-bytes ratio",
    f"memory claim (≤ {CLAIMS['memory']:.2f})",
    "flagged runs",
]


def table_rows(summaries: dict[str, dict], split: str) -> list[dict[str, str]]:
    """One row per experiment and optimizer, on ``split``'s fields."""
    f = FIELDS[split]
    rows = []
    for name, s in summaries.items():
        baseline = s.get("baseline")
        for opt, v in (s.get("optimizers") or {}).items():
            ratios = {
                "steps": v.get(f["steps ratio"]),
                "time": v.get(f["time ratio"]),
                "memory": v.get("slot_bytes_ratio_to_baseline"),
            }
            verdicts = {
                claim: "baseline" if opt == baseline else verdict(ratios[claim], CLAIMS[claim])
                for claim in CLAIMS
            }
            seeds = v.get("seeds")
            values = [
                name.removeprefix("study/"),
                opt,
                settings(v),
                str(len(seeds)) if isinstance(seeds, list) else NOT_RUN,
                mean_std(v, f["loss"]),
                fmt(v.get(f["steps"]), ".0f"),
                fmt(ratios["steps"], ".3f"),
                verdicts["steps"],
                fmt(ratios["time"], ".3f"),
                verdicts["time"],
                fmt(ratios["memory"], ".3f"),
                verdicts["memory"],
                flagged(v),
            ]
            rows.append(dict(zip(COLUMNS, values, strict=True)))
    return rows


def notes(summaries: dict[str, dict], split: str) -> list[str]:
    f = FIELDS[split]
    out = []
    for name, s in summaries.items():
        line = f"- `results/{name}/`: target {fmt(s.get(f['target']), '.4f')}"
        line += f" ({s.get(f['definition'], 'definition not recorded')})"
        if s.get("picks_from"):
            line += f"; the picks of `{s['picks_from']}`"
        line += f"; trained at git {revisions(s)}"
        m = s.get("machine") or {}
        if m:
            line += f" on {m.get('device_kind')} x{m.get('device_count')}, "
            line += f"{m.get('cpu_count')} CPUs"
        a = s.get("anchor_check")
        if a:
            passed = "PASS" if a.get("passed") else "FAIL"
            line += (
                f"; anchor: {a.get('optimizer')} expected {a.get('expected_eval_loss')} ± "
                f"{a.get('tolerance')}, measured {fmt(a.get('measured_eval_loss'), '.4f')}: "
                f"{passed}"
            )
        out.append(line + ".")
    return out


study_rows = table_rows(studies, "test")
earlier_rows = table_rows(earlier, "eval")
print(f"{len(study_rows)} study rows, {len(earlier_rows)} earlier rows")

# %% [markdown]
# ## The tables, and the notes that go with them

# %%
study_part = (
    [
        "Each optimizer tuned with the same budget on validation, its pick and Amos at its "
        "untuned guidance value then trained with fresh seeds, reported on **test**. Ratios "
        "are Amos / AdamW: steps and training time for the seed-mean test curve to reach "
        "AdamW's mean final test loss, and optimizer-slot bytes.",
        "",
        *markdown_table(COLUMNS, study_rows),
        "",
        *notes(studies, "test"),
    ]
    if study_rows
    else ["No sweep has finished yet."]
)
text = "\n".join(
    [
        "# Headline table: Amos against AdamW",
        "",
        "Written by `notebooks/headline_table.py` from `results/**/summary.json` "
        "(`make notebooks`); do not edit by hand. The paper's claims (its abstract) "
        "head the verdict columns.",
        "",
        '## The study, second edition (docs/study.md, "The study\'s second edition: protocol")',
        "",
        *(
            [
                "Amos' rows against AdamW at its pick, on **test**, over the fresh seeds; "
                'intervals are 95% bootstrap intervals over seeds; "at 0.7" is Amos\' test '
                "loss at 0.7 of the horizon minus AdamW's with its schedule planned for "
                "0.7 of it.",
                "",
                *markdown_table(SECOND_COLUMNS, second_table),
                "",
                *notes(second, "test"),
            ]
            if second_table
            else ["No family of the second edition has finished yet."]
        ),
        "",
        '## The study, first edition (docs/study.md, "The reproduction study: protocol")',
        "",
        *study_part,
        "",
        "## The earlier comparisons (untuned, before the protocol)",
        "",
        "One setting per optimizer, Amos at the reference's untuned guidance (xi = "
        "1/sqrt(N), 1 - beta of the order of xi), nothing tuned on validation for either; "
        "judged on the held-out split they report (eval), which predates the test split. "
        "Ratios as above, to AdamW's mean final eval loss.",
        "",
        *markdown_table(COLUMNS, earlier_rows),
        "",
        *notes(earlier, "eval"),
        "",
    ]
)
write_markdown("headline_table.md", text)
Markdown(text)

# %% [markdown]
# ## Claims met, counted

# %%
VERDICTS = [c for c in COLUMNS if " claim " in c]
for title, rows in [("study", study_rows), ("earlier", earlier_rows)]:
    challengers = [row for row in rows if row[VERDICTS[0]] != "baseline"]
    for column in VERDICTS:
        met = sum(row[column] == "met" for row in challengers)
        print(f"{title}: {column}: met in {met} of {len(challengers)} non-baseline rows")
    all_met = [
        f"{row['experiment']} ({row['optimizer']})"
        for row in challengers
        if all(row[c] == "met" for c in VERDICTS)
    ]
    print(f"{title}: all three claims met:", ", ".join(all_met) or "none")
