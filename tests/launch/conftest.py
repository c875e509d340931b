"""Fixtures shared by the launch tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.launch.harness_helpers import run, run_cmd


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted AdamW run shared by several tests."""
    d = tmp_path_factory.mktemp("reference") / "run"
    p = run(run_cmd(d, "--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", steps=120))
    assert p.returncode == 0, p.stderr[-3000:]
    return d
