"""BERT masking: 15% chosen, 80/10/10, never specials or padding; packing and segments."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data import mlm
from experiments.data.char_text import generated_text
from experiments.data.tokenizers import CharTokenizer

TEXT = generated_text(50_000, seed=1)
TOK = CharTokenizer.from_text(TEXT)


def _examples(n: int, length: int, seed: int = 0) -> np.ndarray:
    stream = mlm.document_stream([np.array(TOK.encode(line)) for line in TEXT.splitlines()], TOK)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - length, size=n)
    windows = stream[starts[:, None] + np.arange(mlm.window_length(TOK, length))]
    return mlm.packed_examples(windows, TOK)


def test_masking_rates():
    tokens = _examples(2000, 128)
    inputs, targets, weights = mlm.mask_tokens(tokens, TOK, np.random.default_rng(0))
    chosen = weights > 0
    maskable = ~TOK.is_special(tokens) & (tokens != TOK.pad_id)
    assert not (chosen & ~maskable).any()  # never [CLS], [SEP] or padding
    # BERT chooses round(15%) of each example's maskable tokens.
    np.testing.assert_array_equal(chosen.sum(1), np.round(0.15 * maskable.sum(1)))
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.002
    n = chosen.sum()
    masked = (inputs == TOK.mask_id) & chosen
    kept = (inputs == tokens) & chosen
    replaced = chosen & ~masked & ~kept
    assert abs(masked.sum() / n - 0.8) < 0.01
    # A random replacement can draw the original token (1 in ~30 here): kept ~10% + a bit.
    assert abs(replaced.sum() / n - 0.1 * (1 - 1 / len(TOK.normal_ids()))) < 0.01
    assert abs(kept.sum() / n - 0.1 * (1 + 1 / len(TOK.normal_ids()))) < 0.01
    assert np.isin(inputs[replaced], TOK.normal_ids()).all()
    np.testing.assert_array_equal(targets[chosen], tokens[chosen])
    assert (targets[~chosen] == 0).all()
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])
    # Chosen positions are spread over the whole example, not biased to its start.
    per_position = chosen[:, 1:].mean(0)
    assert per_position.min() > 0.1 and per_position.max() < 0.2


def test_masking_is_deterministic_in_the_generator():
    tokens = _examples(4, 64)
    a = mlm.mlm_batch(tokens, TOK, np.random.default_rng([3, 0, 7]))
    b = mlm.mlm_batch(tokens, TOK, np.random.default_rng([3, 0, 7]))
    c = mlm.mlm_batch(tokens, TOK, np.random.default_rng([3, 0, 8]))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["weights"], c["weights"])


def test_packed_examples_segments_and_mask():
    docs = [np.array(TOK.encode(s)) for s in ("Ab cd.", "Ef.", "Gh ij kl.")]
    stream = mlm.document_stream(docs, TOK)
    assert (stream == TOK.sep_id).sum() == 3
    tokens = mlm.packed_examples(stream[None, :16], TOK)
    assert tokens.shape == (1, 17) and tokens[0, 0] == TOK.cls_id
    batch = mlm.mlm_batch(tokens, TOK, np.random.default_rng(0))
    # [CLS] Ab cd.[SEP] -> 0, Ef.[SEP] -> 1, Gh ij ... -> 0
    np.testing.assert_array_equal(batch["segment_ids"][0], [0] * 8 + [1] * 4 + [0] * 5)
    assert batch["attention_mask"].all()
    assert set(batch) == {"input_ids", "segment_ids", "attention_mask", "targets", "weights"}
    assert all(v.shape == (1, 17) for v in batch.values())


def test_truncated_examples_pad():
    docs = [np.array(TOK.encode("Short.")), np.array(TOK.encode("A much longer document."))]
    tokens = mlm.truncated_examples(docs, TOK, 12)
    assert tokens.shape == (2, 12)
    assert list(tokens[0, :8]) == [TOK.cls_id, *TOK.encode("Short."), TOK.sep_id]
    assert (tokens[0, 8:] == TOK.pad_id).all()
    assert tokens[1, -1] == TOK.sep_id and TOK.decode(tokens[1, 1:-1]) == "A much lon"
    batch = mlm.mlm_batch(tokens, TOK, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["attention_mask"][0], [1] * 8 + [0] * 4)
    assert (batch["weights"][0, 8:] == 0).all() and (batch["segment_ids"] == 0).all()
    assert batch["weights"][0].sum() == 1  # max(1, round(0.15 * 6))


def test_errors_name_the_option():
    tok = CharTokenizer.from_text("abc")
    tok.mask_id = None
    with pytest.raises(mlm.ConfigError, match=r"\[MASK\]"):
        mlm.mask_tokens(np.array([[6, 7]]), tok, np.random.default_rng(0))
    with pytest.raises(mlm.ConfigError, match="mask_rate=1.5"):
        mlm.mask_tokens(np.array([[6, 7]]), TOK, np.random.default_rng(0), mask_rate=1.5)
