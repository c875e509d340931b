"""The trainer's pure steps, the ('data', 'fsdp') mesh and its shardings, and run.py --dry_run.

The eight-device tests run in subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the device count is fixed when JAX
starts), like tests/launch/test_run.py's data-parallel test.
"""

from __future__ import annotations

import functools
import json
import math
import re
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from experiments.data.char_text import CharTextTask
from experiments.errors import ConfigError
from experiments.gpt.models import GPT
from launch import run as run_cli
from launch import sharding
from launch import trainer as train_lib
from tests.launch.harness_helpers import (
    PYTHON,
    REPO,
    TIMING,
    dry_run_slot_bytes,
    env_with,
    run,
    run_cmd,
)

EIGHT = env_with(XLA_FLAGS="--xla_force_host_platform_device_count=8")


# ---------------------------------------------------------------- the pure steps
@pytest.fixture(scope="module")
def tiny():
    """A one-layer GPT on generated text, with Adam, built without gin."""
    task = CharTextTask(block_size=16, generated_chars=20_000)
    model = GPT(
        task.model_kwargs()["vocab_size"], block_size=16, num_layers=1, num_heads=2, width=32
    )
    tx = optax.adam(3e-3)
    example = train_lib.example_batch_shapes(task, seed=0, batch_size=8, rows=slice(0, 1))
    state = train_lib.init_train_state(0, model=model, tx=tx, task=task, example_batch=example)
    return task, model, tx, state


def test_train_step_called_directly_lowers_the_loss_and_counts_steps(tiny):
    task, model, tx, state = tiny
    step = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx, task=task))
    evaluate = jax.jit(functools.partial(train_lib.eval_step, model=model, task=task))
    held_out = task.eval_batch("val", seed=0, index=0, batch_size=32)
    before, _, _ = evaluate(state, held_out)
    assert int(state.step) == 0
    losses = []
    for s in range(1, 81):
        state, metrics = step(state, task.train_batch(seed=0, step=s, batch_size=8))
        assert int(state.step) == s
        assert bool(metrics["finite"]) and bool(metrics["update_finite"])
        losses.append(float(metrics["loss"]))
    assert isinstance(state, train_lib.TrainState)
    # From ln(vocab) = 4.04 (uniform) down clearly, on training and held-out batches.
    assert losses[0] == pytest.approx(math.log(task.model_kwargs()["vocab_size"]), abs=0.1)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5
    after, _, _ = evaluate(state, held_out)
    assert float(after) < float(before) - 0.5


def test_train_step_skips_a_nonfinite_step_but_counts_it(tiny):
    task, model, tx, state = tiny
    step = jax.jit(
        functools.partial(
            train_lib.train_step,
            model=model,
            tx=tx,
            task=task,
            skip_nonfinite=True,
            inject_nonfinite_at_steps=(1,),
        )
    )
    new, metrics = step(state, task.train_batch(seed=0, step=1, batch_size=8))
    assert not bool(metrics["finite"]) and int(new.step) == 1
    for a, b in zip(
        jax.tree_util.tree_leaves((state.params, state.opt_state)),
        jax.tree_util.tree_leaves((new.params, new.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    new, metrics = step(new, task.train_batch(seed=0, step=2, batch_size=8))
    assert bool(metrics["finite"]) and int(new.step) == 2


# ---------------------------------------------------------------- mesh and specs
def test_mesh_shapes_resolve_and_mistakes_name_the_binding():
    resolve = sharding.resolve_mesh_shape
    assert resolve({"data": -1, "fsdp": 1}, 8) == {"data": 8, "fsdp": 1, "model": 1}
    assert resolve({"data": 2, "fsdp": -1}, 8) == {"data": 2, "fsdp": 4, "model": 1}
    assert resolve({"fsdp": 8}, 8) == {"data": 1, "fsdp": 8, "model": 1}
    assert resolve({"data": 2, "fsdp": 2, "model": -1}, 8) == {"data": 2, "fsdp": 2, "model": 2}
    for shape, message in [
        ({"data": -1, "fsdp": 3}, "does not fit the 8 devices"),
        ({"data": -1, "model": 3}, "does not fit the 8 devices"),
        ({"data": 2, "fsdp": 2}, "makes 4 devices, but there are 8"),
        ({"data": -1, "fsdp": -1}, "only one axis can be -1"),
        ({"data": 0}, "must be a positive integer or -1"),
        ({"model": 0}, "the 'model' axis (MESH_MODEL) must be a positive integer"),
        ({"tensor": 2}, "unknown mesh axes ['tensor']"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as e:
            resolve(shape, 8)
        assert "train.mesh_shape (MESH_DATA, MESH_FSDP, MESH_MODEL)" in str(e.value)


def test_fsdp_spec_takes_the_largest_divisible_axis():
    spec = sharding.fsdp_spec
    assert spec((1024, 4096), 8, 4096) == P(None, "fsdp")
    assert spec((4096, 1024), 8, 4096) == P("fsdp", None)
    assert spec((1024, 1024), 8, 4096) == P("fsdp", None)  # The first of equal axes.
    assert spec((57, 32), 8, 1024) == P(None, "fsdp")  # 57 does not divide: the next.
    assert spec((57, 31), 8, 1024) == P()  # None divides: replicated.
    assert spec((1024,), 8, 4096) == P()  # Below the threshold: replicated.
    assert spec((4096,), 8, 4096) == P("fsdp")
    assert spec((4096, 1024), 1, 0) == P()  # No fsdp axis to split over.


def test_a_mesh_that_does_not_fit_is_a_configuration_error(tmp_path: Path, capsys):
    argv = run_cmd(tmp_path / "run", "--gin.MESH_FSDP=8", steps=20)[2:]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "train.mesh_shape (MESH_DATA, MESH_FSDP, MESH_MODEL)" in err, err
    assert "the 1 devices" in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- eight devices, fsdp = 8
# Builds the tiny quickstart Trainer as run.py does, measures the bytes its initial state
# holds per device (addressable shards), trains it, and with a split step also trains a
# second copy in two calls (a restart from the sharded checkpoint in between), reporting
# whether the restored arrays have the training shardings.
_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import amos
    from amos.tree import named_leaves, path_name
    from launch import run as run_cli, sharding, trainer as train_lib
    from tests.launch.harness_helpers import run_cmd

    base, optimizer, steps, split = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    argv = run_cmd(base + "/whole", *sys.argv[5:], optimizer=optimizer, steps=steps)[2:]
    args, bindings = run_cli.parse_args(argv)
    run_cli.load_gin(args.gin_file, bindings, [])
    trainer = train_lib.train(build_only=True)
    state = trainer.init_state(trainer.config.seed)
    out = {
        "devices": jax.device_count(),
        "layout": trainer.layout(),
        "params_per_device": sharding.addressable_bytes(state.params),
        "slots_per_device": sharding.addressable_bytes(state.opt_state),
        "param_bytes": {path_name(p): x.nbytes for p, x in named_leaves(state.params)[0]},
        "slot_bytes": amos.slot_bytes_by_variable(state.opt_state, state.params),
        "specs": {path_name(p): str(x.sharding.spec) for p, x in named_leaves(state.params)[0]},
    }
    del state
    trainer.run()
    if split:
        halves = trainer.replace(model_dir=base + "/halves")
        halves.run(stop_after=split)
        checkpointer = train_lib.Checkpointer(
            halves.checkpoint_dir, keep=3, abstract_state=halves.abstract_state,
            state_finite=halves.state_finite, is_chief=True)
        restored, _, step = checkpointer.restore()
        checkpointer.close()
        out["restored_step"] = step
        out["restored_shardings_match"] = all(
            x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(
                jax.tree_util.tree_leaves(restored),
                jax.tree_util.tree_leaves(halves.state_sharding), strict=True))
        del restored
        halves.run()
    print("RESULT " + json.dumps(out))
""")

STEPS = 200
# Every parameter of 1024 elements or more is split (the tiny GPT's kernels and its
# embedding); the position table (16 x 32) and the norm scales stay replicated.
FSDP_MIN = 1024
_BINDINGS = ["--gin.EVAL_EVERY=50", "--gin.CHECKPOINT_EVERY=100", f"--gin.FSDP_MIN_SIZE={FSDP_MIN}"]


def _train(model_dir: Path, optimizer: str, *, eight: bool, split: int = 0) -> dict:
    mesh = ["--gin.MESH_DATA=1", "--gin.MESH_FSDP=8"] if eight else []
    cmd = [PYTHON, "-c", _SCRIPT, str(model_dir), optimizer, str(STEPS), str(split)]
    p = run([*cmd, *_BINDINGS, *mesh], env=EIGHT if eight else env_with(), timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _records(model_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(model_dir: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in _records(model_dir) if r["split"] == "train" and "loss" in r
    }


def _final_eval(model_dir: Path) -> float:
    return json.loads((model_dir / "final.json").read_text())["eval"]["loss"]


def _check_bytes(one: dict, eight: dict) -> None:
    """Per device, the fsdp=8 state holds 1/8 of the replicated one's bytes, plus what
    stays replicated."""
    assert one["devices"] == 1 and eight["devices"] == 8
    assert eight["layout"]["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
    # Measured from the arrays' addressable shards = computed from the shard shapes.
    assert eight["params_per_device"] == eight["layout"]["param_bytes_per_device"]
    assert eight["slots_per_device"] == eight["layout"]["slot_bytes_per_device"]
    replicated = one["params_per_device"] + one["slots_per_device"]  # One device holds all.
    assert replicated == sum(one["param_bytes"].values()) + sum(one["slot_bytes"].values())
    per_device = eight["params_per_device"] + eight["slots_per_device"]
    # The small variables (under FSDP_MIN_SIZE elements) and their slots, the optimizer's
    # step counts (`<global>`): replicated by design.
    small = [name for name, n in one["param_bytes"].items() if n // 4 < FSDP_MIN]
    assert small and all(eight["specs"][name] == "P()" for name in small)
    assert all("fsdp" in eight["specs"][n] for n in one["param_bytes"] if n not in small)
    small_bytes = sum(one["param_bytes"][n] + one["slot_bytes"].get(n, 0) for n in small)
    small_bytes += one["slot_bytes"].get("<global>", 0)
    # Margin 1% of the state: Amos' factored slots (v and b, one row or column of a
    # matrix, or a scalar) are replicated where their full axis is not the split one
    # (measured 0.3% of the state above the bound without margin); AdamW needs none (its
    # moments split exactly like their parameters; measured 0.3% below it). Measured
    # ratios: AdamW 0.147, Amos 0.153 (small variables 2.5% of the state).
    bound = replicated / 8 + small_bytes + 0.01 * replicated
    assert per_device <= bound, (per_device, replicated, small_bytes)
    assert per_device / replicated < 0.2  # About 1/8: 0.125 + the small share (~4% here).


@pytest.mark.slow  # runs on 8 virtual devices
def test_fsdp8_adamw_matches_one_device_with_an_eighth_of_the_bytes(tmp_path: Path):
    one = _train(tmp_path / "one", "adamw", eight=False)
    eight = _train(tmp_path / "eight", "adamw", eight=True)
    _check_bytes(one, eight)
    a, b = _losses(tmp_path / "one" / "whole"), _losses(tmp_path / "eight" / "whole")
    assert sorted(a) == sorted(b) == list(range(10, STEPS + 1, 10))
    # AdamW's trajectory keeps the float32 differences of the sharded reductions (split
    # matmuls, reduce-scattered gradients) at their own size: measured at most 1.5e-7
    # relative over the 200 steps, and the same final evaluation.
    for step in a:
        assert math.isclose(a[step], b[step], rel_tol=1e-5), (step, a[step], b[step])
    assert math.isclose(
        _final_eval(tmp_path / "one" / "whole"),
        _final_eval(tmp_path / "eight" / "whole"),
        rel_tol=1e-5,
    )
    first = [r for r in _records(tmp_path / "eight" / "whole") if r["step"] == 0][0]
    assert first["param_bytes_per_device"] == eight["params_per_device"]
    assert first["slot_bytes_per_device"] == eight["slots_per_device"]


@pytest.mark.slow  # runs on 8 virtual devices
def test_fsdp8_amos_matches_one_device_and_resumes_exactly(tmp_path: Path):
    one = _train(tmp_path / "one", "amos", eight=False)
    eight = _train(tmp_path / "eight", "amos", eight=True, split=STEPS // 2 + 10)
    _check_bytes(one, eight)
    a, b = _losses(tmp_path / "one" / "whole"), _losses(tmp_path / "eight" / "whole")
    assert sorted(a) == sorted(b)
    # Amos at the quickstart's xi amplifies float32 differences: the train losses (means
    # over 10 steps) agree to 2e-7 up to step 30 and then depart by 1-4% (measured 1.1% at
    # step 40, at most 4.1%, 2.8% at step 200; final eval 3.154 against 3.250). The
    # replicated data-parallel run on 8 devices (MESH_DATA=8) departs from the one-device
    # run just as much (1.0% at step 40, at most 3.8%, final eval 3.151), so this is the
    # optimizer's sensitivity at this step size, not the sharding (on the full-size
    # quickstart the data-parallel drift passes 1e-3 at step 178, results/device_count/
    # drift.md; the tiny bindings' batch of 8 brings it sooner). A wrong sharded update
    # would differ from the first steps on (tests/amos/test_sharding.py checks the update
    # itself to 1e-6). Hence tight up to step 30, then a loose band, and both runs learn.
    for step in a:
        tolerance = 1e-6 if step <= 30 else 0.06
        assert math.isclose(a[step], b[step], rel_tol=tolerance), (step, a[step], b[step])
    one_eval, eight_eval = (_final_eval(tmp_path / d / "whole") for d in ("one", "eight"))
    assert math.isclose(one_eval, eight_eval, rel_tol=0.05), (one_eval, eight_eval)
    first_eval = [r["loss"] for r in _records(tmp_path / "eight" / "whole") if r["split"] == "eval"]
    assert max(one_eval, eight_eval) < first_eval[0] - 0.05
    # The sharded checkpoint restores with the training shardings, and the run killed at
    # a checkpoint and restarted is the uninterrupted run, to the bit.
    assert eight["restored_step"] == 100 and eight["restored_shardings_match"]
    untimed = lambda d: [  # noqa: E731
        {k: v for k, v in r.items() if k not in TIMING} for r in _records(d)
    ]
    assert untimed(tmp_path / "eight" / "halves") == untimed(tmp_path / "eight" / "whole")


# ---------------------------------------------------------------- --dry_run
def _dry_run(experiment: str, optimizer: str, *extra: str, env=None) -> tuple[str, float]:
    cmd = [
        PYTHON,
        str(REPO / "launch" / "run.py"),
        f"--gin_file=experiments/{experiment}.gin",
        f"--optimizer={optimizer}",
        "--dry_run",
        "--dry_run_compile=off",  # Shapes only: tests/launch/test_dry_run_memory.py compiles.
        *extra,
    ]
    start = time.monotonic()
    p = run(cmd, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout, time.monotonic() - start


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.M)
    assert match, (pattern, text)
    return int(match.group(1).replace(",", ""))


# tests/experiments: BERT-large 335,174,458 and T5 1.1 large 783,150,080 parameters with
# their vocabularies (30522, 32128); the dry run assumes DRY_RUN_VOCAB_SIZE = 32000 when
# the tokenizer file is absent, as here.
@pytest.mark.slow  # builds a paper-scale model's shapes (about 20 s each)
@pytest.mark.parametrize(
    ("experiment", "optimizer", "count"),
    [("bert_large", "amos", 335_174_458), ("t5_large", "adamw", 783_150_080)],
)
def test_dry_run_of_a_paper_scale_config_needs_no_data(
    experiment: str, optimizer: str, count: int, tmp_path: Path
):
    model_dir = tmp_path / "run"
    out, seconds = _dry_run(experiment, optimizer, f"--gin.MODEL_DIR='{model_dir}'")
    assert seconds < 60, seconds
    n = _number(r"^parameters: ([\d,]+)", out)
    assert abs(n / count - 1) < 0.01, n
    assert "DRY_RUN_VOCAB_SIZE" in out and "vocabulary size 32000" in out
    param_bytes = _number(r"^parameter bytes: ([\d,]+) in all", out)
    assert param_bytes == 4 * n  # float32
    amos_total, amos_device = dry_run_slot_bytes(out, "amos")
    adamw_total, adamw_device = dry_run_slot_bytes(out, "adamw")
    # AdamW: two float32 moments per parameter (and counters); Amos with momentum: one
    # full-size slot and small factored ones.
    assert 2 * param_bytes <= adamw_total <= 2 * param_bytes + 1024
    assert param_bytes <= amos_total < 1.01 * param_bytes
    assert (amos_device, adamw_device) == (amos_total, adamw_total)  # One device.
    assert re.search(r"^  token_embedder/embedding\s+\(32000, 1024\)\s+float32\s+P\(\)", out, re.M)
    assert not model_dir.exists()  # Nothing written.


@pytest.mark.slow  # runs on 8 virtual devices
def test_dry_run_on_eight_devices_with_fsdp8_holds_an_eighth_per_device():
    out, _ = _dry_run("bert_large", "amos", "--gin.MESH_FSDP=8", env=EIGHT)
    assert "mesh: data=1 x fsdp=8 x model=1 (8 cpu devices)" in out
    params = _number(r"^parameter bytes: [\d,]+ in all, ([\d,]+) per device", out)
    total = _number(r"^parameter bytes: ([\d,]+) in all", out)
    # Only the 1024-element biases and norm scales (under FSDP_MIN_SIZE) stay replicated:
    # 0.07% of BERT-large's parameters.
    assert total / 8 <= params <= total / 8 * 1.01
    for arm in ("amos", "adamw"):
        arm_total, arm_device = dry_run_slot_bytes(out, arm)
        assert arm_total / 8 <= arm_device <= arm_total / 8 * 1.02, arm
    ratio = float(
        re.search(r"^per device, parameters \+ amos slots: .*?, ([\d.]+) of the", out, re.M).group(
            1
        )
    )
    assert 0.125 <= ratio < 0.127
    assert re.search(
        r"^  token_embedder/embedding\s+\(32000, 1024\)\s+float32\s+P\('fsdp', None\)", out, re.M
    )


def test_dry_run_of_the_quickstart_in_process(tmp_path: Path, capsys):
    model_dir = tmp_path / "run"
    argv = [*run_cmd(model_dir, optimizer="amos", steps=20)[2:], "--dry_run"]
    argv.append("--dry_run_compile=off")  # test_dry_run_memory.py compiles
    assert run_cli.main(argv) == 0
    out = capsys.readouterr().out
    # The quickstart's task is built as a run builds it (its text is generated).
    assert "task: CharTextTask; data: the configured task" in out
    assert _number(r"^parameters: ([\d,]+)", out) == 27_072
    assert "amos (--optimizer)" in out and re.search(r"^  adamw\s", out, re.M)
    assert not model_dir.exists()
