"""Orbax checkpoint managers and listings, shared by the trainer (launch/train.py) and the
fine-tuning reader (launch/pretrained.py)."""

from __future__ import annotations

import contextlib
import logging

import orbax.checkpoint as ocp
from etils import epath


@contextlib.contextmanager
def quiet_absl():
    """Silences absl's warnings meanwhile (orbax's 'Given directory is read only', which
    a read-only checkpoint manager logs by design)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_manager(directory: str, *, keep: int, read_only: bool) -> ocp.CheckpointManager:
    if not read_only:
        return ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    with quiet_absl():
        return ocp.CheckpointManager(directory, options=options)


def checkpoint_steps(directory: str) -> list[int]:
    """The steps of the finished checkpoints in `directory` (orbax's list: one being
    written is not among them), read-only; [] if there is no such directory."""
    if not epath.Path(directory).is_dir():
        return []
    manager = checkpoint_manager(directory, keep=1, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()
