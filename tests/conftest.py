"""Fixtures and settings for the whole suite.

An XLA compilation cache serves every test and every run.py process a test starts (they
inherit the variable): the same train and eval steps compile in dozens of tests, so all
but the first are read from disk. JAX reads JAX_COMPILATION_CACHE_DIR when it is first
imported, which is after this file; a value set by the caller is kept. Under pytest-xdist
(`make test` runs two workers) each worker keeps its own cache folder: JAX writes cache
entries without a lock unless it is given a size limit, so a worker could read another's
half-written entry.

Tests that read the real text corpus take the `shakespeare` fixture: where the shared data
directory beside the checkout (`../shared/data`) is missing, each of them is skipped with
one reason that names the path, instead of some failing and some skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import gin
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(REPO / ".cache" / "jax" / os.environ.get("PYTEST_XDIST_WORKER", "main")),
)
# As launch/run.py: gs:// paths through gcsfs, not TensorFlow's gfile. etils.epath decides
# once per process, and tfds may ask it first (about its own gs:// bucket) in a test.
os.environ.setdefault("EPATH_USE_TF", "false")


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """Tiny Shakespeare (nanoGPT's character-level corpus) from ../shared/data."""
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"needs {path}: the shared data directory beside the checkout")
    return path


@pytest.fixture(autouse=True)
def _gin_bindings_end_with_their_test():
    """Tests that load gin files in process (run.py's `load_gin`, a built Trainer) leave
    their bindings in gin's global config; cleared after each test, so that a later test
    in the same process (whatever order pytest-xdist gives the files) starts from none.
    A built Trainer keeps its settings, so module fixtures outlive the clearing."""
    yield
    gin.clear_config()
