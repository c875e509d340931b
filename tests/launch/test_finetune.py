"""Fine-tuning end to end: a tiny BERT masked LM pre-trained on Tiny Shakespeare
(experiments/bert_cpu.gin cut to tiny), then BertClassifier fine-tuned from it on the tiny
tfds GLUE SST-2 of tests/experiments/test_glue.py with `INIT_FROM` pointing at the MLM
run: the encoder starts as the pre-trained one, the head fresh, and the run trains; the
evaluation of GLUE's padded last batch is the exact per-example mean."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch import run as run_cli
from launch import trainer as train_lib
from launch.trainer import finetune
from tests.launch.harness_helpers import metrics, run_cmd

pytestmark = pytest.mark.slow  # Two BERT runs: about two minutes on 2 cores.

tfds = pytest.importorskip("tensorflow_datasets")
from tests.experiments.test_glue import TINY_RUN, TinyGlue  # noqa: E402

HEAD = ["classifier/bias", "classifier/kernel", "pooler/bias", "pooler/kernel"]
STEPS = 200  # Pre-training. After 40 steps the encoder's zero-initialized value kernels
# (BERT's reference init) have hardly grown, every [CLS] state is nearly the same and 40
# fine-tuning steps stay at chance; after 200 they learn the task.


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds"))
    TinyGlue(config="sst2", data_dir=path).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return path


def pretrain_argv(model_dir: Path, corpus: Path) -> list[str]:
    """bert_cpu (the tiny encoder's masked LM on Tiny Shakespeare) cut to STEPS steps of
    8 examples of 32 bytes; the byte tokenizer, which the GLUE task reads too."""
    extra = [
        f"--gin.CORPUS_PATH='{corpus}'",
        "--gin.TOKENIZER='byte'",
        "--gin.SEQ_LENGTH=32",
        "--gin.BATCH_SIZE=8",
        "--gin.WARMUP_STEPS=3",
        f"--gin.EVAL_EVERY={STEPS // 2}",
        f"--gin.CHECKPOINT_EVERY={STEPS // 2}",
        "--gin.EVAL_BATCHES=2",
        "--gin.LOG_EVERY=10",
    ]
    return run_cmd(model_dir, *extra, experiment="bert_cpu", steps=STEPS, tiny=False)[2:]


def finetune_argv(model_dir: Path, glue_dir: str, init_from: Path, *extra: str) -> list[str]:
    """bert_base_glue cut to tiny (test_glue.TINY_RUN: batches of 8, evaluation on the 20
    validation examples in 3 batches of 8, the last padded) with 40 steps at AdamW 3e-3,
    the position table of the pre-trained model's 32 rows, starting from `init_from`."""
    return [
        "--gin_file=experiments/bert_base_glue.gin",
        "--optimizer=adamw",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.DATA_DIR='{glue_dir}'",
        *TINY_RUN,
        "--gin.TRAIN_STEPS=40",
        "--gin.EVAL_EVERY=20",
        "--gin.CHECKPOINT_EVERY=40",
        "--gin.ADAMW_LR=3e-3",
        "--gin.MAX_POSITIONS=32",
        f"--gin.INIT_FROM='{init_from}'",
        *extra,
    ]


def build(argv: list[str]) -> train_lib.Trainer:
    args, bindings = run_cli.parse_args(argv)
    run_cli.load_gin(args.gin_file, bindings, [])
    return train_lib.train(build_only=True)


def flat(params) -> dict[str, np.ndarray]:
    paths, leaves, _ = finetune._named_leaves(params)
    return {"/".join(p): np.asarray(x) for p, x in zip(paths, leaves, strict=True)}


def test_bert_classifier_fine_tunes_from_a_pretrained_masked_lm(
    shakespeare: Path, glue_dir: str, tmp_path: Path, capsys
):
    mlm = tmp_path / "mlm"
    assert run_cli.main(pretrain_argv(mlm, shakespeare)) == 0
    pretrained = flat(
        ocp.StandardCheckpointer().restore(str(mlm / "checkpoints" / str(STEPS) / "state"))[
            "params"
        ]
    )
    assert any(k.startswith("mlm_head/") for k in pretrained)

    # A position table of another size (64 rows against the pre-trained 32) is named.
    capsys.readouterr()
    wrong = finetune_argv(tmp_path / "wrong", glue_dir, mlm, "--gin.MAX_POSITIONS=64")
    assert run_cli.main(wrong) == 2
    err = capsys.readouterr().err
    assert "train.init_from (INIT_FROM)" in err and f"(step {STEPS})" in err, err
    assert "position_embedder/embedding: (32, 128) in the checkpoint, (64, 128) in the model" in err

    # Step 0 of the fine-tune: the encoder is the pre-trained one, the head its own init.
    ft = tmp_path / "ft"
    argv = finetune_argv(ft, glue_dir, mlm)
    trainer = build(argv)
    start = flat(trainer.initial_state().params)
    out = capsys.readouterr().out
    fresh = flat(trainer.init_state(trainer.config.seed).params)
    encoder = [k for k in start if k not in HEAD]
    assert sorted(set(start) - set(encoder)) == HEAD
    assert f"loaded {len(encoder)} of the model's {len(start)} variables" in out, out
    assert f"fresh (initialized here): {', '.join(HEAD)}" in out
    assert "unused from the checkpoint: mlm_head/" in out
    for k in encoder:
        np.testing.assert_array_equal(start[k], pretrained[k], err_msg=k)
    for k in HEAD:
        np.testing.assert_array_equal(start[k], fresh[k], err_msg=k)
    # The pre-training changed the encoder: loading it is not the fresh initialization.
    assert any(not np.array_equal(start[k], fresh[k]) for k in encoder)

    # The fine-tuning run trains.
    assert run_cli.main(argv) == 0
    assert "init_from" in capsys.readouterr().out
    records = metrics(ft)
    train = [r["loss"] for r in records if r["split"] == "train" and "loss" in r]
    evals = [r for r in records if r["split"] == "eval"]
    final = json.loads((ft / "final.json").read_text())
    assert final["finished"] and final["step"] == 40
    # Measured: the training loss (sum / sqrt(8)) from 2.00 to 1.12, the validation loss
    # from ln 2 (zero logits at init) to 0.47 with accuracy 0.8.
    assert train[-1] < train[0] - 0.3, train
    assert evals[-1]["loss"] < 0.85 * math.log(2) and evals[-1]["accuracy"] >= 0.7, evals

    # GLUE's padded validation (20 examples: 8 + 8 + 4 real) is weighted per example:
    # the final evaluation is the mean over the 20 examples in one batch.
    checkpointer = train_lib.Checkpointer(
        trainer.replace(model_dir=str(ft)).checkpoint_dir,
        keep=3,
        abstract_state=trainer.abstract_state,
        state_finite=trainer.state_finite,
        is_chief=True,
        read_only=True,
    )
    state, _, step = checkpointer.restore()
    checkpointer.close()
    assert step == 40
    batch = trainer.task.eval_batch("val", seed=0, index=0, batch_size=20)
    assert batch["weights"].sum() == 20
    counted = jax.jit(
        functools.partial(train_lib.eval_step, model=trainer.model, task=trainer.task)
    )
    loss, accuracy, _ = jax.device_get(counted(state, batch))
    assert math.isclose(final["eval"]["loss"], float(loss), rel_tol=1e-6)
    assert math.isclose(final["eval"]["accuracy"], float(accuracy), rel_tol=1e-6)
