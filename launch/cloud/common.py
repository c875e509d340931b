"""What the launch tools share: the jax pin, the `--` split and a printing command runner."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements.txt"

# launch/run.py's exit code for a run that a SIGTERM or SIGINT stopped at a checkpoint
# (launch/preemption.py, which imports only the standard library): rerun it to resume.
from launch.preemption import EXIT_CODE as PREEMPTED_EXIT_CODE  # noqa: E402, F401


def jax_pin(requirements: Path = REQUIREMENTS) -> str:
    """The version in requirements.txt's `jax==X` line, so that the accelerator wheel
    (`jax[tpu]`, `jax[cuda12]`) matches the jax and jaxlib the CPU venv is tested with."""
    for line in requirements.read_text().splitlines():
        m = re.match(r"\s*jax\s*==\s*([^\s#;]+)", line)
        if m:
            return m.group(1)
    raise ValueError(f"no 'jax==VERSION' line in {requirements}")


def split_run_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(tool arguments, run.py arguments): everything after the first `--` goes to
    launch/run.py untouched, so its flags never clash with the tool's."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def fraction(value: str) -> str:
    """argparse type for XLA_PYTHON_CLIENT_MEM_FRACTION: the share of each GPU's memory JAX
    reserves when it starts (0.75 unless set)."""
    try:
        ok = 0.0 < float(value) <= 1.0
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"a fraction in (0, 1]: {value!r}")
    return value


def with_distributed(run_args: Sequence[str], mode: str) -> list[str]:
    """run.py's arguments with `--distributed=MODE` added unless the user chose one."""
    if any(a == "--distributed" or a.startswith("--distributed=") for a in run_args):
        return list(run_args)
    return [*run_args, f"--distributed={mode}"]


class Shell:
    """Prints each command as one shell line (shlex.join, so it can be pasted), then runs
    it unless this is a dry run. Output streams through: nothing is captured."""

    def __init__(self, dry_run: bool, cwd: Path | None = None):
        self.dry_run = dry_run
        self.cwd = cwd

    def note(self, text: str) -> None:
        """A comment line between the commands (still valid shell when pasted)."""
        print(f"# {text}", flush=True)

    def run(self, argv: Sequence[str]) -> None:
        print(shlex.join(argv), flush=True)
        if not self.dry_run:
            subprocess.run(list(argv), check=True, cwd=self.cwd)

    def query(self, argv: Sequence[str]) -> subprocess.CompletedProcess | None:
        """Runs a read-only command whose answer decides what comes next, capturing its
        output; None in a dry run, which runs nothing."""
        print(shlex.join(argv), flush=True)
        if self.dry_run:
            return None
        return subprocess.run(list(argv), cwd=self.cwd, capture_output=True, text=True)


def run_main(body, args) -> int:
    """Calls body(args); a failing command ends the tool with that command's exit code."""
    try:
        body(args)
    except subprocess.CalledProcessError as e:
        print(f"ERROR: exit {e.returncode}: {shlex.join(e.cmd)}", file=sys.stderr)
        return e.returncode or 1
    except FileNotFoundError as e:  # e.g. gcloud or sbatch not installed
        print(f"ERROR: {e}", file=sys.stderr)
        return 127
    return 0
