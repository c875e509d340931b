"""launch/prefetch.py: batches built ahead in a thread, in step order, and a thread that
always ends."""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from launch.prefetch import Prefetcher


class Recorder:
    """``fn(step)``: a batch that is a pure function of the step, and the steps asked."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None):
        self.calls: list[int] = []
        self.delay, self.fail_at = delay, fail_at

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        self.calls.append(step)
        if self.delay:
            time.sleep(self.delay)
        if step == self.fail_at:
            raise ValueError(f"no batch for step {step}")
        return {"x": np.random.default_rng([7, step]).random((2, 3))}


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_yields_what_direct_calls_give_in_step_order():
    fn = Recorder()
    with Prefetcher(fn, 4, 12) as batches:
        got = [batches.get(step)["x"] for step in range(4, 12)]
    for step, x in zip(range(4, 12), got):
        np.testing.assert_array_equal(x, fn(step)["x"])
    assert fn.calls[:8] == list(range(4, 12))  # Each step built once, in order.
    with pytest.raises(ValueError, match="asked for step 12"):
        batches.get(12)


def test_steps_must_be_asked_in_order():
    with Prefetcher(Recorder(), 1, 10) as batches:
        batches.get(1)
        with pytest.raises(ValueError, match="asked for step 3; the next one is 2"):
            batches.get(3)
        assert batches.get(2)["x"].shape == (2, 3)


def test_builds_at_most_depth_ahead():
    fn = Recorder()
    batches = Prefetcher(fn, 1, 1000, depth=2)
    _wait_until(lambda: len(fn.calls) >= 3)
    time.sleep(0.3)
    # Two queued and one built, waiting for room: nothing more until a get.
    assert fn.calls == [1, 2, 3]
    batches.get(1)
    _wait_until(lambda: len(fn.calls) >= 4)
    time.sleep(0.1)
    assert fn.calls == [1, 2, 3, 4]
    batches.close()
    assert not batches.alive


def test_an_exception_reaches_the_consumer_at_its_step_and_ends_the_thread():
    batches = Prefetcher(Recorder(fail_at=3), 1, 10)
    batches.get(1), batches.get(2)
    with pytest.raises(ValueError, match="no batch for step 3"):
        batches.get(3)
    _wait_until(lambda: not batches.alive)
    assert not batches.alive
    with pytest.raises(RuntimeError, match="thread ended before step 4"):
        batches.get(4)
    batches.close()


def test_close_stops_a_thread_that_waits_or_builds():
    waiting = Prefetcher(Recorder(), 1, 10**9, depth=1)  # Soon blocked on a full queue.
    slow = Prefetcher(Recorder(delay=0.3), 1, 10**9)  # Inside fn when closed.
    time.sleep(0.1)
    started = time.monotonic()
    waiting.close()
    slow.close()
    assert not waiting.alive and not slow.alive
    assert time.monotonic() - started < 2.0
    names = [t.name for t in threading.enumerate()]
    assert "prefetch" not in names
    with pytest.raises(RuntimeError, match="after close"):
        waiting.get(1)


def test_a_with_block_closes_on_an_exception():
    with pytest.raises(KeyError):
        with Prefetcher(Recorder(), 1, 100) as batches:
            batches.get(1)
            raise KeyError("the training step failed")
    assert not batches.alive


def test_device_arrays_built_in_the_thread():
    """What the trainer prefetches: arrays placed on the devices from the thread."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def fn(step: int):
        local = np.full((4, 2), step, np.int32)
        return jax.make_array_from_process_local_data(sharding, local, (4, 2))

    with Prefetcher(fn, 1, 6) as batches:
        got = [int(batches.get(step)[0, 0]) for step in range(1, 6)]
    assert got == [1, 2, 3, 4, 5]
