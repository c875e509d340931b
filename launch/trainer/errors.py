"""What the trainer reports: the errors that stop a run (launch/run.py turns them into exit
codes) and its warnings on stderr."""

from __future__ import annotations

import sys


class CheckpointSaveFailed(Exception):
    """A checkpoint could not be written (a full disk, no permission to write, a storage
    error): training stops rather than go on without a restart point. launch/run.py exits
    74 (sysexits.h EX_IOERR) naming the directory and the cause."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient, update or evaluation: at once with
    `skip_nonfinite_steps` off, after `max_consecutive_skipped_steps` skipped steps in a
    row with it on, and always when an evaluation is non-finite."""


def warn(is_chief: bool, msg: str) -> None:
    """Prints `msg` as a warning on stderr, from the chief process only."""
    if is_chief:
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
