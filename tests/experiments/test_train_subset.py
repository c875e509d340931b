"""A smaller training set for the weight-decay timescale study: the first part of a task's
training split (`train_subset`), its example count, and validation and test unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data.char_text import CharTextTask
from experiments.data.images import ImageClassificationTask
from experiments.data.splits import first_fraction
from experiments.errors import ConfigError


def test_first_fraction_is_the_start_of_the_split():
    assert first_fraction(list(range(10)), 0.25, "X") == [0, 1]
    assert first_fraction(list(range(10)), 1.0, "X") == list(range(10))
    assert first_fraction(np.arange(1438), 0.25, "X").tolist() == list(range(359))
    for bad in (0, -0.5, 1.5, "0.5", True, float("nan")):
        with pytest.raises(ConfigError, match=r"X must be a fraction in \(0, 1\]"):
            first_fraction(list(range(10)), bad, "X")
    with pytest.raises(ConfigError, match="X=0.05 leaves none of the 10 training items"):
        first_fraction(list(range(10)), 0.05, "X")


def test_char_task_trains_on_the_first_quarter_and_counts_its_windows():
    full = CharTextTask(generated_chars=20_000, block_size=16)
    quarter = CharTextTask(generated_chars=20_000, block_size=16, train_subset=0.25)
    # 90% of 20,000 characters train; a quarter of those: 4,500 tokens, 281 windows of 16.
    assert (full.num_train_tokens, full.num_train_examples) == (18_000, 1125)
    assert (quarter.num_train_tokens, quarter.num_train_examples) == (4500, 281)
    assert np.array_equal(quarter.corpus.train, full.corpus.train[:4500])
    for split in ("val", "test"):
        assert np.array_equal(quarter.corpus.split(split), full.corpus.split(split))
        a = quarter.eval_batch(split, seed=0, index=0, batch_size=4)
        b = full.eval_batch(split, seed=0, index=0, batch_size=4)
        assert np.array_equal(a["inputs"], b["inputs"])
    assert quarter.vocab_size == full.vocab_size
    with pytest.raises(ConfigError, match="CharTextTask.train_subset must be a fraction"):
        CharTextTask(generated_chars=20_000, block_size=16, train_subset=2.0)


def test_digits_train_on_the_first_quarter_of_their_training_split():
    full = ImageClassificationTask("digits")
    quarter = ImageClassificationTask("digits", train_subset=0.25)
    # 1797 images, 359 held out (180 validation, 179 test), 1438 train; a quarter: 359.
    assert (full.num_train_examples, quarter.num_train_examples) == (1438, 359)
    assert np.array_equal(quarter.splits.train_labels, full.splits.train_labels[:359])
    assert np.array_equal(quarter.splits.train_images, full.splits.train_images[:359])
    for split in ("val", "test"):
        assert np.array_equal(quarter.splits.split(split)[1], full.splits.split(split)[1])
    assert full.split_names["train"] == "permutation[359:]"
    assert quarter.split_names["train"] == "permutation[359:718]"
    # Its inputs are normalized by what it trains on.
    assert np.allclose(quarter.mean, quarter.splits.train_images.mean(axis=(0, 1, 2)))
    picks = quarter.train_batch(seed=0, step=1, batch_size=64)["labels"]
    assert picks.shape == (64,)
    with pytest.raises(ConfigError, match="ImageClassificationTask.train_subset"):
        ImageClassificationTask("digits", train_subset=0.0)
