"""The LSTM language model as the reference builds and trains it (google-research/jestimator,
jestimator/models/lstm/modeling.py and lm.py): the cell, its dropouts, the state carried
across batches through the trainer, evaluation over the whole held-out text, and the Amos
table bound by the model gin files."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amos
from amos.model_shapes import count_parameters
from amos.tree import named_leaves, path_name
from experiments.data.word_lm import WordLMTask
from experiments.lstm.models import CARRY, LSTMConfig, LSTMLayer, lstm_model
from launch.optimizers import amos_optimizer
from launch.trainer import train
from tests.experiments.model_gin import abstract_params, int_input, load_model_file
from tests.launch.harness_helpers import TIMING


def jitted_apply(model):
    """``model.apply`` compiled once per input structure (``mutable`` as a tuple)."""
    return jax.jit(model.apply, static_argnames=("deterministic", "mutable"))


def random_params(model, batch: int, length: int, scale: float, seed: int = 0):
    """Parameters of ``model`` drawn Normal(0, scale^2) (no zero-initialized kernel)."""
    shapes = abstract_params(model, int_input(batch, length))
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten(
        [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


# --------------------------------------------------------------------------- the cell


def test_ptb_model_structure_and_shapes():
    """modeling.py ModelConfig / LstmCell / SingleLstmLM: hidden 256, memory 1024; ONE core
    kernel on the 2h inputs [recur, x] giving 4 x memory (gates and candidates), a memory
    projection back to h (zero-initialized), a normalization shift on the inputs and one
    on the memory, an embedding tied to the output plus an output bias."""
    vocab, h, m = 10_000, 256, 1024
    params = abstract_params(lstm_model(vocab), int_input(2, 5))
    shapes = {path_name(p): tuple(x.shape) for p, x in named_leaves(params)[0]}
    assert shapes == {
        "embed/embedding": (vocab, h),
        "lstm/cell/input_norm/bias": (2 * h,),
        "lstm/cell/core/kernel": (2 * h, 4 * m),
        "lstm/cell/core/bias": (4 * m,),
        "lstm/cell/memory_norm/bias": (m,),
        "lstm/cell/out/kernel": (m, h),
        "lstm/cell/out/bias": (h,),
        "bias": (vocab,),
    }
    assert count_parameters(params) == 2_365_184 + 257 * vocab
    # The reference's defaults are the model's defaults.
    assert LSTMConfig(vocab) == LSTMConfig(vocab, 256, 1024, 1.0, 0.55, 0.1)


def test_initialization():
    """modeling.py: core kernel truncated normal sqrt(1 / 2h), embedding truncated normal
    sqrt(1 / h) (both cut at 2 standard deviations), memory projection zero, shifts and
    biases zero; the carried state starts at zero."""
    model = lstm_model(500, hidden=64, memory=256)
    variables = model.init(jax.random.key(0), jnp.zeros((3, 4), jnp.int32))
    p = variables["params"]
    core = np.asarray(p["lstm"]["cell"]["core"]["kernel"])
    embed = np.asarray(p["embed"]["embedding"])
    for x, std in [(core, math.sqrt(1 / 128)), (embed, math.sqrt(1 / 64))]:
        assert np.abs(x).max() <= 2 * std
        # A normal truncated at +-2 sigma has standard deviation 0.880 sigma.
        assert x.std() == pytest.approx(0.880 * std, rel=0.03)
    assert not np.any(p["lstm"]["cell"]["out"]["kernel"])
    for leaf in [p["bias"], p["lstm"]["cell"]["core"]["bias"], p["lstm"]["cell"]["out"]["bias"]]:
        assert not np.any(leaf)
    assert {k: v.shape for k, v in variables[CARRY].items()} == {
        "hidden": (3, 64),
        "memory": (3, 256),
    }


def test_forget_gate_bias():
    """modeling.py LstmCell: the share of memory erased is sigmoid(forget_gate_bias - g)
    (1.0 in the reference), so with a zero core output one step keeps sigmoid(-1) of it."""
    for bias, kept in [(1.0, 1 / (1 + math.e)), (0.0, 0.5)]:
        model = lstm_model(7, hidden=4, memory=6, forget_gate_bias=bias)
        params = random_params(model, 2, 1, scale=0.0)
        carry = {"hidden": jnp.zeros((2, 4)), "memory": jnp.full((2, 6), 3.0)}
        _, updated = jitted_apply(model)(
            {"params": params, CARRY: carry},
            jnp.zeros((2, 1), jnp.int32),
            jnp.zeros(2),
            mutable=(CARRY,),
        )
        np.testing.assert_allclose(updated[CARRY]["memory"], 3.0 * kept, rtol=1e-6)


def _reference_step(p, h, c, x, fb):
    """One step of modeling.py's LstmLayer body and LstmCell in NumPy (no dropout)."""

    def shift_norm(v, shift):  # modeling.py ShiftNorm
        v = v - shift
        v = v - v.mean(-1, keepdims=True)
        ms = (v**2).mean(-1, keepdims=True)
        return v / np.sqrt(np.maximum(ms * np.sqrt(v.shape[-1]), 1.0))

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    cell = p["lstm"]["cell"]
    z = shift_norm(np.concatenate([h, x], -1), cell["input_norm"]["bias"])
    a, u, g, o = np.split(z @ cell["core"]["kernel"] + cell["core"]["bias"], 4, -1)
    erase = sigmoid(fb - g)
    candidate = np.clip(1 / (1 + np.exp(fb)) * np.tanh(u), -erase, erase)
    c = c * (1 - erase) + candidate * 2 * a * sigmoid(a)
    read = shift_norm(c, cell["memory_norm"]["bias"]) * 2 * sigmoid(o)
    return read @ cell["out"]["kernel"] + cell["out"]["bias"], c


def test_cell_computes_the_reference_step():
    """modeling.py LstmLayer/LstmCell/SingleLstmLM: the logits of a 3-step sequence from a
    carried state equal the reference equations run by hand (tied embedding + bias)."""
    vocab, h, m = 11, 4, 8
    model = lstm_model(vocab, hidden=h, memory=m)
    ids = jnp.asarray([[1, 5, 9], [3, 3, 0]], jnp.int32)
    params = random_params(model, 2, 3, scale=0.7)
    keys = jax.random.split(jax.random.key(1))
    carry = {"hidden": jax.random.normal(keys[0], (2, h)), "memory": jnp.ones((2, m))}
    logits, updated = jitted_apply(model)(
        {"params": params, CARRY: carry}, ids, jnp.zeros(2), mutable=(CARRY,)
    )
    p = jax.tree_util.tree_map(np.asarray, params)
    hh, cc = np.asarray(carry["hidden"]), np.asarray(carry["memory"])
    emb = p["embed"]["embedding"]
    for t in range(3):
        hh, cc = _reference_step(p, hh, cc, emb[np.asarray(ids[:, t])], 1.0)
        np.testing.assert_allclose(logits[:, t], hh @ emb.T + p["bias"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(updated[CARRY]["hidden"], hh, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(updated[CARRY]["memory"], cc, rtol=2e-4, atol=2e-5)


def test_no_dropout_in_evaluation():
    """lm.py/modeling.py: dropout only with enable_dropout (training): evaluation does not
    depend on the dropout rng, and with both rates 0 training computes what evaluation
    does."""
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 20, (4, 6)), jnp.int32)
    model = lstm_model(20, hidden=8, memory=32)
    params = random_params(model, 4, 6, scale=0.3)
    apply = jitted_apply(model)
    evals = [apply({"params": params}, ids, rngs={"dropout": jax.random.key(s)}) for s in (1, 2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    quiet = lstm_model(20, hidden=8, memory=32, hidden_dropout=0.0, memory_dropout=0.0)
    trained = jitted_apply(quiet)(
        {"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    np.testing.assert_allclose(trained, evals[0], rtol=1e-5, atol=1e-6)


def test_hidden_dropout_in_training():
    """modeling.py LstmLayer: hidden dropout (0.55) in training, a fresh mask per call."""
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 20, (4, 6)), jnp.int32)
    model = lstm_model(20, hidden=8, memory=32, memory_dropout=0.0)
    params = random_params(model, 4, 6, scale=0.3)
    apply = jitted_apply(model)
    evaluated = apply({"params": params}, ids)
    trains = [
        apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(s)})
        for s in (1, 2)
    ]
    assert not np.allclose(trains[0], trains[1])
    assert not np.allclose(trains[0], evaluated)


def test_memory_dropout_is_one_mask_per_sequence():
    """modeling.py LstmLayer: the memory dropout mask (0.1 in the reference) is drawn once,
    before the scan over time, and multiplies the memory read at every step: with an
    identity memory projection the layer's outputs are zero in the same places at every
    step."""
    cfg = LSTMConfig(20, hidden=16, memory=16, hidden_dropout=0.0, memory_dropout=0.5)
    layer = LSTMLayer(cfg, deterministic=False)
    xs = jax.random.normal(jax.random.key(3), (4, 6, 16))
    state = (jnp.zeros((4, 16)), jnp.ones((4, 16)))
    shapes = jax.eval_shape(
        lambda: layer.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, xs, state)
    )["params"]
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    params["cell"]["out"] = {"kernel": jnp.eye(16), "bias": jnp.zeros(16)}
    outputs, _ = jax.jit(layer.apply)(
        {"params": params}, xs, state, rngs={"dropout": jax.random.key(5)}
    )
    zeros = np.asarray(outputs) == 0
    assert 0.2 < zeros.mean() < 0.8
    assert (zeros == zeros[:, :1]).all()  # The same mask at every step.


def test_state_carried_across_segments_equals_one_pass():
    """lm.py (train_consecutive) / modeling.py SingleLstmLM: the state at the end of one
    segment is where the next segment starts (truncated BPTT), so two consecutive segments
    give the logits of one pass over both; reset restarts a row from zero."""
    model = lstm_model(30, hidden=8, memory=16)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 30, (3, 10)), jnp.int32)
    params = random_params(model, 3, 10, scale=0.3)
    apply = jitted_apply(model)
    whole = apply({"params": params}, ids)
    variables = {"params": params}
    first, carry = apply(variables, ids[:, :4], jnp.ones(3), mutable=(CARRY,))
    second, _ = apply({**variables, **carry}, ids[:, 4:], jnp.zeros(3), mutable=(CARRY,))
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)
    # Row 1 reset: it starts over from zero, as a fresh pass over its second segment.
    reset = jnp.asarray([0.0, 1.0, 0.0])
    again, _ = apply({**variables, **carry}, ids[:, 4:], reset, mutable=(CARRY,))
    fresh = apply({"params": params}, ids[:, 4:])
    np.testing.assert_allclose(again[1], fresh[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again[0], second[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(again[1], second[1])


# --------------------------------------------------------------------------- the Amos table


@pytest.mark.parametrize("name,h,m", [("lstm_ptb.gin", 256, 1024), ("lstm_tiny.gin", 64, 256)])
def test_model_gin_binds_the_reference_lstm_table(name, h, m):
    """jestimator/models/lstm/modeling.py get_eta_fn and get_shape_fn: core kernel
    (2h)^-1/4, memory projection (m h)^-1/4, its bias 0.5 h^-1/4, top-level normalize shift
    0.5 h^-1/4, cell normalize shift 0.5, embedding h^-1/4, other biases 0.5; kernel slots
    reduce the first axis, embedding slots the last, the rest are scalars."""
    vocab = 1000
    loaded = load_model_file(name, vocab)
    cfg = loaded.model.config
    assert (cfg.hidden, cfg.memory, cfg.hidden_dropout, cfg.memory_dropout) == (h, m, 0.55, 0.1)
    assert cfg.forget_gate_bias == 1.0
    table = {
        "lstm/cell/core/kernel": ((2 * h) ** -0.25, (1, 4 * m)),
        "lstm/cell/out/kernel": ((m * h) ** -0.25, (1, h)),
        "lstm/cell/out/bias": (0.5 * h**-0.25, ()),
        "lstm/cell/input_norm/bias": (0.5 * h**-0.25, ()),
        "lstm/cell/memory_norm/bias": (0.5, ()),
        "embed/embedding": (h**-0.25, (vocab, 1)),
        "lstm/cell/core/bias": (0.5, ()),
        "bias": (0.5, ()),
    }
    params = abstract_params(loaded.model, int_input(1, 4))
    got = {
        path_name(p): (loaded.eta_fn(p, x.shape), tuple(loaded.shape_fn(p, x.shape)))
        for p, x in named_leaves(params)[0]
    }
    assert set(got) == set(table)
    for var, (eta, slot) in table.items():
        assert got[var] == (pytest.approx(eta, rel=1e-12), slot), var
    # The paper's PTB Amos has no momentum: almost no slot memory against Adam's (at PTB
    # size, with the 10k-word vocabulary's (vocab, 1) embedding slot, 0.3%).
    if name == "lstm_ptb.gin":
        ptb_params = abstract_params(load_model_file(name, 10_000).model, int_input(1, 4))
        tx = amos.amos(0.01, loaded.eta_fn, loaded.shape_fn, beta=0.98)
        assert amos.compare_slot_memory(tx, ptb_params)["ratio"] <= 0.004


# --------------------------------------------------------------------------- the trainer


def _corpus(tmp_path: Path) -> str:
    """A few thousand words with learnable structure."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(25)]
    lines = [
        " ".join(words[(start + 3 * k) % 25] for k in range(rng.integers(4, 12)))
        for start in rng.integers(0, 25, size=400)
    ]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _trainer_args(tmp_path: Path, **overrides):
    task = WordLMTask(_corpus(tmp_path), seq_length=8, consecutive_segments=4)
    args = dict(
        seed=0,
        train_steps=6,
        batch_size=4,
        model=functools.partial(lstm_model, hidden=8, memory=16),
        task=task,
        optimizer=functools.partial(
            amos_optimizer,
            xi=0.05,
            warmup_steps=2,
            beta=0.9,
            clip_value=1.0,
            eta_overrides={r"core/kernel$": "SHAPE[0] ** -0.25"},
        ),
        eval_every=3,
        eval_batches=1,
        eval_batch_size=3,
        log_every=1,
        checkpoint_every=3,
        progress=False,
    )
    return {**args, **overrides}


def _numbers(model_dir: Path):
    from tests.launch.harness_helpers import metrics

    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(model_dir)]


@pytest.mark.slow  # three run.py processes
def test_run_split_in_two_halves_equals_one_run(tmp_path):
    """lm.py: the carried context variables are part of the train state, so training N
    steps equals N/2 steps, a restart from the checkpoint, and N/2 more: every step's loss,
    gradient and parameter norm, and the evaluations, identical."""
    # One Trainer (compiled once) trains both runs, each into its own directory; every
    # run() starts from that directory's latest checkpoint, or from scratch.
    trainer = train(model_dir=str(tmp_path / "whole"), build_only=True, **_trainer_args(tmp_path))
    whole = trainer.run()
    trainer = trainer.replace(model_dir=str(tmp_path / "halves"))
    trainer.run(stop_after=3)
    assert _numbers(tmp_path / "halves")[-1]["step"] == 3
    second = trainer.run()  # Restores the step-3 checkpoint, carried state included.
    untimed = lambda r: {k: v for k, v in r["eval"].items() if k not in TIMING}  # noqa: E731
    assert second["step"] == whole["step"] == 6
    assert untimed(second) == untimed(whole)
    train_rows = lambda d: [r for r in _numbers(d) if r["split"] == "train"]  # noqa: E731
    assert train_rows(tmp_path / "halves") == train_rows(tmp_path / "whole")
    evals = lambda d: [r for r in _numbers(d) if r["split"] == "eval"]  # noqa: E731
    assert evals(tmp_path / "halves") == evals(tmp_path / "whole")


def test_carry_after_step_s_is_the_state_of_step_s_plus_one(tmp_path):
    """lm.py train_step: the context variables returned by one step are the state the next
    step starts from (reset only every train_consecutive steps)."""
    trainer = train(model_dir=str(tmp_path / "run"), build_only=True, **_trainer_args(tmp_path))
    task, model = trainer.task, trainer.model
    state0 = trainer.init_state(0)
    assert state0.model_state[CARRY]["memory"].shape == (4, 16)  # One row per stream.
    snapshot = jax.tree_util.tree_map(np.array, state0)
    state1, _ = trainer.train_step(state0, trainer.train_batch(1))
    key = jax.random.key(0)

    @jax.jit
    def objective(params, carry, batch, step):
        return task.loss(
            model, {"params": params, **carry}, batch, train=True, rng=jax.random.fold_in(key, step)
        )

    def hand_loss(params, carry, step):
        return objective(params, carry, task.train_batch(seed=0, step=step, batch_size=4), step)

    _, _, carried = hand_loss(snapshot.params, snapshot.model_state, 1)
    np.testing.assert_allclose(
        state1.model_state[CARRY]["memory"], carried[CARRY]["memory"], rtol=1e-5, atol=1e-6
    )
    state1_copy = jax.tree_util.tree_map(np.array, state1)
    _, metrics2 = trainer.train_step(state1, trainer.train_batch(2))
    loss2, _, _ = hand_loss(state1_copy.params, state1_copy.model_state, 2)
    assert float(metrics2["loss"]) == pytest.approx(float(loss2), rel=1e-5)
    zero = jax.tree_util.tree_map(np.zeros_like, state1_copy.model_state)
    loss2_from_zero, _, _ = hand_loss(state1_copy.params, zero, 2)
    assert abs(float(loss2_from_zero) - float(loss2)) > 1e-4  # The carry matters.


@pytest.mark.parametrize("eval_batch_size", [1, 3])
def test_eval_covers_the_held_out_text_once_with_the_state_carried(tmp_path, eval_batch_size):
    """lm.py Evaluator (eval batch 1, state carried through the file): the eval loss is
    the token-weighted mean cross-entropy of the whole held-out text, each of the
    `eval_batch_size` contiguous streams run from the zero state; a hand loop runs each
    stream in one pass."""
    args = _trainer_args(tmp_path, eval_batch_size=eval_batch_size)
    trainer = train(model_dir=str(tmp_path / "run"), build_only=True, **args)
    state = trainer.init_state(0)
    leaves = iter(jax.random.split(jax.random.key(7), 20))
    state = state.replace(
        params=jax.tree_util.tree_map(
            lambda x: x + 0.3 * jax.random.normal(next(leaves), x.shape), state.params
        )
    )
    result = trainer.evaluate(state, trainer._eval_batches())

    task = trainer.task
    val = task.corpus.val
    text = np.concatenate([[task.vocab.start_id], val])
    per_stream = math.ceil(len(val) / eval_batch_size)
    # Each stream in one pass from the zero state (padded at its end to one length).
    starts = range(0, len(val), per_stream)
    inputs = np.zeros((len(starts), per_stream), np.int32)
    for row, start in enumerate(starts):
        piece = text[start : min(start + per_stream, len(val))]
        inputs[row, : len(piece)] = piece
    logits = jax.jit(trainer.model.apply)({"params": state.params}, jnp.asarray(inputs))
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    nll = np.concatenate(
        [
            -log_probs[row, np.arange(len(targets)), targets]
            for row, targets in enumerate(
                text[start + 1 : min(start + per_stream, len(val)) + 1] for start in starts
            )
        ]
    )
    assert len(nll) == len(val)
    assert result["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-9)
