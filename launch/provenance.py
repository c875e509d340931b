"""Where a result came from: the git revision (and whether the tree was clean), the
package versions and the machine, as run.json, the study's summaries and the benchmarks
record them beside every number."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PACKAGES = [
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "gin-config",
    "numpy",
    "tensorboard",
    "amos",
]


def git_revision() -> dict:
    """The checkout's HEAD and whether anything outside results/ differs from it."""

    def git(*a):
        p = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
        return p.stdout.strip() if p.returncode == 0 else None

    try:
        rev = git("rev-parse", "--verify", "HEAD")  # None before the first commit
        # Results written by earlier runs are not code: they do not make the tree dirty.
        status = git("status", "--porcelain", "--", ".", ":(exclude)results")
        dirty = None if status is None else bool(status)
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    return {"revision": rev, "dirty": dirty}


def package_versions() -> dict:
    """The installed versions of PACKAGES and Python's."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def describe_machine() -> dict:
    """The host, its platform and jax's devices and processes."""
    import jax  # here: the study's tools import this module for git_revision, without jax

    devs = jax.devices()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": devs[0].device_kind,
        "device_count": len(devs),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
