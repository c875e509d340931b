"""MaskedLMTask and SpanCorruptionTask: pure batches, rows, eval splits, finite losses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.data import span_corruption as sc
from experiments.data.sources import GeneratedTextSource, InMemorySource, TextFileSource
from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
from experiments.data.tokenizers import ByteTokenizer
from experiments.errors import ConfigError
from experiments.objectives import MaskedLM, Seq2Seq

ROOT = Path(__file__).resolve().parents[2]


class DummyMlm(nn.Module):
    """The call signature of experiments.bert.models.BertMlm, nothing more."""

    vocab_size: int

    @nn.compact
    def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
        x = nn.Embed(self.vocab_size, 8)(input_ids) + nn.Embed(2, 8)(segment_ids)
        x = nn.Dropout(0.5)(x, deterministic=deterministic) * attention_mask[..., None]
        return nn.Dense(self.vocab_size)(x)


class DummyEncDec(nn.Module):
    vocab_size: int

    @nn.compact
    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        *,
        deterministic=True,
    ):
        del decoder_target_tokens  # T5X passes it (for packing/segment masks); unused here.
        embed = nn.Embed(self.vocab_size, 8)
        context = embed(encoder_input_tokens).mean(axis=1, keepdims=True)
        x = nn.Dropout(0.5)(embed(decoder_input_tokens) + context, deterministic=deterministic)
        return nn.Dense(self.vocab_size)(x)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _differs(a, b) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def mlm_task() -> MaskedLMTask:
    return MaskedLMTask(GeneratedTextSource(60_000), "char", seq_length=64)


def test_mlm_batches_are_pure(mlm_task):
    b1 = mlm_task.train_batch(seed=0, step=1, batch_size=8)
    _assert_same(b1, mlm_task.train_batch(seed=0, step=1, batch_size=8))
    _assert_same(
        b1,
        MaskedLMTask(GeneratedTextSource(60_000), "char", seq_length=64).train_batch(
            seed=0, step=1, batch_size=8
        ),
    )
    assert _differs(b1, mlm_task.train_batch(seed=0, step=2, batch_size=8))
    assert _differs(b1, mlm_task.train_batch(seed=1, step=1, batch_size=8))
    assert set(b1) == {"input_ids", "segment_ids", "attention_mask", "targets", "weights"}
    assert all(v.shape == (8, 64) for v in b1.values())
    assert b1["input_ids"].dtype == np.int32 and b1["weights"].dtype == np.float32
    # Multi-host: each host's rows are exactly its slice of the global batch.
    _assert_same(
        {k: v[2:5] for k, v in b1.items()},
        mlm_task.train_batch(seed=0, step=1, batch_size=8, rows=slice(2, 5)),
    )
    v0 = mlm_task.eval_batch("val", seed=0, index=0, batch_size=8)
    _assert_same(v0, mlm_task.eval_batch("val", seed=0, index=0, batch_size=8))
    assert _differs(v0, mlm_task.eval_batch("val", seed=0, index=1, batch_size=8))
    assert _differs(mlm_task.eval_batch("train", seed=0, index=1, batch_size=8), b1)
    t0 = mlm_task.eval_batch("test", seed=0, index=0, batch_size=8)
    _assert_same(t0, mlm_task.eval_batch("test", seed=0, index=0, batch_size=8))
    assert _differs(t0, mlm_task.eval_batch("test", seed=0, index=1, batch_size=8))
    assert _differs(t0, v0)  # its own stream and its own documents
    with pytest.raises(ConfigError, match="split='dev'"):
        mlm_task.eval_batch("dev", seed=0, index=0, batch_size=8)
    assert mlm_task.model_kwargs() == {"vocab_size": mlm_task.tokenizer.vocab_size}
    assert (mlm_task.unit_name, mlm_task.units_per_example, mlm_task.reports_perplexity) == (
        "tokens",
        64,
        True,
    )


def _unmasked(batch) -> np.ndarray:
    """A masked-LM batch's original ids: the targets where tokens were masked."""
    return np.where(batch["weights"] > 0, batch["targets"], batch["input_ids"])


def test_mlm_eval_reads_held_out_text():
    """Held out: the last 10 documents, the first 5 validation and the last 5 test."""
    docs = [f"train doc {i}." for i in range(90)] + [f"HELD DOC {i}!" for i in range(10)]
    task = MaskedLMTask(InMemorySource(docs), "char", seq_length=16, mask_rate=0.01)
    tok = task.tokenizer

    def text(batch) -> str:
        return tok.decode(_unmasked(batch).ravel())

    train = text(task.train_batch(seed=0, step=1, batch_size=4))
    val = "".join(text(task.eval_batch("val", seed=0, index=i, batch_size=4)) for i in range(5))
    test = "".join(text(task.eval_batch("test", seed=0, index=i, batch_size=4)) for i in range(5))
    assert "HELD" not in train
    for held, numbers, others in ((val, "01234", "56789"), (test, "56789", "01234")):
        assert "HELD" in held and "train" not in held
        digits = {c for c in held if c.isdigit()}
        assert digits and digits <= set(numbers) and not digits & set(others)
    # A pure function of (seed, index): a fresh task gives the same test batch.
    fresh = MaskedLMTask(InMemorySource(docs), "char", seq_length=16, mask_rate=0.01)
    _assert_same(
        fresh.eval_batch("test", seed=0, index=3, batch_size=4),
        task.eval_batch("test", seed=0, index=3, batch_size=4),
    )


def test_mlm_loss_is_the_reference_sqrt_normalized_sum(mlm_task):
    """jestimator/models/bert/modeling.py mlm_train_loss: the masked tokens' summed
    cross-entropy / sqrt(their number) (jestimator/modeling.py normalize_loss_by_size) is
    the task's default training loss; token_loss stays the per-token mean."""
    assert mlm_task.objective == MaskedLM(normalization="sqrt")
    batch = mlm_task.train_batch(seed=0, step=3, batch_size=4)
    model = DummyMlm(**mlm_task.model_kwargs())
    variables = mlm_task.init_variables(model, jax.random.PRNGKey(0), batch)
    assert "params" in variables
    loss, metrics, updates = mlm_task.loss(
        model, variables, batch, train=True, rng=jax.random.PRNGKey(1)
    )
    assert np.isfinite(loss) and updates == {}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    n = batch["weights"].sum()
    assert n > 10 and float(metrics["num_targets"]) == n
    np.testing.assert_allclose(loss, metrics["token_loss"] * np.sqrt(n), rtol=1e-5)
    # Near uniform at init.
    assert abs(float(metrics["token_loss"]) - np.log(mlm_task.tokenizer.vocab_size)) < 1.0
    # The gin knob MaskedLMTask.loss_normalization.
    mean_task = MaskedLMTask(GeneratedTextSource(60_000), "char", 64, loss_normalization="mean")
    assert mean_task.objective == MaskedLM(normalization="mean")
    eval_loss, _, _ = jax.jit(
        lambda v, b: mlm_task.loss(model, v, b, train=False, rng=jax.random.PRNGKey(0))
    )(variables, batch)
    assert np.isfinite(eval_loss)


def test_mlm_on_shakespeare_truncated_by_path(shakespeare):
    task = MaskedLMTask(str(shakespeare), ByteTokenizer(), seq_length=32, packing=False)
    assert isinstance(task.source, TextFileSource)
    batch = task.train_batch(seed=0, step=1, batch_size=16)
    assert (batch["attention_mask"] == 0).any()  # short lines are padded
    assert (batch["weights"][batch["attention_mask"] == 0] == 0).all()
    assert (batch["input_ids"][:, 0] == task.tokenizer.cls_id).all()


@pytest.fixture(scope="module")
def span_task() -> SpanCorruptionTask:
    return SpanCorruptionTask(
        GeneratedTextSource(60_000), ByteTokenizer(), inputs_length=64, targets_length=16
    )


def test_span_batches_are_pure(span_task):
    b1 = span_task.train_batch(seed=0, step=1, batch_size=6)
    _assert_same(b1, span_task.train_batch(seed=0, step=1, batch_size=6))
    assert _differs(b1, span_task.train_batch(seed=0, step=2, batch_size=6))
    _assert_same(
        {k: v[3:] for k, v in b1.items()},
        span_task.train_batch(seed=0, step=1, batch_size=6, rows=slice(3, None)),
    )
    assert b1["encoder_input_tokens"].shape == (6, 64)
    assert b1["decoder_target_tokens"].shape == (6, 16)
    np.testing.assert_array_equal(
        b1["decoder_input_tokens"][:, 1:], b1["decoder_target_tokens"][:, :-1]
    )
    tok = span_task.tokenizer
    assert span_task.tokens_length == 70
    for enc, tgt in zip(b1["encoder_input_tokens"], b1["decoder_target_tokens"]):
        text = tok.decode(sc.reconstruct(enc, tgt, tok))
        # Documents are concatenated without separators (T5's reduce_concat_tokens).
        assert len(text.encode()) == 70 and text in "".join(span_task.source.documents("train"))
    _assert_same(
        span_task.eval_batch("val", seed=0, index=2, batch_size=6),
        span_task.eval_batch("val", seed=0, index=2, batch_size=6),
    )


def test_span_splits_train_as_before_and_test_from_the_last_documents(span_task):
    """Training windows come from the first 90% of the documents (the split before the
    test split existed, computed here from the generated text); test windows from the last
    half of the held-out 10%."""
    from experiments.data.char_text import generated_text

    docs = [line for line in generated_text(60_000).splitlines() if line.strip()]
    n = int(len(docs) * 0.9)
    held = docs[n:]
    k = (len(held) + 1) // 2
    train_text, val_text, test_text = "".join(docs[:n]), "".join(held[:k]), "".join(held[k:])
    tok = span_task.tokenizer

    def pieces(batch) -> list[str]:
        return [
            tok.decode(sc.reconstruct(enc, tgt, tok))
            for enc, tgt in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"])
        ]

    for piece in pieces(span_task.train_batch(seed=0, step=5, batch_size=6)):
        assert piece in train_text
    test = span_task.eval_batch("test", seed=0, index=1, batch_size=6)
    for piece in pieces(test):
        assert piece in test_text and piece not in val_text and piece not in train_text
    fresh = SpanCorruptionTask(
        GeneratedTextSource(60_000), ByteTokenizer(), inputs_length=64, targets_length=16
    )
    _assert_same(test, fresh.eval_batch("test", seed=0, index=1, batch_size=6))
    assert _differs(test, span_task.eval_batch("test", seed=1, index=1, batch_size=6))


def test_span_loss_sum_and_mean(span_task):
    batch = span_task.train_batch(seed=0, step=1, batch_size=4)
    model = DummyEncDec(**span_task.model_kwargs())
    variables = span_task.init_variables(model, jax.random.PRNGKey(0), batch)
    total, metrics, _ = span_task.loss(
        model, variables, batch, train=False, rng=jax.random.PRNGKey(0)
    )
    assert np.isfinite(total) and span_task.reports_perplexity
    n = batch["decoder_loss_weights"].sum()
    np.testing.assert_allclose(total, metrics["token_loss"] * n, rtol=1e-5)
    assert span_task.objective == Seq2Seq(normalization="sum")
    mean_task = SpanCorruptionTask(
        span_task.source, span_task.tokenizer, 64, 16, loss_normalization="mean"
    )
    mean, mean_metrics, _ = mean_task.loss(
        model, variables, batch, train=False, rng=jax.random.PRNGKey(0)
    )
    np.testing.assert_allclose(mean, metrics["token_loss"], rtol=1e-6)
    np.testing.assert_allclose(mean_metrics["token_loss"], metrics["token_loss"], rtol=1e-6)


def test_task_errors_name_the_option():
    source = GeneratedTextSource(5_000)
    with pytest.raises(ConfigError, match="loss_normalization='avg'"):
        SpanCorruptionTask(source, "byte", 64, 16, loss_normalization="avg")
    with pytest.raises(ConfigError, match="targets_length=10"):
        SpanCorruptionTask(source, "byte", 64, 10)
    with pytest.raises(ConfigError, match="fewer than one example needs"):
        MaskedLMTask(source, "char", seq_length=4096)
    with pytest.raises(ConfigError, match="tokenizer='bogus'"):
        MaskedLMTask(source, "bogus")


class _StreamingSource:
    """A stand-in for a streaming TFDS source: documents only through iteration."""

    in_memory = False
    name = "streaming test source"

    def __init__(self):
        self.passes = 0

    def iter_documents(self, split):
        self.passes += 1
        n, tag = {"train": (300, "t"), "validation": (40, "v"), "test": (40, "x")}[split]
        return iter(f"{tag}{i:04d} document text." for i in range(n))


def test_streaming_seeks_to_any_step():
    source = _StreamingSource()
    task = MaskedLMTask(source, ByteTokenizer(), seq_length=32, num_workers=0)
    run = [task.train_batch(seed=0, step=s, batch_size=4) for s in range(1, 6)]
    # One pass builds the token index, one reads on: consecutive steps read on.
    assert source.passes == 2
    fresh = MaskedLMTask(_StreamingSource(), ByteTokenizer(), seq_length=32, num_workers=0)
    _assert_same(fresh.train_batch(seed=0, step=4, batch_size=4), run[3])  # seeks to step 4
    _assert_same(task.train_batch(seed=0, step=2, batch_size=4), run[1])  # and back
    # Windows follow the stream in order: step 2 starts where step 1 ended.
    tok = task.tokenizer

    def original(batch):  # the unmasked ids, without [CLS]
        return np.where(batch["weights"] > 0, batch["targets"], batch["input_ids"])[:, 1:]

    expected = np.concatenate(
        [tok.encode(f"t{i:04d} document text.") + [tok.sep_id] for i in range(300)]
    )
    np.testing.assert_array_equal(
        np.concatenate([original(run[0]), original(run[1])]).ravel(), expected[: 2 * 4 * 31]
    )
    # Passes repeat: a long run wraps to the start of the split.
    assert task.train_batch(seed=0, step=400, batch_size=4)["input_ids"].shape == (4, 32)
    val = original(task.eval_batch("val", seed=0, index=0, batch_size=4))
    assert tok.decode(val[0]).startswith("v0000 document text.[SEP]v0001")
    # The test split streams its own documents, in order, the same from a fresh task.
    test = task.eval_batch("test", seed=0, index=1, batch_size=4)
    test_stream = np.concatenate(
        [tok.encode(f"x{i:04d} document text.") + [tok.sep_id] for i in range(40)]
    )
    np.testing.assert_array_equal(original(test).ravel(), test_stream[4 * 31 : 8 * 31])
    _assert_same(
        MaskedLMTask(_StreamingSource(), ByteTokenizer(), seq_length=32, num_workers=0).eval_batch(
            "test", seed=0, index=1, batch_size=4
        ),
        test,
    )


def test_importing_the_data_modules_does_not_import_tensorflow():
    code = (
        "import sys, amos, experiments.data.text_tasks, experiments.data.seqio_tasks, "
        "experiments.data.sources, experiments.data.train_sentencepiece; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("kind", ["mlm", "span"])
def test_whole_split_evaluation_reads_each_window_once(kind):
    """eval_whole_split: consecutive windows covering the held-out stream once, the last
    batch's padding rows weighing nothing, the corruption still drawn per (seed, index)."""
    source = GeneratedTextSource(20_000)
    if kind == "mlm":
        task = MaskedLMTask(source, "char", seq_length=32, eval_whole_split=True)
        weights, original = "weights", _unmasked
        drawn = MaskedLMTask(source, "char", seq_length=32)
    else:
        task = SpanCorruptionTask(source, "byte", 32, 12, eval_whole_split=True)
        weights = "decoder_loss_weights"
        drawn = SpanCorruptionTask(source, "byte", 32, 12)
    stream = task._split_stream("val")
    windows = len(stream) // task.window
    n = task.eval_num_batches("val", 8)
    assert n == -(-windows // 8) and windows % 8  # a padded last batch
    batches = [task.eval_batch("val", seed=0, index=i, batch_size=8) for i in range(n)]
    last = batches[-1][weights]
    real = windows - (n - 1) * 8
    assert last[:real].sum() > 0 and not last[real:].any()
    if kind == "mlm":  # The uncorrupted windows are the stream, in order, each once.
        ids = np.concatenate([original(b) for b in batches])[:windows]
        body = ids[:, 1:]  # [CLS] before each packed window
        np.testing.assert_array_equal(
            body.ravel(), stream[: windows * task.window].reshape(windows, -1).ravel()
        )
    _assert_same(batches[1], task.eval_batch("val", seed=0, index=1, batch_size=8))
    assert _differs(batches[1], task.eval_batch("val", seed=1, index=1, batch_size=8))
    _assert_same(
        {k: v[2:5] for k, v in batches[0].items()},
        task.eval_batch("val", seed=0, index=0, batch_size=8, rows=slice(2, 5)),
    )
    assert drawn.eval_batch("val", seed=0, index=0, batch_size=8).keys() == batches[0].keys()
    with pytest.raises(ConfigError, match=f"{n} batches of 8; evaluation batch {n} is past"):
        task.eval_batch("val", seed=0, index=n, batch_size=8)
    # Training batches do not change.
    _assert_same(
        task.train_batch(seed=0, step=3, batch_size=4),
        drawn.train_batch(seed=0, step=3, batch_size=4),
    )


def test_whole_split_evaluation_needs_packed_text_in_memory():
    with pytest.raises(ConfigError, match="MaskedLMTask.eval_whole_split .* not packed"):
        MaskedLMTask(GeneratedTextSource(5_000), "char", packing=False, eval_whole_split=True)
    with pytest.raises(ConfigError, match="eval_whole_split .* not in memory"):
        MaskedLMTask(_StreamingSource(), "byte", seq_length=16, eval_whole_split=True)
