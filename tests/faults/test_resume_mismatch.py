"""A resume with another model ends in one line: the configuration check names the
binding; allowed past it, the checkpoints that do not fit are named with the first
mismatch, the recorded change is taken back, and the libraries' noise shows only with
--verbose."""

from __future__ import annotations

import json

import pytest

from tests.launch.harness_helpers import run, run_cmd

pytestmark = pytest.mark.slow


def test_a_changed_model_on_resume_is_one_line(tmp_path):
    d = tmp_path / "run"
    every_20 = ["--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20"]
    first = run(run_cmd(d, *every_20, steps=40), timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = (d / "config.gin").read_text()
    # Refused by the configuration check before anything is read or written...
    wider = run(run_cmd(d, *every_20, "--gin.gpt_model.width=48", steps=60), timeout=120)
    assert wider.returncode == 2
    assert "gpt_model.width: 32 -> 48" in one_line(wider.stderr)
    # ...and, allowed past it, by the checkpoints themselves: one line, and the recorded
    # change is taken back (nothing resumed).
    allowed = [*every_20, "--gin.gpt_model.width=48", "--allow_config_change"]
    fits_not = run(run_cmd(d, *allowed, steps=60), timeout=120)
    assert fits_not.returncode == 2
    line = one_line(fits_not.stderr, after="WARNING: resuming at step 40")
    assert line.startswith(f"ERROR: configuration: no checkpoint in {d / 'checkpoints'}")
    assert "is not compatible with the stored shape" in line
    assert "strict=False" not in line  # orbax's advice for its own API is cut.
    assert (d / "config.gin").read_text() == recorded
    assert not list(d.glob("config.before_step_*"))
    assert "config_changes" not in json.loads((d / "run.json").read_text())
    verbose = run(run_cmd(d, *allowed, "--verbose", steps=60), timeout=120)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def one_line(stderr: str, after: str | None = None) -> str:
    """The one line of `stderr` (after a first line starting with `after`, if given)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if after is not None:
        assert lines and lines[0].startswith(after), stderr[-5000:]
        lines = lines[1:]
    assert len(lines) == 1, stderr[-5000:]
    return lines[0]
