"""Word-level LM data (experiments/data/word_lm.py): both vocabulary formats, and the
consecutive segments the reference trains and evaluates its LSTM on
(google-research/jestimator, jestimator/models/lstm/lm.py, jestimator/data_utils.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.data.word_lm import (
    END,
    EOS,
    LINE_END,
    START,
    UNK,
    WordLMTask,
    build_vocabulary,
    count_vocabulary,
    flat_words,
    lines_of,
    load_vocabulary,
    main,
)
from experiments.errors import ConfigError

# --------------------------------------------------------------------------- vocabularies


def test_plain_vocabulary_round_trip(tmp_path):
    """One word per line; <unk> and <eos> by name (<eos> closes lines and starts texts)."""
    lines = lines_of("the cat sat\n\nthe dog  sat down\n")
    assert lines == [["the", "cat", "sat"], ["the", "dog", "sat", "down"]]
    vocab = build_vocabulary(lines, max_size=5)
    # <unk>, <eos>, then by frequency (the: 2, sat: 2), ties alphabetical.
    assert vocab.words == (UNK, EOS, "sat", "the", "cat")
    assert (vocab.unk_id, vocab.eos_id, vocab.start_id) == (0, 1, 1)
    assert vocab.encode(flat_words(lines)).tolist() == [3, 4, 2, 1, 3, 0, 2, 0, 1]
    path = tmp_path / "vocab.txt"
    vocab.save(str(path))
    assert path.read_text().splitlines()[:3] == [UNK, EOS, "sat"]
    assert load_vocabulary(str(path)) == vocab
    # The special tokens are found by name, wherever they are.
    path.write_text("a\n<eos>\nb\n<unk>\n")
    moved = load_vocabulary(str(path))
    assert (moved.unk_id, moved.eos_id, moved.start_id) == (3, 1, 1)


def test_reference_word_count_vocabulary(tmp_path):
    """jestimator/models/lstm/ptb/vocab.txt: lines `word count`, starting with <s> and
    </s>; lm.py gives each word its line number, appends </s> to every line and feeds <s>
    before the first word."""
    path = tmp_path / "vocab.txt"
    path.write_text("<s> 0\n</s> 0\nthe 59421\n<unk> 53299\nN 37607\nof 28427\n")
    vocab = load_vocabulary(str(path))
    assert vocab.words == (START, END, "the", UNK, "N", "of")
    assert vocab.counts == (0, 0, 59421, 53299, 37607, 28427)
    assert (vocab.start_id, vocab.eos_id, vocab.unk_id) == (0, 1, 3)
    ids = vocab.encode(flat_words(lines_of("the N of\nof zebra\n")))
    assert ids.tolist() == [2, 4, 5, 1, 5, 3, 1]  # 'zebra' is <unk>; lines end with </s>.
    # Written back in the same format.
    vocab.save(str(tmp_path / "again.txt"))
    assert (tmp_path / "again.txt").read_text() == path.read_text()
    # Without <unk>, an unknown word is an error naming it (the reference's lookup fails).
    path.write_text("<s> 0\n</s> 0\nthe 3\n")
    with pytest.raises(ConfigError, match="'zebra' is not in the vocabulary"):
        load_vocabulary(str(path)).encode(["the", "zebra"])


def test_count_vocabulary_writes_the_reference_layout(tmp_path, capsys):
    text = tmp_path / "train.txt"
    text.write_text("b a b\nc b a\n")
    main([str(text), "--output", str(tmp_path / "vocab.txt")])
    assert (tmp_path / "vocab.txt").read_text() == "<s> 0\n</s> 0\nb 3\na 2\nc 1\n"
    assert "wrote 5 words" in capsys.readouterr().out
    assert count_vocabulary(lines_of("x y x\n")).words == (START, END, "x", "y")


def test_vocabulary_errors_name_the_culprit(tmp_path):
    with pytest.raises(ConfigError, match="vocabulary file not found: '/nonexistent'"):
        load_vocabulary("/nonexistent")
    (tmp_path / "no_eos.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="needs an end-of-sentence token"):
        load_vocabulary(str(tmp_path / "no_eos.txt"))
    (tmp_path / "mixed.txt").write_text("<s> 0\n</s> 0\nthe\n")
    with pytest.raises(ConfigError, match="line 3 is 'the'"):
        load_vocabulary(str(tmp_path / "mixed.txt"))
    (tmp_path / "twice.txt").write_text("<eos>\na\na\n")
    with pytest.raises(ConfigError, match="lists 'a' twice"):
        load_vocabulary(str(tmp_path / "twice.txt"))


# --------------------------------------------------------------------------- batches


def _task(tmp_path, consecutive=3, seq_length=5, **kw) -> WordLMTask:
    rng = np.random.default_rng(0)
    lines = [" ".join(f"w{i}" for i in rng.integers(0, 40, rng.integers(3, 9))) for _ in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return WordLMTask(str(path), seq_length=seq_length, consecutive_segments=consecutive, **kw)


def test_consecutive_batches_read_consecutive_text(tmp_path):
    """data_utils.py create_data_pipeline(consecutive=n) / lm.py train_step: batch_size
    contiguous streams; step s+1 reads the tokens right after step s in every stream, for
    train_consecutive steps; then the state resets (step % n == 0) and the streams move on
    to the next block; the reference feeds <s> as the first input after a reset."""
    task = _task(tmp_path, consecutive=3, seq_length=5)
    train, B, T, C = task.corpus.train, 4, 5, 3
    batches = [task.train_batch(seed=0, step=s, batch_size=B) for s in range(1, 3 * C + 1)]
    skip = task.skip(0)
    assert 0 <= skip < T
    for s, batch in enumerate(batches, start=1):
        block, k = divmod(s - 1, C)
        assert batch["reset"].tolist() == [float(k == 0)] * B
        np.testing.assert_array_equal(batch["weights"], np.ones((B, T)))
        for row in range(B):
            first = skip + (block * B + row) * C * T + k * T  # `blocks` is large here.
            np.testing.assert_array_equal(batch["targets"][row], train[first + 1 : first + T + 1])
            expected_inputs = train[first : first + T].copy()
            if k == 0:
                expected_inputs[0] = task.vocab.start_id
            np.testing.assert_array_equal(batch["inputs"][row], expected_inputs)
        if k > 0:  # The next segment continues where the previous one stopped.
            np.testing.assert_array_equal(batch["inputs"][:, 0], batches[s - 2]["targets"][:, -1])
    # The streams of a block tile the text: stream after stream, segment after segment.
    block = np.concatenate([b["targets"] for b in batches[:C]], axis=1).reshape(-1)
    np.testing.assert_array_equal(block, train[skip + 1 : skip + 1 + B * C * T])


def test_batches_are_a_pure_function_of_seed_and_step(tmp_path):
    task = _task(tmp_path)
    a = task.train_batch(seed=0, step=7, batch_size=4)
    b = task.train_batch(seed=0, step=7, batch_size=4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    half = task.train_batch(seed=0, step=7, batch_size=4, rows=slice(2, 4))
    np.testing.assert_array_equal(half["inputs"], a["inputs"][2:])
    # Epochs repeat the blocks in order: step 1 + C * blocks is step 1 again.
    blocks = (len(task.corpus.train) - 5) // (4 * 3 * 5)
    again = task.train_batch(seed=0, step=1 + 3 * blocks, batch_size=4)
    np.testing.assert_array_equal(
        again["targets"], task.train_batch(seed=0, step=1, batch_size=4)["targets"]
    )
    # The seed draws the skip (the reference's random_skip).
    skips = {task.skip(seed) for seed in range(20)}
    assert len(skips) > 1 and skips <= set(range(5))


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7])
def test_eval_covers_the_held_out_text_exactly_once(tmp_path, batch_size):
    """lm.py eval_data_fn / Evaluator: every held-out token is a target exactly once, the
    text read in order (batch 1: one stream, <s> before the first word); the state restarts
    only at batch 0; padding has weight 0."""
    task = _task(tmp_path)
    val = task.corpus.val
    n = task.eval_num_batches("val", batch_size)
    assert n == math.ceil(math.ceil(len(val) / batch_size) / 5)
    batches = [task.eval_batch("val", seed=0, index=i, batch_size=batch_size) for i in range(n)]
    assert [b["reset"].tolist() for b in batches] == [[1.0] * batch_size] + [[0.0] * batch_size] * (
        n - 1
    )
    inputs = np.concatenate([b["inputs"] for b in batches], axis=1)
    targets = np.concatenate([b["targets"] for b in batches], axis=1)
    weights = np.concatenate([b["weights"] for b in batches], axis=1)
    np.testing.assert_array_equal(targets[weights == 1], val)  # Row-major: stream by stream.
    text = np.concatenate([[task.vocab.start_id], val])
    np.testing.assert_array_equal(inputs[weights == 1], text[:-1])
    assert weights.sum() == len(val)
    # Padding only at the end of a stream.
    for row in weights:
        assert np.all(np.diff(row) <= 0)
    part = task.eval_batch("val", seed=0, index=1, batch_size=batch_size, rows=slice(0, 1))
    np.testing.assert_array_equal(part["targets"], batches[1]["targets"][:1])


def test_train_split_evaluation_reads_a_prefix_of_the_training_text(tmp_path):
    task = _task(tmp_path)
    n = task.eval_num_batches("train", 2)
    batches = [task.eval_batch("train", seed=0, index=i, batch_size=2) for i in range(n)]
    targets = np.concatenate([b["targets"] for b in batches], axis=1)
    weights = np.concatenate([b["weights"] for b in batches], axis=1)
    np.testing.assert_array_equal(targets[weights == 1], task.corpus.train[: len(task.corpus.val)])


def test_task_on_tiny_shakespeare(tmp_path, shakespeare):
    vocab_path = tmp_path / "vocab.txt"
    task = WordLMTask(
        str(shakespeare), seq_length=32, max_vocab=2000, save_vocab_path=str(vocab_path)
    )
    assert task.model_kwargs() == {"vocab_size": 2000}
    assert task.state_collections == ("carry",)
    assert task.units_per_example == 32
    # The last 10% of the tokens held out: validation, then test.
    c = task.corpus
    total = len(c.train) + len(c.val) + len(c.test)
    assert len(c.train) == int(total * 0.9) == 211_885
    assert (len(c.val), len(c.test)) == (11_772, 11_771)
    # One block per epoch without consecutive_segments.
    assert task.consecutive(32) == (len(task.corpus.train) - 32) // (32 * 32)
    # The saved vocabulary reproduces the same ids when given by path.
    from_file = WordLMTask(str(shakespeare), seq_length=32, vocab_path=str(vocab_path))
    np.testing.assert_array_equal(from_file.corpus.val, task.corpus.val)
    # Out-of-vocabulary words are <unk>: about the share of rare words.
    unk_share = float(np.mean(task.corpus.val == task.vocab.unk_id))
    assert 0.02 < unk_share < 0.3
    assert LINE_END is None


def test_task_with_a_reference_vocabulary_starts_with_s(tmp_path):
    """lm.py: with the reference's vocabulary, lines end with </s> and <s> is the first
    input of every stream after a reset."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c d\n" * 40)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<s> 0\n</s> 0\na 40\nb 40\nc 40\nd 40\n")
    task = WordLMTask(str(corpus), seq_length=4, consecutive_segments=2, vocab_path=str(vocab))
    assert task.corpus.train[:6].tolist() == [2, 3, 4, 5, 1, 2]
    batch = task.train_batch(seed=0, step=1, batch_size=2)
    assert batch["inputs"][:, 0].tolist() == [0, 0]
    assert task.eval_batch("val", seed=0, index=0, batch_size=1)["inputs"][0, 0] == 0


def test_task_errors_name_the_culprit(tmp_path):
    with pytest.raises(ConfigError, match="text file not found: '/missing.txt' .*CORPUS_PATH"):
        WordLMTask("/missing.txt")
    small = tmp_path / "small.txt"
    small.write_text("a b c\n" * 20)
    with pytest.raises(ConfigError, match="seq_length=64 does not fit"):
        WordLMTask(str(small), seq_length=64)
    task = WordLMTask(str(small), seq_length=2, consecutive_segments=3)
    with pytest.raises(ConfigError, match="fewer than BATCH_SIZE=16 streams"):
        task.train_batch(seed=0, step=1, batch_size=16)
    # 72 train, 4 val and 4 test tokens: the test split must hold a segment too.
    with pytest.raises(ConfigError, match="seq_length=4 .* 4 val / 4 test tokens"):
        WordLMTask(str(small), seq_length=4)
    with pytest.raises(ConfigError, match="test_path=.* needs a valid_path"):
        WordLMTask(str(small), seq_length=2, test_path=str(small))
    with pytest.raises(ConfigError, match="no evaluation batches for split 'dev'"):
        task.eval_num_batches("dev", 2)


# --------------------------------------------------------------------------- splits


def _corpus_text(n_lines: int = 300) -> str:
    rng = np.random.default_rng(1)
    return "".join(
        " ".join(f"w{i}" for i in rng.integers(0, 40, rng.integers(3, 9))) + "\n"
        for _ in range(n_lines)
    )


def test_held_out_tail_is_cut_into_validation_and_test(tmp_path):
    """Without files of its own, the last 10% of the tokens is held out, its first half
    validation and its second half test; the training split is what it was before."""
    path = tmp_path / "corpus.txt"
    path.write_text(_corpus_text())
    task = WordLMTask(str(path), seq_length=5)
    # The old training split, from the text alone: its first 90% of the words (line ends
    # included), with the vocabulary built from them.
    words = flat_words(lines_of(path.read_text()))
    n = int(len(words) * 0.9)
    vocab = build_vocabulary([[w for w in words[:n] if w is not LINE_END]], 10_000)
    assert task.vocab == vocab
    c = task.corpus
    np.testing.assert_array_equal(c.train, vocab.encode(words[:n]))
    # Validation then test tile the held-out tail: disjoint, covering it, in order.
    held = vocab.encode(words[n:])
    assert len(c.val) == (len(held) + 1) // 2 and len(c.val) + len(c.test) == len(held)
    np.testing.assert_array_equal(np.concatenate([c.train, c.val, c.test]), vocab.encode(words))


def test_a_separate_held_out_file_is_halved_unless_there_is_a_test_file(tmp_path):
    """PTB's layout: train, valid and test files. With valid_path alone, the file is cut
    in two; with test_path too, each file is its split."""
    train, valid, test = (tmp_path / f"{name}.txt" for name in ("train", "valid", "test"))
    train.write_text(_corpus_text(200))
    valid.write_text("w1 w2 w3\nw4 w5\nw6 w7 w8 w9\n")
    test.write_text("w9 w8\nw7 w6 w5\n")
    halved = WordLMTask(str(train), seq_length=3, valid_path=str(valid))
    v = halved.vocab
    held = v.encode(flat_words(lines_of(valid.read_text())))
    np.testing.assert_array_equal(
        halved.corpus.train, v.encode(flat_words(lines_of(train.read_text())))
    )
    np.testing.assert_array_equal(halved.corpus.val, held[:6])
    np.testing.assert_array_equal(halved.corpus.test, held[6:])
    own = WordLMTask(str(train), seq_length=3, valid_path=str(valid), test_path=str(test))
    np.testing.assert_array_equal(own.corpus.train, halved.corpus.train)
    np.testing.assert_array_equal(own.corpus.val, held)
    np.testing.assert_array_equal(own.corpus.test, v.encode(flat_words(lines_of(test.read_text()))))
    assert own.test_path == str(test)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_test_evaluation_covers_the_test_split_once_and_is_pure(tmp_path, batch_size):
    task = _task(tmp_path)
    test = task.corpus.test
    n = task.eval_num_batches("test", batch_size)
    assert n == math.ceil(math.ceil(len(test) / batch_size) / 5)
    batches = [task.eval_batch("test", seed=0, index=i, batch_size=batch_size) for i in range(n)]
    targets = np.concatenate([b["targets"] for b in batches], axis=1)
    weights = np.concatenate([b["weights"] for b in batches], axis=1)
    np.testing.assert_array_equal(targets[weights == 1], test)
    # A pure function of (seed, index): the same from a fresh task and for any seed.
    fresh = _task(tmp_path)
    for i, b in enumerate(batches):
        for seed in (0, 3):
            again = fresh.eval_batch("test", seed=seed, index=i, batch_size=batch_size)
            for k in b:
                np.testing.assert_array_equal(again[k], b[k])
