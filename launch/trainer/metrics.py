"""The metrics of a run: `MetricsLogger` (metrics.jsonl and TensorBoard, the per-step
metrics fetched once per log interval and checked finite) and the log interval's helpers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from launch.summary_writer import ScalarWriter

_SKIP_HINT = "Set train.skip_nonfinite_steps = True to skip such steps instead."


class StopTraining(Exception):
    """Why training must stop (the loop turns it into TrainingDiverged)."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(what)
        self.what, self.hint = what, hint


@dataclasses.dataclass
class _SkipCount:
    """Skipped (non-finite) steps: in all, and in a row up to `limit`."""

    limit: int
    total: int = 0
    consecutive: int = 0

    def add(self, finite: bool) -> bool:
        """Counts one step; True when it makes `limit` skipped steps in a row."""
        self.consecutive = 0 if finite else self.consecutive + 1
        self.total += not finite
        return self.consecutive >= self.limit


def format_values(values: dict[str, float]) -> str:
    """`values` as `name value, ...`, for messages."""
    return ", ".join(f"{k} {v}" for k, v in values.items())


def progress_losses(scalars: Mapping[str, float]) -> str:
    """The losses of a train record for the progress line, named as TensorBoard names them:
    `loss` is the per-target loss (comparable with the eval loss), and the training
    objective follows as `objective` where its normalization makes it another number (a
    sum for span corruption, sum / sqrt(count) for masked LM)."""
    text = f"loss {scalars['token_loss']:.4f}"
    if not np.isclose(scalars["loss"], scalars["token_loss"], rtol=1e-6, atol=0.0):
        text += f" | objective {scalars['loss']:.4f}"
    return text


class MetricsLogger:
    """metrics.jsonl and the TensorBoard scalars of one run, the per-step metrics still
    on the device (fetched together at the next log, so the host never waits on the
    device between logs) and the checks of the fetched steps."""

    def __init__(self, model_dir: str, *, enabled: bool, skip_nonfinite: bool, skip_limit: int):
        self.writer = ScalarWriter(model_dir, enabled=enabled)
        self.skip_nonfinite = skip_nonfinite
        self.skips = _SkipCount(skip_limit)
        self.steps: list[int] = []
        self.metrics: list[dict[str, jax.Array]] = []
        self.start_interval()

    @property
    def jsonl_path(self) -> str:
        return self.writer.jsonl_path

    def resume(self, step: int | None) -> None:
        """Drops records after the restored `step`; with none restored, every record an
        earlier try left (it died before its first checkpoint)."""
        if step is not None:
            self.writer.restart_at(step)
        elif epath.Path(self.writer.jsonl_path).exists():
            self.writer.restart_at(-1)

    def start_interval(self) -> None:
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.steps.append(step)
        self.metrics.append(metrics)
        self.interval_steps += 1

    def fetch(self) -> tuple[list[int], list[dict], float]:
        """(steps, their metrics on the host, seconds since the interval started)."""
        fetched = jax.device_get(self.metrics)
        steps, self.steps, self.metrics = self.steps, [], []
        return steps, fetched, time.perf_counter() - self.interval_start

    def check(self, steps: list[int], fetched: list[dict]) -> None:
        """Raises StopTraining for a non-finite step with skipping off, or too many skipped in a
        row with it on."""
        if not self.skip_nonfinite:
            for s, m in zip(steps, fetched, strict=True):
                if not m["finite"]:
                    what = (
                        f"non-finite loss or gradient at step {s}"
                        if m["update_finite"]
                        else f"non-finite parameters or optimizer state after the update "
                        f"of step {s} (the loss and gradient were finite)"
                    )
                    raise StopTraining(what, _SKIP_HINT)
            return
        for s, m in zip(steps, fetched, strict=True):
            if self.skips.add(bool(m["finite"])):
                raise StopTraining(
                    f"{self.skips.limit} consecutive non-finite steps skipped, the last at "
                    f"step {s} (train.max_consecutive_skipped_steps = {self.skips.limit})"
                )

    def train_scalars(self, fetched: list[dict], elapsed: float) -> dict[str, float]:
        """Means over the interval's finite steps (all of them if none was finite)."""
        good = [m for m in fetched if m["finite"]] or fetched
        scalars = {
            k: float(np.mean([m[k] for m in good]))
            for k in ("loss", "token_loss", "accuracy", "grad_norm")
        }
        scalars["param_norm"] = float(fetched[-1]["param_norm"])
        scalars["steps_per_sec"] = self.interval_steps / elapsed
        scalars["skipped_steps"] = self.skips.total
        return scalars

    def write(self, split: str, step: int, scalars: Mapping[str, float]) -> None:
        self.writer.write(split, step, scalars)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def cut_interval(logger: MetricsLogger) -> dict[str, Any]:
    """The metrics of the steps since the last log, fetched and checked (raising StopTraining),
    as JSON that keeps every value exactly (a float32 is exact as a Python float), with the
    interval's seconds so far."""
    steps, fetched, elapsed = logger.fetch()
    logger.check(steps, fetched)
    exact = [
        {k: [str(np.asarray(v).dtype), np.asarray(v).item()] for k, v in m.items()} for m in fetched
    ]
    return {"steps": steps, "metrics": exact, "elapsed_s": elapsed}


def resume_interval(logger: MetricsLogger, carried: Mapping[str, Any]) -> None:
    """Puts the steps `cut_interval` saved back into the logger's open interval, with
    their dtypes and their seconds, so that the next log record is the one an
    uninterrupted run writes."""
    for step, m in zip(carried["steps"], carried["metrics"], strict=True):
        logger.add(step, {k: np.asarray(v, dtype) for k, (dtype, v) in m.items()})
    logger.interval_start -= carried["elapsed_s"]
