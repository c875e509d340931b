"""How far a run on 8 devices drifts from the same run on 1 device, per optimizer setting.

Each setting trains the same configuration twice through launch/run.py, on one CPU device
and on eight virtual ones (`--xla_force_host_platform_device_count=8`), logging every step.
With replicated parameters the only difference is the order of float32 reductions over the
batch (the gradient's all-reduce, the mean loss), a relative difference of about 1e-7.
What happens to it afterwards is a property of the training dynamics: a stable setting
keeps it near that level; an aggressive one amplifies it step after step. The settings
below separate the two: each optimizer at the experiment's value and at a step size a few
times smaller or larger.

  .venv/bin/python benchmarks/device_count_drift.py [--experiment quickstart]
      [--steps 400] [--out results/device_count/drift.md] [--gin.NAME=VALUE ...]

Prints, per setting, the relative difference of the training loss at a few steps, the
first step at which it exceeds 1e-3, the final eval losses and (Amos) the ratio of the mean
of b at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gin

from launch.provenance import describe_machine, git_revision
from launch.run import load_gin
from launch.summary_writer import read_metrics

REPO = Path(__file__).resolve().parents[1]

# (label, optimizer, bindings): the experiment's own values and a gentler/harsher step.
SETTINGS = [
    ("amos, AMOS_XI as in the experiment", "amos", []),
    ("amos, AMOS_XI / 4", "amos", ["--gin.AMOS_XI=%AMOS_XI_QUARTER"]),
    ("adamw, ADAMW_LR as in the experiment", "adamw", []),
    ("adamw, ADAMW_LR x 8", "adamw", ["--gin.ADAMW_LR=%ADAMW_LR_X8"]),
]
REPORT_STEPS = (1, 10, 50, 100, 200, 400)
DRIFT_KEYS = ("loss", "amos/b_mean", "param_norm")


def train(experiment: str, optimizer: str, bindings: list[str], model_dir: Path, devices: int):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [
        sys.executable,
        str(REPO / "launch" / "run.py"),
        f"--gin_file=experiments/{experiment}.gin",
        f"--optimizer={optimizer}",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.LOG_EVERY=1",
        *bindings,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return read_metrics(str(model_dir))


def _scaled(experiment: str, bindings: list[str]) -> list[str]:
    """Resolves the %AMOS_XI_QUARTER / %ADAMW_LR_X8 placeholders from the experiment's gin."""
    out = []
    for b in bindings:
        if "%AMOS_XI_QUARTER" in b or "%ADAMW_LR_X8" in b:
            arm = "amos" if "AMOS" in b else "adamw"
            load_gin([f"experiments/{experiment}.gin", f"optimizers/{arm}.gin"], [], [])
            if arm == "amos":
                b = b.replace("%AMOS_XI_QUARTER", repr(gin.query_parameter("%AMOS_XI") / 4))
            else:
                b = b.replace("%ADAMW_LR_X8", repr(gin.query_parameter("%ADAMW_LR") * 8))
            gin.clear_config()
        out.append(b)
    return out


def drift(one: list[dict], eight: list[dict]) -> dict:
    train = lambda rs: {r["step"]: r for r in rs if r["split"] == "train" and "loss" in r}  # noqa: E731
    a, b = train(one), train(eight)
    steps = sorted(set(a) & set(b))
    rel = {s: abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in steps}
    final = lambda rs: [r for r in rs if r["split"] == "eval"][-1]["loss"]  # noqa: E731
    out = {
        "relative_loss_difference": {s: rel[s] for s in REPORT_STEPS if s in rel},
        # Over every logged step, of each quantity both runs log.
        "max_relative_difference": {
            key: max(abs(a[s][key] - b[s][key]) / abs(a[s][key]) for s in steps)
            for key in DRIFT_KEYS
            if all(key in a[s] and key in b[s] for s in steps)
        },
        "first_step_above_1e-3": next((s for s in steps if rel[s] > 1e-3), None),
        "final_eval_loss_1_device": final(one),
        "final_eval_loss_8_devices": final(eight),
    }
    if "amos/b_mean" in a[steps[-1]]:
        out["b_mean_ratio_at_end"] = b[steps[-1]]["amos/b_mean"] / a[steps[-1]]["amos/b_mean"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="quickstart")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--settings", default="all", help="'all' or comma-separated indices")
    p.add_argument("--out", default=None, help="also write the table and the numbers here")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    chosen = (
        SETTINGS if args.settings == "all" else [SETTINGS[int(i)] for i in args.settings.split(",")]
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, optimizer, bindings) in enumerate(chosen):
            extra = [f"--gin.TRAIN_STEPS={args.steps}", *_scaled(args.experiment, bindings), *rest]
            runs = [
                train(args.experiment, optimizer, extra, Path(tmp) / f"{i}_{n}", n) for n in (1, 8)
            ]
            results[label] = {"optimizer": optimizer, "bindings": extra, **drift(*runs)}
            print(f"[drift] {label}: {json.dumps(results[label])}", flush=True)
    git, machine = git_revision(), describe_machine()
    shown = [s for s in REPORT_STEPS if s <= args.steps]
    lines = [
        f"# 8 vs 1 CPU devices, {args.experiment}, {args.steps} steps: relative difference of "
        "the training loss",
        f"# command: python benchmarks/device_count_drift.py {' '.join(sys.argv[1:])}".rstrip(),
        f"# git: {git['revision']} (dirty: {git['dirty']}); machine: {machine['platform']}, "
        f"{machine['cpu_count']} CPUs",
        "| setting | "
        + " | ".join(f"step {s}" for s in shown)
        + " | first step > 1e-3 | final eval loss 1 / 8 dev | b mean 8/1 |",
        "|---|" + "---:|" * (len(shown) + 3),
    ]
    for label, r in results.items():
        diffs = " | ".join(
            f"{r['relative_loss_difference'].get(s, float('nan')):.1e}" for s in shown
        )
        b_ratio = f"{r['b_mean_ratio_at_end']:.3f}" if "b_mean_ratio_at_end" in r else "-"
        lines.append(
            f"| {label} | {diffs} | {r['first_step_above_1e-3'] or 'never'} | "
            f"{r['final_eval_loss_1_device']:.4f} / {r['final_eval_loss_8_devices']:.4f} | "
            f"{b_ratio} |"
        )
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        record = {"command": [sys.executable, *sys.argv], "git": git, "machine": machine}
        out.with_suffix(".json").write_text(json.dumps({**record, "settings": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
