"""The character pipeline: nanoGPT's split and vocabulary, batches pure in (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data.char_text import (
    CharTextTask,
    corpus_from_text,
    generated_text,
    get_batch,
    load_corpus,
)
from experiments.errors import ConfigError


def test_split_and_vocab_small_text():
    c = corpus_from_text("abcabcabcdab")
    assert c.chars == "abcd" and c.vocab_size == 4
    assert (len(c.train), len(c.val), len(c.test)) == (10, 1, 1)
    assert c.decode(c.train) == "abcabcabcd"
    assert (c.decode(c.val), c.decode(c.test)) == ("a", "b")
    # An odd held-out part gives validation the extra character.
    odd = corpus_from_text("abcabcabcd")
    assert (odd.decode(odd.val), odd.decode(odd.test)) == ("d", "")


def test_three_splits_tile_the_text_and_train_is_nanogpts():
    text = generated_text(30_001, seed=2)
    c = corpus_from_text(text)
    # The training split as it was before the test split existed (nanoGPT's first 90%),
    # computed here from the text alone.
    assert c.decode(c.train) == text[: int(len(text) * 0.9)]
    # Validation then test, the held-out tail cut in two: disjoint and covering the text.
    held = text[int(len(text) * 0.9) :]
    assert c.decode(c.val) == held[: (len(held) + 1) // 2]
    assert c.decode(c.test) == held[(len(held) + 1) // 2 :]
    assert c.decode(np.concatenate([c.train, c.val, c.test])) == text
    with pytest.raises(ConfigError, match="no split 'dev'"):
        c.split("dev")


def test_tinyshakespeare_matches_nanogpt_prepare(shakespeare):
    c = load_corpus(str(shakespeare))
    # nanoGPT's prepare.py: 65 characters, 1,003,854 train and 111,540 val tokens; the
    # 111,540 held out are validation and test here, half each.
    assert c.vocab_size == 65
    assert (len(c.train), len(c.val), len(c.test)) == (1003854, 55770, 55770)
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


def _windows_of(split: np.ndarray, rows: np.ndarray) -> bool:
    data = split.astype(np.uint8).tobytes()
    return all(data.find(r.astype(np.uint8).tobytes()) >= 0 for r in rows)


def test_test_batches_are_pure_and_come_from_the_test_split():
    task = CharTextTask(generated_chars=20_000, block_size=16)
    a = task.eval_batch("test", seed=0, index=3, batch_size=8)
    again = CharTextTask(generated_chars=20_000, block_size=16).eval_batch(
        "test", seed=0, index=3, batch_size=8
    )
    np.testing.assert_array_equal(a["inputs"], again["inputs"])
    assert not np.array_equal(
        a["inputs"], task.eval_batch("test", seed=0, index=4, batch_size=8)["inputs"]
    )
    assert not np.array_equal(
        a["inputs"], task.eval_batch("test", seed=1, index=3, batch_size=8)["inputs"]
    )
    np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
    # Every window (inputs and the last target) is a piece of the test split.
    assert _windows_of(task.corpus.test, np.concatenate([a["inputs"], a["targets"][:, -1:]], 1))
    half = task.eval_batch("test", seed=0, index=3, batch_size=8, rows=slice(0, 4))
    np.testing.assert_array_equal(half["targets"], a["targets"][:4])
    with pytest.raises(ConfigError, match="split='test', purpose='train'"):
        get_batch(task.corpus, "test", seed=0, index=1, batch_size=2, block_size=16)


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
    # The test split must hold a window too: 31 held-out characters, 16 val and 15 test.
    mid = tmp_path / "mid.txt"
    mid.write_text("abcdefghij" * 31)
    CharTextTask(str(mid), block_size=14)
    with pytest.raises(ConfigError, match=r"block_size=15 .* 16 val / 15 test tokens"):
        CharTextTask(str(mid), block_size=15)


def test_whole_split_evaluation_predicts_every_held_out_token_once():
    text = generated_text(30_000, seed=3)
    task = CharTextTask(
        generated_chars=30_000, generated_seed=3, block_size=16, eval_whole_split=True
    )
    val = corpus_from_text(text).val
    windows = (len(val) - 17) // 16 + 1
    n = task.eval_num_batches("val", 8)
    assert n == -(-windows // 8) and windows % 8
    batches = [task.eval_batch("val", seed=0, index=i, batch_size=8) for i in range(n)]
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights[:windows].all() and not weights[windows:].any()
    inputs = np.concatenate([b["inputs"] for b in batches])[:windows]
    targets = np.concatenate([b["targets"] for b in batches])[:windows]
    np.testing.assert_array_equal(inputs.ravel(), val[: windows * 16])
    np.testing.assert_array_equal(targets.ravel(), val[1 : windows * 16 + 1])
    # The seed does not change a whole-split batch; rows slice it; past the end is an error.
    again = task.eval_batch("val", seed=5, index=1, batch_size=8, rows=slice(2, 4))
    for k in again:
        np.testing.assert_array_equal(again[k], batches[1][k][2:4])
    with pytest.raises(ConfigError, match="past its end"):
        task.eval_batch("val", seed=0, index=n, batch_size=8)
    # Training batches are those of the drawn evaluation, with weights of ones.
    drawn = CharTextTask(generated_chars=30_000, generated_seed=3, block_size=16)
    train, plain = (t.train_batch(seed=0, step=2, batch_size=4) for t in (task, drawn))
    np.testing.assert_array_equal(train["inputs"], plain["inputs"])
    assert train["weights"].shape == train["targets"].shape and train["weights"].all()
    assert task.objective.weights == "weights" and drawn.objective.weights is None
