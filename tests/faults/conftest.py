"""Fixtures of the fault-injection suite: a small file system that fills up."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_fs("3m")` mounts a tmpfs of that size (a full disk on demand) and returns
    its path; every mount is undone at the end. Skipped where mounting is not allowed
    (not root, or a container without the capability)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs-{uuid.uuid4().hex[:8]}"
        where.mkdir()
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here ({p.stderr.strip() or p.returncode})")
        mounted.append(where)
        return where

    if os.geteuid() != 0:
        pytest.skip("a size-limited file system needs root to mount a tmpfs")
    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> None:
    """Writes into `directory` until its file system is full."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 512, 1):  # Then the last bytes that fit.
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
