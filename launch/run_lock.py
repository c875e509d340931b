"""One training run per MODEL_DIR: a lock file, MODEL_DIR/run.lock.

Two runs writing the same directory interleave their checkpoints and metrics.jsonl and
leave neither usable, so `launch/run.py` takes this lock before it writes anything:

    lock = run_lock.acquire(model_dir)   # ConfigError if another run holds it
    try:
        ...train...
    finally:
        lock.release()

or `with run_lock.acquire(model_dir): ...`. The file holds JSON `{pid, host, started}` and
is created with O_CREAT | O_EXCL, so of two processes starting at once exactly one gets it.
A lock left by a process that died (same host, pid not alive: e.g. a SIGKILLed run) is
taken over with a warning; a lock from another host cannot be checked and counts as held
(the error says how to remove it). Only the chief process (jax.process_index() == 0) of a
multi-host run takes the lock: the other processes are part of the same run. A process
that already holds the lock of a directory may acquire it again (the handles nest), so a
caller can hold it around `launch.run.main`, which takes it too.

The file goes through `etils.epath.Path`, so a cloud MODEL_DIR (`gs://...`) gets a lock
too; an object store has no exclusive create, so there the lock is best effort (a run
starting within the same moment as another may miss it), and a stale lock of a dead
process is deleted rather than moved aside.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from typing import Any

from etils import epath

from experiments.errors import ConfigError

LOCK_NAME = "run.lock"

# Lock files this process holds: path -> open handles, and path -> what it wrote there.
_held: dict[str, int] = {}
_holders: dict[str, dict[str, Any]] = {}


class RunLock:
    """A handle on MODEL_DIR/run.lock; `release()` (or leaving the `with`) gives it back."""

    def __init__(self, path: str, holder: dict[str, Any] | None):
        self.path = path
        self.holder = holder  # None: not taken (a non-chief process).
        self._open = holder is not None

    @property
    def held(self) -> bool:
        return self._open

    def release(self) -> None:
        """Removes the lock file when the last handle of this process is released;
        idempotent, and harmless if the file is gone or was taken over meanwhile."""
        if not self._open:
            return
        self._open = False
        handles = _held.get(self.path, 1) - 1
        if handles > 0:
            _held[self.path] = handles
        else:
            _remove(self.path)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _remove(path: str) -> None:
    """Deletes a lock file of this process, unless someone else's lock replaced it."""
    _held.pop(path, None)
    holder = _holders.pop(path, None)
    if holder is not None and _read_holder(path) == holder:
        epath.Path(path).unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    """At exit, whatever the path out (sys.exit on a diverged run, an exception), the
    locks this process still holds are released."""
    for path in list(_holders):
        _remove(path)


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)


def lock_path(model_dir: str | os.PathLike) -> str:
    if not _is_local(model_dir):
        return os.fspath(epath.Path(model_dir) / LOCK_NAME)
    return os.path.join(os.path.abspath(os.fspath(model_dir)), LOCK_NAME)


def acquire(model_dir: str | os.PathLike, *, chief: bool | None = None) -> RunLock:
    """Takes MODEL_DIR/run.lock for this run, or raises ConfigError naming the directory and
    the holder (pid@host). `chief` defaults to `jax.process_index() == 0`; on other
    processes this returns a handle that holds nothing."""
    if chief is None:
        import jax

        chief = jax.process_index() == 0
    model_dir = os.fspath(model_dir)
    path = lock_path(model_dir)
    if not chief:
        return RunLock(path, None)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    if path in _held and _same_process(_read_holder(path), me):
        _held[path] += 1  # A nested acquisition by the holder itself.
        return RunLock(path, _holders[path])
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # Retried only after taking over a stale lock.
        holder = {**me, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if _create(path, holder):
            _held[path], _holders[path] = 1, holder
            return RunLock(path, holder)
        _take_over_if_stale(path, model_dir)
    raise ConfigError(f"could not take the lock {path!r}: it keeps being recreated")


def _create(path: str, holder: dict[str, Any]) -> bool:
    """Creates the lock file holding `holder`, atomically; False if it exists. (On an
    object store: written if absent, which is not atomic.)"""
    if not _is_local(path):
        target = epath.Path(path)
        if target.exists():
            return False
        target.write_text(json.dumps(holder))
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _read_holder(path: str) -> dict[str, Any] | None:
    """The lock file's contents; None if it is missing or not (yet) a JSON object."""
    try:
        holder = json.loads(epath.Path(path).read_text())
    except Exception:  # OSError, a half-written file, or a cloud filesystem's own errors.
        return None
    return holder if isinstance(holder, dict) else None


def _same_process(holder: dict[str, Any] | None, me: dict[str, Any]) -> bool:
    return holder is not None and (holder.get("pid"), holder.get("host")) == (
        me["pid"],
        me["host"],
    )


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_over_if_stale(path: str, model_dir: str) -> None:
    """Removes a lock whose holder died on this host (with a warning on stderr), or raises
    ConfigError naming the holder when it is alive, on another host, or unreadable."""
    holder = _read_holder(path)
    if holder is None:
        if not epath.Path(path).exists():
            return  # Released meanwhile: try again.
        raise ConfigError(
            f"MODEL_DIR {model_dir!r} is locked by {path!r}, which is unreadable (a run "
            f"starting right now, or a crash while creating it); if no run uses this "
            f"directory, remove {path!r}"
        )
    who = f"pid {holder.get('pid')}@{holder.get('host')} (started {holder.get('started')})"
    if holder.get("host") != socket.gethostname():
        raise ConfigError(
            f"MODEL_DIR {model_dir!r} is in use by another run, {who}, on another host that "
            f"cannot be checked from here; if that run is gone, remove {path!r}"
        )
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid_alive(pid) or pid == os.getpid():
        raise ConfigError(
            f"MODEL_DIR {model_dir!r} is in use by another run, {who}; wait for it or stop "
            f"it (if that process is not a run, remove {path!r})"
        )
    if not _is_local(path):  # No atomic rename to rely on: delete it.
        epath.Path(path).unlink(missing_ok=True)
        _warn_stale(path, who)
        return
    # Move the stale file aside before deleting it: if another process took it over and
    # created a fresh lock in between, what was moved is that fresh lock, and goes back.
    aside = f"{path}.stale.{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read_holder(aside) != holder:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        os.unlink(aside)
        raise ConfigError(f"MODEL_DIR {model_dir!r} was just locked by another run ({path!r})")
    os.unlink(aside)
    _warn_stale(path, who)


def _warn_stale(path: str, who: str) -> None:
    print(
        f"WARNING: taking over the stale lock {path!r} of {who}, which is no longer running",
        file=sys.stderr,
        flush=True,
    )
