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
# One row per experiment and optimizer, read from every `results/**/summary.json` that
# `launch/compare.py` wrote, beside the paper's three claims (`../shared/reference/amos.md`,
# section 3): Amos reaches AdamW's final eval loss within **70% of the steps** and **70%
# of the time**, with at most **51% of AdamW's optimizer-slot memory**. The target is the
# one `compare.py` records: AdamW's mean final eval loss over its seeds.
#
# Verdicts: *met* / *not met* compare the recorded ratio with the claim; *never reached*
# means Amos's seed-mean eval curve never got down to the target; *not run yet* marks a
# value the summary does not hold (for example a test loss, which no run measures yet).
# Rows whose summary lists collapsed or stalled runs say so in the last column.
#
# The table goes to `notebooks/headline_table.md` (or `$AMOS_NOTEBOOK_OUT`); run from
# the repository root (`make notebooks`).

# %%
import json
import math
import os
from pathlib import Path

from IPython.display import Markdown

REPO = Path.cwd()
RESULTS = Path(os.environ.get("AMOS_RESULTS", REPO / "results"))
OUT = Path(os.environ.get("AMOS_NOTEBOOK_OUT", REPO / "notebooks"))
if not RESULTS.is_dir():
    raise FileNotFoundError(f"no {RESULTS}: run the notebook from the repository root")

# The paper's claims (reference section 3), as upper bounds on Amos / AdamW ratios.
CLAIMS = {"steps": 0.70, "time": 0.70, "memory": 0.51}
RATIO_KEYS = {
    "steps": "steps_ratio_to_baseline",
    "time": "time_ratio_to_baseline",
    "memory": "slot_bytes_ratio_to_baseline",
}
# Keys a later sweep may add for a held-out test loss; the first one present is shown.
TEST_LOSS_KEYS = ("final_test_loss_mean", "test_loss_mean", "test_loss")
NOT_RUN = "not run yet"


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt(x, spec: str) -> str:
    """A number in ``spec``; a word compare.py wrote ("never") as it is; None as not run."""
    if x is None:
        return NOT_RUN
    return format(x, spec) if is_number(x) and math.isfinite(x) else str(x)


def verdict(ratio, claim: float) -> str:
    """met / not met against ``claim``; never reached; not run yet."""
    if ratio is None:
        return NOT_RUN
    if ratio == "never":
        return "never reached"
    if is_number(ratio) and math.isfinite(ratio):
        return "met" if ratio <= claim else "not met"
    return f"unreadable ({ratio})"


def mean_std(values, mean=None, std=None) -> str:
    """``mean ± std`` from the summary's fields, or from a list of per-seed values."""
    if mean is None and isinstance(values, list) and values and all(map(is_number, values)):
        mean = sum(values) / len(values)
        n = len(values)
        std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0
    elif mean is None and is_number(values):
        mean = values
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


def settings(summary: dict, v: dict) -> str:
    """'tuned' once a sweep marks its rows; today's runs are the untuned guidance."""
    tuned = v.get("tuned", summary.get("tuned"))
    return "tuned" if tuned is True else "untuned"


# %% [markdown]
# ## Read every summary

# %%
summaries = {}
for path in sorted(RESULTS.rglob("summary.json")):
    name = path.parent.relative_to(RESULTS).as_posix()
    try:
        summaries[name] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"skipped {path}: {e}")
print(f"{len(summaries)} summaries:", ", ".join(summaries))

# %%
COLUMNS = [
    "experiment",
    "optimizer",
    "settings",
    "seeds",
    "final eval loss (mean ± std)",
    "test loss",
    "steps to target",
    "steps ratio",
    f"steps claim (≤ {CLAIMS['steps']:.2f})",
    "time ratio",
    f"time claim (≤ {CLAIMS['time']:.2f})",
    "slot-bytes ratio",
    f"memory claim (≤ {CLAIMS['memory']:.2f})",
    "flagged runs",
]

rows = []
for name, s in summaries.items():
    baseline = s.get("baseline")
    for opt, v in (s.get("optimizers") or {}).items():
        test_loss = next((v[k] for k in TEST_LOSS_KEYS if v.get(k) is not None), None)
        ratios = {claim: v.get(key) for claim, key in RATIO_KEYS.items()}
        verdicts = {
            claim: "baseline" if opt == baseline else verdict(ratios[claim], CLAIMS[claim])
            for claim in CLAIMS
        }
        seeds = v.get("seeds")
        values = [
            name,
            opt,
            settings(s, v),
            str(len(seeds)) if isinstance(seeds, list) else NOT_RUN,
            mean_std(
                v.get("final_eval_loss"),
                v.get("final_eval_loss_mean"),
                v.get("final_eval_loss_std"),
            ),
            mean_std(test_loss, std=v.get("final_test_loss_std", v.get("test_loss_std"))),
            fmt(v.get("steps_to_target_mean"), ".0f"),
            fmt(ratios["steps"], ".3f"),
            verdicts["steps"],
            fmt(ratios["time"], ".3f"),
            verdicts["time"],
            fmt(ratios["memory"], ".3f"),
            verdicts["memory"],
            flagged(v),
        ]
        rows.append(dict(zip(COLUMNS, values, strict=True)))
print(f"{len(rows)} rows")

# %% [markdown]
# ## The table, and the notes that go with it

# %%
notes = []
for name, s in summaries.items():
    line = f"- `{name}`: target {fmt(s.get('target_eval_loss'), '.4f')}"
    line += f" ({s.get('target_definition', 'definition not recorded')})"
    run_git = (s.get("run_git") or {}).get("revision")
    line += f"; trained at git {run_git[:7] if run_git else NOT_RUN}"
    a = s.get("anchor_check")
    if a:
        passed = "PASS" if a.get("passed") else "FAIL"
        line += (
            f"; anchor: {a.get('optimizer')} expected {a.get('expected_eval_loss')} ± "
            f"{a.get('tolerance')}, measured {fmt(a.get('measured_eval_loss'), '.4f')}: {passed}"
        )
    notes.append(line + ".")

any_tuned = any(row["settings"] == "tuned" for row in rows)
scope = (
    "Some rows come from the study's tuned settings (settings = tuned)."
    if any_tuned
    else "No tuned row yet: every run here is a CPU-scale comparison with Amos at the "
    "reference's untuned guidance (xi = 1/sqrt(N), 1 - beta of the order of xi; README, "
    '"What the faithful recipes changed"), nothing tuned on validation for either '
    "optimizer. The study's tuned rows join this table when they are run."
)
text = "\n".join(
    [
        "# Headline table: Amos against AdamW",
        "",
        "Written by `notebooks/headline_table.py` from `results/**/summary.json` "
        "(`make notebooks`); do not edit by hand.",
        "",
        scope,
        "",
        "Ratios are Amos / AdamW: steps and training time for the seed-mean eval curve to "
        "reach the target (AdamW's mean final eval loss), and optimizer-slot bytes. The "
        "paper's claims (reference section 3) head the verdict columns.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row.values()) + " |" for row in rows),
        "",
        "Per experiment:",
        "",
        *notes,
        "",
    ]
)
OUT.mkdir(parents=True, exist_ok=True)
(OUT / "headline_table.md").write_text(text)
print(f"wrote {OUT / 'headline_table.md'}")
Markdown(text)

# %% [markdown]
# ## Claims met, counted

# %%
VERDICTS = [c for c in COLUMNS if " claim " in c]
challengers = [row for row in rows if row[VERDICTS[0]] != "baseline"]
for column in VERDICTS:
    met = sum(row[column] == "met" for row in challengers)
    print(f"{column}: met in {met} of {len(challengers)} non-baseline rows")
all_met = [
    f"{row['experiment']} ({row['optimizer']})"
    for row in challengers
    if all(row[c] == "met" for c in VERDICTS)
]
print("all three claims met:", ", ".join(all_met) or "none")
