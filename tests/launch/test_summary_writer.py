"""The scalar writer: TensorBoard-readable event files and metrics.jsonl, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launch.summary_writer import ScalarWriter, read_metrics
from launch.trainer.metrics import progress_losses

REPO = Path(__file__).resolve().parents[2]


def test_writing_scalars_does_not_import_tensorflow(tmp_path: Path):
    # TensorFlow is installed (for seqio and tfds); tensorboard's own writer would import
    # it, which costs every run seconds at start-up.
    script = textwrap.dedent(
        f"""
        import sys
        from launch.summary_writer import ScalarWriter
        writer = ScalarWriter({str(tmp_path)!r})
        writer.write("train", 1, {{"loss": 2.5}})
        writer.close()
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_events_and_jsonl_hold_the_same_scalars_after_a_restart(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = ScalarWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(
            "train", step, {"loss": 10.0 - step, "token_loss": 5.0 - step, "accuracy": 0.1 * step}
        )
    writer.write("eval", 3, {"loss": 6.5})
    writer.close()
    # A restarted run goes back to step 2: later points are dropped from both records.
    writer = ScalarWriter(str(tmp_path))
    writer.restart_at(2)
    writer.write("train", 3, {"loss": 6.75, "token_loss": 1.5, "accuracy": 0.25})
    writer.close()

    records = read_metrics(str(tmp_path))
    assert [(r["split"], r["step"], r["loss"]) for r in records] == [
        ("train", 1, 9.0),
        ("train", 2, 8.0),
        ("train", 3, 6.75),
    ]
    train = EventAccumulator(str(tmp_path / "train"))
    train.Reload()
    # TensorBoard's train `loss` is the per-token loss (comparable with eval's `loss`), the
    # record's `loss` (the objective as normalized) is `objective`.
    assert [(e.step, e.value) for e in train.Scalars("objective")] == [
        (1, 9.0),
        (2, 8.0),
        (3, 6.75),
    ]
    assert [(e.step, e.value) for e in train.Scalars("loss")] == [(1, 4.0), (2, 3.0), (3, 1.5)]
    assert "token_loss" not in train.Tags()["scalars"]
    accuracy = [e.value for e in train.Scalars("accuracy")]
    assert accuracy == pytest.approx([0.1, 0.2, 0.25], rel=1e-6)  # Stored as float32.
    evals = EventAccumulator(str(tmp_path / "eval"))
    evals.Reload()
    assert "loss" not in evals.Tags()["scalars"] or not evals.Scalars("loss")
    assert all(p.name.startswith("events.out.tfevents.") for p in (tmp_path / "train").iterdir())


def test_progress_line_names_losses_as_tensorboard_does():
    # Masked LM: the objective is sum / sqrt(count); the line's `loss` is per target.
    assert progress_losses({"loss": 50.4391, "token_loss": 2.9612}) == (
        "loss 2.9612 | objective 50.4391"
    )
    # A per-target mean objective is one number: said once.
    assert progress_losses({"loss": 1.25, "token_loss": 1.25}) == "loss 1.2500"
