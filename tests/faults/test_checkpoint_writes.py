"""A checkpoint that cannot be written stops the run (launch/run.py exits 74) with one
line naming the directory and the cause, run.json says so, nothing hangs, and once the
cause is gone the same command resumes from the last checkpoint that was written."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.launch.harness_helpers import run, run_cmd

pytestmark = pytest.mark.slow

EVERY_20 = ["--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", "--gin.train.first_checkpoint_at=0"]
EXIT_IO_ERROR = 74


def error_line(stderr: str) -> str:
    """The ERROR line, last; before it at most a warning that run.json did not fit."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and all(x.startswith("WARNING: run.json") for x in lines[:-1]), stderr[-3000:]
    return lines[-1]


def test_a_full_disk_stops_the_run_and_the_same_command_resumes(small_fs):
    fs = small_fs("20m")
    d = fs / "run"
    first = run(run_cmd(d, *EVERY_20, steps=20), timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    # Room for a few kilobytes more, not for another checkpoint.
    used = os.statvfs(fs).f_blocks - os.statvfs(fs).f_bfree
    size = used * os.statvfs(fs).f_frsize + 64 * 1024
    subprocess.run(["mount", "-o", f"remount,size={size}", str(fs)], check=True)
    full = run(run_cmd(d, *EVERY_20, steps=60), timeout=120)
    assert full.returncode == EXIT_IO_ERROR, full.stderr[-3000:]
    line = error_line(full.stderr)
    assert line.startswith(f"ERROR: the checkpoint of step 40 could not be written to {d}")
    assert "No space left on device" in line
    assert f"the last good checkpoint is step 20 in {d / 'checkpoints'}" in line
    assert not (d / "run.lock").exists()
    subprocess.run(["mount", "-o", "remount,size=20m", str(fs)], check=True)
    again = run(run_cmd(d, *EVERY_20, steps=60), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((d / "final.json").read_text())["step"] == 60
    assert "resumed from checkpoint at step 20" in again.stdout + again.stderr


def test_a_read_only_checkpoint_directory_ends_at_once_with_the_record(small_fs, tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(d / "checkpoints")],
        check=True,
    )
    try:
        p = run(run_cmd(d, *EVERY_20, steps=60), timeout=60)  # A hang fails here.
    finally:
        subprocess.run(["umount", "-l", str(d / "checkpoints")], check=True)
    assert p.returncode == EXIT_IO_ERROR, p.stderr[-3000:]
    line = error_line(p.stderr)
    assert f"could not be written to {d / 'checkpoints'}" in line
    assert "Read-only file system" in line and "no checkpoint was written" in line
    record = json.loads((d / "run.json").read_text())
    assert record["status"] == "write failed" and "Read-only file system" in record["error"]
    assert not (d / "run.lock").exists()
