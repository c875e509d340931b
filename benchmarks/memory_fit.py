"""The largest batch per device whose train step fits a device's memory, with Amos and with
AdamW, at the paper's sizes: what Amos' smaller optimizer state buys in batch.

For each experiment and arm, the train step is compiled from shapes (nothing allocated,
no data read) exactly as `launch/run.py --dry_run_fit` does (`launch.trainer.fit_batch`:
doubling or halving from the configured batch, then bisection guided by the near-affine
growth of memory with the batch), and its per-device need is XLA's memory analysis of
that compile (`StepMemory.total_bytes`). One device, so the batch per device is that of
data parallelism on any number of them. With `--variants`, one arm's step at a fixed
batch under each COMPUTE_DTYPE x REMAT setting: what bfloat16 and rematerialization save.

  .venv/bin/python benchmarks/memory_fit.py [--experiments bert_base,bert_large,t5_base,t5_large]
      [--devices 'TPU v4=32GiB,GPU 40 GB=40GiB,GPU 80 GB=80GiB'] [--variants BATCH]
      [--out_dir results/memory] [--gin.NAME=VALUE ...]

Writes `<out_dir>/<experiment>.json` per experiment (command, git revision, machine,
packages, every compile's numbers) and prints a table; notebooks/memory_fit.py renders
them. The numbers are those of the compiler of the backend it ran on (the JSON says which):
on a CPU they are estimates for a GPU or TPU, whose compilers fuse and place buffers
differently (benchmarks/gpu_check.sh measures how differently on a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from launch import provenance
from launch import run as run_cli
from launch import trainer as train_lib
from launch.sharding import format_bytes

REPO = Path(__file__).resolve().parents[1]

EXPERIMENTS = ["bert_base", "bert_large", "t5_base", "t5_large"]
ARMS = ["amos", "adamw"]
# Device memory: a TPU v4 chip's 32 GiB of HBM; the A100 / H100 "40 GB" and "80 GB" GPUs
# hold 40 and 80 GiB (nvidia-smi: 40960 and 81920 MiB), of which the CUDA context takes
# a few hundred MiB and JAX by default pools 75% (XLA_PYTHON_CLIENT_MEM_FRACTION).
DEVICES = "TPU v4=32GiB,GPU 40 GB=40GiB,GPU 80 GB=80GiB"
VARIANTS = [
    (dtype, remat) for dtype in ("float32", "bfloat16") for remat in ("none", "dots", "full")
]


def build(experiment: str, optimizer: str, bindings: list[str]) -> train_lib.Trainer:
    """The dry-run Trainer (shapes only, generated text) of an experiment file and arm."""
    files = [f"experiments/{experiment}.gin", run_cli.optimizer_file(optimizer)]
    run_cli.load_gin(files, bindings, [])
    return train_lib.dry_run_trainer()[0]


def _say(experiment: str, arm: str):
    def say(m: train_lib.StepMemory) -> None:
        print(
            f"  {experiment}/{arm}: batch {m.batch_size} needs {format_bytes(m.total_bytes)} "
            f"(compiled in {m.compile_seconds:.1f} s)",
            flush=True,
        )

    return say


def fit_experiment(experiment: str, devices: dict[str, int], bindings: list[str]) -> dict:
    """Per arm: its sizes and, per device, the largest batch that fits, with every compile."""
    arms = {}
    for arm in ARMS:
        trainer = build(experiment, arm, bindings)
        probes: dict[int, train_lib.StepMemory] = {}
        fits = {}
        for device, budget in devices.items():
            fit = train_lib.fit_batch(trainer, budget, probes=probes, say=_say(experiment, arm))
            fits[device] = {
                "budget_bytes": budget,
                "per_device_batch": fit.fits.per_device_batch if fit.fits else 0,
                "total_bytes": fit.fits.total_bytes if fit.fits else None,
                "next_per_device_batch": fit.next_fails and fit.next_fails.per_device_batch,
                "next_total_bytes": fit.next_fails and fit.next_fails.total_bytes,
                "capped": fit.capped,
                "compiles": fit.compiles,
            }
        arms[arm] = {
            "parameters": trainer.num_params,
            "param_bytes": trainer.layout()["param_bytes"],
            "slot_bytes": trainer.slot_bytes,
            "batch_shape": {k: list(v.shape[1:]) for k, v in trainer.example_batch.items()},
            "compute_dtype": trainer.config.compute_dtype,
            "remat": train_lib.model_remat(trainer.model),
            "fits": fits,
            "compiles": [probes[b].as_dict() for b in sorted(probes)],
        }
    return arms


def variants(
    experiment: str,
    batch: int,
    bindings: list[str],
    settings: list[tuple[str, str]] = VARIANTS,
    arm: str = "amos",
) -> list[dict]:
    """The step of `arm` at `batch` under each (COMPUTE_DTYPE, REMAT) of `settings`."""
    rows = []
    for dtype, remat in settings:
        extra = [f"COMPUTE_DTYPE = '{dtype}'", f"REMAT = '{remat}'"]
        memory = train_lib.step_memory(build(experiment, arm, [*bindings, *extra]), batch)
        print(
            f"  {experiment}/{arm} {dtype} REMAT {remat}: {format_bytes(memory.total_bytes)}",
            flush=True,
        )
        rows.append({"optimizer": arm, "compute_dtype": dtype, "remat": remat, **memory.as_dict()})
    return rows


def parse_devices(text: str) -> dict[str, int]:
    """'NAME=SIZE,...' (sizes as `run.py --dry_run_fit` reads them) as {name: bytes}."""
    devices = {}
    for part in text.split(","):
        name, sep, size = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not NAME=SIZE (e.g. 'TPU v4=32GiB')")
        try:
            devices[name.strip()] = run_cli.parse_bytes(size)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return devices


def parse_settings(text: str) -> list[tuple[str, str]]:
    """'DTYPE:REMAT,...' (e.g. 'float32:none,bfloat16:full') as a list of pairs."""
    pairs = [tuple(part.split(":")) for part in text.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not DTYPE:REMAT,... (float32:none)")
    return pairs


def table(experiment: str, arms: dict, devices: dict[str, int]) -> list[str]:
    lines = [f"{experiment}: largest batch per device (compiled total)"]
    for device in devices:
        cells = []
        for arm, record in arms.items():
            fit = record["fits"][device]
            need = fit["total_bytes"]
            cells.append(
                f"{arm} {fit['per_device_batch']}"
                + (f" ({format_bytes(need)})" if need is not None else "")
            )
        lines.append(f"  {device:<12} " + ", ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default=",".join(EXPERIMENTS))
    p.add_argument("--devices", type=parse_devices, default=parse_devices(DEVICES))
    p.add_argument(
        "--variants",
        type=int,
        default=0,
        metavar="BATCH",
        help="also compile Amos' step at this global batch under each COMPUTE_DTYPE x REMAT",
    )
    p.add_argument(
        "--settings",
        type=parse_settings,
        default=VARIANTS,
        metavar="DTYPE:REMAT,...",
        help="the --variants settings (default: float32 and bfloat16 x none, dots, full)",
    )
    p.add_argument("--out_dir", default=str(REPO / "results" / "memory"))
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    unknown = [b for b in rest if not (b.startswith("--gin.") and "=" in b)]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    bindings = [b[len("--gin.") :].replace("=", " = ", 1) for b in rest]
    if jax.device_count() != 1:
        p.error(f"runs on one device (there are {jax.device_count()}): unset XLA_FLAGS")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    origin = {
        "command": [sys.executable, *(sys.argv if argv is None else ["memory_fit.py", *argv])],
        "git": provenance.git_revision(),
        "machine": provenance.describe_machine(),
        "packages": provenance.package_versions(),
        "bindings": bindings,
    }
    for experiment in [e for e in args.experiments.split(",") if e]:
        start = time.perf_counter()
        record = {
            **origin,
            "experiment": experiment,
            "devices": args.devices,
            "backend": jax.default_backend(),
            "arms": fit_experiment(experiment, args.devices, bindings),
            "variants": (
                variants(experiment, args.variants, bindings, args.settings)
                if args.variants
                else []
            ),
            "total_bytes": "code + arguments + outputs - aliased + temporaries, per device "
            "(XLA's memory analysis of the compiled train step)",
        }
        record["seconds"] = time.perf_counter() - start
        path = out_dir / f"{experiment}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print("\n".join(table(experiment, record["arms"], args.devices)))
        print(f"wrote {path} ({record['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
