"""Train on one GPU machine: one launch/run.py process that drives every local GPU.

  gpu_node.py --setup                          # venv + jax[cuda12]==<requirements.txt pin>
  gpu_node.py [--gpus 0,1] [--mem_fraction 0.9 | --no_preallocate] -- RUN_PY_ARGS...

Run from anywhere; the commands run in the repository root. Every command is printed
before it runs; `--dry_run` only prints. JAX sees all GPUs the process may use, and
run.py puts them all on the `data` axis of its mesh, so BATCH_SIZE must divide by their
number. Memory: JAX reserves 75% of each GPU's memory when it starts; `--mem_fraction F`
sets XLA_PYTHON_CLIENT_MEM_FRACTION=F (e.g. 0.9 for a larger batch), `--no_preallocate`
sets XLA_PYTHON_CLIENT_PREALLOCATE=false (allocate as needed, for a GPU shared with
other processes); without either flag, values already in the environment pass through.
run.py gets `--distributed=off` (unless its arguments choose), so a shell inside a
multi-task SLURM allocation does not make it wait for processes that never start.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from launch.cloud.common import (
    Shell,
    fraction,
    jax_pin,
    run_main,
    split_run_args,
    with_distributed,
)

REPO = Path(__file__).resolve().parents[2]

CHECK_GPUS = (
    "import jax; d = jax.devices(); print(d); "
    'assert d[0].platform == "gpu", "JAX sees no GPU: check the driver and CUDA_VISIBLE_DEVICES"'
)


def gpu_list(value: str) -> str:
    if not re.fullmatch(r"[0-9]+(,[0-9]+)*", value):
        raise argparse.ArgumentTypeError(f"comma-separated GPU indices like 0,1: {value!r}")
    return value


def setup_commands(venv: str, python: str, cuda: str, pin: str) -> list[list[str]]:
    """`make venv`'s steps plus the CUDA wheels of the pinned jax, then a check that JAX
    sees a GPU (a CPU-only jaxlib would otherwise train, slowly, without complaint)."""
    py = f"{venv}/bin/python"
    pip = [py, "-m", "pip", "install", "--quiet"]
    cmds = [] if (REPO / py).exists() else [[python, "-m", "venv", venv]]
    return cmds + [
        [*pip, "--upgrade", "pip"],
        [*pip, "-r", "requirements.txt"],
        [*pip, f"jax[{cuda}]=={pin}"],
        [*pip, "--no-deps", "-e", "."],
        [py, "-c", CHECK_GPUS],
    ]


def run_command(args: argparse.Namespace) -> list[str]:
    env = []
    if args.gpus is not None:
        env.append(f"CUDA_VISIBLE_DEVICES={args.gpus}")
    if args.mem_fraction is not None:
        env.append(f"XLA_PYTHON_CLIENT_MEM_FRACTION={args.mem_fraction}")
    if args.no_preallocate:
        env.append("XLA_PYTHON_CLIENT_PREALLOCATE=false")
    run_args = with_distributed(args.run_args, "off")
    return [*(["env", *env] if env else []), f"{args.venv}/bin/python", "launch/run.py", *run_args]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/cloud/gpu_node.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--setup", action="store_true", help="build the venv with CUDA jax")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run none")
    parser.add_argument("--venv", default=".venv", help="relative to the repository")
    parser.add_argument("--python", default="python3", help="creates the venv (>= 3.11)")
    parser.add_argument(
        "--cuda", choices=["cuda12", "cuda13"], default="cuda12", help="the jax extra"
    )
    parser.add_argument("--gpus", type=gpu_list, default=None, help="CUDA_VISIBLE_DEVICES")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--mem_fraction", type=fraction, default=None)
    memory.add_argument("--no_preallocate", action="store_true")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    mine, run_args = split_run_args(argv)
    parser = build_parser()
    args = parser.parse_args(mine)
    args.run_args = run_args
    if not args.setup and not run_args:
        parser.error("nothing to do: give --setup and/or launch/run.py's arguments after --")
    return args


def launch(args: argparse.Namespace) -> None:
    sh = Shell(dry_run=args.dry_run, cwd=REPO)
    sh.note(f"in {shlex.quote(str(REPO))}")
    if args.setup:
        for cmd in setup_commands(args.venv, args.python, args.cuda, jax_pin()):
            sh.run(cmd)
    if args.run_args:
        sh.run(run_command(args))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(launch, args)


if __name__ == "__main__":
    sys.exit(main())
