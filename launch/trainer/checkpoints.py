"""Orbax checkpoints of a run: the managers and listings (also read by launch/pretrained.py)
and the trainer's `Checkpointer`, which saves only finite states, verifies checksums on
restore and falls back past damaged checkpoints."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from experiments.errors import ConfigError
from launch.summary_writer import join
from launch.trainer import run_folder
from launch.trainer.errors import CheckpointSaveFailed, warn
from launch.trainer.state import TrainState, checksum_record


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
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
    """An Orbax manager of the checkpoints in `directory` that keeps the newest `keep`, or
    with `read_only` one that only reads (it creates, saves and deletes nothing)."""
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


class Checkpointer:
    """Orbax checkpoints of the train state in `directory`, sharded as the state is (the
    abstract state carries the shardings, so a restore lays every array out as training
    does). Only states known finite are saved; a restore takes the newest checkpoint that
    restores, moving damaged newer ones aside. `read_only` (evaluation-only, another
    run's checkpoints) creates, saves, deletes and moves nothing: a damaged checkpoint is
    only skipped."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int,
        abstract_state: TrainState,
        state_finite: Callable[[TrainState], jax.Array],
        is_chief: bool,
        read_only: bool = False,
        state_checksums: Callable[[TrainState], list] | None = None,
    ):
        self.directory = directory
        self.abstract_state = abstract_state
        self.state_finite = state_finite
        # Checksums of the arrays, saved with each checkpoint and compared on restore: a
        # checkpoint whose data changed since (a flipped bit) is treated as damaged.
        self.state_checksums = state_checksums
        self.is_chief = is_chief
        self.read_only = read_only
        # The newest step saved or restored by this run: what a restart would resume from.
        self.last_good: int | None = None
        # The JSON saved beside the state of the checkpoint restored last.
        self.restored_meta: dict[str, Any] = {}
        self.manager = checkpoint_manager(directory, keep=keep, read_only=read_only)
        self._closed = False
        # The step being saved in the background, and the newest known complete.
        self._pending: int | None = None
        self._confirmed: int | None = None

    def save(
        self, step: int, state: TrainState, train_time: float, carried: dict | None = None
    ) -> None:
        """Saves `state` as step `step` (asynchronously: `close` waits). `carried`: the
        metrics of the log interval a preemption cut short, for the restart to finish."""
        meta = {"train_time_s": train_time}
        if carried:
            meta["carried_interval"] = carried
        if self.state_checksums is not None:
            meta["checksums"] = checksum_record(state, self.state_checksums(state))
        self._wait()  # The previous save, finished in the background, may have failed.
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        except Exception as e:  # orbax and tensorstore raise many types on a failed write.
            self._failed(step, e)
        self._pending, self.last_good = step, step

    def _wait(self) -> None:
        """Waits for the save under way; CheckpointSaveFailed if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed(self._pending, e)
        self._confirmed = self._pending if self._pending is not None else self._confirmed
        self._pending = None

    def _failed(self, step: int | None, error: BaseException) -> NoReturn:
        """A save failed: the manager is shut down (its background threads would keep the
        process alive) and CheckpointSaveFailed names the directory, the step and the
        cause; the last good checkpoint is the last one known complete."""
        self.last_good, self._pending, self._closed = self._confirmed, None, True
        try:
            self.manager.close()
        except Exception:  # The same failure, raised again: already being reported.
            pass
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        # tensorstore names the OS error by number: lead with its text (a full disk).
        code = re.search(r"os_error_code='(\d+)'", reason)
        cause = f"{os.strerror(int(code.group(1)))}: " if code else ""
        raise CheckpointSaveFailed(
            f"the checkpoint of step {step} could not be written to {self.directory} "
            f"({cause}{type(error).__name__}: {reason[:300]}); {self.describe_last_good()}"
        ) from error

    def close(self) -> None:
        if self._closed:
            return
        self._wait()
        self._closed = True
        self.manager.close()

    def describe_last_good(self) -> str:
        if self.last_good is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is step {self.last_good} in {self.directory}"

    def restore(self) -> tuple[TrainState, float, int] | None:
        """The newest checkpoint that restores, as (state, train_time_s, step); None if
        there is none.

        One that fails (a truncated file or garbled metadata, from a crash or a full disk
        while it was written) is reported; once an older one restores, the failed ones are
        moved aside (`<step>.corrupt`, a name orbax does not list, so that it saves the
        step again). If none restores, nothing is moved, since the cause may be a
        configuration these checkpoints do not fit, and a ConfigError names the directory
        (the manager is closed first).
        """
        failed: list[int] = []
        reasons: list[str] = []  # Reported only if an older checkpoint restores.
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, train_time = self.restore_step(step)
            except Exception as e:  # orbax and tensorstore raise many types on bad files.
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                # The first sentence: orbax goes on with advice for its own API.
                reason = re.split(r"\.\s+(?=[A-Z])", reason, maxsplit=1)[0][:300]
                reasons.append(f"{type(e).__name__}: {reason}")
                failed.append(step)
                continue
            if failed:
                for bad, reason in zip(failed, reasons, strict=True):
                    where = join(self.directory, str(bad))
                    warn(self.is_chief, f"checkpoint {where} cannot be restored ({reason})")
                if not self.read_only:
                    self._move_aside(failed)
                warn(self.is_chief, f"falling back to the checkpoint of step {step}")
            self.last_good = self._confirmed = step
            return state, train_time, step
        if failed:
            self.close()
            raise ConfigError(
                f"no checkpoint in {self.directory} can be restored (steps "
                f"{sorted(failed)}; step {failed[0]}: {reasons[0]}): damaged, or written by "
                "another configuration (model, optimizer); fix the configuration, or move "
                "that directory away to start over"
            )
        return None

    def restore_step(self, step: int) -> tuple[TrainState, float]:
        """(state, train_time_s) of one checkpoint; raises if it cannot be read or holds
        non-finite values (which no checkpoint written by this loop does)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self.abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        train_time = float(restored["meta"]["train_time_s"])
        saved = restored["meta"].get("checksums")
        if saved is not None and self.state_checksums is not None:
            state = restored["state"]
            now = checksum_record(state, self.state_checksums(state))
            changed = [path for path, sums in now.items() if saved.get(path) != sums]
            if changed:
                raise ValueError(
                    f"checksum mismatch: {len(changed)} array(s) differ from what was saved "
                    f"(the first: state{changed[0]})"
                )
        if not bool(self.state_finite(restored["state"])):
            raise ValueError("the state holds NaN or Inf values")
        self.restored_meta = dict(restored["meta"])
        return restored["state"], train_time

    def _move_aside(self, steps: list[int]) -> None:
        """Renames the checkpoints of `steps` to `<step>.corrupt` (kept for inspection) and
        makes the manager forget them."""
        if self.is_chief:
            for step in steps:
                path = join(self.directory, str(step))
                aside, n = f"{path}{run_folder.CORRUPT_SUFFIX}", 1
                while epath.Path(aside).exists():
                    aside, n = f"{path}{run_folder.CORRUPT_SUFFIX}.{n}", n + 1
                epath.Path(path).rename(aside)
                warn(self.is_chief, f"moved the damaged checkpoint {path} to {aside}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpoints moved aside")
        self.manager.reload()
