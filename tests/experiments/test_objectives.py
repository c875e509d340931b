"""The objectives (experiments/objectives.py) on hand-computed numbers, and the one batch
sampler (experiments/task.py batch_rng)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.data.char_text import CharTextTask
from experiments.data.images import ImageClassificationTask
from experiments.data.sources import GeneratedTextSource
from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
from experiments.errors import ConfigError
from experiments.objectives import (
    CausalLM,
    Classification,
    MaskedLM,
    Seq2Seq,
    cross_entropy,
    token_cross_entropy,
)
from experiments.task import BATCH_STREAMS, batch_rng

LN2 = math.log(2.0)

# Two-token vocabulary; logits are log-probabilities, so the cross-entropy of a target is
# -log of its probability. Positions' probabilities of token 0: 1/2, 3/4, 1/4, 1/16.
P0 = (1 / 2, 3 / 4, 1 / 4, 1 / 16)
LOGITS = tuple((math.log(p), math.log(1 - p)) for p in P0)
# Row 0: targets (0, 1, 1, 0) -> ce (ln2, 2ln2, ln4/3, 4ln2); weights (1, 1, 0, 1).
# Row 1: targets (0, 0, 0, 0), weight only at position 3 -> ce 4ln2.
TARGETS = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], np.int32)
WEIGHTS = np.array([[1, 1, 0, 1], [0, 0, 0, 1]], np.float32)
# Weighted: ln2 + 2ln2 + 4ln2 + 4ln2 = 11 ln2 over n = 4 targets.
TOTAL, COUNT = 11 * LN2, 4.0
# Argmax is token 0 at positions 0 (tie: first index) and 1, token 1 at 2 and 3: of the
# weighted targets only row 0 position 0 is right.
ACCURACY = 1 / 4


class FixedLogits(nn.Module):
    """Returns LOGITS for every example, whatever its inputs; dropout-style call."""

    @nn.compact
    def __call__(self, *inputs, deterministic: bool = True):
        batch = inputs[0].shape[0]
        logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (batch, *np.shape(LOGITS)))
        if not deterministic:  # Training must provide a dropout rng.
            logits = logits + 0.0 * jax.random.uniform(self.make_rng("dropout"))
        return logits


def _mlm_batch() -> dict[str, np.ndarray]:
    ids = np.full((2, 4), 5, np.int32)
    return {
        "input_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "attention_mask": np.ones_like(ids),
        "targets": TARGETS,
        "weights": WEIGHTS,
    }


def _seq2seq_batch() -> dict[str, np.ndarray]:
    return {
        "encoder_input_tokens": np.ones((2, 6), np.int32),
        "decoder_input_tokens": np.ones((2, 4), np.int32),
        "decoder_target_tokens": TARGETS,
        "decoder_loss_weights": WEIGHTS,
    }


def _loss(objective, batch, model=None, train=True):
    model = model or FixedLogits()
    variables = objective.init_variables(model, jax.random.key(0), batch)
    return objective.loss(model, variables, batch, train=train, rng=jax.random.key(1))


def test_token_cross_entropy_and_weighted_mean_on_hand_numbers():
    logits = jnp.asarray([LOGITS, LOGITS])
    nll, correct = token_cross_entropy(logits, jnp.asarray(TARGETS))
    expected = [[LN2, 2 * LN2, math.log(4 / 3), 4 * LN2], [LN2, math.log(4 / 3), 2 * LN2, 4 * LN2]]
    np.testing.assert_allclose(nll, expected, rtol=1e-6)
    np.testing.assert_array_equal(correct, [[1, 0, 1, 0], [1, 1, 0, 0]])
    mean, accuracy = cross_entropy(logits, jnp.asarray(TARGETS), jnp.asarray(WEIGHTS))
    np.testing.assert_allclose([mean, accuracy], [TOTAL / COUNT, ACCURACY], rtol=1e-6)
    mean, accuracy = cross_entropy(logits, jnp.asarray(TARGETS))
    np.testing.assert_allclose([mean, accuracy], [np.mean(expected), 0.5], rtol=1e-6)


def test_masked_lm_training_loss_is_sum_over_sqrt_count():
    """jestimator/modeling.py normalize_loss_by_size, applied by
    jestimator/models/bert/modeling.py mlm_train_loss to the batch's masked tokens: the
    masked-LM training loss is sum(ce * w) / sqrt(sum(w)), the default for MaskedLM. The
    reported token_loss is the per-token mean sum(ce * w) / sum(w)."""
    objective = MaskedLM()
    assert objective.normalization == "sqrt"
    loss, metrics, updates = _loss(objective, _mlm_batch())
    # 11 ln2 / sqrt(4): one sum over the whole batch, not per example
    # (7 ln2 / sqrt(3) + 4 ln2 / sqrt(1) would be per example).
    np.testing.assert_allclose(loss, 11 * LN2 / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["token_loss"], 11 * LN2 / 4, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], ACCURACY, rtol=1e-6)
    assert float(metrics["num_targets"]) == COUNT and updates == {}
    # Its gradient is sqrt(n) times the mean loss's, which Amos' clip_value=1.0 sees.
    mean_loss, _, _ = _loss(MaskedLM(normalization="mean"), _mlm_batch())
    np.testing.assert_allclose(loss, mean_loss * math.sqrt(COUNT), rtol=1e-6)
    # The same under jit, in evaluation.
    model = FixedLogits()
    variables = objective.init_variables(model, jax.random.key(0), _mlm_batch())
    jitted = jax.jit(lambda b: objective.loss(model, variables, b, train=False, rng=None))
    np.testing.assert_allclose(jitted(_mlm_batch())[0], 11 * LN2 / 2, rtol=1e-6)


@pytest.mark.parametrize(
    ("normalization", "expected"),
    [("sum", TOTAL), ("mean", TOTAL / COUNT), ("sqrt", TOTAL / math.sqrt(COUNT))],
)
def test_seq2seq_normalizations(normalization, expected):
    """T5X's span-corruption loss (no loss-normalizing factor) is the batch's sum, the
    Seq2Seq default; every normalization reports the same per-token token_loss."""
    assert Seq2Seq().normalization == "sum"
    loss, metrics, _ = _loss(Seq2Seq(normalization=normalization), _seq2seq_batch())
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["token_loss"], TOTAL / COUNT, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], ACCURACY, rtol=1e-6)


def test_a_batch_without_targets_gives_zero_loss_not_nan():
    batch = {**_mlm_batch(), "weights": np.zeros_like(WEIGHTS)}
    for normalization in ("mean", "sum", "sqrt"):
        loss, metrics, _ = _loss(MaskedLM(normalization=normalization), batch)
        assert float(loss) == 0.0 and float(metrics["token_loss"]) == 0.0


def test_causal_lm_mean_over_every_position_and_its_init():
    objective = CausalLM()
    batch = {"inputs": np.ones((2, 4), np.int32), "targets": TARGETS}
    loss, metrics, _ = _loss(objective, batch)
    all_positions = (LN2 + 2 * LN2 + math.log(4 / 3) + 4 * LN2) + (
        LN2 + math.log(4 / 3) + 2 * LN2 + 4 * LN2
    )
    np.testing.assert_allclose([loss, metrics["token_loss"]], [all_positions / 8] * 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], 4 / 8, rtol=1e-6)
    assert objective.reports_perplexity
    # The params come from model.init(rng, inputs[:1]) with the rng itself, as the
    # recorded GPT runs were initialized.
    model = nn.Sequential([nn.Embed(7, 3), nn.Dense(2)])
    got = objective.init_variables(model, jax.random.key(3), batch)["params"]
    want = model.init(jax.random.key(3), batch["inputs"][:1])["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    summed, _, _ = _loss(CausalLM(normalization="sum"), batch)
    np.testing.assert_allclose(summed, all_positions, rtol=1e-6)


class CountingClassifier(nn.Module):
    """Batch-norm-style call (train=...), a batch_stats counter updated in training."""

    @nn.compact
    def __call__(self, images, train: bool):
        calls = self.variable("batch_stats", "calls", lambda: jnp.zeros((), jnp.int32))
        if train:
            calls.value += 1
        probs = jnp.asarray([[1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 2, 1 / 4], [1 / 8, 3 / 4, 1 / 8]])
        return jnp.log(probs) + 0.0 * images.sum()


def test_classification_mean_and_batch_stats():
    objective = Classification()
    batch = {"images": np.zeros((3, 2, 2, 1), np.float32), "labels": np.array([0, 2, 1])}
    model = CountingClassifier()
    variables = objective.init_variables(model, jax.random.key(0), batch)
    loss, metrics, updates = objective.loss(model, variables, batch, train=True, rng=None)
    # ce: ln2, ln4, ln(4/3); right: rows 0 and 2.
    np.testing.assert_allclose(loss, (5 * LN2 - math.log(3)) / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["token_loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], 2 / 3, rtol=1e-6)
    assert int(updates["batch_stats"]["calls"]) == 1
    _, _, eval_updates = objective.loss(model, variables, batch, train=False, rng=None)
    assert eval_updates == {} and not objective.reports_perplexity


def test_unknown_normalization_is_an_error():
    with pytest.raises(ConfigError, match="loss_normalization='avg'"):
        MaskedLM(normalization="avg")


def test_tasks_batches_hold_their_objectives_keys():
    """Each data module's batches have the keys its objective declares."""
    source = GeneratedTextSource(20_000)
    tasks = [
        CharTextTask(generated_chars=5_000, block_size=16),
        MaskedLMTask(source, "char", 16),
        SpanCorruptionTask(source, "byte", 32, 8),
        ImageClassificationTask("digits"),
    ]
    kinds = [CausalLM, MaskedLM, Seq2Seq, Classification]
    for task, kind in zip(tasks, kinds, strict=True):
        assert type(task.objective) is kind
        batch = task.train_batch(seed=0, step=1, batch_size=2)
        o = task.objective
        declared = {*o.inputs, o.targets} | ({o.weights} if o.weights else set())
        assert declared <= set(batch), (type(task).__name__, declared, set(batch))
        assert task.reports_perplexity == o.reports_perplexity


def test_batch_rng_is_the_recorded_sampler():
    """Batches are drawn from np.random.default_rng([seed, stream, index]) with fixed
    stream numbers: the recorded runs' batches depend on exactly these."""
    assert BATCH_STREAMS == {
        ("train", "train"): 0,
        ("val", "eval"): 1,
        ("train", "eval"): 2,
        ("test", "eval"): 3,  # added for the study's test split; 0-2 are unchanged
    }
    draw = batch_rng(seed=3, split="val", purpose="eval", index=7).integers(0, 10**9, 8)
    np.testing.assert_array_equal(draw, np.random.default_rng([3, 1, 7]).integers(0, 10**9, 8))
    again = batch_rng(seed=3, split="val", purpose="eval", index=7).integers(0, 10**9, 8)
    np.testing.assert_array_equal(draw, again)
    others = [
        batch_rng(seed=3, split="train", purpose="train", index=7),
        batch_rng(seed=3, split="train", purpose="eval", index=7),
        batch_rng(seed=3, split="val", purpose="eval", index=8),
        batch_rng(seed=4, split="val", purpose="eval", index=7),
        batch_rng(seed=3, split="test", purpose="eval", index=7),
    ]
    for rng in others:
        assert not np.array_equal(rng.integers(0, 10**9, 8), draw)
    with pytest.raises(ConfigError, match="split='test'"):
        batch_rng(seed=0, split="test", purpose="train", index=0)  # never trained on
    with pytest.raises(ConfigError, match="purpose='train'"):
        batch_rng(seed=0, split="val", purpose="train", index=0)
