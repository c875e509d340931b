"""The JAX profiler's window over the steps of `train.profile_steps`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax


class ProfileWindow:
    """The JAX profiler around the steps of `profile_steps` = (start, count): tracing
    starts before step `start` (or the first step of a run resumed inside the window)
    and stops once step start + count - 1 has run on the device, writing the trace
    (`*.xplane.pb`, `*.trace.json.gz`) under `log_dir/plugins/profile/<time>/`."""

    def __init__(self, window: Sequence[int], log_dir: str, say: Callable[[str], None]):
        start, count = window
        self.first, self.last = start, start + count - 1
        self.enabled = count > 0
        self.log_dir, self.say = log_dir, say
        self.active = False

    def before(self, step: int) -> None:
        if self.enabled and not self.active and self.first <= step <= self.last:
            jax.profiler.start_trace(self.log_dir)
            self.active = True
            self.enabled = False  # One window per run.
            self.say(f"profiling steps {step}..{self.last} into {self.log_dir}")

    def annotate(self, step: int) -> contextlib.AbstractContextManager:
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def after(self, step: int, state: Any) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
