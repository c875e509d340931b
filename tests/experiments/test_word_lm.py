"""Word-level LM data: vocabulary file round trip, <unk>/<eos>, deterministic windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.data.char_text import DataConfigError
from experiments.data.word_lm import (
    EOS,
    UNK,
    WordLMTask,
    build_vocabulary,
    load_vocabulary,
    words_of,
)

SHAKESPEARE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / ("input.txt")
)


def test_words_and_vocabulary(tmp_path):
    words = words_of("the cat sat\n\nthe dog  sat down\n")
    assert words == ["the", "cat", "sat", EOS, "the", "dog", "sat", "down", EOS]
    vocab = build_vocabulary(words, max_size=5)
    # <unk>, <eos>, then by frequency (the: 2, sat: 2), ties alphabetical.
    assert vocab.words == (UNK, EOS, "sat", "the", "cat")
    assert vocab.encode(["the", "dog", EOS]).tolist() == [3, 0, 1]
    path = tmp_path / "vocab.txt"
    vocab.save(str(path))
    assert path.read_text().splitlines()[:3] == [UNK, EOS, "sat"]
    assert load_vocabulary(str(path)) == vocab
    with pytest.raises(DataConfigError, match="vocabulary file not found: '/nonexistent'"):
        load_vocabulary("/nonexistent")
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(DataConfigError, match="must start with '<unk>', '<eos>'"):
        load_vocabulary(str(tmp_path / "bad.txt"))


def test_task_on_tiny_shakespeare(tmp_path):
    vocab_path = tmp_path / "vocab.txt"
    task = WordLMTask(
        str(SHAKESPEARE), seq_length=32, max_vocab=2000, save_vocab_path=str(vocab_path)
    )
    assert task.model_kwargs() == {"vocab_size": 2000}
    batch = task.train_batch(seed=0, step=1, batch_size=4)
    assert batch["inputs"].shape == (4, 32)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    again = task.train_batch(seed=0, step=1, batch_size=4)
    np.testing.assert_array_equal(batch["inputs"], again["inputs"])
    other = task.train_batch(seed=0, step=2, batch_size=4)
    assert not np.array_equal(batch["inputs"], other["inputs"])
    half = task.train_batch(seed=0, step=1, batch_size=4, rows=slice(2, 4))
    np.testing.assert_array_equal(half["inputs"], batch["inputs"][2:])
    # The saved vocabulary reproduces the same ids when given by path.
    from_file = WordLMTask(str(SHAKESPEARE), seq_length=32, vocab_path=str(vocab_path))
    np.testing.assert_array_equal(from_file.corpus.val, task.corpus.val)
    # Out-of-vocabulary words are <unk>: about the share of rare words.
    unk_share = float(np.mean(task.corpus.val == 0))
    assert 0.02 < unk_share < 0.3


def test_task_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataConfigError, match="text file not found: '/missing.txt' .*CORPUS_PATH"):
        WordLMTask("/missing.txt")
    small = tmp_path / "small.txt"
    small.write_text("a b c\n" * 10)
    with pytest.raises(DataConfigError, match="seq_length=64 does not fit"):
        WordLMTask(str(small), seq_length=64)
