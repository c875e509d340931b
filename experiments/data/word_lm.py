"""Word-level language-model data: vocabulary files and consecutive segments of a text.

Text: words are split on whitespace and every non-empty line ends with the vocabulary's
end-of-sentence token (PTB conventions; the reference appends ``</s>`` to each line,
google-research/jestimator ``jestimator/models/lstm/lm.py``).

Vocabulary files, one entry per line, in either format (``load_vocabulary`` tells them
apart):

* plain: one word per line (``build_vocabulary`` writes ``<unk>``, ``<eos>`` first, then the
  words by frequency);
* ``word count`` per line, as the reference's PTB vocabulary
  (``jestimator/models/lstm/ptb/vocab.txt``: ``<s> 0``, ``</s> 0``, then the words by count;
  ``count_vocabulary`` writes one).

A word's id is its line number. The special tokens are read from the words of the file:
end of sentence ``</s>`` if present, else ``<eos>``; start ``<s>`` if present, else the
end-of-sentence token (what precedes the first line of a text is a line end); unknown
``<unk>`` if present, else none, and then a word missing from the vocabulary is an error
that names it (PTB's text already has ``<unk>`` in it).

Batches are consecutive segments (truncated back-propagation through time), as the
reference trains its LSTM (``--train_consecutive``; ``jestimator/data_utils.py``
``create_data_pipeline`` with ``consecutive``):

* Training. The training split, after skipping its first ``skip`` tokens (one draw in
  ``[0, seq_length)`` per run, the reference's ``random_skip``; the same in every epoch, as
  there), is cut into blocks of ``batch_size`` contiguous streams of
  ``consecutive_segments * seq_length`` tokens each. Step ``s`` (1-based) reads segment
  ``k = (s - 1) % consecutive_segments`` of every stream of block
  ``((s - 1) // consecutive_segments) % blocks_per_epoch``: the next ``seq_length`` tokens
  of each stream. At ``k = 0`` the model's state restarts from zero (``reset`` = 1; the
  reference resets where ``step % train_consecutive == 0``) and the first input word is
  the start token, as the reference feeds ``<s>`` there. Epochs repeat the same blocks in
  order; what is left over at the end of the split is not used. Every batch is a pure
  function of (seed, step).
* Evaluation. The WHOLE split, every token a target exactly once: the text preceded by
  the start token is cut into ``eval batch size`` contiguous streams of ``L =
  ceil(tokens / batch size)`` targets (the last stream shorter), read ``seq_length`` at a
  time in ``eval_num_batches = ceil(L / seq_length)`` consecutive batches, the state
  threaded from zero (``reset`` = 1 in batch 0). Padding has ``weights`` 0. Batch size 1
  is the reference's evaluation (the whole file in one stream). Split ``'train'`` is
  evaluated on the first ``len(val)`` tokens of the training split.

Splits: the training text is the training split. The held-out text (the last 10% of the
training file's tokens, or a separate ``valid_path`` file) is cut in two, its first half
validation and its second half test (``experiments.data.splits``), unless the data has its
own test file (``test_path``: PTB's ``ptb.test.txt``), which is then the test split and
the whole held-out text validation.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
from collections.abc import Iterable

import numpy as np

from experiments.data.files import read_text
from experiments.data.splits import halves
from experiments.errors import ConfigError
from experiments.objectives import CarriedStateLM
from experiments.task import ObjectiveTask, batch_rng

UNK, EOS = "<unk>", "<eos>"  # Written by build_vocabulary (PTB's plain conventions).
START, END = "<s>", "</s>"  # The reference's PTB vocabulary.
TRAIN_FRACTION = 0.9  # Held out: the last 10% of the tokens when there is no valid_path.


def lines_of(text: str) -> list[list[str]]:
    """The whitespace-split words of each non-empty line."""
    return [words for words in (line.split() for line in text.splitlines()) if words]


LINE_END = None  # Marks the end of a line in a flat word list (see `flat_words`).


def flat_words(lines: list[list[str]]) -> list[str | None]:
    """The words of all lines in order, ``LINE_END`` after each line."""
    return [w for words in lines for w in (*words, LINE_END)]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Words in id order and, for a ``word count`` file, their counts; the special ids
    come from the words (module docstring)."""

    words: tuple[str, ...]
    counts: tuple[int, ...] | None = None

    def __post_init__(self):
        ids = {w: i for i, w in enumerate(self.words)}
        if len(ids) != len(self.words):
            dup = next(w for w in self.words if self.words.count(w) > 1)
            raise ConfigError(f"the vocabulary lists {dup!r} twice")
        if END not in ids and EOS not in ids:
            raise ConfigError(
                f"a vocabulary needs an end-of-sentence token, {END!r} or {EOS!r}; "
                f"it starts with {self.words[:3]!r}"
            )
        object.__setattr__(self, "_ids", ids)

    @property
    def eos_id(self) -> int:
        """``</s>`` if the vocabulary has it, else ``<eos>``: closes every line."""
        ids = self._ids  # type: ignore[attr-defined]
        return ids[END] if END in ids else ids[EOS]

    @property
    def start_id(self) -> int:
        """``<s>`` if the vocabulary has it, else the end-of-sentence id."""
        return self._ids.get(START, self.eos_id)  # type: ignore[attr-defined]

    @property
    def unk_id(self) -> int | None:
        return self._ids.get(UNK)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Iterable[str | None]) -> np.ndarray:
        """Ids of ``words`` (int32): ``LINE_END`` is the end-of-sentence id, an unknown
        word ``<unk>`` (an error when the vocabulary has no ``<unk>``)."""
        ids, unk, eos = self._ids, self.unk_id, self.eos_id  # type: ignore[attr-defined]
        out = []
        for w in words:
            i = eos if w is LINE_END else ids.get(w, unk)
            if i is None:
                raise ConfigError(f"word {w!r} is not in the vocabulary, which has no {UNK!r}")
            out.append(i)
        return np.asarray(out, dtype=np.int32)

    def decode(self, ids) -> list[str]:
        return [self.words[int(i)] for i in ids]

    def save(self, path: str) -> None:
        """One word per line, or ``word count`` per line when there are counts."""
        with open(path, "w", encoding="utf-8") as f:
            if self.counts is None:
                f.writelines(f"{w}\n" for w in self.words)
            else:
                f.writelines(f"{w} {c}\n" for w, c in zip(self.words, self.counts, strict=True))


def build_vocabulary(
    lines: list[list[str]], max_size: int | None = None, min_count: int = 1
) -> Vocabulary:
    """``<unk>``, ``<eos>``, then the most frequent words (ties alphabetical), at most
    ``max_size`` entries in all: a plain vocabulary."""
    counts = collections.Counter(w for words in lines for w in words if w not in (UNK, EOS))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - 2)]
    return Vocabulary((UNK, EOS, *ranked))


def count_vocabulary(lines: list[list[str]]) -> Vocabulary:
    """Every word with its count, in the reference's PTB layout: ``<s> 0``, ``</s> 0``,
    then the words by count (ties alphabetical)."""
    counts = collections.Counter(w for words in lines for w in words if w not in (START, END))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return Vocabulary((START, END, *ranked), (0, 0, *(counts[w] for w in ranked)))


def load_vocabulary(path: str) -> Vocabulary:
    """A plain (one word per line) or ``word count`` vocabulary file."""
    text = read_text(path, "VOCAB_PATH", what="vocabulary file")
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if all(len(r) == 1 for r in rows):
        return Vocabulary(tuple(r[0] for r in rows))
    if all(len(r) == 2 and r[1].isdigit() for r in rows):
        return Vocabulary(tuple(r[0] for r in rows), tuple(int(r[1]) for r in rows))
    bad = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]) or len(r) > 2)
    raise ConfigError(
        f"{path!r}: line {bad + 1} is {' '.join(rows[bad])!r}; a vocabulary file has one "
        "word per line, or 'word count' on every line"
    )


@dataclasses.dataclass(frozen=True)
class TokenSplits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stream_starts(
    num_tokens: int, *, batch_size: int, seq_length: int, consecutive: int, skip: int, step: int
) -> tuple[np.ndarray, bool]:
    """Where the ``batch_size`` input segments of 1-based training ``step`` start, and
    whether the state restarts there (module docstring)."""
    stream = consecutive * seq_length
    # `seq_length` tokens are kept back so that every skip in [0, seq_length) fits.
    blocks = (num_tokens - seq_length) // (batch_size * stream)
    if blocks < 1:
        raise ConfigError(
            f"the training split has {num_tokens} tokens, fewer than BATCH_SIZE={batch_size} "
            f"streams of consecutive_segments={consecutive} x seq_length={seq_length} "
            "tokens; lower one of them"
        )
    block, segment = divmod(step - 1, consecutive)
    first = skip + (block % blocks) * batch_size * stream + segment * seq_length
    return first + stream * np.arange(batch_size), segment == 0


class WordLMTask(ObjectiveTask):
    """Consecutive segments of a word-level text for a model with a carried state (a
    `Task`, experiments/task.py; module docstring for the layout), with the objective
    ``CarriedStateLM``.

    Args:
      corpus_path: the training text; with ``valid_path`` unset, its last 10% of tokens
        is held out (validation, then test; module docstring).
      seq_length: words per segment (the reference's PTB run: 64).
      consecutive_segments: segments per stream before the streams move on and the state
        restarts (the reference's ``--train_consecutive``, 113 for PTB: its training split
        is two blocks of 64 streams); None: as many as one block per epoch allows.
      valid_path: a separate held-out text (PTB's ``ptb.valid.txt``): the validation
        split, or its first half when there is no ``test_path``.
      test_path: a separate test text (PTB's ``ptb.test.txt``); needs ``valid_path``.
      vocab_path: a vocabulary file (either format); when unset, one is built from the
        training split (``max_vocab`` words) and, if ``save_vocab_path`` is given, written
        there.
      loss_normalization: the training loss over a batch's targets, ``"sqrt"`` (the
        reference's LSTM: sum / sqrt(count)), ``"mean"`` or ``"sum"``.
    """

    unit_name = "tokens"

    def __init__(
        self,
        corpus_path: str,
        *,
        seq_length: int = 64,
        consecutive_segments: int | None = None,
        valid_path: str | None = None,
        test_path: str | None = None,
        vocab_path: str | None = None,
        max_vocab: int | None = 10_000,
        save_vocab_path: str | None = None,
        loss_normalization: str = "sqrt",
    ):
        self.objective = CarriedStateLM(normalization=loss_normalization)
        train_words = flat_words(lines_of(read_text(corpus_path, "CORPUS_PATH")))
        if test_path and not valid_path:
            raise ConfigError(
                f"WordLMTask.test_path={test_path!r} needs a valid_path too: with the "
                f"validation split held out of the training text, the test split is too"
            )
        if valid_path:
            held_out = flat_words(lines_of(read_text(valid_path, "VALID_PATH")))
        else:  # The last 10% of the tokens (line ends included) are held out.
            n = int(len(train_words) * TRAIN_FRACTION)
            train_words, held_out = train_words[:n], train_words[n:]
        if test_path:  # The data's own test split.
            valid_words = held_out
            test_words = flat_words(lines_of(read_text(test_path, "TEST_PATH")))
        else:
            valid_words, test_words = halves(held_out)
        if vocab_path:
            self.vocab = load_vocabulary(vocab_path)
        else:  # From the training split only.
            self.vocab = build_vocabulary(
                [[w for w in train_words if w is not LINE_END]], max_vocab
            )
            if save_vocab_path:
                self.vocab.save(save_vocab_path)
        train, val, test = (self.vocab.encode(w) for w in (train_words, valid_words, test_words))
        self.corpus = TokenSplits(train, val, test)
        self.source = corpus_path
        # For run.json.
        self.valid_path, self.test_path, self.vocab_path = valid_path, test_path, vocab_path
        self.seq_length = seq_length
        if consecutive_segments is not None and consecutive_segments < 1:
            raise ConfigError(f"consecutive_segments={consecutive_segments} must be >= 1")
        self.consecutive_segments = consecutive_segments
        if seq_length >= min(len(train), len(val), len(test)):
            raise ConfigError(
                f"seq_length={seq_length} does not fit the splits "
                f"({len(train)} train / {len(val)} val / {len(test)} test tokens)"
            )

    # -------------------------------------------------------------- the Task interface
    @property
    def units_per_example(self) -> int:
        return self.seq_length

    @property
    def state_collections(self) -> tuple[str, ...]:
        """The model's collections carried from batch to batch (launch/trainer/)."""
        return self.objective.collections

    def model_kwargs(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab)}

    @property
    def num_train_examples(self) -> int:
        """The training split in segments of ``seq_length`` words: an epoch reads each
        training word once, ``num_train_examples / batch_size`` steps."""
        return len(self.corpus.train) // self.seq_length

    def consecutive(self, batch_size: int) -> int:
        """Segments per stream: ``consecutive_segments``, or one block per epoch."""
        if self.consecutive_segments is not None:
            return self.consecutive_segments
        return max(1, (len(self.corpus.train) - self.seq_length) // (batch_size * self.seq_length))

    def skip(self, seed: int) -> int:
        """Tokens skipped at the start of the training split (one draw per run)."""
        rng = batch_rng(seed=seed, split="train", purpose="train", index=0)
        return int(rng.integers(self.seq_length))

    def train_batch(
        self, *, seed: int, step: int, batch_size: int, rows: slice | None = None
    ) -> dict[str, np.ndarray]:
        """``inputs``, ``targets`` (B, T) int32, ``weights`` (B, T) float32 (all ones),
        ``reset`` (B,) float32 of 1-based ``step``."""
        starts, reset = stream_starts(
            len(self.corpus.train),
            batch_size=batch_size,
            seq_length=self.seq_length,
            consecutive=self.consecutive(batch_size),
            skip=self.skip(seed),
            step=step,
        )
        if rows is not None:
            starts = starts[rows]
        idx = starts[:, None] + np.arange(self.seq_length + 1)[None, :]
        window = self.corpus.train[idx]
        inputs = window[:, :-1].copy()
        if reset:
            inputs[:, 0] = self.vocab.start_id
        return {
            "inputs": inputs,
            "targets": window[:, 1:],
            "weights": np.ones(inputs.shape, np.float32),
            "reset": np.full(len(starts), float(reset), np.float32),
        }

    def _eval_tokens(self, split: str) -> np.ndarray:
        if split in ("val", "test"):
            return getattr(self.corpus, split)
        if split == "train":
            return self.corpus.train[: len(self.corpus.val)]
        raise ConfigError(f"no evaluation batches for split {split!r} ('val', 'test', 'train')")

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        """How many consecutive batches cover ``split`` at ``batch_size`` streams."""
        per_stream = math.ceil(len(self._eval_tokens(split)) / batch_size)
        return math.ceil(per_stream / self.seq_length)

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice | None = None
    ) -> dict[str, np.ndarray]:
        """Batch ``index`` of the ``eval_num_batches`` that cover ``split`` (module
        docstring); ``seed`` is unused: evaluation reads the whole split."""
        del seed
        tokens = self._eval_tokens(split)
        text = np.concatenate([[self.vocab.start_id], tokens]).astype(np.int32)
        n = len(tokens)
        per_stream = math.ceil(n / batch_size)
        stream = np.arange(batch_size)[:, None]
        # Target positions (0-based in `tokens`) of each row of this batch.
        offset = index * self.seq_length + np.arange(self.seq_length)[None, :]
        pos = stream * per_stream + offset
        valid = (offset < per_stream) & (pos < n)
        safe = np.where(valid, pos, 0)
        batch = {
            "inputs": np.where(valid, text[safe], 0).astype(np.int32),
            "targets": np.where(valid, text[safe + 1], 0).astype(np.int32),
            "weights": valid.astype(np.float32),
            "reset": np.full(batch_size, float(index == 0), np.float32),
        }
        return batch if rows is None else {k: v[rows] for k, v in batch.items()}


def main(argv: list[str] | None = None) -> None:
    """Writes a ``word count`` vocabulary (the reference's PTB layout) of text files."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("texts", nargs="+", help="text files whose words are counted")
    parser.add_argument("--output", required=True, help="the vocabulary file to write")
    args = parser.parse_args(argv)
    lines = [words for path in args.texts for words in lines_of(read_text(path, "texts"))]
    vocab = count_vocabulary(lines)
    vocab.save(args.output)
    print(f"wrote {len(vocab)} words to {args.output}")


if __name__ == "__main__":
    main()
