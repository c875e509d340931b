"""A run stopped by SIGTERM or SIGINT (a preemption) stops at a step that every process
agrees on, saves a checkpoint there and exits with `EXIT_CODE`; the same command resumes it.

SIGTERM is what a Spot or preemptible VM's shutdown, `gcloud ... stop`, SLURM before the
time limit (launch/cloud/slurm.py asks for it) and Kubernetes send; SIGINT is Ctrl-C.
launch/run.py holds a `Watch` around training:

    with preemption.Watch() as watch:
        trainer.run(preemption=watch)     # raises Preempted(step) after saving at `step`

and `Trainer.run` asks `watch.before(start)` once before its first step and
`watch.reached(step)` after every step. How the processes agree:

* One process: handlers of SIGTERM and SIGINT set a flag, which `reached` reads (no other
  cost per step); the run stops after the step in flight. Installing a handler is also what
  makes a process that is PID 1 in a container stop on SIGTERM at all (the kernel drops
  signals to PID 1 that have no handler).
* Several processes (jax.distributed): a notice may reach only some of them, and each must
  stop at the same step or the others hang in the next collective. This uses jax's
  preemption sync point, as t5x and MaxText do (through orbax's `reached_preemption`):
  `jax.distributed.initialize()` installs a SIGTERM handler (the coordination service's
  preemption notifier); a notice on any process starts a protocol in a background thread of
  every process that takes the largest step any of them has reported and adds one; all
  processes call `multihost_utils.reached_preemption_sync_point(step)` after every step (a
  few microseconds, no communication) and it is True for each at that same step. jax does
  not watch SIGINT: the handler here passes it on as a SIGTERM to its own process. Without
  jax's preemption service (`jax_enable_preemption_service` off) a multi-process run is not
  watched at all: SIGTERM then ends it at once, as before, with a warning at the start.

A second signal while the checkpoint is written is ignored (SIGKILL still ends the process
at once; orbax writes a checkpoint under a temporary name and renames it when complete, so
a killed save leaves the previous checkpoint as the newest).

This module imports only the standard library at the top, so that the launch tools in
launch/cloud/ (which run without the venv) can read `EXIT_CODE` from it.
"""

from __future__ import annotations

import os
import signal
import sys

# sysexits.h EX_TEMPFAIL: "a temporary failure ... the user is invited to retry the
# operation later". Distinct from launch/run.py's 0 (done), 2 (configuration error) and 3
# (diverged), from Python's 1 (an uncaught exception) and from 128 + N (killed by signal N).
EXIT_CODE = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a preemption notice at `step`, with a checkpoint of that step
    (`saved`: written by this call; False when the stop came before its first step, whose
    state the newest checkpoint already holds, or none at step 0)."""

    def __init__(self, step: int, saved: bool, where: str):
        super().__init__(f"preempted at step {step}; {where}")
        self.step, self.saved, self.where = step, saved, where


class NoWatch:
    """What `Trainer.run` uses without a Watch: nothing ever stops it."""

    def before(self, start: int) -> bool:
        return False

    def reached(self, step: int) -> bool:
        return False


class Watch:
    """SIGTERM and SIGINT handling around training; a context manager (the previous
    handlers come back on exit). See the module docstring for how processes agree."""

    def __init__(self):
        self.signal: str | None = None  # The first signal this process's handler saw.
        self._previous: dict[int, object] = {}
        self._sync = None  # jax's preemption sync point, in a multi-process run.
        self.active = False

    def __enter__(self) -> Watch:
        import jax  # here: launch/run.py imports this module before it may import jax

        handled = SIGNALS
        if jax.process_count() > 1:
            # Only in a multi-process run; jax._src holds the coordinator's client.
            from jax._src import distributed
            from jax.experimental import multihost_utils

            if distributed.global_state.preemption_sync_manager is None:
                print(
                    "WARNING: jax's preemption service is off (jax_enable_preemption_service):"
                    " SIGTERM and SIGINT stop this multi-process run without a checkpoint",
                    file=sys.stderr,
                    flush=True,
                )
                return self
            self._sync = multihost_utils.reached_preemption_sync_point
            handled = (signal.SIGINT,)  # jax's own handler has SIGTERM: leave it.
        try:
            for signum in handled:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # Not the main thread: no handlers can be installed.
            self._restore()
            if self._sync is None:
                return self
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.signal is None
        if first:
            self.signal = signal.Signals(signum).name
            # os.write, not print: a handler may run in the middle of a print to stderr.
            os.write(
                2,
                f"{self.signal} received: stopping after the current step with a checkpoint "
                "(further signals are ignored meanwhile; SIGKILL ends it at once)\n".encode(),
            )
        if self._sync is not None and first:
            os.kill(os.getpid(), signal.SIGTERM)  # To jax's notifier, which tells the others.

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def before(self, start: int) -> bool:
        """Called once before the first step of this try (`start`: the restored step):
        whether the processes already agreed to stop there."""
        if self._sync is None:
            return self.requested
        # jax counts steps from the last call: a notice before any call (while the
        # checkpoint was restored or the step compiled) made the sync point 1, which a
        # resumed run would never reach; ask for it, then report the real step.
        early = start > 1 and self._sync(1)
        return bool(self._sync(start)) or bool(early)

    def reached(self, step: int) -> bool:
        """After step `step`: whether to stop here (the same answer on every process)."""
        if self._sync is None:
            return self.signal is not None
        return bool(self._sync(step))
