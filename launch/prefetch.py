"""Training batches built ahead, in a background thread, in step order.

``Prefetcher(fn, first, stop)`` calls ``fn(step)`` for ``step = first, first + 1, ...,
stop - 1`` in a thread, at most ``depth`` steps ahead of the consumer, which takes them
with ``get(step)`` in the same order. The trainer's ``fn`` is ``Trainer.train_batch``:
the task's host rows for the step (a pure function of (seed, step)) placed on the devices
with ``jax.make_array_from_process_local_data``, so the host's data work and the transfer
to the devices overlap the running step, as Flax's ``jax_utils.prefetch_to_device`` and
big_vision's threaded prefetch do. JAX may be called from any thread, and on several
hosts each host places only its own rows (no collective), so the thread needs nothing
more.

An exception in ``fn`` is raised by the ``get`` of its step, in the consumer's thread,
with its traceback; ``close()`` (or leaving a ``with`` block) stops the thread and waits
for it, also while ``fn`` is running or the queue is full, so no thread outlives a run,
whether it ends, stops early or fails.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

DEFAULT_DEPTH = 2  # Batches built ahead: one being consumed, one ready (big_vision's 2).
_POLL_S = 0.1  # How often a blocked thread looks whether it was closed.


class Prefetcher:
    """``fn(step)`` for ``first <= step < stop``, built ``depth`` ahead in a thread."""

    def __init__(
        self,
        fn: Callable[[int], Any],
        first: int,
        stop: int,
        *,
        depth: int = DEFAULT_DEPTH,
        name: str = "prefetch",
    ):
        if depth < 1:
            raise ValueError(f"Prefetcher: depth={depth} must be at least 1")
        self._fn = fn
        self._next = first
        self._stop = stop
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(first,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: tuple[int, Any, BaseException | None]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, first: int) -> None:
        for step in range(first, self._stop):
            if self._closed.is_set():
                return
            try:
                item = (step, self._fn(step), None)
            except BaseException as e:  # Raised again by get(), in the consumer's thread.
                self._put((step, None, e))
                return
            if not self._put(item):
                return

    def get(self, step: int) -> Any:
        """``fn(step)``; steps must be asked for in order, from ``first``."""
        if step != self._next or step >= self._stop:
            raise ValueError(
                f"Prefetcher: asked for step {step}; the next one is {self._next} "
                f"(steps {self._next}..{self._stop - 1} remain, in order)"
            )
        while True:
            if self._closed.is_set():
                raise RuntimeError("Prefetcher: get() after close()")
            try:
                got, value, error = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"Prefetcher: the thread ended before step {step}") from None
        assert got == step, (got, step)
        self._next = step + 1
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        """Stops the thread (it finishes the ``fn`` call under way) and drops what it
        built ahead."""
        self._closed.set()
        while self._thread.is_alive():
            try:  # Make room, in case the thread waits to put.
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL_S)
        while not self._queue.empty():
            self._queue.get_nowait()

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
