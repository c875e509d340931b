"""Fixtures shared by the launch tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.launch.harness_helpers import EVERY_20, build_trainer, checkpoint_steps, run, run_cmd


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted AdamW run shared by several tests."""
    d = tmp_path_factory.mktemp("reference") / "run"
    p = run(run_cmd(d, "--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", steps=120))
    assert p.returncode == 0, p.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """The tiny quickstart Trainer with EVERY_20, compiled once per module."""
    return build_trainer(tmp_path_factory.mktemp("unused") / "run", *EVERY_20)


@pytest.fixture(scope="module")
def reference(trainer, tmp_path_factory) -> Path:
    """An uninterrupted run: checkpoints 20, 40, 60 (keep 3; the early one at 10 is gone)."""
    d = tmp_path_factory.mktemp("reference") / "run"
    assert trainer.replace(model_dir=str(d)).run()["finished"]
    assert checkpoint_steps(d) == [20, 40, 60]
    return d
