"""One training run per MODEL_DIR: a lock file, MODEL_DIR/run.lock.

Two runs writing the same directory interleave their checkpoints and metrics.jsonl and
leave neither usable, so `launch/run.py` takes this lock before it writes anything:

    lock = run_lock.acquire(model_dir)   # ConfigError if another run holds it
    try:
        ...train...
    finally:
        lock.release()

or `with run_lock.acquire(model_dir): ...`. The file holds JSON naming its holder: `pid`,
`host`, `started`, and what makes a pid one process rather than a number the kernel
hands out again (a reboot, a restarted container whose run is PID 1 again): the boot
(`boot_id`, /proc/sys/kernel/random/boot_id) and the process's start time (`pid_start`,
clock ticks since boot, /proc/PID/stat). It is created with O_CREAT | O_EXCL, so of two
processes starting at once exactly one gets it, and a write that fails (a full disk)
removes the half-made file. While held, a background thread rewrites `heartbeat` (Unix
time) every `HEARTBEAT_S` seconds: a lease.

Whether a lock found there is stale (taken over with a warning) or held (ConfigError
naming the holder and how to override):
* this host, same boot: held while a process with that pid runs and started when the
  holder did (without `pid_start`, a lock from before this rule: started no later than
  the lock's `started`); stale otherwise;
* this host, another boot: stale (no process survives a reboot);
* another host (or no way to check the process): held while its heartbeat is younger
  than `LEASE_S` (15 minutes, against clock skew); stale after that; a lock without a
  heartbeat (written before this rule) counts as held;
* empty or not JSON: the remains of a crash while it was created; stale once older than
  `UNREADABLE_GRACE_S` (60 s: a run writes it within a moment of creating it).
`launch/run.py --break_lock` (`acquire(..., break_lock=True)`) takes over whatever lock
is there, with a warning naming its holder: the manual override, for when you know the
holder is gone. Only the chief process (jax.process_index() == 0) of a multi-host run
takes the lock: the other processes are part of the same run. A process that already
holds the lock of a directory may acquire it again (the handles nest), so a caller can
hold it around `launch.run.main`, which takes it too.

The file goes through `etils.epath.Path`, so a cloud MODEL_DIR (`gs://...`) gets a lock
too; an object store has no exclusive create, so there the lock is best effort (a run
starting within the same moment as another may miss it), and a stale lock is deleted
rather than moved aside.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from etils import epath

from experiments.errors import ConfigError
from launch.trainer import run_folder

HEARTBEAT_S = 60.0  # How often a holder renews its lease.
LEASE_S = 15 * 60.0  # A lock whose heartbeat is older than this is stale (any host).
UNREADABLE_GRACE_S = 60.0  # An empty or garbled lock older than this is a crash's remains.

# Lock files this process holds: path -> open handles, path -> what it wrote there, and
# path -> the thread renewing its heartbeat.
_held: dict[str, int] = {}
_holders: dict[str, dict[str, Any]] = {}
_heartbeats: dict[str, _Heartbeat] = {}


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


class _Heartbeat(threading.Thread):
    """Rewrites the lock's `heartbeat` every `HEARTBEAT_S` while this process holds it;
    stops (with a warning) if the file no longer names this process."""

    def __init__(self, path: str):
        super().__init__(name=f"run_lock heartbeat {path}", daemon=True)
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            holder = _holders.get(self.path)
            if holder is None:
                return
            if _identity(_read_holder(self.path)) != _identity(holder):
                print(
                    f"WARNING: the lock {self.path!r} no longer names this run (taken over "
                    "or removed); another run may now write this MODEL_DIR",
                    file=sys.stderr,
                    flush=True,
                )
                return
            try:
                holder["heartbeat"] = round(time.time(), 3)
                _write_whole(self.path, holder)
            except Exception as e:  # A full disk or a flaky store: the next beat retries.
                print(f"WARNING: could not renew the lock {self.path!r}: {e}", file=sys.stderr)


def _remove(path: str) -> None:
    """Deletes a lock file of this process, unless someone else's lock replaced it."""
    _held.pop(path, None)
    beat = _heartbeats.pop(path, None)
    if beat is not None:
        beat.stopped.set()
    holder = _holders.pop(path, None)
    if holder is not None and _identity(_read_holder(path)) == _identity(holder):
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
        return os.fspath(epath.Path(model_dir) / run_folder.LOCK_FILE)
    return os.path.join(os.path.abspath(os.fspath(model_dir)), run_folder.LOCK_FILE)


def boot_id() -> str | None:
    """This boot of this host's kernel (Linux); None where there is no such file."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def pid_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of
    /proc/PID/stat); None if it does not exist or this is not Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _me() -> dict[str, Any]:
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    boot, start = boot_id(), pid_start(os.getpid())
    if boot is not None and start is not None:
        me.update(boot_id=boot, pid_start=start)
    return me


def _identity(holder: dict[str, Any] | None) -> tuple | None:
    if holder is None:
        return None
    return tuple(holder.get(k) for k in ("pid", "host", "boot_id", "pid_start", "started"))


def acquire(
    model_dir: str | os.PathLike, *, chief: bool | None = None, break_lock: bool = False
) -> RunLock:
    """Takes MODEL_DIR/run.lock for this run, or raises ConfigError naming the directory and
    the holder (pid@host). `chief` defaults to `jax.process_index() == 0`; on other
    processes this returns a handle that holds nothing. `break_lock`: take over a lock
    found there whatever its holder (`launch/run.py --break_lock`), with a warning."""
    if chief is None:
        import jax  # only for the default; launch/run.py imports this module before jax

        chief = jax.process_index() == 0
    model_dir = os.fspath(model_dir)
    path = lock_path(model_dir)
    if not chief:
        return RunLock(path, None)
    me = _me()
    if path in _held:  # A nested acquisition by the holder itself.
        _held[path] += 1
        return RunLock(path, _holders[path])
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # Retried only after taking over a stale lock.
        now = time.time()
        holder = {
            **me,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
            "heartbeat": round(now, 3),
        }
        if _create(path, holder):
            _held[path], _holders[path] = 1, holder
            _heartbeats[path] = _Heartbeat(path)
            _heartbeats[path].start()
            return RunLock(path, holder)
        _take_over_if_stale(path, model_dir, break_lock=break_lock)
    raise ConfigError(f"could not take the lock {path!r}: it keeps being recreated")


def _create(path: str, holder: dict[str, Any]) -> bool:
    """Creates the lock file holding `holder`, atomically; False if it exists. (On an
    object store: written if absent, which is not atomic.) A ConfigError naming the file
    if it cannot be written (a full disk): no half-made lock is left behind."""
    if not _is_local(path):
        target = epath.Path(path)
        if target.exists():
            return False
        _write_whole(path, holder)
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise ConfigError(f"cannot create the lock {path!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        Path(path).unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the lock {path!r}: {e.strerror or e} (removed it again)"
        ) from None
    return True


def _write_whole(path: str, holder: dict[str, Any]) -> None:
    """Replaces the lock's contents at once: a reader sees the old JSON or the new."""
    if not _is_local(path):
        epath.Path(path).write_text(json.dumps(holder))  # An upload replaces it whole.
        return
    partial = f"{path}.tmp.{os.getpid()}"
    try:
        with open(partial, "w") as f:
            json.dump(holder, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


def _read_holder(path: str) -> dict[str, Any] | None:
    """The lock file's contents; None if it is missing or not (yet) a JSON object."""
    try:
        holder = json.loads(epath.Path(path).read_text())
    except Exception:  # OSError, a half-written file, or a cloud filesystem's own errors.
        return None
    return holder if isinstance(holder, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age_s(path: str) -> float:
    """Seconds since the lock file was last written (0 if that cannot be read)."""
    try:
        return max(0.0, time.time() - epath.Path(path).stat().mtime)
    except Exception:
        return 0.0


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the lock of `holder` no longer holds (a phrase), or None if its holder may
    still run (the rules of the module docstring)."""
    heartbeat = holder.get("heartbeat")
    lease_over = isinstance(heartbeat, (int, float)) and time.time() - heartbeat > LEASE_S
    if holder.get("host") != socket.gethostname():
        if lease_over:
            return f"its heartbeat is {(time.time() - heartbeat) / 60:.0f} minutes old"
        return None
    boot = boot_id()
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return "this host was rebooted since"
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    if not pid_alive(pid):
        return "that process is no longer running"
    start = pid_start(pid)
    if start is None:  # Not Linux: the pid is all there is.
        return None
    if isinstance(holder.get("pid_start"), int):
        if holder["pid_start"] != start:
            return f"pid {pid} is now another process"
        return None
    # A lock written before pid_start was recorded: a process younger than the lock is
    # not its holder.
    started = _parse_time(holder.get("started"))
    born = _process_birth(start)
    if started is not None and born is not None and born > started + 2:
        return f"pid {pid} is now another process, started after the lock"
    return None


def _parse_time(text: Any) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S%z")) if text else None
    except (TypeError, ValueError):
        return None


def _process_birth(ticks: int) -> float | None:
    """A process's start as Unix time, from its start in clock ticks since boot."""
    try:
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _take_over_if_stale(path: str, model_dir: str, *, break_lock: bool = False) -> None:
    """Removes a lock whose holder is gone (`stale_reason`), or any with `break_lock`,
    with a warning on stderr; raises ConfigError naming the holder otherwise."""
    holder = _read_holder(path)
    override = f"if that run is gone, remove {path!r} or rerun with --break_lock"
    if holder is None:
        if not epath.Path(path).exists():
            return  # Released meanwhile: try again.
        if not break_lock and _age_s(path) < UNREADABLE_GRACE_S:
            raise ConfigError(
                f"MODEL_DIR {model_dir!r} is locked by {path!r}, which is not readable yet "
                f"(a run starting right now?); {override}"
            )
        who, reason = "an unreadable lock", "it is empty or garbled (a crash while writing it)"
    else:
        who = f"pid {holder.get('pid')}@{holder.get('host')} (started {holder.get('started')})"
        reason = "--break_lock" if break_lock else stale_reason(holder)
        if reason is None:
            where = "on another host; " if holder.get("host") != socket.gethostname() else ""
            raise ConfigError(
                f"MODEL_DIR {model_dir!r} is in use by another run, {who}, {where}{override}"
            )
    if not _is_local(path):  # No atomic rename to rely on: delete it.
        epath.Path(path).unlink(missing_ok=True)
        _warn_stale(path, who, reason)
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
    _warn_stale(path, who, reason)


def _warn_stale(path: str, who: str, reason: str) -> None:
    print(
        f"WARNING: taking over the stale lock {path!r} of {who}: {reason}",
        file=sys.stderr,
        flush=True,
    )
