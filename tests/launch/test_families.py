"""Every model family of the paper through launch/run.py at its CPU scale.

Amos trains each family's CPU-scale experiment (gin_configs/experiments/<family>_cpu.gin)
cut to 30 steps: the loss falls, evaluation runs, the run of the families with extra state
resumes from its checkpoint. The same configuration with AdamW is built by `--dry_run`
(shapes only), and Amos' slots stay within the paper's memory claim against AdamW's. AdamW
itself trains in the quickstart, compare, sweep, GLUE and fine-tuning tests and in every
sweep of the study; here only its family configuration is the question, and a dry run
answers it in a few seconds where training would cost about 20.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.launch.harness_helpers import dry_run_slot_bytes, metrics, run_cmd, run_in_process

pytestmark = pytest.mark.slow  # Half a minute per family: `make test-all` runs them.

# Every family's CPU-scale experiment, found from the files: a new family's
# gin_configs/experiments/<family>_cpu.gin is tested without an edit here. Variants of a
# family's experiment (`schedules_nanogpt_cpu`, `t5_seqio_cpu`: a word more) have their
# own tests.
EXPERIMENTS = Path(__file__).resolve().parents[2] / "gin_configs" / "experiments"
FAMILIES = sorted(
    p.name.removesuffix("_cpu.gin") for p in EXPERIMENTS.glob("*_cpu.gin") if p.name.count("_") == 1
)
RESUMED = ["lstm", "resnet"]
SHORT = [
    "--gin.EVAL_EVERY=15",
    "--gin.CHECKPOINT_EVERY=15",
    "--gin.EVAL_BATCHES=2",
    "--gin.LOG_EVERY=5",
]


def command(family: str, optimizer: str, model_dir: Path, steps: int = 30) -> list[str]:
    """launch/run.py's command line. The runs are in this process (`run_in_process`: no
    interpreter start and imports per run)."""
    return run_cmd(
        model_dir,
        *SHORT,
        "--gin.WARMUP_STEPS=3",
        experiment=f"{family}_cpu",
        optimizer=optimizer,
        steps=steps,
        tiny=False,
    )


def run_py(cmd: list[str], capsys) -> str:
    """run.py's stdout; a nonzero exit fails with its stderr."""
    p = run_in_process(cmd, capsys)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_evaluates_and_resumes(family: str, tmp_path: Path, request, capsys):
    config = (EXPERIMENTS / f"{family}_cpu.gin").read_text()
    images = "data/digits.gin" in config  # The others train on the shared Tiny Shakespeare.
    if not images:
        request.getfixturevalue("shakespeare")
    model_dir = tmp_path / "amos"
    run_py(command(family, "amos", model_dir), capsys)
    records = metrics(model_dir)
    losses = [r["loss"] for r in records if r["split"] == "train" and "loss" in r]
    assert losses[-1] < losses[0], losses
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [15, 30]
    assert all(r["loss"] == r["loss"] for r in evals)  # Finite, not NaN.
    if not images:
        # Eval loss is per token whatever the training objective (T5's is a sum over
        # hundreds of targets), so it stays near or below the uniform loss log(vocab)
        # (vocabularies here are at most 5000 words) and perplexity is exp(loss).
        assert all(r["loss"] < math.log(5000) + 1.0 for r in evals), evals
        for r in evals:
            assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-6)

    # The run continues from its step-30 checkpoint rather than starting over: here for
    # the families with state beyond parameters and slots (the LSTM's carried state, the
    # ResNet's batch statistics); resuming itself is tested in tests/launch/test_run.py
    # (SIGKILL, exact) and test_faults.py.
    if family in RESUMED:
        resumed = run_py(command(family, "amos", model_dir, steps=36), capsys)
        assert "resumed from checkpoint at step 30" in resumed
        steps = [r["step"] for r in metrics(model_dir) if r["split"] == "eval"]
        assert steps == [15, 30, 36]

    # AdamW on the same files, from shapes: its slots against the ones Amos trained with.
    dry = run_py([*command(family, "adamw", tmp_path / "adamw"), "--dry_run"], capsys)
    amos_bytes = json.loads((model_dir / "run.json").read_text())["slot_bytes"]
    assert dry_run_slot_bytes(dry, "amos")[0] == amos_bytes
    ratio = amos_bytes / dry_run_slot_bytes(dry, "adamw")[0]
    # The paper's LSTM runs Amos without momentum: only factored slots. At this width (64)
    # the tied embedding's (vocab, 1) slots are 1.3% of AdamW's (0.3% at PTB size).
    assert ratio <= (0.02 if family == "lstm" else 0.51), ratio
