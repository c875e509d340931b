"""T5 span corruption: lengths, noise statistics, and an exact round trip."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data import span_corruption as sc
from experiments.data.char_text import generated_text
from experiments.data.tokenizers import CharTokenizer

TEXT = generated_text(40_000, seed=2)
TOK = CharTokenizer.from_text(TEXT)


def test_random_spans_helper_matches_t5():
    assert sc.random_spans_helper(512) == (568, 114)  # T5's span-corruption lengths
    assert sc.random_spans_helper(128) == (141, 29)
    tokens_length, targets_length = sc.random_spans_helper(64)
    inputs, targets = sc.span_corrupt(
        np.arange(10, 10 + tokens_length), TOK, np.random.default_rng(0)
    )
    assert len(inputs) == 64 and len(targets) == targets_length


def test_noise_density_and_mean_span_length():
    rng = np.random.default_rng(0)
    noise = spans = total = 0
    for _ in range(300):
        mask = sc.random_spans_noise_mask(568, rng)
        assert not mask[0] and mask[-1]  # starts with kept tokens, ends with noise
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        noise += mask.sum()
        spans += starts.sum()
        total += len(mask)
        assert mask.sum() == 85 and starts.sum() == 28  # round(568 * .15), round(85 / 3)
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.1
    # Span lengths vary (random segmentation), and short chunks still get a span.
    assert sc.random_spans_noise_mask(5, rng).sum() == 1
    assert list(sc.random_spans_noise_mask(1, rng)) == [False]


def test_round_trip_reconstructs_text_exactly():
    tokens_length, targets_length = sc.random_spans_helper(128)
    rng = np.random.default_rng(5)
    for start in range(0, 20_000, 997):
        text = TEXT[start : start + tokens_length]
        inputs, targets = sc.span_corrupt(np.array(TOK.encode(text)), TOK, rng)
        assert inputs[-1] == TOK.eos_id and targets[-1] == TOK.eos_id
        assert len(inputs) <= 128 and len(targets) <= targets_length
        # Sentinels appear in order <extra_id_0>, <extra_id_1>, ... in both.
        in_sentinels = inputs[TOK.is_sentinel(inputs)]
        np.testing.assert_array_equal(
            in_sentinels, TOK.vocab_size - 1 - np.arange(len(in_sentinels))
        )
        np.testing.assert_array_equal(targets[TOK.is_sentinel(targets)], in_sentinels)
        assert targets[0] == TOK.sentinel_id(0)
        assert TOK.decode(sc.reconstruct(inputs, targets, TOK)) == text


def test_batch_padding_and_decoder_shift():
    tokens_length, _ = sc.random_spans_helper(64)
    chunks = [np.array(TOK.encode(TEXT[i : i + tokens_length])) for i in (0, 500)]
    chunks.append(np.array(TOK.encode(TEXT[:30])))  # a short final chunk gets padding
    batch = sc.span_corruption_batch(
        chunks, TOK, np.random.default_rng(0), inputs_length=64, targets_length=16
    )
    assert batch["encoder_input_tokens"].shape == (3, 64)
    tgt, dec_in = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
    assert tgt.shape == dec_in.shape == (3, 16)
    assert (dec_in[:, 0] == 0).all()
    np.testing.assert_array_equal(dec_in[:, 1:], tgt[:, :-1])
    np.testing.assert_array_equal(batch["decoder_loss_weights"], (tgt != 0).astype(np.float32))
    for i, chunk in enumerate(chunks):
        rebuilt = sc.reconstruct(batch["encoder_input_tokens"][i], tgt[i], TOK)
        np.testing.assert_array_equal(rebuilt, chunk)
    with pytest.raises(sc.SpanCorruptionError, match="targets_length=8"):
        sc.span_corruption_batch(
            chunks, TOK, np.random.default_rng(0), inputs_length=64, targets_length=8
        )


def test_too_few_sentinels():
    tok = CharTokenizer.from_text(TEXT, num_sentinels=2)
    with pytest.raises(sc.SpanCorruptionError, match="num_sentinels=2"):
        sc.span_corrupt(np.array(tok.encode(TEXT[:200])), tok, np.random.default_rng(0))
