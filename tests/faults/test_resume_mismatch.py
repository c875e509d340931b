"""A resume that no checkpoint fits (the model changed) ends in one line, last, naming
the directory and the first mismatch; the libraries' noise only with --verbose."""

from __future__ import annotations

import pytest

from tests.launch.harness_helpers import run, run_cmd

pytestmark = pytest.mark.slow


def test_a_changed_model_on_resume_is_one_line(tmp_path):
    d = tmp_path / "run"
    every_20 = ["--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20"]
    first = run(run_cmd(d, *every_20, steps=40), timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    wider = run(run_cmd(d, *every_20, "--gin.gpt_model.width=48", steps=60), timeout=120)
    assert wider.returncode == 2
    lines = [line for line in wider.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, wider.stderr[-5000:]
    assert lines[0].startswith(f"ERROR: configuration: no checkpoint in {d / 'checkpoints'}")
    assert "is not compatible with the stored shape" in lines[0]
    assert "strict=False" not in lines[0]  # orbax's advice for its own API is cut.
    verbose = run(
        run_cmd(d, *every_20, "--gin.gpt_model.width=48", "--verbose", steps=60), timeout=120
    )
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
