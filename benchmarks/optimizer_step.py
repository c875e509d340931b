"""Time and slot memory of one optimizer update on a BERT-base-shaped tree (~110M params).

Every optimizer's jitted ``update`` (state donated) runs interleaved in one process, one
call each per round, and the median times are printed as ratios to ``optax.adamw``.
The reference implementation (jestimator 0.3.3's ``amos.py``) joins when it is installed.

    python benchmarks/optimizer_step.py [--rounds 15] [--hidden 768 --layers 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import amos
from amos.model_shapes import bert_param_shapes, count_parameters, materialize
from benchmarks.reference import load_reference_amos

XI = 0.005  # The paper's BERT-base setting.


def git_revision() -> str:
    cwd = Path(__file__).parent
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=cwd).stdout.strip()  # noqa: E731
    revision = run("git", "rev-parse", "--short", "HEAD") or "unknown"
    dirty = run("git", "status", "--porcelain", "--untracked-files=no")
    return revision + ("-dirty" if dirty else "")


def machine() -> str:
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return (
        f"{device.platform} {device.device_kind} x{jax.device_count()} ({cpu}, "
        f"{os.cpu_count()} cores)"
    )


def optimizers(params) -> dict[str, optax.GradientTransformation]:
    eta_fn, shape_fn = amos.default_eta_fn(), amos.default_shape_fn()
    txs = {
        "adamw": optax.adamw(1e-4, weight_decay=0.01),
        "amos (momentum, factored)": amos.amos(XI, eta_fn, shape_fn, momentum=0.9, clip_value=1.0),
        "amos (no momentum, factored)": amos.amos(XI, eta_fn, shape_fn, clip_value=1.0),
        "amos (momentum, full)": amos.amos(XI, eta_fn, None, momentum=0.9, clip_value=1.0),
        "amos (no momentum, full)": amos.amos(XI, eta_fn, None, clip_value=1.0),
        "adafactor": optax.adafactor(1e-3),
    }
    reference = load_reference_amos()
    if reference is not None:
        ref_eta = lambda name, shape: eta_fn(tuple(name), shape)  # noqa: E731
        ref_shape = lambda name, shape: shape_fn(tuple(name), shape)  # noqa: E731
        txs["reference (momentum, factored)"] = reference.amos(
            XI, ref_eta, ref_shape, momentum=0.9, clip_value=1.0
        )
        txs["reference (no momentum, factored)"] = reference.amos(
            XI, ref_eta, ref_shape, clip_value=1.0
        )
    return txs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args(argv)

    shapes = bert_param_shapes(hidden=args.hidden, layers=args.layers, mlp=4 * args.hidden)
    params = materialize(shapes, seed=0)
    grads = materialize(shapes, seed=1, scale=1e-3)
    txs = optimizers(params)

    states, steps, times = {}, {}, {name: [] for name in txs}
    for name, tx in txs.items():
        states[name] = tx.init(params)
        steps[name] = jax.jit(tx.update, donate_argnums=(1,))
        for _ in range(2):  # Compile and warm up; a state whose dtypes settle recompiles once.
            updates, states[name] = steps[name](grads, states[name], params)
            jax.block_until_ready((updates, states[name]))
            del updates
    for _ in range(args.rounds):
        for name in txs:
            start = time.perf_counter()
            updates, states[name] = steps[name](grads, states[name], params)
            jax.block_until_ready((updates, states[name]))
            times[name].append(time.perf_counter() - start)
            del updates

    print(
        f"# optimizer update on a BERT-shaped tree: {count_parameters(shapes) / 1e6:.1f}M "
        f"params, {args.rounds} interleaved rounds, state donated"
    )
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# git: {git_revision()}; {machine()}; jax {jax.__version__}, optax {optax.__version__}")
    base_time = statistics.median(times["adamw"])
    base_bytes = amos.slot_bytes(states["adamw"])
    print("| optimizer | median update (ms) | time / AdamW | slot MiB | slots / AdamW |")
    print("|---|---:|---:|---:|---:|")
    for name in txs:
        median = statistics.median(times[name])
        nbytes = amos.slot_bytes(states[name])
        print(
            f"| {name} | {1e3 * median:.1f} | {median / base_time:.2f} | "
            f"{nbytes / 2**20:.1f} | {nbytes / base_bytes:.3f} |"
        )
    return 0


if __name__ == "__main__":
    jnp.zeros(()).block_until_ready()
    sys.exit(main())
