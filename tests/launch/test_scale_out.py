"""The scale-out switches of launch/trainer/ on tiny runs: mixed precision, gradient
accumulation, evaluation-only, the profiler window, fine-tuning from another run's
parameters, MODEL_DIR through etils.epath, and the per-target weighting of evaluation.

Most tests drive the tiny quickstart (harness_helpers.TINY) built once per module, its
steps compiled once and shared by copies of the Trainer (`Trainer.replace`)."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath

from experiments.bert.models import BertConfig, BertMlm
from experiments.data.sources import GeneratedTextSource
from experiments.data.text_tasks import MaskedLMTask
from experiments.errors import ConfigError
from experiments.gpt.models import GPT
from experiments.objectives import SequenceClassification
from experiments.task import ObjectiveTask
from launch import run as run_cli
from launch import run_lock, summary_writer
from launch import trainer as train_lib
from launch.optimizers import OptimizerSpec
from launch.summary_writer import ScalarWriter, read_metrics
from tests.launch.harness_helpers import TIMING, numbers, run_cmd

EVERY_10 = ["--gin.EVAL_EVERY=10", "--gin.CHECKPOINT_EVERY=10"]


def build_trainer(model_dir: Path, *extra: str, steps: int = 20, optimizer: str = "adamw"):
    """The Trainer launch/run.py builds for the tiny quickstart with `extra`."""
    argv = run_cmd(model_dir, *extra, steps=steps, optimizer=optimizer)[2:]
    args, bindings = run_cli.parse_args(argv)
    run_cli.load_gin(args.gin_file, bindings, [])
    return train_lib.train(build_only=True)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def float_dtypes(tree) -> set[str]:
    return {
        str(x.dtype)
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    }


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> train_lib.Trainer:
    """The tiny quickstart with AdamW, 50 steps, evaluations and checkpoints every 10;
    compiled once, run in several directories through copies (`Trainer.replace`)."""
    return build_trainer(tmp_path_factory.mktemp("unused") / "run", *EVERY_10, steps=50)


def run_in(trainer: train_lib.Trainer, model_dir, **settings) -> dict:
    stop_after = settings.pop("stop_after", None)
    return trainer.replace(model_dir=model_dir, **settings).run(stop_after=stop_after)


# ---------------------------------------------------------------- 1. mixed precision
@pytest.mark.slow  # two trainers compiled
def test_bfloat16_compute_tracks_float32_with_float32_params_and_slots(trainer, tmp_path: Path):
    bf16 = build_trainer(tmp_path / "bf16", *EVERY_10, "--gin.COMPUTE_DTYPE='bfloat16'", steps=50)
    assert bf16.config.compute_dtype == "bfloat16" and trainer.config.compute_dtype == "float32"
    batch = trainer.train_batch(1)
    # The compiled bf16 step computes its matmuls in bfloat16; the float32 one has none.
    assert "bf16" in bf16.train_step.lower(bf16.init_state(0), batch).as_text()
    assert "bf16" not in trainer.train_step.lower(trainer.init_state(0), batch).as_text()
    losses = {}
    for name, t in (("f32", trainer), ("bf16", bf16)):
        state, run = t.init_state(0), []
        for step in range(1, 51):
            state, metrics = t.train_step(state, t.train_batch(step))
            run.append(float(metrics["loss"]))
        losses[name] = np.asarray(run).reshape(5, 10).mean(axis=1)  # As logged: 10-step means.
        # Parameters and AdamW's moments stay float32.
        assert float_dtypes(state.params) == float_dtypes(state.opt_state) == {"float32"}, name
    a, b = losses["f32"], losses["bf16"]
    # The bf16 run learns (from ln 65 = 4.17) as the f32 one does, and stays within a few
    # percent of it over the 50 steps (measured: at most 5e-5 apart, 1.3e-4 step by step).
    assert b[-1] < b[0] - 0.25 and a[-1] < a[0] - 0.25
    assert np.max(np.abs(b / a - 1)) < 0.02, (a, b)


def test_bfloat16_amos_keeps_its_slots_float32(tmp_path: Path):
    """Amos' slots (m, v, b) after a bf16 step, from the step's output shapes (traced,
    not compiled). Amos itself amplifies any float difference at the quickstart's xi (see
    test_sharding.py), so its bf16 losses drift from f32 by a few percent after 30 steps."""
    bf16 = build_trainer(tmp_path / "r", "--gin.COMPUTE_DTYPE='bfloat16'", optimizer="amos")
    state, _ = jax.eval_shape(bf16.train_step, bf16.abstract_state, bf16.train_batch(1))
    assert float_dtypes(state.params) == float_dtypes(state.opt_state) == {"float32"}


def test_compute_model_uses_a_models_own_dtype():
    config = BertConfig.from_size("tiny", num_layers=1, hidden_size=32, mlp_dim=64)
    bert = train_lib.compute_model(BertMlm(config), "bfloat16")
    assert bert.config.dtype == jnp.bfloat16 and bert.config.hidden_size == 32
    gpt = GPT(65, block_size=8, num_layers=1, num_heads=2, width=16)
    assert train_lib.compute_model(gpt, "bfloat16") is gpt  # No dtype: cast at the loss.
    assert train_lib.compute_model(gpt, "float32") is gpt
    ids = jnp.ones((2, 8), jnp.int32)
    # Shapes and dtypes only (traced, nothing compiled).
    params = jax.eval_shape(BertMlm(config).init, jax.random.key(0), ids)["params"]
    assert float_dtypes(params) == {"float32"}  # Created float32 whatever the dtype.
    assert jax.eval_shape(bert.apply, {"params": params}, ids).dtype == jnp.bfloat16
    gpt_params = jax.eval_shape(gpt.init, jax.random.key(0), ids)["params"]
    cast = jax.eval_shape(lambda p: train_lib.cast_floats(p, "bfloat16"), gpt_params)
    assert float_dtypes(cast) == {"bfloat16"}
    assert jax.eval_shape(gpt.apply, {"params": cast}, ids).dtype == jnp.bfloat16


# ---------------------------------------------------------------- 2. accumulation
def _init(task, model, tx, batch_size: int) -> train_lib.TrainState:
    example = train_lib.example_batch_shapes(task, seed=0, batch_size=batch_size, rows=slice(0, 1))
    init = functools.partial(
        train_lib.init_train_state, model=model, tx=tx, task=task, example_batch=example
    )
    return jax.jit(init, static_argnums=0)(0)  # Jitted, as the Trainer does: one compile.


def _steps(trainer: train_lib.Trainer, steps: int):
    state, losses = trainer.init_state(0), []
    for step in range(1, steps + 1):
        state, metrics = trainer.train_step(state, trainer.train_batch(step))
        losses.append(float(metrics["loss"]))
    return state, np.asarray(losses)


def _max_relative_difference(a, b) -> float:
    return max(
        float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-12))
        for x, y in zip(leaves(a), leaves(b), strict=True)
    )


@pytest.mark.parametrize("optimizer", ["amos", pytest.param("adamw", marks=pytest.mark.slow)])
def test_two_micro_batches_give_the_parameters_of_the_whole_batch(
    trainer, optimizer, tmp_path: Path
):
    """GRAD_ACCUM_STEPS=2 (two micro-batches of 4) against 1 on the same batches of 8,
    20 steps of the tiny quickstart with its optimizer settings: the losses, parameters
    and optimizer states agree to float32 rounding. They must: the loss is the per-target
    mean and both micro-batches have 4 x 16 targets, so the batch's mean loss is the mean
    of the two micro-batch means and its gradient the mean of theirs; only the order of
    the float32 sums differs."""
    if optimizer == "adamw":
        whole = trainer
    else:
        whole = build_trainer(tmp_path / "whole", *EVERY_10, steps=50, optimizer=optimizer)
    split = build_trainer(
        tmp_path / "split", *EVERY_10, "--gin.GRAD_ACCUM_STEPS=2", steps=50, optimizer=optimizer
    )
    assert split.config.grad_accum_steps == 2 and whole.config.grad_accum_steps == 1
    whole_state, whole_losses = _steps(whole, 20)
    split_state, split_losses = _steps(split, 20)
    assert whole_losses[-5:].mean() < whole_losses[:5].mean() - 0.1  # It trains (warming up).
    np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-5)
    # Measured: parameters at most 9e-7 of a variable's largest entry (both optimizers),
    # optimizer states 3e-7 (AdamW) and 6e-6 (Amos' v and b).
    assert _max_relative_difference(split_state.params, whole_state.params) < 1e-5
    assert _max_relative_difference(split_state.opt_state, whole_state.opt_state) < 1e-4
    assert int(split_state.step) == int(whole_state.step) == 20  # One update per step.


class _TinyMlm(nn.Module):
    """A masked-LM model as small as one can be (embedding, dense to the vocabulary): the
    relation tested is the objective's and the accumulation's, not the model's."""

    vocab_size: int

    @nn.compact
    def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
        x = nn.Embed(self.vocab_size, 16)(input_ids)
        x = x + nn.Dense(16)(jnp.mean(x, axis=1, keepdims=True))  # Rows see their sequence.
        return nn.Dense(self.vocab_size)(jnp.tanh(x))


def test_accumulation_is_exact_for_a_masked_lm_sum_over_sqrt_count():
    """BERT's masked-LM loss (experiments.objectives.MaskedLM) is sum / sqrt(masked
    tokens), and the micro-batches of a batch have different numbers of masked tokens: the
    batch's loss is not the mean of the micro-batches' losses, nor its gradient the mean
    of theirs. With SGD (the update is the gradient itself), K = 2 gives K = 1's loss and
    parameters to float32 rounding; the equal-weight mean of the micro-batch gradients
    is far off."""
    task = MaskedLMTask(GeneratedTextSource(num_chars=20_000), "byte", 32)
    assert task.objective.normalization == "sqrt"
    model, tx = _TinyMlm(task.model_kwargs()["vocab_size"]), optax.sgd(0.5)
    batches = [task.train_batch(seed=0, step=s, batch_size=8) for s in (1, 2, 3)]
    counts = [(b["weights"][0::2].sum(), b["weights"][1::2].sum()) for b in batches]
    assert all(a != b for a, b in counts), counts  # The micro-batches' counts differ.
    init = _init(task, model, tx, 8)

    def run(k: int):
        step = jax.jit(
            functools.partial(
                train_lib.train_step, model=model, tx=tx, task=task, grad_accum_steps=k
            )
        )
        state, losses = init, []
        for batch in batches:
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        return state, losses

    whole, whole_losses = run(1)
    split, split_losses = run(2)
    np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-5)
    assert _max_relative_difference(split.params, whole.params) < 1e-5

    @jax.jit
    def naive_step(state, batch):
        def micro_loss(params, micro):
            variables = {"params": params}
            return task.loss(model, variables, micro, train=True, rng=jax.random.key(0))[0]

        micros = train_lib.micro_batches(batch, 2)
        grads = [
            jax.grad(micro_loss)(state.params, {k: v[i] for k, v in micros.items()})
            for i in range(2)
        ]
        mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *grads)
        updates, opt_state = tx.update(mean, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    naive = init
    for batch in batches:
        naive = naive_step(naive, batch)
    assert _max_relative_difference(naive.params, whole.params) > 1e-3


def test_accumulation_settings_are_checked(tmp_path: Path, capsys):
    for extra, message in [
        (["--gin.GRAD_ACCUM_STEPS=3"], "BATCH_SIZE=8 is not divisible by GRAD_ACCUM_STEPS=3"),
        (["--gin.GRAD_ACCUM_STEPS=0"], "train.grad_accum_steps (GRAD_ACCUM_STEPS) must be"),
        (["--gin.COMPUTE_DTYPE='float16'"], "train.compute_dtype (COMPUTE_DTYPE) must be one of"),
        (["--gin.PROFILE_STEPS=5"], "steps 10..14 go past TRAIN_STEPS=12"),
        (["--gin.PROFILE_START=0", "--gin.PROFILE_STEPS=2"], "first traced step must be >= 1"),
        (["--gin.INIT_FROM_STEP=5"], "train.init_from_step (INIT_FROM_STEP)"),
    ]:
        argv = run_cmd(tmp_path / "run", *extra, steps=12)[2:]
        assert run_cli.main(argv) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 3. evaluation only
def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_eval_only_reproduces_the_final_evaluation_read_only(
    reference_run: Path, tmp_path: Path, capsys
):
    """On a finished run, with its lock held by a live process (as by a trainer still
    running there): the newest checkpoint's evaluation is final.json's, to the bit, and
    nothing of the run changes (checkpoints, metrics.jsonl, run.json, the lock)."""
    d = tmp_path / "run"
    shutil.copytree(reference_run, d)
    lock = d / "run.lock"
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": "now"}))
    before = _files(d)
    argv = run_cmd(d, "--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20", steps=120)[2:]
    capsys.readouterr()
    assert run_cli.main([*argv, "--eval_only"]) == 0
    out = capsys.readouterr().out
    assert f"eval-only: step 120 of {d}: loss " in out, out
    final = json.loads((d / "final.json").read_text())["eval"]
    written = json.loads((d / "eval_120.json").read_text())
    assert written["step"] == 120 and written["checkpoint"] == str(d / "checkpoints" / "120")
    assert written["eval"] == {k: v for k, v in final.items() if k not in TIMING}
    # The validation loss's standard error over its batches: small, but not nothing.
    assert 0 < written["loss_standard_error"]["val"] < 0.1 * written["eval"]["loss"]
    after = _files(d)
    assert after.pop("eval_120.json") and after == before


def test_eval_only_without_a_checkpoint_names_the_directory(tmp_path: Path, capsys):
    d = tmp_path / "never_trained"
    assert run_cli.main([*run_cmd(d, steps=20)[2:], "--eval_only"]) == 2
    err = capsys.readouterr().err
    assert f"MODEL_DIR '{d}' has no checkpoint to evaluate" in err, err
    assert not d.exists()


# ---------------------------------------------------------------- 4, 6. profiler, epath
def test_profile_resume_and_eval_only_with_an_epath_model_dir(trainer, tmp_path: Path, capsys):
    whole = tmp_path / "whole"
    assert run_in(trainer, str(whole), profile_steps=(3, 2))["finished"]
    assert "profiling steps 3..4 into" in capsys.readouterr().out
    runs = list((whole / "profile" / "plugins" / "profile").iterdir())
    assert len(runs) == 1
    assert list(runs[0].glob("*.xplane.pb")) and list(runs[0].glob("*.trace.json.gz"))
    # The same run in two calls, MODEL_DIR an etils.epath.Path: checkpoints, metrics.jsonl,
    # events and final.json written and read through it; a run that profiled has the
    # numbers of one that did not.
    halves = epath.Path(tmp_path / "halves")
    assert not run_in(trainer, halves, stop_after=25)["finished"]
    assert run_in(trainer, halves)["finished"]
    assert numbers(halves) == numbers(whole)
    assert sorted(p.name for p in (halves / "checkpoints").iterdir()) == ["30", "40", "50"]
    assert [p.name for p in (halves / "train").iterdir()]  # TensorBoard events.
    result = trainer.replace(model_dir=halves).evaluate_checkpoint()
    final = json.loads((halves / "final.json").read_text())["eval"]
    assert result["step"] == 50
    assert result["eval"] == {k: v for k, v in final.items() if k not in TIMING}
    assert json.loads((halves / "eval_50.json").read_text())["eval"] == result["eval"]


def test_writer_lock_and_json_helpers_on_epath_and_object_store_branches(
    tmp_path: Path, monkeypatch, capsys
):
    """The helpers take `epath.Path`s; and their object-store branch (a cloud MODEL_DIR:
    no append, no exclusive create, no rename aside), run here on a local directory, gives
    the same files."""
    records = [
        ("train", 1, {"loss": 2.5}),
        ("eval", 1, {"loss": 2.0}),
        ("train", 2, {"loss": 2.25}),
    ]
    expected = [{"step": s, "split": split, **v} for split, s, v in records[:2]]
    expected.append({"step": 2, "split": "train", "loss": 9.0})

    def exercise(d: epath.Path) -> None:
        writer = ScalarWriter(d)
        for split, step, values in records:
            writer.write(split, step, values)
        writer.restart_at(1)  # Drops step 2, as a resume from a step-1 checkpoint does.
        writer.write("train", 2, {"loss": 9.0})
        writer.close()
        assert read_metrics(d) == expected
        assert (d / "metrics.jsonl").read_text().count("\n") == 3
        summary_writer.write_json(d / "run.json", {"status": "running", "n": 1})
        assert summary_writer.read_json(d / "run.json") == {"status": "running", "n": 1}
        assert not (d / "run.json.tmp").exists()
        with run_lock.acquire(d, chief=True) as lock:
            assert lock.held and json.loads((d / "run.lock").read_text())["pid"] == os.getpid()
        assert not (d / "run.lock").exists()
        host = socket.gethostname()
        (d / "run.lock").write_text(json.dumps({"pid": 1, "host": host}))  # Alive.
        with pytest.raises(ConfigError, match=f"in use by another run, pid 1@{host}"):
            run_lock.acquire(d, chief=True)
        (d / "run.lock").write_text(json.dumps({"pid": _dead_pid(), "host": host}))
        run_lock.acquire(d, chief=True).release()  # A dead holder's lock is taken over.
        assert "taking over the stale lock" in capsys.readouterr().err
        assert not (d / "run.lock").exists()

    exercise(epath.Path(tmp_path / "local"))
    monkeypatch.setattr(summary_writer, "is_local", lambda path: False)
    monkeypatch.setattr(run_lock, "_is_local", lambda path: False)
    exercise(epath.Path(tmp_path / "object_store"))
    # A gs:// MODEL_DIR itself, against a local emulator: tests/launch/test_gcs.py.


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- 5. init_from
def _save_params(model_dir: Path, step: int, params) -> None:
    """A checkpoint as the trainer writes it, holding only parameters (what init_from
    reads of another run's state)."""
    manager = ocp.CheckpointManager(str(model_dir / "checkpoints"))
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params}),
            meta=ocp.args.JsonSave({"train_time_s": 0.0}),
        ),
    )
    manager.wait_until_finished()
    manager.close()


def test_init_from_copies_matching_variables_and_keeps_the_rest_fresh(
    trainer, tmp_path: Path, capsys
):
    pre = tmp_path / "pretrained"
    run_in(trainer, str(pre), stop_after=10)  # A checkpoint at step 10.
    fresh = trainer.init_state(0)
    tuned = trainer.replace(model_dir=str(tmp_path / "ft"), init_from=str(pre))
    capsys.readouterr()
    state = tuned.initial_state()
    n = len(leaves(fresh.params))  # 15: the tiny GPT's two blocks, embeddings, final norm.
    assert f"loaded {n} of the model's {n} variables; fresh (initialized here): none" in (
        capsys.readouterr().out
    )
    restored = ocp.StandardCheckpointer().restore(str(pre / "checkpoints" / "10" / "state"))
    for a, b in zip(leaves(state.params), leaves(restored["params"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The optimizer state is new (AdamW's count 0, zero moments), not the checkpoint's.
    for a, b in zip(leaves(state.opt_state), leaves(fresh.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 0

    # Only some variables in the checkpoint, and one the model lacks.
    params = jax.device_get(fresh.params)
    part = tmp_path / "part"
    embedding = np.full_like(params["wte"]["embedding"], 0.5)
    _save_params(part, 7, {"wte": {"embedding": embedding}, "head": {"kernel": np.ones((3, 2))}})
    state = tuned.replace(init_from=str(part)).initial_state()
    out = capsys.readouterr().out
    assert f"(step 7): loaded 1 of the model's {n} variables; fresh (initialized here): " in out
    assert "unused from the checkpoint: head/kernel" in out and "wpe/embedding" in out
    np.testing.assert_array_equal(state.params["wte"]["embedding"], embedding)
    np.testing.assert_array_equal(state.params["wpe"]["embedding"], params["wpe"]["embedding"])

    # Another shape, no shared variable, a missing step, nothing there: ConfigErrors.
    vocab, width = params["wte"]["embedding"].shape
    wide = tmp_path / "wide"
    _save_params(wide, 3, {"wte": {"embedding": np.zeros((vocab, width + 1), np.float32)}})
    with pytest.raises(ConfigError) as e:
        tuned.replace(init_from=str(wide)).initial_state()
    assert f"wte/embedding: ({vocab}, {width + 1}) in the checkpoint, ({vocab}, {width}) in " in (
        str(e.value)
    )
    assert "train.init_from (INIT_FROM)" in str(e.value)
    other = tmp_path / "other"
    _save_params(other, 3, {"encoder": {"kernel": np.zeros((4, 4), np.float32)}})
    with pytest.raises(ConfigError, match=r"shares no variable with the model \(checkpoint: "):
        tuned.replace(init_from=str(other)).initial_state()
    with pytest.raises(ConfigError, match=r"INIT_FROM_STEP\) = 4: .* has the steps \[3\]"):
        tuned.replace(init_from=str(other), init_from_step=4).initial_state()
    with pytest.raises(ConfigError, match="no checkpoint to start from"):
        tuned.replace(init_from=str(tmp_path / "nothing")).initial_state()


def test_init_from_a_flax_checkpoint_loads_its_params(trainer, tmp_path: Path, capsys):
    """A Flax/Orbax PyTree checkpoint of {'params': ...} (launch/pretrained.py), laid out
    in the run's shardings."""
    fresh = jax.device_get(trainer.init_state(0).params)
    params = jax.tree_util.tree_map(lambda x: np.full_like(x, 0.25), fresh)
    ocp.PyTreeCheckpointer().save(str(tmp_path / "flax"), {"params": params, "step": 9})
    tuned = trainer.replace(model_dir=str(tmp_path / "ft"), init_from=str(tmp_path / "flax"))
    capsys.readouterr()
    state = tuned.initial_state()
    n = len(leaves(fresh))
    assert f"(Flax checkpoint): loaded {n} of the model's {n} variables" in capsys.readouterr().out
    for a, b in zip(leaves(state.params), leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tuned.init_report["checkpoint"] == "Flax checkpoint"


def test_init_from_is_ignored_when_the_run_resumes(trainer, tmp_path: Path, capsys):
    d = tmp_path / "ft"
    run_in(trainer, str(d), stop_after=10)
    resumed = run_in(trainer, str(d), init_from=str(tmp_path / "nothing_there"))
    assert resumed["finished"]  # Its own checkpoint: init_from is not read.
    out = capsys.readouterr().out
    assert "resumed from checkpoint at step 10" in out and "fresh (initialized here)" not in out


# ---------------------------------------------------------------- 7. eval weighting
class _PaddedTask(ObjectiveTask):
    """GLUE-like: one label per text, a validation split of 20 examples read in batches
    of 8, the last batch completed with 4 padding rows of weight 0 (GlueTask's layout)."""

    unit_name, units_per_example = "examples", 1

    def __init__(self):
        self.objective = SequenceClassification()
        rng = np.random.default_rng(0)
        self.ids = rng.integers(1, 50, (20, 12)).astype(np.int32)
        self.labels = (self.ids[:, 0] % 2).astype(np.int32)

    def model_kwargs(self):
        return {}

    def _batch(self, positions: np.ndarray) -> dict:
        valid = positions < len(self.labels)
        picks = np.where(valid, positions, 0)
        ids = np.where(valid[:, None], self.ids[picks], 0).astype(np.int32)
        return {
            "input_ids": ids,
            "segment_ids": np.zeros_like(ids),
            "attention_mask": (ids > 0).astype(np.int32),
            "labels": np.where(valid, self.labels[picks], 0).astype(np.int32),
            "weights": valid.astype(np.float32),
        }

    def train_batch(self, *, seed, step, batch_size, rows=None):
        return self._batch(np.arange(batch_size) % len(self.labels))

    def eval_batch(self, split, *, seed, index, batch_size, rows=None):
        return self._batch(index * batch_size + np.arange(batch_size))


class _TinyClassifier(nn.Module):
    @nn.compact
    def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
        x = nn.Embed(50, 16)(input_ids) * attention_mask[..., None]
        pooled = x.sum(axis=1) / jnp.maximum(attention_mask.sum(axis=1, keepdims=True), 1)
        return nn.Dense(2, kernel_init=nn.initializers.normal(3.0))(pooled)


def test_evaluation_is_the_exact_per_target_mean_over_a_padded_split(tmp_path: Path):
    task = _PaddedTask()
    config = train_lib.TrainConfig(
        model_dir=str(tmp_path / "run"),
        train_steps=1,
        batch_size=8,
        model=_TinyClassifier,
        task=task,
        optimizer=lambda steps: OptimizerSpec("sgd", optax.sgd(0.1), lambda t: 0.1),
        eval_batches=3,  # 8 + 8 + 4 real examples.
    )
    trainer = train_lib.Trainer(config)
    state = trainer.init_state(0)
    batches = trainer._eval_batches()
    assert [float(b["weights"].sum()) for b in batches["val"]] == [8.0, 8.0, 4.0]
    result = trainer.evaluate(state, batches)
    # The 20 examples in one batch without padding: the per-example mean itself.
    one_batch = task.eval_batch("val", seed=0, index=0, batch_size=20)
    counted = jax.jit(functools.partial(train_lib.eval_step, model=trainer.model, task=task))
    exact_loss, exact_accuracy, count = jax.device_get(counted(state, one_batch))
    assert count == 20
    assert math.isclose(result["loss"], float(exact_loss), rel_tol=1e-6)
    assert math.isclose(result["accuracy"], float(exact_accuracy), rel_tol=1e-6)
    # The mean of the three batch means (what the trainer reported before) weighs the four
    # examples of the last batch twice as much: measured 3.7% off.
    means = [jax.device_get(trainer.eval_step(state, b)) for b in batches["val"]]
    naive = float(np.mean([m[0] for m in means]))
    assert abs(naive / float(exact_loss) - 1) > 1e-2, (naive, exact_loss)
    assert train_lib.weighted_means(means) == (result["loss"], result["accuracy"])


def test_the_standard_error_of_a_weighted_mean_over_batches():
    # Two batches of 4 and 2 targets, losses 1.0 and 2.5: mean (4 + 5) / 6 = 1.5;
    # sqrt(2 / 1 * (4**2 * 0.5**2 + 2**2 * 1.0**2)) / 6 = sqrt(16) / 6.
    got = train_lib.weighted_standard_error([(1.0, 0.0, 4.0), (2.5, 0.0, 2.0)])
    assert math.isclose(got, 4 / 6)
    assert train_lib.weighted_standard_error([(1.0, 0.0, 4.0)]) is None  # One batch.
    assert train_lib.weighted_standard_error([(1.0, 0.0, 4.0), (1.0, 0.0, 2.0)]) == 0.0
