"""Preemption (launch/preemption.py): SIGTERM or SIGINT stops training at a step every
process agrees on, with a checkpoint there; run.py marks run.json "preempted", releases the
lock and exits 75; the same command resumes, ending bit-identical to an uninterrupted run.

The loop's stop is driven here by a fake watch (a stop at a chosen step), by real signals
in the test's process (run.main), by SIGTERM to a launch/run.py process, and, marked slow,
by SIGTERM to one as PID 1 in a PID namespace (as in a container) and by one signal to one
of two launch/run.py processes of a 2-process run (jax.distributed on CPU, 2 devices each).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch import preemption
from launch import run as run_cli
from launch import trainer as train_lib
from tests.launch.harness_helpers import (
    EVERY_20,
    REPO,
    TIMING,
    checkpoint_steps,
    env_with,
    metrics,
    numbers,
    run_cmd,
)


def final_eval(model_dir: Path) -> dict:
    result = json.loads((model_dir / "final.json").read_text())["eval"]
    return {k: v for k, v in result.items() if k not in TIMING}


class StopAt:
    """A watch that agrees to stop after step `step` (`before`: before the first step)."""

    def __init__(self, step: int | None = None, before: bool = False):
        self.step, self.stop_before, self.asked = step, before, []

    def before(self, start: int) -> bool:
        return self.stop_before

    def reached(self, step: int) -> bool:
        self.asked.append(step)
        return step == self.step


def run_in(trainer, model_dir: Path, watch=None) -> dict:
    return trainer.replace(model_dir=str(model_dir)).run(preemption=watch)


# ---------------------------------------------------------------- the loop's stop
def test_stops_within_log_intervals_resume_to_the_uninterrupted_run(
    trainer, reference: Path, tmp_path: Path
):
    d = tmp_path / "run"
    # 15 and 17: inside the interval 11..20 (logs every 10), the second one resumed from the
    # first; 33: inside 31..40. Each saves its step; the cut interval's metrics travel in
    # the checkpoint, so that the record at 20 (and 40) is the uninterrupted run's.
    for stop, checkpoints in [(15, [10, 15]), (17, [10, 15, 17]), (33, [17, 20, 33])]:
        with pytest.raises(preemption.Preempted) as stopped:
            run_in(trainer, d, StopAt(stop))
        assert stopped.value.step == stop and stopped.value.saved
        assert f"the last good checkpoint is step {stop}" in str(stopped.value)
        assert checkpoint_steps(d) == checkpoints
        assert max(r["step"] for r in metrics(d)) < stop  # No record for the cut interval.
        assert not (d / "final.json").exists()
    meta = json.loads((d / "checkpoints" / "33" / "meta" / "metadata").read_text())
    assert meta["carried_interval"]["steps"] == [31, 32, 33]
    watch = StopAt(None)
    assert run_in(trainer, d, watch)["finished"]
    assert watch.asked == list(range(34, 61))  # Asked after every step of the try.
    assert numbers(d) == numbers(reference)
    assert final_eval(d) == final_eval(reference)
    assert checkpoint_steps(d) == [33, 40, 60]  # The newest 3 (keep_checkpoints).


def test_a_stop_at_a_checkpoint_step_saves_it_once_and_at_the_last_step_finishes(
    trainer, reference: Path, tmp_path: Path
):
    d = tmp_path / "run"
    with pytest.raises(preemption.Preempted, match="preempted at step 20"):
        run_in(trainer, d, StopAt(20))
    assert checkpoint_steps(d) == [10, 20]
    meta = json.loads((d / "checkpoints" / "20" / "meta" / "metadata").read_text())
    assert "carried_interval" not in meta  # A log step: its record is written as usual.
    assert max(r["step"] for r in metrics(d)) == 20
    # A notice agreed on at the last step does not stop a run that is done anyway.
    assert run_in(trainer, d, StopAt(60))["finished"]
    assert numbers(d) == numbers(reference)


def test_a_notice_before_the_first_step_stops_there_without_saving(
    trainer, reference: Path, tmp_path: Path
):
    d = tmp_path / "run"
    with pytest.raises(preemption.Preempted) as stopped:
        run_in(trainer, d, StopAt(before=True))
    assert (stopped.value.step, stopped.value.saved) == (0, False)
    assert "no checkpoint was written" in str(stopped.value)
    assert checkpoint_steps(d) == []
    with pytest.raises(preemption.Preempted):
        run_in(trainer, d, StopAt(25))
    with pytest.raises(preemption.Preempted) as stopped:
        run_in(trainer, d, StopAt(before=True))
    assert (stopped.value.step, stopped.value.saved) == (25, False)
    assert checkpoint_steps(d) == [10, 20, 25]
    assert run_in(trainer, d)["finished"]
    assert numbers(d) == numbers(reference)


def test_the_watch_of_one_process_is_a_flag_set_by_its_handlers():
    previous = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    with preemption.Watch() as watch:
        assert watch.active and not watch.before(0) and not watch.reached(1)
        for signum in preemption.SIGNALS:
            assert signal.getsignal(signum) == watch._handle
        signal.raise_signal(signal.SIGINT)  # No KeyboardInterrupt: a flag.
        signal.raise_signal(signal.SIGTERM)  # The second one changes nothing.
        assert watch.reached(2) and watch.before(2) and watch.signal == "SIGINT"
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == previous


# ---------------------------------------------------------------- run.py, real signals
class SignalAfter:
    """A trainer's jitted step that sends this process `signum` after its `n`-th call."""

    def __init__(self, step_fn, n: int, signum: int):
        self.step_fn, self.n, self.signum, self.calls = step_fn, n, signum, 0

    def __call__(self, *args):
        out = self.step_fn(*args)
        self.calls += 1
        if self.calls == self.n:
            signal.raise_signal(self.signum)
        return out

    def __getattr__(self, name):  # .lower(...).compile() before the loop
        return getattr(self.step_fn, name)


def test_sigint_in_run_py_saves_marks_run_json_releases_the_lock_and_exits_75(
    reference: Path, tmp_path: Path, capfd, monkeypatch
):
    """(capfd: the handler writes to file descriptor 2 itself.)"""
    capsys = capfd
    d = tmp_path / "run"
    argv = run_cmd(d, *EVERY_20, steps=60)[2:]
    build = run_cli._build_trainer

    def build_signalling(*a):
        trainer = build(*a)
        trainer.train_step = SignalAfter(trainer.train_step, 27, signal.SIGINT)
        return trainer

    save = train_lib.Checkpointer.save

    def save_under_fire(self, step, *a, **k):  # A second signal while the save runs.
        if step == 27:
            signal.raise_signal(signal.SIGTERM)
        return save(self, step, *a, **k)

    previous = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(run_cli, "_build_trainer", build_signalling)
        patch.setattr(train_lib.Checkpointer, "save", save_under_fire)
        assert run_cli.main(argv) == preemption.EXIT_CODE == 75
    out, err = capsys.readouterr()
    assert "SIGINT received: stopping after the current step" in err
    line = (
        r"^preempted at step 27 \(the last good checkpoint is step 27 in .*\): "
        r"run the same command again to resume there \(exit 75\)$"
    )
    assert re.search(line, out, re.M), out
    info = json.loads((d / "run.json").read_text())
    assert (info["status"], info["step"], info["signal"]) == ("preempted", 27, "SIGINT")
    assert not (d / "run.lock").exists()
    assert checkpoint_steps(d) == [10, 20, 27]
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == previous
    # The same command resumes at 27 and ends as the uninterrupted run.
    assert run_cli.main(argv) == 0
    assert "resumed from checkpoint at step 27" in capsys.readouterr().out
    assert json.loads((d / "run.json").read_text())["status"] == "finished"
    assert numbers(d) == numbers(reference)
    assert final_eval(d) == final_eval(reference)


def pid_namespaces_work() -> bool:
    try:
        p = subprocess.run(
            ["unshare", "--pid", "--fork", "--map-root-user", "sh", "-c", "test $$ = 1"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0


def child_pid(pid: int, timeout: float = 30.0) -> int:
    """The one child of process `pid` (unshare's forked child: PID 1 in its namespace)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} started no child")


def wait_for_output(path: Path, pattern: str, proc: subprocess.Popen, timeout=240.0) -> None:
    deadline = time.time() + timeout
    while not (path.exists() and re.search(pattern, path.read_text(), re.M)):
        assert proc.poll() is None, f"exited {proc.returncode}: {path.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {pattern!r} in {path}"
        time.sleep(0.005)


# The PID-1 case (a container's entry point) starts a second run.py; CI's slow run has it.
@pytest.mark.parametrize(
    "as_pid_1", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["process", "pid_1"]
)
def test_sigterm_to_run_py_exits_75_with_a_checkpoint_the_same_command_resumes(
    reference_run: Path, tmp_path: Path, capsys, as_pid_1: bool
):
    """SIGTERM to a launch/run.py process; as PID 1 of a PID namespace (a container's
    entrypoint), where the kernel drops a signal that has no handler. The resume runs in
    this process (same command, arguments and numbers as conftest's reference_run)."""
    if as_pid_1 and not pid_namespaces_work():
        pytest.skip("needs `unshare --pid --fork --map-root-user` (user and PID namespaces)")
    d = tmp_path / "run"
    cmd = run_cmd(d, "--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", steps=120)
    prefix = ["unshare", "--pid", "--fork", "--map-root-user"] if as_pid_1 else []
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*prefix, *cmd], cwd=REPO, env=env_with(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        target = child_pid(proc.pid) if as_pid_1 else proc.pid
        wait_for_output(log, r"^step 10/120 ", proc)
        os.kill(target, signal.SIGTERM)
        assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    info = json.loads((d / "run.json").read_text())
    step = info["step"]
    assert info["status"] == "preempted" and info["signal"] == "SIGTERM"
    assert 10 <= step < 120, "the run ended before the signal came"
    assert f"preempted at step {step} " in text and "SIGTERM received" in text
    assert not (d / "run.lock").exists() and not (d / "final.json").exists()
    assert max(checkpoint_steps(d)) == step
    # Resumed by the same command, here in this process.
    capsys.readouterr()
    assert run_cli.main(cmd[2:]) == 0
    assert f"resumed from checkpoint at step {step}" in capsys.readouterr().out
    assert numbers(d) == numbers(reference_run)


# ---------------------------------------------------------------- two processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Pair:
    """Two launch/run.py processes of one run (jax.distributed, 2 CPU devices each)."""

    def __init__(self, model_dir: Path, logs: Path, steps: int):
        self.model_dir, self.logs, self.steps, self.tries = model_dir, logs, steps, 0
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        port, self.tries = free_port(), self.tries + 1
        env = env_with(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
        cmd = run_cmd(
            self.model_dir, "--gin.EVAL_EVERY=50", "--gin.CHECKPOINT_EVERY=50", steps=self.steps
        )
        cmd += [
            "--distributed=on",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
        ]
        self.procs = []
        for i in range(2):
            with open(self.log(i), "w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [*cmd, f"--process_id={i}"],
                        cwd=REPO,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def log(self, i: int) -> Path:
        return self.logs / f"try{self.tries}-process{i}.txt"

    def wait_for_step(self, step: int) -> None:
        """Until the chief has logged `step` (logs every 10 steps)."""
        wait_for_output(self.log(0), rf"^step {step}/{self.steps} ", self.procs[0])

    def wait(self) -> list[int]:
        try:
            return [p.wait(timeout=300) for p in self.procs]
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def output(self) -> str:
        return "".join(self.log(i).read_text() for i in range(2))


def checkpoint_leaves(model_dir: Path, step: int) -> list[np.ndarray]:
    """A checkpoint's arrays, read onto this process's one device (it was written from the
    4 devices of two processes)."""
    path = str(model_dir / "checkpoints" / str(step) / "state")
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta
    )
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(checkpointer.restore(path, target))]


@pytest.mark.slow  # four 2-process runs of launch/run.py (about two minutes on 2 cores)
def test_two_processes_stop_together_on_one_signal_to_one_and_resume_bit_identical(
    tmp_path: Path,
):
    """A preemption notice may reach only some hosts: SIGTERM to process 1 alone, later
    SIGINT (Ctrl-C) to process 0 alone, each at a random log step (seeded). Both processes
    stop at the same step with a checkpoint; a restart of both resumes there, and the run
    ends with the metrics, evaluation and parameters of an uninterrupted 2-process run."""
    rng = random.Random(21)
    steps = 160
    reference = Pair(tmp_path / "reference", tmp_path, steps)
    reference.start()
    assert reference.wait() == [0, 0], reference.output()[-5000:]

    d = tmp_path / "run"
    pair = Pair(d, tmp_path, steps)
    stops = []
    for victim, signum, low in [(1, signal.SIGTERM, 20), (0, signal.SIGINT, None)]:
        pair.start()
        # jax notices a SIGTERM within a second: the stop comes some steps after `at`.
        at = rng.randrange(low or stops[-1] // 10 * 10 + 20, (low or stops[-1]) + 50, 10)
        pair.wait_for_step(at)
        os.kill(pair.procs[victim].pid, signum)
        assert pair.wait() == [75, 75], pair.output()[-5000:]
        info = json.loads((d / "run.json").read_text())
        assert info["status"] == "preempted"
        stop = info["step"]
        assert at <= stop < steps, (at, stop)
        stops.append(stop)
        assert not (d / "run.lock").exists()
        assert max(checkpoint_steps(d)) == stop
        assert f"preempted at step {stop} " in pair.log(0).read_text()
    pair.start()
    assert pair.wait() == [0, 0], pair.output()[-5000:]
    assert f"resumed from checkpoint at step {stops[-1]}" in pair.log(0).read_text()
    assert json.loads((d / "run.json").read_text())["status"] == "finished"
    assert numbers(d) == numbers(reference.model_dir)
    assert final_eval(d) == final_eval(reference.model_dir)
    for a, b in zip(
        checkpoint_leaves(d, steps), checkpoint_leaves(reference.model_dir, steps), strict=True
    ):
        np.testing.assert_array_equal(a, b)
