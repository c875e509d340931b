"""Run one experiment under several optimizers and seeds, then summarize.

  .venv/bin/python launch/compare.py --experiment nanogpt_cpu --seeds 3

Each (optimizer, seed) is a separate `launch/run.py` process with its own run directory
PARENT/<optimizer>/seed_<k> (default PARENT = runs/<experiment>), configured by
gin_configs/experiments/<experiment>.gin composed with gin_configs/optimizers/<optimizer>.gin
(`run.py --optimizer=<optimizer>`). Finished runs are skipped, interrupted ones
resume from their checkpoints. The summary goes to results/<experiment>/: summary.json,
summary.md and loss_curves.png, with the command, git revision, config and machine.
`--resummarize` only re-reads existing run directories.

Runs evaluated on the test split too (`--gin.EVAL_SPLITS="['val', 'test']"`: eval records
hold `test_loss`) are also reported on it, as the study's protocol asks (docs/study.md): final
test loss, and steps and time to the baseline's mean final test loss, beside the same
numbers on validation.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from launch.provenance import git_revision, package_versions
from launch.run import OPTIMIZERS
from launch.summary_writer import read_metrics
from launch.trainer import run_folder

REPO = Path(__file__).resolve().parents[2]

BASELINE = "adamw"


def run_dir(parent: Path, optimizer: str, seed: int) -> Path:
    return parent / optimizer / f"seed_{seed}"


def experiment_file(experiment: str) -> str:
    return f"experiments/{experiment}.gin"


def train_command(
    experiment: str, optimizer: str, seed: int, directory: Path, extra: list[str]
) -> list[str]:
    """The `launch/run.py` command of one (optimizer, seed) run; `extra` bindings last."""
    return [
        sys.executable,
        str(REPO / "launch" / "run.py"),
        f"--gin_file={experiment_file(experiment)}",
        f"--optimizer={optimizer}",
        # A Python string literal, as gin reads it: quotes or spaces in the path survive.
        f"--gin.MODEL_DIR={str(directory)!r}",
        f"--gin.SEED={seed}",
        *extra,
    ]


def _request(argv: list[str]) -> dict[str, str]:
    """What a launch/run.py command asks for: its gin files, optimizer and bindings
    (`--gin.NAME=VALUE`), by name; not MODEL_DIR, which says where, not what."""
    asked: dict[str, str] = {}
    files = []
    for arg in argv:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--optimizer="):
            asked["--optimizer"] = arg.split("=", 1)[1]
        elif arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin.") :].split("=", 1)
            if name != "MODEL_DIR":
                asked[name] = value
    asked["--gin_file"] = " ".join(files)
    return asked


def check_reuse(directory: Path, cmd: list[str], tool: str) -> None:
    """Exits 2 (naming the run and the differences) if the run recorded in `directory`
    was made with another request than `cmd`: reusing it would report its numbers under
    the new bindings."""
    info = directory / run_folder.RUN_JSON
    if not info.exists():
        return
    argv = json.loads(info.read_text()).get("argv")
    if not argv:  # Recorded before run.json kept its arguments: nothing to compare.
        return
    recorded, asked = _request(argv), _request(cmd)
    differ = [
        f"{name}: {recorded.get(name, '(unset)')} -> {asked.get(name, '(unset)')}"
        for name in sorted(recorded.keys() | asked.keys())
        if recorded.get(name) != asked.get(name)
    ]
    if differ:
        print(
            f"[{tool}] ERROR: {directory} was run with another configuration than the one "
            f"asked for ({'; '.join(differ)}): its results would be reported under the new "
            "bindings; use another --parent, or move that run away",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2)


def train_one(
    experiment: str,
    optimizer: str,
    seed: int,
    directory: Path,
    extra: list[str],
    env: dict | None = None,
) -> None:
    cmd = train_command(experiment, optimizer, seed, directory, extra)
    if (directory / run_folder.FINAL_JSON).exists():
        check_reuse(directory, cmd, "compare")
        print(f"[compare] {directory} already finished; skipping", flush=True)
        return
    print("[compare] " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode:
        raise SystemExit(f"[compare] run failed (exit {proc.returncode}): {directory}")


# ----------------------------------------------------------------------------- summary
def training_revisions(summary: dict) -> str:
    """The revisions a summary's runs were trained at, with their dirty flags."""
    gits = summary.get("run_gits") or [summary.get("run_git") or {}]
    return ", ".join(f"{g.get('revision')} (dirty: {g.get('dirty')})" for g in gits)


def eval_curve(directory: Path) -> list[dict]:
    return [r for r in read_metrics(str(directory)) if r["split"] == "eval"]


def first_reach(curve: list[dict], target: float, key: str, loss_key: str = "loss") -> float | None:
    """`key` (step or train time) at which the eval loss `loss_key` ('loss': validation,
    'test_loss') first reaches `target`, linearly interpolated between the two evaluations
    around the crossing; None if never."""
    prev = None
    for r in curve:
        if r[loss_key] <= target:
            if prev is None or prev[loss_key] == r[loss_key]:
                return float(r[key])
            frac = (prev[loss_key] - target) / (prev[loss_key] - r[loss_key])
            return float(prev[key] + frac * (r[key] - prev[key]))
        prev = r
    return None


# Two findings to explain, not data points to average; the summary and README flag them.
# A run COLLAPSED when it ends non-finite, or predicts a constant: its eval accuracy stays
# the same (to COLLAPSE_ACCURACY_TOL) over its last COLLAPSE_EVALS evaluations while its
# loss stays flat (moves by less than MIN_IMPROVEMENT, relative, either way), e.g. the most
# frequent token at accuracy 0.1524 of the first BERT runs. A run STALLED when it learned
# early and then stopped: its eval loss improves by less than MIN_IMPROVEMENT from the
# first evaluation to the last, while its predictions still change. A classifier frozen at
# CONVERGED_ACCURACY or better has converged, not collapsed: the ResNet on digits ends at
# accuracy 0.9938 on 10 batches of 32 drawn from its 180 validation images, with a loss
# that barely moves.
MIN_IMPROVEMENT = 0.02
COLLAPSE_EVALS = 3
COLLAPSE_ACCURACY_TOL = 1e-4
CONVERGED_ACCURACY = 0.95


def _improved(before: float, after: float) -> bool:
    return after <= before * (1 - MIN_IMPROVEMENT)


def collapse_reason(curve: list[dict]) -> str | None:
    """Why an eval curve looks collapsed (see above), or None."""
    if not curve:
        return None
    last = curve[-1]["loss"]
    if not math.isfinite(last):
        return f"final eval loss is {last}"
    tail = curve[-COLLAPSE_EVALS:]
    accuracies = [r.get("accuracy") for r in tail]
    if len(tail) < COLLAPSE_EVALS or None in accuracies:
        return None
    if min(accuracies) >= CONVERGED_ACCURACY:
        return None  # A converged or solved classifier: not a constant prediction.
    frozen = max(accuracies) - min(accuracies) <= COLLAPSE_ACCURACY_TOL
    flat = abs(tail[-1]["loss"] - tail[0]["loss"]) < MIN_IMPROVEMENT * abs(tail[0]["loss"])
    if frozen and flat:
        return (
            f"eval accuracy frozen at {accuracies[-1]:.4f} and loss flat "
            f"({tail[0]['loss']:.4f} -> {tail[-1]['loss']:.4f}) over the last "
            f"{COLLAPSE_EVALS} evaluations"
        )
    return None


def stall_reason(curve: list[dict]) -> str | None:
    """Why an eval curve looks stalled (see above), or None."""
    if len(curve) < 2 or collapse_reason(curve) is not None:
        return None
    first, last = curve[0]["loss"], curve[-1]["loss"]
    if _improved(first, last):
        return None
    return (
        f"eval loss {first:.4f} at step {curve[0]['step']} -> {last:.4f} at step "
        f"{curve[-1]['step']} (less than {MIN_IMPROVEMENT:.0%} better)"
    )


def mean_curve(curves: list[list[dict]], loss_key: str = "loss") -> list[dict]:
    """Eval loss `loss_key` and training time averaged over seeds at the steps all curves
    share (and have `loss_key` at)."""
    curves = [[r for r in c if loss_key in r] for c in curves]
    common = set.intersection(*[{r["step"] for r in c} for c in curves])
    out = []
    for step in sorted(common):
        rows = [next(r for r in c if r["step"] == step) for c in curves]
        out.append(
            {
                "step": step,
                loss_key: sum(r[loss_key] for r in rows) / len(rows),
                "train_time_s": sum(r["train_time_s"] for r in rows) / len(rows),
            }
        )
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def _reach(rs: list[dict], target: float, loss_key: str) -> dict:
    """Steps and training time to `target` on the `loss_key` curve, per seed and for the
    seed-mean curve, which the headline numbers use: the first crossing (`first_reach`;
    None per seed and "never" for the mean where there is none). A seed's curve may cross
    the target early and end above it.
    The baseline's target is the mean of its seeds' final losses, so its seed-mean curve
    reaches it at its last evaluation at the latest, and earlier where that curve dips to
    the target before the end."""
    curves = [[c for c in r["curve"] if loss_key in c] for r in rs]
    mean = mean_curve(curves, loss_key)
    steps = [first_reach(c, target, "step", loss_key) for c in curves]
    mean_steps = first_reach(mean, target, "step", loss_key)
    mean_time = first_reach(mean, target, "train_time_s", loss_key)
    return {
        "steps_per_seed": steps,
        "time_per_seed": [first_reach(c, target, "train_time_s", loss_key) for c in curves],
        "reaching": sum(x is not None for x in steps),
        "steps_mean": "never" if mean_steps is None else mean_steps,
        "time_mean": "never" if mean_time is None else mean_time,
    }


def _has_test(rs: list[dict]) -> bool:
    """Whether every run of a row was evaluated on the test split."""
    return all("test_loss" in r["final"]["eval"] for r in rs)


def _ratio(value, base) -> float | str:
    if isinstance(value, float) and isinstance(base, float) and base > 0:
        return value / base
    return "never"


def _row_summary(rs: list[dict], target: float, test_target: float | None) -> dict:
    """One optimizer's (row's) numbers: validation always, test when it was evaluated."""
    losses = [r["final"]["eval"]["loss"] for r in rs]
    val = _reach(rs, target, "loss")
    mean, std = _mean_std(losses)
    out = {
        "seeds": [r["seed"] for r in rs],
        "run_dirs": [r["dir"] for r in rs],
        "final_eval_loss": losses,
        "final_eval_loss_mean": mean,
        "final_eval_loss_std": std,
        "train_steps": rs[0]["final"]["step"],
        "train_time_s_mean": _mean_std([r["final"]["train_time_s"] for r in rs])[0],
        "steps_to_target_per_seed": val["steps_per_seed"],
        "time_to_target_s_per_seed": val["time_per_seed"],
        "runs_reaching_target": val["reaching"],
        "steps_to_target_mean": val["steps_mean"],
        "time_to_target_s_mean": val["time_mean"],
        "slot_bytes": rs[0]["final"]["slot_bytes"],
        "collapsed_runs": {
            str(r["seed"]): reason
            for r in rs
            if (reason := collapse_reason(r["curve"])) is not None
        },
        "stalled_runs": {
            str(r["seed"]): reason for r in rs if (reason := stall_reason(r["curve"])) is not None
        },
    }
    if test_target is not None and _has_test(rs):
        test_losses = [r["final"]["eval"]["test_loss"] for r in rs]
        test = _reach(rs, test_target, "test_loss")
        test_mean, test_std = _mean_std(test_losses)
        out.update(
            {
                "final_test_loss": test_losses,
                "final_test_loss_mean": test_mean,
                "final_test_loss_std": test_std,
                "steps_to_test_target_per_seed": test["steps_per_seed"],
                "time_to_test_target_s_per_seed": test["time_per_seed"],
                "runs_reaching_test_target": test["reaching"],
                "steps_to_test_target_mean": test["steps_mean"],
                "time_to_test_target_s_mean": test["time_mean"],
            }
        )
    return out


def collect_runs(rows: dict[str, list[tuple[int, Path]]]) -> dict[str, list[dict]]:
    """The finished runs of each row (an optimizer, or a sweep's setting): seed, directory,
    final.json and eval curve; an unfinished run is left out, with a note."""
    runs: dict[str, list[dict]] = {}
    for row, seed_dirs in rows.items():
        for seed, d in seed_dirs:
            if not (d / run_folder.FINAL_JSON).exists():
                print(f"[compare] missing finished run {d}; left out", flush=True)
                continue
            final = json.loads((d / run_folder.FINAL_JSON).read_text())
            runs.setdefault(row, []).append(
                {"seed": seed, "dir": str(d), "final": final, "curve": eval_curve(d)}
            )
    return runs


def summarize(
    experiment: str,
    parent: Path,
    optimizers: list[str],
    seeds: list[int],
    out_dir: Path,
    command: list[str],
    expect: tuple[float, float] | None = None,
) -> dict:
    rows = {opt: [(seed, run_dir(parent, opt, seed)) for seed in seeds] for opt in optimizers}
    return summarize_runs(experiment, parent, rows, out_dir, command, expect)


def summarize_runs(
    experiment: str,
    parent: Path,
    rows: dict[str, list[tuple[int, Path]]],
    out_dir: Path,
    command: list[str],
    expect: tuple[float, float] | None = None,
    row_fields: dict[str, dict] | None = None,
    fields: dict | None = None,
) -> dict:
    """The summary of the runs of each row (row -> [(seed, run directory)]), written to
    `out_dir` with the records of every run. The baseline row is BASELINE if present.
    `row_fields` are added to the rows' entries and `fields` to the summary (a sweep's
    `tuned` flags and picked values)."""
    runs = collect_runs(rows)
    if not runs:
        raise SystemExit(f"[compare] no finished runs under {parent}")
    base = BASELINE if BASELINE in runs else next(iter(runs))
    target = _mean_std([r["final"]["eval"]["loss"] for r in runs[base]])[0]
    test_target = (
        _mean_std([r["final"]["eval"]["test_loss"] for r in runs[base]])[0]
        if _has_test(runs[base])
        else None
    )

    per_opt = {opt: _row_summary(rs, target, test_target) for opt, rs in runs.items()}
    b = per_opt[base]
    for v in per_opt.values():
        ratios = [
            ("steps_to_target_mean", "steps_ratio_to_baseline"),
            ("time_to_target_s_mean", "time_ratio_to_baseline"),
        ]
        if "final_test_loss" in v:
            ratios += [
                ("steps_to_test_target_mean", "test_steps_ratio_to_baseline"),
                ("time_to_test_target_s_mean", "test_time_ratio_to_baseline"),
            ]
        for key, ratio in ratios:
            v[ratio] = _ratio(v[key], b[key])
        v["slot_bytes_ratio_to_baseline"] = (
            v["slot_bytes"] / b["slot_bytes"] if b["slot_bytes"] else None
        )
    for opt, extra in (row_fields or {}).items():
        if opt in per_opt:
            per_opt[opt].update(extra)

    first_dir = Path(runs[base][0]["dir"])
    run_info = json.loads((first_dir / run_folder.RUN_JSON).read_text())
    all_runs = [r for rs in runs.values() for r in rs]
    infos = [json.loads((Path(r["dir"]) / run_folder.RUN_JSON).read_text()) for r in all_runs]
    run_commands = {r["dir"]: i.get("argv") for r, i in zip(all_runs, infos)}
    # Every revision the runs were trained at (seeds added later may be at a later one).
    run_gits = [
        dict(t) for t in dict.fromkeys(tuple(sorted((i.get("git") or {}).items())) for i in infos)
    ]
    summary = {
        "experiment": experiment,
        "baseline": base,
        "target_eval_loss": target,
        "target_definition": f"mean final eval loss of {base} over its seeds",
    }
    if test_target is not None:
        summary["target_test_loss"] = test_target
        summary["target_test_definition"] = f"mean final test loss of {base} over its seeds"
    summary.update(
        {
            "optimizers": per_opt,
            "command": command,
            "git": git_revision(),
            "packages": package_versions(),
            "machine": run_info.get("machine"),
            "run_parent": str(parent),
            "run_commands": run_commands,
            "run_git": run_info.get("git"),
            "run_gits": run_gits,
            "configs": {
                opt: str(Path(runs[opt][0]["dir"]) / run_folder.CONFIG_GIN) for opt in runs
            },
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    summary.update(fields or {})
    if expect is not None:  # An anchor measured elsewhere (nanoGPT's README).
        got = per_opt[base]["final_eval_loss_mean"]
        summary["anchor_check"] = {
            "optimizer": base,
            "expected_eval_loss": expect[0],
            "tolerance": expect[1],
            "measured_eval_loss": got,
            "passed": abs(got - expect[0]) <= expect[1],
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for opt in runs:  # The operative configs, beside the numbers they produced.
        shutil.copy(
            Path(runs[opt][0]["dir"]) / run_folder.CONFIG_GIN, out_dir / f"config_{opt}.gin"
        )
    copy_run_records(parent, [Path(r["dir"]) for r in all_runs], out_dir)
    (out_dir / "summary.md").write_text(markdown(summary))
    plot(runs, target, out_dir / "loss_curves.png", experiment)
    return summary


RUN_RECORDS = [
    run_folder.METRICS_JSONL,
    run_folder.FINAL_JSON,
    run_folder.RUN_JSON,
    run_folder.CONFIG_GIN,
]


def copy_run_records(parent: Path, dirs: list[Path], out_dir: Path) -> None:
    """runs/ is not versioned: keep each run's small records with the summary, under
    out_dir/runs/ at the run's path below `parent` (PARENT/<optimizer>/seed_<k>)."""
    for d in dict.fromkeys(dirs):
        try:
            rel = d.resolve().relative_to(parent.resolve())
        except ValueError:  # Not under the parent: keep its last two levels.
            rel = Path(*d.parts[-2:])
        dest = out_dir / "runs" / rel
        dest.mkdir(parents=True, exist_ok=True)
        for name in RUN_RECORDS:
            if (d / name).exists():
                shutil.copy(d / name, dest / name)


def _fmt(x, spec: str = ".4g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def markdown(s: dict) -> str:
    lines = [
        f"# {s['experiment']}: " + " vs ".join(s["optimizers"]),
        "",
        f"Target: {s['target_definition']} = {s['target_eval_loss']:.4f}.",
        "",
        "| optimizer | seeds | final eval loss (mean ± std) | steps to target | "
        "ratio | train time to target (s) | ratio | slot bytes | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for opt, v in s["optimizers"].items():
        lines.append(
            f"| {opt} | {len(v['seeds'])} | {v['final_eval_loss_mean']:.4f} ± "
            f"{v['final_eval_loss_std']:.4f} | {_fmt(v['steps_to_target_mean'], '.0f')} | "
            f"{_fmt(v['steps_ratio_to_baseline'], '.3f')} | "
            f"{_fmt(v['time_to_target_s_mean'], '.1f')} | "
            f"{_fmt(v['time_ratio_to_baseline'], '.3f')} | {v['slot_bytes']} | "
            f"{_fmt(v['slot_bytes_ratio_to_baseline'], '.3f')} |"
        )
    lines += markdown_test_split(s)
    for key, title in [
        ("collapsed_runs", "COLLAPSED runs (non-finite, or a constant prediction)"),
        ("stalled_runs", "STALLED runs (learned early, then the eval loss stopped falling)"),
    ]:
        flagged = [
            f"- {opt} seed {seed}: {reason}"
            for opt, v in s["optimizers"].items()
            for seed, reason in v.get(key, {}).items()
        ]
        if flagged:
            lines += ["", f"{title}; see launch/compare.py:", *flagged]
    if "anchor_check" in s:
        a = s["anchor_check"]
        lines += [
            "",
            f"Anchor check ({a['optimizer']}): expected eval loss "
            f"{a['expected_eval_loss']} ± {a['tolerance']}, measured "
            f"{a['measured_eval_loss']:.4f}: {'PASS' if a['passed'] else 'FAIL'}.",
        ]
    g = s["git"]
    m = s.get("machine") or {}
    lines += [
        "",
        "Steps/time to target: first crossing of the target by the seed-mean eval "
        'loss curve, linearly interpolated between evaluations ("never" if it does '
        "not cross). Time is training-loop wall time (no compile, no evaluation), "
        "averaged over seeds; runs may share the machine with other work, so times "
        "are noisier than steps.",
        "",
        f"- command: `{' '.join(s['command'])}`",
        f"- git at summary: {g['revision']} (dirty: {g['dirty']}); at training: "
        + training_revisions(s),
        "- run commands: see `run_commands` in summary.json and run.json in each run",
        f"- machine: {m.get('device_kind')} x{m.get('device_count')}, "
        f"{m.get('cpu_count')} CPUs, {m.get('platform')}",
        f"- runs: {s['run_parent']}; configs: "
        + ", ".join(f"config_{o}.gin" for o in s["optimizers"]),
        f"- written: {s['written']}",
        "",
    ]
    return "\n".join(lines)


def _per_seed(values: list) -> str:
    return ", ".join("never" if x is None else format(x, ".0f") for x in values)


def markdown_test_split(s: dict) -> list[str]:
    """The test-split section of summary.md (the protocol's reported numbers); empty when
    the runs were not evaluated on test."""
    if "target_test_loss" not in s:
        return []
    lines = [
        "",
        f"Test split: target = {s['target_test_definition']} = {s['target_test_loss']:.4f}.",
        "",
        "| optimizer | seeds | final test loss (mean ± std) | steps to test target | ratio | "
        "train time to test target (s) | ratio | steps per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for opt, v in s["optimizers"].items():
        if "final_test_loss" not in v:
            lines.append(f"| {opt} | {len(v['seeds'])} | not evaluated | | | | | |")
            continue
        lines.append(
            f"| {opt} | {len(v['seeds'])} | {v['final_test_loss_mean']:.4f} ± "
            f"{v['final_test_loss_std']:.4f} | {_fmt(v['steps_to_test_target_mean'], '.0f')} | "
            f"{_fmt(v['test_steps_ratio_to_baseline'], '.3f')} | "
            f"{_fmt(v['time_to_test_target_s_mean'], '.1f')} | "
            f"{_fmt(v['test_time_ratio_to_baseline'], '.3f')} | "
            f"{_per_seed(v['steps_to_test_target_per_seed'])} |"
        )
    return lines


def plot(runs: dict, target: float, path: Path, title: str) -> None:
    import matplotlib  # here: slow to import, and only drawing needs it

    matplotlib.use("Agg")  # no display; before pyplot loads
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for opt, rs in runs.items():
        for ax, key in zip(axes, ["step", "train_time_s"], strict=True):
            n = min(len(r["curve"]) for r in rs)
            x = np.mean([[c[key] for c in r["curve"][:n]] for r in rs], axis=0)
            y = np.array([[c["loss"] for c in r["curve"][:n]] for r in rs])
            (line,) = ax.plot(x, y.mean(0), label=f"{opt} (n={len(rs)})")
            ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.2)
    for ax, xlabel in zip(axes, ["step", "training time (s)"], strict=True):
        ax.axhline(target, color="gray", ls="--", lw=0.8, label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: eval loss, mean over seeds (band: min to max)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["launch/compare.py", *argv]
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="name X of gin_configs/experiments/X.gin")
    p.add_argument("--optimizers", default="amos,adamw")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--parent", default=None, help="run directories (default runs/<exp>)")
    p.add_argument("--results", default=None, help="summary dir (default results/<exp>)")
    p.add_argument(
        "--resummarize", action="store_true", help="only summarize existing run directories"
    )
    p.add_argument(
        "--expect_loss",
        type=float,
        default=None,
        help="anchor: expected final eval loss of the baseline (mean over seeds)",
    )
    p.add_argument("--expect_tolerance", type=float, default=0.05)
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--gin")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    optimizers = [o for o in args.optimizers.split(",") if o]
    f = REPO / "gin_configs" / experiment_file(args.experiment)
    if not f.exists():
        p.error(f"no experiment file {f} for --experiment {args.experiment!r}")
    for opt in optimizers:
        if opt not in OPTIMIZERS:
            p.error(f"--optimizers: {opt!r} is none of {OPTIMIZERS} (gin_configs/optimizers/)")
    parent = Path(args.parent or REPO / "runs" / args.experiment).resolve()
    out = Path(args.results or REPO / "results" / args.experiment).resolve()
    seeds = list(range(args.seeds))
    if not args.resummarize:
        t0 = time.time()
        for seed in seeds:  # Seed-major: a partial comparison already has all optimizers.
            for opt in optimizers:
                train_one(args.experiment, opt, seed, run_dir(parent, opt, seed), rest)
        print(f"[compare] trained in {time.time() - t0:.0f} s on {platform.node()}", flush=True)
    expect = None if args.expect_loss is None else (args.expect_loss, args.expect_tolerance)
    summary = summarize(args.experiment, parent, optimizers, seeds, out, command, expect)
    print((out / "summary.md").read_text())
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(parent))}")
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
