"""The character pipeline: nanoGPT's split and vocabulary, batches pure in (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data.char_text import (
    CharTextTask,
    corpus_from_text,
    generated_text,
    load_corpus,
)
from experiments.errors import ConfigError


def test_split_and_vocab_small_text():
    c = corpus_from_text("abcabcabcd")
    assert c.chars == "abcd" and c.vocab_size == 4
    assert len(c.train) == 9 and len(c.val) == 1
    assert c.decode(c.train) == "abcabcabc" and c.decode(c.val) == "d"


def test_tinyshakespeare_matches_nanogpt_prepare(shakespeare):
    c = load_corpus(str(shakespeare))
    # nanoGPT's prepare.py: 65 characters, 1,003,854 train and 111,540 val tokens.
    assert c.vocab_size == 65
    assert (len(c.train), len(c.val)) == (1003854, 111540)
    assert c.decode(c.train[:14]) == "First Citizen:"


def test_batches_are_pure_functions_of_seed_and_step():
    task = CharTextTask(generated_chars=5000, block_size=16)
    a = task.train_batch(seed=3, step=7, batch_size=8)
    b = task.train_batch(seed=3, step=7, batch_size=8)
    c = task.train_batch(seed=3, step=8, batch_size=8)
    d = task.train_batch(seed=4, step=7, batch_size=8)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], c["inputs"])
    assert not np.array_equal(a["inputs"], d["inputs"])
    assert a["inputs"].shape == (8, 16) and a["inputs"].dtype == np.int32
    # Targets are the inputs shifted by one character.
    np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
    # A host's rows are exactly its slice of the global batch.
    half = task.train_batch(seed=3, step=7, batch_size=8, rows=slice(4, 8))
    np.testing.assert_array_equal(half["targets"], a["targets"][4:])
    # Evaluation draws from the held-out split, with its own stream.
    v = task.eval_batch("val", seed=3, index=7, batch_size=8)
    val = task.corpus.val.astype(np.uint8).tobytes()
    for row in v["inputs"]:
        assert val.find(row.astype(np.uint8).tobytes()) >= 0


def test_generated_text_is_deterministic_and_structured():
    t = generated_text(20000, seed=0)
    assert t == generated_text(20000, seed=0) and t != generated_text(20000, seed=1)
    assert len(t) == 20000
    # Bigram structure: far fewer distinct word pairs than a uniform choice would give.
    words = t.lower().replace(".", "").replace("!", "").replace("?", "").split()
    pairs = set(zip(words, words[1:], strict=False))
    assert len(pairs) < 0.5 * (len(words) - 1)


def test_missing_or_too_small_data_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="corpus file not found"):
        CharTextTask(str(tmp_path / "nope.txt"))
    small = tmp_path / "small.txt"
    small.write_text("hello world")
    with pytest.raises(ConfigError, match="block_size=64"):
        CharTextTask(str(small), block_size=64)
