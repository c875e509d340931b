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
# # The largest batch per device: what Amos' smaller optimizer state buys
#
# AdamW keeps two full-size float32 slots per parameter, Amos (with momentum) one and two
# small factored ones (`notebooks/slot_memory.py`). Here that difference is put where it
# matters to a run: the largest batch per device whose train step still fits a device's
# memory, at the paper's sizes (BERT-base / large, T5 1.1 base / large), on a TPU v4 chip
# (32 GiB) and on 40 GB and 80 GB GPUs (40 and 80 GiB), with each optimizer.
#
# Every number comes from `benchmarks/memory_fit.py` (`results/memory/<experiment>.json`):
# per experiment and arm, the train step is compiled from shapes (nothing allocated, no
# data read) at the batches a search tries (`launch/run.py --dry_run_fit`: doubling or
# halving from the configured batch, then bisection guided by the near-affine growth of
# memory with the batch), and its need per device is XLA's memory analysis of that
# compile: code + arguments + outputs - aliased (the donated state, counted once) +
# temporaries. One device, so a batch per device is that of data parallelism on any
# number of devices; the paper's settings (float32, no rematerialization).
#
# Read the numbers as what the compiler of the backend they were compiled on says (each
# file records it): compiled on a CPU, they are estimates for a TPU or GPU, whose
# compilers fuse, schedule and place buffers differently (`benchmarks/gpu_check.sh`
# measures how differently on a GPU). On a GPU, JAX by default takes 75% of the memory
# for its pool (`XLA_PYTHON_CLIENT_MEM_FRACTION`), and the CUDA context a few hundred
# MiB more.
#
# Writes `notebooks/memory_fit.md` (or under `$AMOS_NOTEBOOK_OUT`); run from the
# repository root (`make notebooks`).

# %%
import json
from pathlib import Path

from IPython.display import Markdown

from launch.sharding import format_bytes
from launch.study.results import RESULTS, markdown_table, write_markdown

REPO = Path.cwd()

records = {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "memory").glob("*.json"))}
print("memory fits:", ", ".join(records) or "none yet (run benchmarks/memory_fit.py)")


def batch_cell(fit: dict) -> str:
    """The largest batch per device and its need; '≥' where the search stopped at its cap,
    'none' where not even one row fits."""
    if not fit["per_device_batch"]:
        return (
            f"none ({fit['next_per_device_batch']} needs {format_bytes(fit['next_total_bytes'])})"
        )
    prefix = "≥ " if fit["capped"] else ""
    return f"{prefix}{fit['per_device_batch']} ({format_bytes(fit['total_bytes'])})"


def ratio_cell(amos: dict, adamw: dict) -> str:
    if not amos["per_device_batch"] or not adamw["per_device_batch"]:
        return "n/a"
    return f"{amos['per_device_batch'] / adamw['per_device_batch']:.2f}"


# %% [markdown]
# ## Largest batch per device, Amos against AdamW
#
# Per experiment, one row per optimizer (its parameter and optimizer-slot bytes, then per
# device the largest batch per device and what its step needs), and a row with Amos'
# slot bytes and batches over AdamW's.

# %%
FIT_COLUMNS = ["experiment", "optimizer", "parameters", "slot bytes"]
fit_rows, devices = [], []
for experiment, record in records.items():
    devices = devices or list(record["devices"])
    arms = record["arms"]
    for arm, a in arms.items():
        fit_rows.append(
            {
                "experiment": experiment,
                "optimizer": arm,
                "parameters": f"{a['parameters']:,}",
                "slot bytes": format_bytes(a["slot_bytes"]),
                **{device: batch_cell(a["fits"][device]) for device in record["devices"]},
            }
        )
    if {"amos", "adamw"} <= set(arms):
        fit_rows.append(
            {
                "experiment": experiment,
                "optimizer": "Amos / AdamW",
                "parameters": "",
                "slot bytes": f"{arms['amos']['slot_bytes'] / arms['adamw']['slot_bytes']:.2f}",
                **{
                    device: ratio_cell(arms["amos"]["fits"][device], arms["adamw"]["fits"][device])
                    for device in record["devices"]
                },
            }
        )
fit_table = (
    "\n".join(markdown_table([*FIT_COLUMNS, *devices], fit_rows)) if fit_rows else "none yet"
)
Markdown(fit_table)

# %% [markdown]
# ## What bfloat16 and rematerialization save
#
# With `benchmarks/memory_fit.py --variants BATCH`: Amos' step at one batch under each
# `COMPUTE_DTYPE` and `REMAT` setting, its need per device and FLOPs per step (XLA's cost
# analysis: rematerialization recomputes, so it costs FLOPs), each against float32
# without rematerialization. On the CPU compiler the need barely falls with either, or
# rises: it computes bfloat16 through float32 copies, and the recomputation has
# temporaries of its own. What they save on a GPU or TPU shows in a dry run on that
# machine, or in `benchmarks/gpu_check.sh`'s table.

# %%
VARIANT_COLUMNS = ["experiment", "batch", "COMPUTE_DTYPE", "REMAT", "backend", "need per device"]
VARIANT_COLUMNS += ["need / float32 none", "FLOPs / float32 none"]
variant_rows = []
for experiment, record in records.items():
    base = next(
        (v for v in record["variants"] if (v["compute_dtype"], v["remat"]) == ("float32", "none")),
        None,
    )
    for v in record["variants"]:
        variant_rows.append(
            {
                "experiment": experiment,
                "batch": str(v["batch_size"]),
                "COMPUTE_DTYPE": v["compute_dtype"],
                "REMAT": v["remat"],
                "backend": v["backend"],
                "need per device": format_bytes(v["total_bytes"]),
                "need / float32 none": (
                    f"{v['total_bytes'] / base['total_bytes']:.3f}" if base else "n/a"
                ),
                "FLOPs / float32 none": (
                    f"{v['flops'] / base['flops']:.3f}" if base and base["flops"] else "n/a"
                ),
            }
        )
variant_table = (
    "\n".join(markdown_table(VARIANT_COLUMNS, variant_rows)) if variant_rows else "none yet"
)
Markdown(variant_table)

# %% [markdown]
# ## Where the numbers come from

# %%
source_lines = [
    f"- `{experiment}`: `{' '.join(r['command'][1:])}`; git {r['git']['revision']} (dirty: "
    f"{r['git']['dirty']}); compiled for {r['backend']} on {r['machine']['platform']}, "
    f"{r['machine']['cpu_count']} CPUs; jax {r['packages'].get('jax')}; {r['seconds']:.0f} s"
    for experiment, r in records.items()
]
print("\n".join(source_lines) or "none yet")

# %%
text = "\n".join(
    [
        "# Largest batch per device (notebooks/memory_fit.py)",
        "",
        "## Amos against AdamW",
        "",
        fit_table,
        "",
        "## COMPUTE_DTYPE and REMAT",
        "",
        variant_table,
        "",
        "## Sources",
        "",
        *(source_lines or ["none yet: run benchmarks/memory_fit.py"]),
        "",
    ]
)
write_markdown("memory_fit.md", text)
