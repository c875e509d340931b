"""Word-level language-model data: a vocabulary file and next-word windows.

PTB conventions (Mikolov et al.): the text is split on whitespace, each line ends with
``<eos>``, and words outside the vocabulary become ``<unk>``. The vocabulary file holds
one word per line, most frequent first, with ``<unk>`` and ``<eos>`` at ids 0 and 1; it is
built from the training split only. Batches are random windows drawn as in
experiments/data/char_text.py, so every batch is a pure function of (seed, step).
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from experiments.data.char_text import TRAIN_FRACTION, DataConfigError, WindowedLMTask

UNK, EOS = "<unk>", "<eos>"


def words_of(text: str) -> list[str]:
    """Whitespace-split words, with ``<eos>`` closing every non-empty line."""
    out: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words:
            out.extend(words)
            out.append(EOS)
    return out


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]

    def __post_init__(self):
        if self.words[:2] != (UNK, EOS):
            raise DataConfigError(
                f"a vocabulary must start with {UNK!r}, {EOS!r}; got {self.words[:2]!r}"
            )
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: list[str]) -> np.ndarray:
        ids = self._ids  # type: ignore[attr-defined]
        return np.fromiter((ids.get(w, 0) for w in words), dtype=np.int32, count=len(words))

    def decode(self, ids) -> list[str]:
        return [self.words[int(i)] for i in ids]

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.words) + "\n")


def build_vocabulary(
    words: list[str], max_size: int | None = None, min_count: int = 1
) -> Vocabulary:
    """Most frequent words first (ties alphabetical), after ``<unk>`` and ``<eos>``."""
    counts = collections.Counter(w for w in words if w not in (UNK, EOS))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - 2)]
    return Vocabulary((UNK, EOS, *ranked))


def load_vocabulary(path: str) -> Vocabulary:
    if not os.path.isfile(path):
        raise DataConfigError(f"vocabulary file not found: {path!r} (gin binding VOCAB_PATH)")
    with open(path, encoding="utf-8") as f:
        words = tuple(line.rstrip("\n") for line in f if line.rstrip("\n"))
    return Vocabulary(words)


@dataclasses.dataclass(frozen=True)
class TokenSplits:
    train: np.ndarray
    val: np.ndarray


class WordLMTask(WindowedLMTask):
    """Next-word prediction over a text file (PTB's ``ptb.train.txt`` or any corpus).

    Args:
      corpus_path: the training text; with ``valid_path`` unset, its last 10% is held out.
      valid_path: a separate validation text (PTB's ``ptb.valid.txt``).
      vocab_path: a vocabulary file; when unset, one is built from the training split
        (``max_vocab`` words) and, if ``save_vocab_path`` is given, written there.
      seq_length: words per example.
    """

    def __init__(
        self,
        corpus_path: str,
        *,
        seq_length: int = 64,
        valid_path: str | None = None,
        vocab_path: str | None = None,
        max_vocab: int | None = 10_000,
        save_vocab_path: str | None = None,
    ):
        train_text, valid_text = _read(corpus_path, "CORPUS_PATH"), None
        if valid_path:
            valid_text = _read(valid_path, "VALID_PATH")
        train_words = words_of(train_text)
        if valid_text is None:
            n = int(len(train_words) * TRAIN_FRACTION)
            train_words, valid_words = train_words[:n], train_words[n:]
        else:
            valid_words = words_of(valid_text)
        if vocab_path:
            self.vocab = load_vocabulary(vocab_path)
        else:
            self.vocab = build_vocabulary(train_words, max_vocab)
            if save_vocab_path:
                self.vocab.save(save_vocab_path)
        self.corpus = TokenSplits(self.vocab.encode(train_words), self.vocab.encode(valid_words))
        self.source = corpus_path
        self.block_size = seq_length
        self.check_fits("seq_length")

    def model_kwargs(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab)}


def _read(path: str, binding: str) -> str:
    if not path or not os.path.isfile(path):
        raise DataConfigError(f"text file not found: {path!r} (gin binding {binding})")
    with open(path, encoding="utf-8") as f:
        return f.read()
