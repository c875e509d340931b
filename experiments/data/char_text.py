"""Character-level text data, nanoGPT style (`data/shakespeare_char/prepare.py`).

The vocabulary is the sorted set of characters of the whole corpus; the first 90% of the
encoded text is the training split (nanoGPT's) and the last 10% is held out, its first
half the validation split and its second half the test split (`experiments.data.splits`).
Batches are random windows drawn by `experiments.task.batch_rng`, so every batch is a pure
function of (seed, split, step): resuming a run at step k reproduces exactly the batches
an uninterrupted run would have seen, with no iterator state to checkpoint. The objective
is `experiments.objectives.CausalLM`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.data.files import read_text
from experiments.data.splits import first_fraction, halves
from experiments.errors import ConfigError
from experiments.objectives import CausalLM
from experiments.task import (
    SPLITS,
    ObjectiveTask,
    batch_rng,
    reads_whole_split,
    whole_split_num_batches,
    whole_split_windows,
)

TRAIN_FRACTION = 0.9  # nanoGPT's split.


@dataclasses.dataclass(frozen=True)
class CharCorpus:
    """An encoded corpus and its vocabulary."""

    chars: str
    train: np.ndarray  # uint8 or uint16 token ids
    val: np.ndarray
    test: np.ndarray

    def split(self, name: str) -> np.ndarray:
        """The ids of split ``name``: 'train', 'val' or 'test'."""
        if name not in SPLITS:
            raise ConfigError(f"no split {name!r}; the corpus has 'train', 'val' and 'test'")
        return getattr(self, name)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def corpus_from_text(text: str, train_fraction: float = TRAIN_FRACTION) -> CharCorpus:
    chars = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(chars)}
    dtype = np.uint8 if len(chars) <= 256 else np.uint16
    ids = np.fromiter((lookup[c] for c in text), dtype=dtype, count=len(text))
    n = int(len(ids) * train_fraction)
    val, test = halves(ids[n:])
    return CharCorpus(chars=chars, train=ids[:n], val=val, test=test)


def load_corpus(path: str, train_fraction: float = TRAIN_FRACTION) -> CharCorpus:
    text = read_text(path, "CORPUS_PATH", what="corpus file")
    if len(text) < 2:
        raise ConfigError(f"corpus file {path!r} is empty")
    return corpus_from_text(text, train_fraction)


def generated_text(num_chars: int = 200_000, seed: int = 0) -> str:
    """Deterministic synthetic text with learnable structure, for runs without any corpus.

    Sentences from a small random grammar (a fixed word list, word bigram preferences and
    punctuation): a character model can go well below the unigram entropy, so optimizers
    separate, but it needs no download.
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 8))) for _ in range(300)]
    # Each word prefers a handful of successors: the bigram structure is what is learned.
    successors = rng.integers(0, len(words), size=(len(words), 4))
    out: list[str] = []
    total = 0
    w = 0
    while total < num_chars:
        sentence = []
        for _ in range(rng.integers(4, 12)):
            w = (
                successors[w, rng.integers(0, 4)]
                if rng.random() < 0.9
                else rng.integers(0, len(words))
            )
            sentence.append(words[w])
        s = " ".join(sentence).capitalize() + rng.choice([".", ".", "!", "?"]) + "\n"
        out.append(s)
        total += len(s)
    return "".join(out)[:num_chars]


def window_starts(
    n_tokens: int, block_size: int, batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Start offsets of `batch_size` windows of `block_size + 1` tokens (inputs and the
    next-token targets), uniform with replacement, as nanoGPT draws them."""
    if n_tokens <= block_size:
        raise ConfigError(f"split has {n_tokens} tokens, not more than block_size={block_size}")
    return rng.integers(0, n_tokens - block_size, size=batch_size)


def get_batch(
    corpus: CharCorpus,
    split: str,
    *,
    seed: int,
    index: int,
    batch_size: int,
    block_size: int,
    purpose: str = "train",
    rows: slice | None = None,
) -> dict[str, np.ndarray]:
    """Batch `index` of `split` ('train', 'val' or 'test') drawn for `purpose` ('train' or
    'eval'): inputs and next-character targets, int32 (B, T).

    `rows` selects this host's rows of the global batch; all hosts draw the same global
    offsets (cheap) so the data does not depend on the number of hosts.
    """
    rng = batch_rng(seed=seed, split=split, purpose=purpose, index=index)
    data = corpus.split(split)
    starts = window_starts(len(data), block_size, batch_size, rng)
    if rows is not None:
        starts = starts[rows]
    idx = starts[:, None] + np.arange(block_size + 1)[None, :]
    windows = data[idx].astype(np.int32)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


class WindowedLMTask(ObjectiveTask):
    """Next-token prediction on random windows of a tokenized corpus (a `Task`, see
    experiments/task.py): subclasses set `corpus` (`train`, `val` and `test` id arrays) and
    `block_size`, then call `check_fits()`; `objective` (the loss) is `CausalLM()` unless
    they set another.

    The trainer asks for batches by number; nothing here has state, so any step of any run
    can be reproduced (and a resumed run sees the same data as an uninterrupted one).

    With ``eval_whole_split`` True (then the objective must weigh ``"weights"``, see
    ``weights_key``), evaluation reads each held-out split ('val', 'test') once, in order:
    consecutive windows ``block_size`` apart, so every token after the first is predicted
    once (the tail shorter than a block is left out), in ``eval_num_batches`` batches whose
    padding rows weigh 0, whatever EVAL_BATCHES says: the loss of the split itself.
    """

    corpus: CharCorpus
    block_size: int
    objective = CausalLM()
    unit_name = "tokens"
    eval_whole_split = False
    # The objective's weights key when evaluation reads whole splits (padding weighs 0).
    weights_key = "weights"

    def check_fits(self, name: str = "block_size") -> None:
        c = self.corpus
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise ConfigError(f"{name}={self.block_size!r} must be an integer")
        if self.block_size < 1:  # 0 trains on empty windows: a NaN loss, not divergence.
            raise ConfigError(f"{name}={self.block_size} must be at least 1")
        if self.block_size >= min(len(c.train), len(c.val), len(c.test)):
            raise ConfigError(
                f"{name}={self.block_size} does not fit the splits ({len(c.train)} train / "
                f"{len(c.val)} val / {len(c.test)} test tokens)"
            )

    @property
    def units_per_example(self) -> int:
        return self.block_size

    @property
    def num_train_tokens(self) -> int:
        return len(self.corpus.train)

    @property
    def num_train_examples(self) -> int:
        """The training split in examples of ``block_size`` targets, ``num_train_tokens //
        block_size``: an epoch reads every training token once, so the iterations per epoch
        are ``num_train_tokens / (batch_size * block_size)``, the count behind Amos'
        ``xi = 1/sqrt(N)`` and the EMA timescale in epochs (docs/optimizer.md; Wang &
        Aitchison 2024)."""
        return self.num_train_tokens // self.block_size

    def _weighted(self, batch: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, np.ndarray]:
        # Every batch has the same keys when whole splits are read, so one objective (with
        # weights) scores training and evaluation alike.
        if self.eval_whole_split:
            batch[self.weights_key] = np.broadcast_to(
                valid.astype(np.float32)[:, None], batch["targets"].shape
            ).copy()
        return batch

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        """Batches of ``batch_size`` that cover ``split`` (``eval_whole_split``)."""
        n = len(self.corpus.split(split))
        window = self.block_size + 1
        return whole_split_num_batches(
            n, window=window, stride=self.block_size, batch_size=batch_size
        )

    def train_batch(
        self, *, seed: int, step: int, batch_size: int, rows: slice | None = None
    ) -> dict[str, np.ndarray]:
        batch = get_batch(
            self.corpus,
            "train",
            seed=seed,
            index=step,
            batch_size=batch_size,
            block_size=self.block_size,
            purpose="train",
            rows=rows,
        )
        return self._weighted(batch, np.ones(len(batch["targets"]), bool))

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice | None = None
    ) -> dict[str, np.ndarray]:
        if reads_whole_split(self, split):
            data = self.corpus.split(split)
            starts, valid = whole_split_windows(
                len(data),
                window=self.block_size + 1,
                stride=self.block_size,
                index=index,
                batch_size=batch_size,
                name=f"the {split} split",
            )
            if rows is not None:
                starts, valid = starts[rows], valid[rows]
            windows = data[starts[:, None] + np.arange(self.block_size + 1)[None, :]]
            windows = windows.astype(np.int32)
            batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
            return self._weighted(batch, valid)
        batch = get_batch(
            self.corpus,
            split,
            seed=seed,
            index=index,
            batch_size=batch_size,
            block_size=self.block_size,
            purpose="eval",
            rows=rows,
        )
        return self._weighted(batch, np.ones(len(batch["targets"]), bool))


class CharTextTask(WindowedLMTask):
    """Next-character prediction on a corpus file or on `generated_text`;
    `loss_normalization` of the `CausalLM` objective ('mean' per token by default).
    `train_subset` < 1 trains on the first part of the training split only (0.25: its first
    quarter of tokens); validation, test and the vocabulary stay those of the whole corpus.
    `eval_whole_split`: evaluate each held-out split whole (`WindowedLMTask`)."""

    def __init__(
        self,
        corpus_path: str | None = None,
        *,
        block_size: int = 64,
        generated_chars: int = 0,
        generated_seed: int = 0,
        loss_normalization: str = "mean",
        train_subset: float = 1.0,
        eval_whole_split: bool = False,
    ):
        self.eval_whole_split = eval_whole_split
        weights = self.weights_key if eval_whole_split else None
        self.objective = CausalLM(normalization=loss_normalization, weights=weights)
        if generated_chars:
            self.corpus = corpus_from_text(generated_text(generated_chars, generated_seed))
            self.source = f"generated_text(num_chars={generated_chars}, seed={generated_seed})"
        else:
            self.corpus = load_corpus(corpus_path)
            self.source = corpus_path
        if train_subset != 1.0:
            part = first_fraction(self.corpus.train, train_subset, "CharTextTask.train_subset")
            self.corpus = dataclasses.replace(self.corpus, train=part)
        self.block_size = block_size
        self.check_fits()

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    def model_kwargs(self) -> dict[str, int]:
        return {"vocab_size": self.vocab_size}
