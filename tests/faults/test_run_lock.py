"""The run lock's faults (launch/run_lock.py): a lock that a full disk left half made, a
pid that now belongs to another process (a reboot, a restarted container), a holder on
another host that stopped renewing its lease, and the manual override."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from experiments.errors import ConfigError
from launch import run as run_cli
from launch import run_lock
from tests.faults.conftest import fill
from tests.launch.harness_helpers import PYTHON, REPO, env_with

HOST = socket.gethostname()


def write_lock(model_dir: Path, **holder) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "run.lock"
    path.write_text(json.dumps(holder))
    return path


def test_a_full_disk_at_start_leaves_no_lock_behind(small_fs, tmp_path: Path):
    d = small_fs("64k") / "run"
    d.mkdir()
    fill(d.parent)
    with pytest.raises(ConfigError, match=r"cannot (create|write) the lock .*run\.lock"):
        run_lock.acquire(str(d), chief=True)
    assert not (d / "run.lock").exists()
    (d.parent / "filler").unlink()  # Space again: the next run takes the lock.
    with run_lock.acquire(str(d), chief=True) as lock:
        assert lock.held


def test_an_empty_lock_is_taken_over_once_it_is_old(tmp_path: Path, capsys):
    d = tmp_path / "run"
    path = write_lock(d)
    path.write_text("")
    with pytest.raises(ConfigError, match="not readable yet"):
        run_lock.acquire(str(d), chief=True)  # Maybe a run that is writing it right now.
    old = time.time() - run_lock.UNREADABLE_GRACE_S - 5
    os.utime(path, (old, old))
    with run_lock.acquire(str(d), chief=True) as lock:
        assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
    assert "empty or garbled" in capsys.readouterr().err


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path: Path, capsys):
    d = tmp_path / "run"
    boot, start = run_lock.boot_id(), run_lock.pid_start(1)
    if boot is None or start is None:
        pytest.skip("no /proc here: the pid is all a lock can name")
    # pid 1 runs (it always does), but it is not the process that wrote the lock: a
    # container's run restarted as pid 1, or the pid reused after a reboot.
    path = write_lock(d, pid=1, host=HOST, boot_id=boot, pid_start=start + 1, started="x")
    run_lock.acquire(str(d), chief=True).release()
    assert f"stale lock {str(path)!r} of pid 1@{HOST}" in capsys.readouterr().err
    write_lock(d, pid=1, host=HOST, boot_id="another-boot", pid_start=start, started="x")
    run_lock.acquire(str(d), chief=True).release()
    assert "rebooted" in capsys.readouterr().err
    # A lock written before the start time was recorded: pid 1 started after it.
    write_lock(d, pid=1, host=HOST, started="2001-01-01T00:00:00+0000")
    run_lock.acquire(str(d), chief=True).release()
    assert "started after the lock" in capsys.readouterr().err
    # The real pid 1 as the holder: held, and the error says how to override.
    write_lock(d, pid=1, host=HOST, boot_id=boot, pid_start=start, started="x")
    with pytest.raises(ConfigError, match=r"in use by another run, pid 1@.*--break_lock"):
        run_lock.acquire(str(d), chief=True)


def test_a_live_holder_blocks_until_broken_and_its_heartbeat_notices(tmp_path: Path, capsys):
    d = tmp_path / "run"
    hold = (
        "import sys, time; from launch import run_lock; "
        "run_lock.HEARTBEAT_S = 0.1; run_lock.acquire(sys.argv[1], chief=True); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [PYTHON, "-c", hold, str(d)],
        cwd=REPO,
        env=env_with(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        first = json.loads((d / "run.lock").read_text())
        assert first["pid"] == holder.pid and first["host"] == HOST
        time.sleep(0.5)
        assert json.loads((d / "run.lock").read_text())["heartbeat"] > first["heartbeat"]
        with pytest.raises(ConfigError, match=f"pid {holder.pid}@"):
            run_lock.acquire(str(d), chief=True)
        capsys.readouterr()
        lock = run_lock.acquire(str(d), chief=True, break_lock=True)
        assert f"of pid {holder.pid}@{HOST}" in capsys.readouterr().err
        time.sleep(0.5)  # The old holder sees that the lock is no longer its own.
        assert json.loads((d / "run.lock").read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        holder.kill()
        _, err = holder.communicate()
    assert "no longer names this run" in err


def test_another_hosts_lock_holds_while_its_lease_is_renewed(tmp_path: Path, capsys):
    d = tmp_path / "run"
    now = time.time()
    write_lock(d, pid=os.getpid(), host="elsewhere.invalid", started="x", heartbeat=now)
    with pytest.raises(ConfigError, match=r"elsewhere\.invalid.*on another host"):
        run_lock.acquire(str(d), chief=True)
    write_lock(d, pid=os.getpid(), host="elsewhere.invalid", started="x")  # No lease known.
    with pytest.raises(ConfigError, match="on another host"):
        run_lock.acquire(str(d), chief=True)
    stale = now - run_lock.LEASE_S - 60
    write_lock(d, pid=os.getpid(), host="elsewhere.invalid", started="x", heartbeat=stale)
    run_lock.acquire(str(d), chief=True).release()
    assert "heartbeat is 16 minutes old" in capsys.readouterr().err


def test_run_py_break_lock_flag():
    args, _ = run_cli.parse_args(["--gin_file=quickstart.gin", "--break_lock"])
    assert args.break_lock
    assert not run_cli.parse_args(["--gin_file=quickstart.gin"])[0].break_lock
