"""Train on several GPU nodes under SLURM: write an sbatch script and submit it.

  slurm.py --nodes 2 --gpus_per_node 8 [--partition P] [--account A] [--time 04:00:00]
           [--job_name amos] [--output PATH] [--error PATH] [--cpus_per_task C]
           [--sbatch_option=--qos=high ...] [--script PATH] [--dry_run] -- RUN_PY_ARGS...

`--dry_run` prints the script and the commands that would write and submit it. The
script runs `srun ... launch/run.py ... --distributed=on`, one task per node: each
process drives all the GPUs of its node, as on a single GPU machine, so the input
pipeline (TensorFlow, for the tfds data) runs once per node rather than once per GPU.
jax.distributed.initialize() reads SLURM_* to find the coordinator (first node), the
process count and this process's id; it would also give each process only the GPU
numbered SLURM_LOCALID (0 with one task per node), so the script sets
JAX_LOCAL_DEVICE_IDS to all of the node's GPUs. The repository, its venv and MODEL_DIR
must be on a file system every node sees at the same path.

Time limits and preemption: the job asks SLURM for a SIGTERM to its tasks
`--signal_seconds` (300) before the time limit (`#SBATCH --signal=TERM@300`), on which
run.py saves a checkpoint at a step all processes agree on and exits 75 (see
launch/preemption.py); the script then requeues the job (`scontrol requeue`, allowed by
`#SBATCH --requeue`), which resumes from that checkpoint when it runs again, its log
appended to the same file. The same happens when SLURM or anyone else sends the tasks
SIGTERM (a preemption with a grace time). `--no_requeue` leaves the job ended instead.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from launch.cloud.common import (
    PREEMPTED_EXIT_CODE,
    Shell,
    fraction,
    run_main,
    split_run_args,
    with_distributed,
)

REPO = Path(__file__).resolve().parents[2]


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value!r}")
    return n


def one_word(value: str) -> str:
    """argparse type for what goes on an `#SBATCH` line: whitespace (a newline above all)
    would end the option and put the rest into the script as shell text."""
    if not value or re.search(r"\s", value):
        raise argparse.ArgumentTypeError(f"no spaces or newlines: {value!r}")
    return value


def signal_seconds(value: str) -> int:
    """argparse type: SLURM's `--signal=SIG@TIME` takes 0 to 65535 seconds."""
    n = int(value)
    if not 0 < n <= 65535:
        raise argparse.ArgumentTypeError(f"seconds in 1..65535: {value!r}")
    return n


def sbatch_option(value: str) -> str:
    value = one_word(value)
    if not value.startswith("-"):
        raise argparse.ArgumentTypeError(f"an sbatch option like --qos=high: {value!r}")
    return value


def default_output() -> str:
    return str(REPO / "runs" / "slurm" / "%x-%j.out")  # %x job name, %j job id


def render_script(args: argparse.Namespace) -> str:
    """The sbatch script's text."""
    repo = str(REPO)
    sbatch = [
        f"--job-name={args.job_name}",
        f"--nodes={args.nodes}",
        "--ntasks-per-node=1",
        f"--gres=gpu:{args.gpus_per_node}",
        f"--time={args.time}",
        f"--chdir={repo}",
        f"--output={args.output}",
    ]
    sbatch += [f"--error={args.error}"] if args.error else []
    sbatch += [f"--partition={args.partition}"] if args.partition else []
    sbatch += [f"--account={args.account}"] if args.account else []
    sbatch += [f"--cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else []
    # SIGTERM to the tasks (not the batch shell) before the time limit; a requeued job
    # appends to its log instead of truncating it (the job id, %j, stays the same).
    sbatch += [f"--signal=TERM@{args.signal_seconds}", "--open-mode=append"]
    sbatch += [] if args.no_requeue else ["--requeue"]
    sbatch += args.sbatch_option

    # srun gets --cpus-per-task itself too: since SLURM 22.05 a step does not inherit it.
    srun = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    srun += [f"--cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else []
    python = str(REPO / args.venv / "bin" / "python")
    train = [*srun, python, "launch/run.py", *with_distributed(args.run_args, "on")]
    env = {"JAX_LOCAL_DEVICE_IDS": ",".join(str(i) for i in range(args.gpus_per_node))}
    if args.mem_fraction is not None:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = args.mem_fraction
    code = PREEMPTED_EXIT_CODE
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {opt}" for opt in sbatch),
        "# Written by launch/cloud/slurm.py. One task per node, each driving all the",
        "# node's GPUs; jax.distributed.initialize() finds the others through SLURM_*.",
        "set -uo pipefail",
        f"cd {shlex.quote(repo)} || exit 1",
        "# Without this JAX would give each process only GPU number SLURM_LOCALID.",
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
        'echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_JOB_NUM_NODES '
        'nodes: $SLURM_JOB_NODELIST"',
        shlex.join(train),
        "status=$?",
    ]
    if args.no_requeue:
        lines.append('exit "$status"')
    else:
        lines += [
            f"# run.py exits {code} when a SIGTERM (--signal above, or a preemption) stopped",
            "# it at a checkpoint: requeue the job, which resumes from there.",
            f'if [ "$status" -eq {code} ]; then',
            f'  echo "job $SLURM_JOB_ID: run.py stopped at a checkpoint (exit {code}): '
            'requeueing it"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "fi",
            'exit "$status"',
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/cloud/slurm.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--nodes", type=positive, required=True)
    parser.add_argument("--gpus_per_node", type=positive, required=True)
    parser.add_argument("--partition", type=one_word, default=None)
    parser.add_argument("--account", type=one_word, default=None)
    parser.add_argument("--time", type=one_word, default="04:00:00", help="the time limit")
    parser.add_argument("--job_name", type=one_word, default="amos")
    parser.add_argument(
        "--output",
        type=one_word,
        default=default_output(),
        help="the job's log (default: runs/slurm/%%x-%%j.out in the repository)",
    )
    parser.add_argument("--error", type=one_word, default=None, help="default: into --output")
    parser.add_argument(
        "--cpus_per_task",
        type=positive,
        default=None,
        help="CPUs for each node's one process (it feeds all the node's GPUs: give it most "
        "of the node's cores; SLURM's default is 1)",
    )
    parser.add_argument(
        "--sbatch_option",
        type=sbatch_option,
        action="append",
        default=[],
        help="any other #SBATCH option, e.g. --sbatch_option=--qos=high (repeat)",
    )
    parser.add_argument(
        "--signal_seconds",
        type=signal_seconds,
        default=300,
        help="SIGTERM to the tasks this many seconds before the time limit, for run.py to "
        "save a checkpoint and exit 75 (default 300: leave time for the slowest save)",
    )
    parser.add_argument(
        "--no_requeue",
        action="store_true",
        help="do not requeue the job when run.py stopped at a checkpoint (exit 75)",
    )
    parser.add_argument(
        "--mem_fraction", type=fraction, default=None, help="XLA_PYTHON_CLIENT_MEM_FRACTION"
    )
    parser.add_argument("--venv", type=one_word, default=".venv", help="in the repository")
    parser.add_argument(
        "--script",
        type=one_word,
        default=None,
        help="where to write the script (default: runs/slurm/JOB_NAME.sbatch)",
    )
    parser.add_argument("--dry_run", action="store_true", help="print the script, submit none")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    mine, run_args = split_run_args(argv)
    parser = build_parser()
    args = parser.parse_args(mine)
    args.run_args = run_args
    if not run_args:
        parser.error("give launch/run.py's arguments after --, e.g. -- --gin_file=...")
    if re.search(r"\s", str(REPO)):
        parser.error(f"the repository path has a space, which #SBATCH --chdir cannot hold: {REPO}")
    if args.script is None:
        args.script = str(REPO / "runs" / "slurm" / f"{args.job_name}.sbatch")
    args.script = str(Path(args.script).resolve())
    return args


def submit(args: argparse.Namespace) -> None:
    sh = Shell(dry_run=args.dry_run)
    script = render_script(args)
    # SLURM does not create the log's directory; a job whose log cannot open fails silently.
    # Relative log paths are relative to the job's --chdir, the repository.
    logs = [REPO / p for p in (args.output, args.error) if p]
    dirs = sorted({str(p.parent) for p in [*logs, Path(args.script)]})
    if args.dry_run:
        print(script, end="", flush=True)
        sh.note(f"the script above, written to {args.script}, then:")
    sh.run(["mkdir", "-p", *dirs])
    if not args.dry_run:
        Path(args.script).write_text(script)
        sh.note(f"wrote {args.script}")
    sh.run(["sbatch", args.script])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(submit, args)


if __name__ == "__main__":
    sys.exit(main())
