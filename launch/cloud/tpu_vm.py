"""Train on a Cloud TPU VM or pod slice with `gcloud compute tpus tpu-vm`.

  tpu_vm.py create     --name N --zone Z --accelerator_type v4-8 [--spot|--preemptible]
                       [--queued]
  tpu_vm.py setup      --name N --zone Z [--repo_url URL] [--ref REF]
  tpu_vm.py stage_data --name N --zone Z --src DIR|gs://... [--dest shared/data | --in_place]
  tpu_vm.py run        --name N --zone Z --accelerator_type v4-32 [--max_restarts 100]
                       -- RUN_PY_ARGS...
  tpu_vm.py logs       --name N --zone Z [--worker all|I] [--lines 50] [--fetch DIR]
  tpu_vm.py stop       --name N --zone Z
  tpu_vm.py delete     --name N --zone Z [--yes]

Every command is printed before it runs; `--dry_run` only prints. A pod slice (more than
one worker VM) runs the same launch/run.py command on every worker (`--worker=all`), and
the processes find each other through jax.distributed.initialize(): run.py's automatic
detection looks at environment variables that a gcloud-created TPU VM does not set
(TPU_WORKER_HOSTNAMES is GKE's), so on a pod slice this tool adds `--distributed=on`, and
JAX then reads the slice's workers from the TPU VM metadata server.

Preemption: on SIGTERM (a Spot TPU's shutdown, `stop`) launch/run.py saves a checkpoint at
a step all workers agree on and exits 75 (launch/preemption.py). `run` starts it inside a
restart loop on each worker that runs it again while it exits 75, unless the loop itself
was told to stop (`stop` signals the loop, which passes the SIGTERM on; a VM shutting down
signals every process) or it restarted `--max_restarts` times. A preempted Spot TPU is
gone with its VM: `create` then deletes what is left of it (a TPU VM in state PREEMPTED or
TERMINATED, a queued resource SUSPENDED or FAILED) and creates it again; `setup` and the
same `run` resume from the last checkpoint (MODEL_DIR on a disk that outlives the VM).
`--queued` asks for the TPU through a queued resource (`gcloud compute tpus
queued-resources create ... [--spot]`), which waits for capacity instead of failing.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path

from launch.cloud.common import (
    PREEMPTED_EXIT_CODE,
    Shell,
    jax_pin,
    run_main,
    split_run_args,
    with_distributed,
)

REPO = Path(__file__).resolve().parents[2]

GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
GCLOUD_QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]
# A TPU VM in these states cannot run again (a Spot or preemptible TPU taken back): `create`
# deletes it and creates it anew. The same for a queued resource whose TPU is gone.
GONE_STATES = {"PREEMPTED", "TERMINATED"}
QUEUED_GONE_STATES = {"SUSPENDING", "SUSPENDED", "FAILED"}
# Seconds between a preempted run.py's exit and its restart on the same worker.
RESTART_DELAY_S = 10
# Where run/logs/stop keep each worker's log and pid, inside the repository on the worker;
# runs/ is git-ignored, so a cloned checkout stays clean for run.json's dirty flag.
LOG_DIR = "runs/logs"
REMOTE_TARBALL = "amos-src.tar.gz"  # in the worker's home directory
# The runtime (TPU software version) Google documents for JAX on each generation.
RUNTIMES = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
}
DEFAULT_RUNTIME = "tpu-ubuntu2204-base"  # v4 and older


def accelerator_type(value: str) -> str:
    """argparse type: `v4-8`, `v5litepod-16`, `v5p-32`, `v6e-8`..."""
    if not re.fullmatch(r"v[0-9][a-z0-9]*-[0-9]+", value):
        raise argparse.ArgumentTypeError(f"not an accelerator type like v4-8: {value!r}")
    return value


def is_pod_slice(accel: str) -> bool:
    """Whether a slice spans several worker VMs. The number after the dash counts
    TensorCores (v2-v4, v5p) or chips (v5e, v6e); both kinds put at most 8 on one host, so
    v4-8, v5p-8, v5litepod-8 and v6e-8 are single hosts and anything larger is a pod slice."""
    return int(accel.rsplit("-", 1)[1]) > 8


def default_runtime(accel: str) -> str:
    return RUNTIMES.get(accel.rsplit("-", 1)[0], DEFAULT_RUNTIME)


def remote_path(value: str) -> str:
    """argparse type: a path on the workers relative to the home directory (ssh and scp
    start there). Limited to plain characters because it is also spliced into remote
    shell text; a leading `~/` is dropped."""
    value = value.removeprefix("~/")
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*", value) or ".." in value.split("/"):
        raise argparse.ArgumentTypeError(
            f"use a plain path relative to the home directory: {value!r}"
        )
    return value.rstrip("/")


def plain_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise argparse.ArgumentTypeError(f"letters, digits, '_', '.', '-' only: {value!r}")
    return value


def worker(value: str) -> str:
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"'all' or a worker index: {value!r}")
    return value


def env_binding(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", value, re.S):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE: {value!r}")
    return value


def non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
    return n


def python_name(value: str) -> str:
    if not re.fullmatch(r"python3(\.[0-9]+)?", value):
        raise argparse.ArgumentTypeError(f"expected python3 or python3.X: {value!r}")
    return value


# --- gcloud command lines -------------------------------------------------------------


def gcloud(args: argparse.Namespace, verb: str, *rest: str, group=GCLOUD_TPU) -> list[str]:
    cmd = [*group, verb, *rest, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
    """One remote shell command, run on every worker at once by default."""
    return gcloud(args, "ssh", args.name, f"--worker={worker}", "--command", command)


def scp(args: argparse.Namespace, src: str, dest: str, *, worker: str = "all", recurse=False):
    return gcloud(args, "scp", src, dest, f"--worker={worker}", *(["--recurse"] if recurse else []))


def install_commands(python: str, pin: str) -> list[str]:
    """The venv on a worker, as `make venv` builds it, plus the TPU wheel of the pinned
    jax (libtpu). The pinned jax needs Python >= 3.11; Ubuntu 22.04 images ship 3.10, so a
    missing interpreter is installed from apt first."""
    pip = ".venv/bin/python -m pip install --quiet"
    return [
        f"(command -v {python} >/dev/null || (sudo apt-get update -qq && "
        f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {python} {python}-venv))",
        f"(test -x .venv/bin/python || {python} -m venv .venv)",
        f"{pip} --upgrade pip",
        f"{pip} -r requirements.txt",
        f"{pip} {shlex.quote(f'jax[tpu]=={pin}')}",
        f"{pip} --no-deps -e .",
    ]


def restart_loop(train: list[str], max_restarts: int) -> str:
    """bash text that runs `train` (launch/run.py) and runs it again, after
    RESTART_DELAY_S, while it exits PREEMPTED_EXIT_CODE (stopped at a checkpoint), at most
    `max_restarts` times. A SIGTERM or SIGINT to the loop itself (`stop`, a VM shutting
    down) goes on to run.py as SIGTERM and ends the loop once run.py has exited, with its
    exit code. A signal interrupts `wait` before run.py has exited; `woke` makes it wait
    again, for run.py's own exit code (bash keeps it even if run.py ended meanwhile)."""
    code = PREEMPTED_EXIT_CODE
    return "; ".join(
        [
            "stop=0; woke=0; n=0; child=",
            'on_signal() { stop=1; woke=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null; }',
            "trap on_signal TERM INT",
            "while :",
            f"do {shlex.join(train)} & child=$!",
            '[ "$stop" = 0 ] || kill -TERM "$child"',
            'wait "$child"; rc=$?',
            'while [ "$woke" = 1 ]; do woke=0; wait "$child"; r=$?; [ "$r" = 127 ] || rc=$r; done',
            f'[ "$rc" = {code} ] && [ "$stop" = 0 ] && [ "$n" -lt {max_restarts} ] || exit "$rc"',
            "n=$((n + 1))",
            f'echo "$(date -u +%FT%TZ) launch/run.py stopped at a checkpoint (exit {code}): '
            f'restart $n of at most {max_restarts} in {RESTART_DELAY_S} s"',
            f"sleep {RESTART_DELAY_S}",
            f'[ "$stop" = 0 ] || exit {code}',
            "done",
        ]
    )


def remote_run_command(
    run_args: list[str],
    *,
    remote_dir: str,
    log_name: str,
    env: list[str] = (),
    max_restarts: int = 0,
) -> str:
    """The shell text each worker runs: start launch/run.py in its restart loop
    (`restart_loop`) detached (setsid + nohup, so it outlives the ssh session), its output
    in a log named after the worker's hostname, the loop's pid beside it; refuse to start
    while the previous run there is alive (it holds the TPU)."""
    train = [*(["env", *env] if env else []), ".venv/bin/python", "launch/run.py", *run_args]
    loop = ["bash", "-c", restart_loop(train, max_restarts)]
    base = f"{LOG_DIR}/{log_name}-$(hostname)"  # $(hostname) expands on the worker
    return (
        f"cd {shlex.quote(remote_dir)} && mkdir -p {LOG_DIR} && "
        f'if [ -f {base}.pid ] && kill -0 "$(cat {base}.pid)" 2>/dev/null; then '
        f'echo "$(hostname): a run is still going: pid $(cat {base}.pid)" >&2; exit 1; fi && '
        f"{{ setsid nohup {shlex.join(loop)} > {base}.log 2>&1 < /dev/null & "
        f"echo $! > {base}.pid; }} && "
        f'echo "$(hostname): started pid $(cat {base}.pid), log ~/{remote_dir}/{base}.log"'
    )


# --- subcommands ----------------------------------------------------------------------


def cmd_create(args: argparse.Namespace, sh: Shell) -> None:
    """Creates the TPU VM (through a queued resource with --queued), or reuses one of that
    name if it already exists; one that was preempted is deleted and created again."""
    if args.queued:
        _create_queued(args, sh)
        return
    found = sh.query(gcloud(args, "describe", args.name, "--format=value(acceleratorType,state)"))
    if found is None:
        sh.note(
            "dry run: the create below runs only if describe finds no such TPU VM, or one "
            f"in state {'/'.join(sorted(GONE_STATES))} (deleted first)"
        )
    elif found.returncode == 0:
        accel, state = ([*found.stdout.split(), "", ""])[:2]
        if accel and accel != args.accelerator_type:
            sys.exit(
                f"ERROR: {args.name} exists as {accel}, not {args.accelerator_type}: "
                "delete it or choose another --name"
            )
        if state not in GONE_STATES:
            print(f"{args.name} exists ({accel} {state}): reusing it", flush=True)
            return
        sh.note(f"{args.name} is {state} (taken back): deleting it to create it again")
        sh.run(gcloud(args, "delete", args.name, "--quiet"))
    cmd = gcloud(
        args,
        "create",
        args.name,
        f"--accelerator-type={args.accelerator_type}",
        f"--version={args.version or default_runtime(args.accelerator_type)}",
    )
    cmd += ["--spot"] if args.spot else ["--preemptible"] if args.preemptible else []
    sh.run(cmd)


def _create_queued(args: argparse.Namespace, sh: Shell) -> None:
    """A queued resource named --name whose one TPU VM (node) is named --name too: it waits
    in the queue for capacity (`queued-resources list` shows its state), and the other
    subcommands then address the node as usual."""
    found = sh.query(
        gcloud(args, "describe", args.name, "--format=value(state.state)", group=GCLOUD_QUEUED)
    )
    if found is None:
        sh.note(
            "dry run: the create below runs only if describe finds no such queued resource, "
            f"or one in state {'/'.join(sorted(QUEUED_GONE_STATES))} (deleted first, with its TPU)"
        )
    elif found.returncode == 0:
        state = found.stdout.strip()
        if state not in QUEUED_GONE_STATES:
            print(f"{args.name} exists as a queued resource ({state}): reusing it", flush=True)
            return
        sh.note(f"queued resource {args.name} is {state}: deleting it to create it again")
        sh.run(gcloud(args, "delete", args.name, "--force", "--quiet", group=GCLOUD_QUEUED))
    cmd = gcloud(
        args,
        "create",
        args.name,
        f"--node-id={args.name}",
        f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={args.version or default_runtime(args.accelerator_type)}",
        group=GCLOUD_QUEUED,
    )
    cmd += ["--spot"] if args.spot else []
    sh.run(cmd)


def cmd_setup(args: argparse.Namespace, sh: Shell) -> None:
    """Puts the repository on every worker and builds its venv there."""
    d = shlex.quote(args.remote_dir)
    if args.repo_url:
        fetch = (
            f"(test -d {d}/.git || git clone --quiet {shlex.quote(args.repo_url)} {d}) && "
            f"git -C {d} fetch --quiet origin {shlex.quote(args.ref or 'HEAD')} && "
            f"git -C {d} checkout --quiet --detach FETCH_HEAD"
        )
    else:
        # The committed tree at --ref: uncommitted edits do not travel, so say so first.
        status = sh.query(["git", "-C", str(REPO), "status", "--porcelain", "--untracked=no"])
        if status is not None and status.stdout.strip():
            sh.note("WARNING: uncommitted changes are not copied; commit them or use --ref")
        tarball = str(Path(tempfile.gettempdir()) / f"amos-{args.name}.tar.gz")
        ref = args.ref or "HEAD"
        sh.run(["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={tarball}", ref])
        sh.run(scp(args, tarball, f"{args.name}:{REMOTE_TARBALL}"))
        fetch = f"mkdir -p {d} && tar -xzf {REMOTE_TARBALL} -C {d} && rm -f {REMOTE_TARBALL}"
    steps = [fetch, f"cd {d}", *install_commands(args.python, jax_pin())]
    sh.run(ssh(args, " && ".join(steps)))


def cmd_stage_data(args: argparse.Namespace, sh: Shell) -> None:
    """Copies a data directory to every worker (each host reads its own rows of every
    batch, so each needs the data), or checks a gs:// one that tfds can read in place."""
    src = args.src.rstrip("/")
    if args.in_place:
        sh.run(["gcloud", "storage", "ls", src])
        sh.note(f"left in place; tfds reads it there: --gin.DATA_DIR=\"'{src}'\"")
        return
    dest = f"{args.dest}/{src.rsplit('/', 1)[-1]}"
    if src.startswith("gs://"):
        # Each worker pulls from Cloud Storage itself, with the TPU VM's service account.
        sync = shlex.join(["gcloud", "storage", "rsync", "--recursive", src, dest])
        sh.run(ssh(args, f"mkdir -p {shlex.quote(dest)} && {sync}"))
    else:
        sh.run(ssh(args, f"mkdir -p {shlex.quote(args.dest)}"))
        sh.run(scp(args, src, f"{args.name}:{args.dest}/", recurse=True))
    sh.note(f"on each worker: ~/{dest}")


def cmd_run(args: argparse.Namespace, sh: Shell) -> None:
    """Starts the same launch/run.py command on every worker, in the background."""
    accel = args.accelerator_type
    if accel is None:  # ask gcloud what this TPU VM is
        found = sh.query(gcloud(args, "describe", args.name, "--format=value(acceleratorType)"))
        if found.returncode != 0:
            sys.exit(f"ERROR: cannot describe {args.name}: {found.stderr.strip()}")
        accel = accelerator_type(found.stdout.strip())
    run_args = with_distributed(args.run_args, "on") if is_pod_slice(accel) else args.run_args
    command = remote_run_command(
        run_args,
        remote_dir=args.remote_dir,
        log_name=args.log_name,
        env=args.env,
        max_restarts=args.max_restarts,
    )
    sh.run(ssh(args, command))


def cmd_logs(args: argparse.Namespace, sh: Shell) -> None:
    """Shows the end of each worker's log, every line tagged with its worker's hostname,
    or copies the logs (one file per worker) into --fetch."""
    logs = f"{args.remote_dir}/{LOG_DIR}/{args.log_name}-*.log"
    if args.fetch:
        sh.run(["mkdir", "-p", args.fetch])
        sh.run(scp(args, f"{args.name}:{logs}", f"{args.fetch}/", worker=args.worker))
        return
    log = f"{shlex.quote(args.remote_dir)}/{LOG_DIR}/{args.log_name}-$(hostname).log"
    sh.run(ssh(args, f'tail -n {args.lines} {log} | sed "s/^/$(hostname): /"', args.worker))


def cmd_stop(args: argparse.Namespace, sh: Shell) -> None:
    """SIGTERM to each worker's restart loop, which passes it on to launch/run.py: that
    saves a checkpoint (the same step on every worker) and exits; nothing restarts."""
    pid = f"{shlex.quote(args.remote_dir)}/{LOG_DIR}/{args.log_name}-$(hostname).pid"
    sh.run(
        ssh(
            args,
            f'kill "$(cat {pid})" && echo "$(hostname): stopping (run.py saves a checkpoint '
            'first; `logs` shows when it is done)"',
        )
    )


def cmd_delete(args: argparse.Namespace, sh: Shell) -> None:
    sh.run(gcloud(args, "delete", args.name, *(["--quiet"] if args.yes else [])))


COMMANDS = {
    "create": cmd_create,
    "setup": cmd_setup,
    "stage_data": cmd_stage_data,
    "run": cmd_run,
    "logs": cmd_logs,
    "stop": cmd_stop,
    "delete": cmd_delete,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="the TPU VM's name")
    common.add_argument("--zone", required=True, help="e.g. us-central2-b")
    common.add_argument("--project", default=None, help="default: gcloud's configured project")
    common.add_argument("--dry_run", action="store_true", help="print the commands, run none")
    common.add_argument(
        "--remote_dir",
        type=remote_path,
        default="amos",
        help="the repository on each worker, relative to the home directory (default: amos)",
    )
    common.add_argument(
        "--log_name", type=plain_name, default="run", help="run/logs/stop: log and pid name"
    )
    parser = argparse.ArgumentParser(
        prog="launch/cloud/tpu_vm.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", parents=[common], help="create the TPU VM (or reuse it)")
    p.add_argument("--accelerator_type", type=accelerator_type, required=True)
    p.add_argument(
        "--version",
        default=None,
        help="TPU runtime; default by generation: "
        + ", ".join(f"{k} {v}" for k, v in RUNTIMES.items())
        + f", else {DEFAULT_RUNTIME}",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="a Spot TPU (cheaper, can stop)")
    kind.add_argument("--preemptible", action="store_true", help="a preemptible TPU")
    p.add_argument(
        "--queued",
        action="store_true",
        help="request it as a queued resource (waits for capacity; with --spot, a Spot one)",
    )

    p = sub.add_parser("setup", parents=[common], help="copy the repository, build the venv")
    p.add_argument(
        "--repo_url",
        default=None,
        help="git clone this on every worker instead of copying a `git archive` of this "
        "checkout (a clone keeps run.json's git revision; a copied tree has none)",
    )
    p.add_argument("--ref", default=None, help="commit, branch or tag (default: HEAD)")
    p.add_argument(
        "--python",
        type=python_name,
        default="python3.11",
        help="the interpreter for the workers' venv (the pinned jax needs >= 3.11)",
    )

    p = sub.add_parser("stage_data", parents=[common], help="copy data to every worker")
    p.add_argument("--src", required=True, help="a local directory or gs://bucket/path")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dest",
        type=remote_path,
        default="shared/data",
        help="parent directory on each worker (default shared/data: ../shared/data from "
        "the repository, where the text configs' CORPUS_PATH points)",
    )
    where.add_argument(
        "--in_place", action="store_true", help="gs:// only: copy nothing, check it exists"
    )

    p = sub.add_parser("run", parents=[common], help="start launch/run.py on every worker")
    p.add_argument(
        "--accelerator_type",
        type=accelerator_type,
        default=None,
        help="decides single host vs pod slice (default: asked from gcloud describe)",
    )
    p.add_argument(
        "--env", type=env_binding, action="append", default=[], help="NAME=VALUE for run.py"
    )
    p.add_argument(
        "--max_restarts",
        type=non_negative,
        default=100,
        help=f"rerun run.py on a worker at most this often when it exits "
        f"{PREEMPTED_EXIT_CODE} (stopped at a checkpoint by a SIGTERM); 0: never",
    )

    p = sub.add_parser("logs", parents=[common], help="show or fetch the workers' logs")
    p.add_argument("--worker", type=worker, default="all", help="'all' (default) or an index")
    p.add_argument("--lines", type=int, default=50)
    p.add_argument("--fetch", default=None, help="copy the log files into this local directory")

    sub.add_parser("stop", parents=[common], help="stop the run on every worker")

    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses `tool args -- run.py args`; usage errors exit with status 2."""
    mine, run_args = split_run_args(argv)
    parser = build_parser()
    args = parser.parse_args(mine)
    args.run_args = run_args
    if args.command == "run":
        if not run_args:
            parser.error("run: give launch/run.py's arguments after --, e.g. -- --gin_file=...")
        if args.dry_run and args.accelerator_type is None:
            parser.error("run --dry_run needs --accelerator_type (a real run asks gcloud)")
    elif run_args:
        parser.error(f"{args.command} takes no launch/run.py arguments (after --)")
    if args.command == "stage_data" and args.in_place and not args.src.startswith("gs://"):
        parser.error("--in_place is for gs:// sources only")
    if args.command == "create" and args.queued and args.preemptible:
        parser.error("--queued takes --spot (a queued resource has no preemptible tier)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sh = Shell(dry_run=args.dry_run)
    return run_main(lambda a: COMMANDS[a.command](a, sh), args)


if __name__ == "__main__":
    sys.exit(main())
