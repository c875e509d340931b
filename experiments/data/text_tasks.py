"""The paper's text pre-training tasks for the harness (``experiments/task.py``): BERT
masked LM and T5 span corruption, over any source of ``experiments.data.sources`` and any
tokenizer of ``experiments.data.tokenizers``.

Each task is three separate pieces: ``TextExamples`` cuts windows (or documents) of token
ids out of the source; ``experiments.data.mlm`` / ``experiments.data.span_corruption``
turn them into the model's batch dict; the objective (``experiments.objectives.MaskedLM``
/ ``Seq2Seq``) computes the loss, with the normalization bound as ``loss_normalization``.

Determinism, as in ``char_text``: every batch is a pure function of its arguments.

* In-memory sources (text files, generated text, a TFDS source with ``in_memory=True``):
  all documents are tokenized once and packed into one stream; the training batch of step
  ``s`` is ``batch_size`` random windows of that stream drawn by
  ``experiments.task.batch_rng`` (``np.random.default_rng([seed, 0, s])``; with
  replacement, as nanoGPT), and the same Generator then draws the masking / noise. Eval
  batch ``i`` of a split uses stream 1 ('val'), 2 ('train') or 3 ('test') instead of 0,
  so evaluation never shares draws with training.
* Streaming sources (TFDS, ``in_memory=False``: the paper-scale data): windows are read in
  the dataset's fixed file order, one pass after another; step ``s`` takes windows
  ``(s - 1) * batch_size`` to ``s * batch_size - 1`` and eval batch ``i`` windows
  ``i * batch_size`` onwards of the validation (or test) split. A token index built once
  per split (and saved next to the data) tells where each window is, so any step costs
  the same, a resumed run seeks instead of replaying, each host builds only its ``rows``,
  and worker processes build them in parallel (``num_workers``):
  ``experiments.data.packed_stream``. Each row draws its masking / noise from its own
  Generator ``np.random.default_rng([seed, stream, step, row])``, so ``seed`` changes the
  corruption but not the order of the data, and no row depends on the host or worker
  that builds it.

In-memory sources build the whole global batch and slice ``rows`` from it: every host
builds the same global batch, so the data does not depend on the number of hosts.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from experiments.data import mlm, span_corruption
from experiments.data.packed_stream import Batcher, PackedStream, RowBuilder
from experiments.data.sources import InMemorySource, TextFileSource
from experiments.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
)
from experiments.errors import ConfigError
from experiments.objectives import MaskedLM, Seq2Seq
from experiments.task import (
    ObjectiveTask,
    batch_rng,
    batch_stream,
    reads_whole_split,
    whole_split_num_batches,
    whole_split_windows,
)

Batch = dict[str, np.ndarray]

# The harness' splits and the sources' (experiments/data/sources.py): validation and test
# are disjoint halves of the held-out part where the data has no test split of its own.
_SOURCE_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def resolve_source(source) -> Any:
    """A source object, or a text-file path (one document per line)."""
    if isinstance(source, str):
        return TextFileSource(source)
    return source


def resolve_tokenizer(tokenizer, source) -> Tokenizer:
    """A Tokenizer, or 'char' (alphabet of an in-memory source), 'byte', or the path of a
    sentencepiece ``.model`` file: strings are what gin configs bind."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer == "byte":
        return ByteTokenizer()
    if tokenizer == "char":
        if not isinstance(source, InMemorySource):
            raise ConfigError(
                "tokenizer='char' builds its alphabet from the text, which "
                "needs an in-memory source; give a sentencepiece model"
            )
        return CharTokenizer.from_text(source.text())
    if isinstance(tokenizer, str) and tokenizer.endswith(".model"):
        return SentencePieceTokenizer(tokenizer)
    raise ConfigError(
        f"tokenizer={tokenizer!r}: expected a Tokenizer, 'char', 'byte' or a "
        f"sentencepiece .model path"
    )


class TextExamples(ObjectiveTask):
    """Tokenized splits and the windows (``packing``) or documents of each batch, shared by
    the text tasks; a subclass sets ``objective`` and gives the ``batcher`` that turns
    examples into the model's batch.

    Streaming sources only: ``num_workers`` worker processes build the batches (None: the
    host's cores less one, none on two cores or fewer; 0: in this process), and
    ``index_dir`` keeps the splits' token indexes (None: ``<data_dir>/token_index`` for a
    source with a ``data_dir``, e.g. TFDS; otherwise they are not saved).

    ``eval_whole_split`` (in-memory, packed sources): evaluation reads each held-out split
    ('val', 'test'; 'train' is still drawn) once, in order, as consecutive windows
    (``eval_num_batches`` batches; the last one's padding rows weigh 0), whatever
    EVAL_BATCHES says, instead of drawing EVAL_BATCHES batches of random windows: the loss
    of the split itself. The masking / noise of eval batch ``i`` still comes from
    ``batch_rng`` (seed, split, ``i``), so every run of one seed is scored on the same
    corrupted examples.
    """

    unit_name = "tokens"

    def __init__(
        self,
        source,
        tokenizer,
        *,
        window: int,
        separator: int | None,
        packing: bool,
        batcher: Batcher,
        num_workers: int | None = None,
        index_dir: str | None = None,
        eval_whole_split: bool = False,
    ):
        self.source = resolve_source(source)
        self.tokenizer = resolve_tokenizer(tokenizer, self.source)
        self.window = window
        self.separator = separator
        self.packing = packing
        self.batcher = batcher
        self.in_memory = bool(getattr(self.source, "in_memory", False))
        self._docs: dict[str, list[np.ndarray]] = {}
        self._streams: dict[str, np.ndarray] = {}
        self.eval_whole_split = eval_whole_split
        if eval_whole_split and not (self.in_memory and packing):
            raise ConfigError(
                f"{type(self).__name__}.eval_whole_split needs an in-memory source "
                f"packed into windows; {self.source.name} is "
                f"{'not in memory' if not self.in_memory else 'not packed'}"
            )
        if self.in_memory:
            for split in _SOURCE_SPLIT:  # Fail at construction, not at the first eval.
                self._split_stream(split)
            return
        data_dir = getattr(self.source, "data_dir", None)
        if index_dir is None and isinstance(data_dir, str) and data_dir:
            index_dir = os.path.join(data_dir, "token_index")
        self.index_dir = index_dir
        self.stream = PackedStream(
            self.source,
            _SOURCE_SPLIT,
            RowBuilder(self.tokenizer, window, separator, packing, batcher),
            num_workers=num_workers,
            index_dir=index_dir,
        )

    def close(self) -> None:
        """Stops a streaming task's worker processes (they start again when needed)."""
        if not self.in_memory:
            self.stream.close()

    # In-memory: the tokenized documents and their concatenation.
    def _split_docs(self, split: str) -> list[np.ndarray]:
        if split not in self._docs:
            texts = self.source.documents(_SOURCE_SPLIT[split])
            docs = [np.asarray(self.tokenizer.encode(t), np.int32) for t in texts]
            self._docs[split] = [d for d in docs if len(d)]
        return self._docs[split]

    def _concat(self, docs) -> np.ndarray:
        if self.separator is None:
            return np.concatenate(docs) if docs else np.zeros(0, np.int32)
        sep = np.array([self.separator], np.int32)
        return np.concatenate([p for d in docs for p in (d, sep)]) if docs else sep[:0]

    def _split_stream(self, split: str) -> np.ndarray:
        if split not in self._streams:
            stream = self._concat(self._split_docs(split))
            if self.packing and len(stream) < self.window:
                raise ConfigError(
                    f"the {_SOURCE_SPLIT[split]} split of {self.source.name} has "
                    f"{len(stream)} tokens, fewer than one example needs ({self.window}); "
                    f"use a shorter sequence length or more text"
                )
            if not self.packing and not self._split_docs(split):
                raise ConfigError(
                    f"the {_SOURCE_SPLIT[split]} split of {self.source.name} has no documents"
                )
            self._streams[split] = stream
        return self._streams[split]

    def _raw_examples(
        self, split: str, purpose: str, *, seed: int, index: int, batch_size: int, first: int
    ) -> tuple[list[np.ndarray], np.random.Generator]:
        """In-memory sources: ``batch_size`` windows (packing) or documents, and the
        Generator that then draws the objective's randomness."""
        del first  # Random windows: no position in a stream.
        rng = batch_rng(seed=seed, split=split, purpose=purpose, index=index)
        if not self.packing:
            docs = self._split_docs(split)
            return [docs[i] for i in rng.integers(0, len(docs), size=batch_size)], rng
        stream = self._split_stream(split)
        starts = rng.integers(0, len(stream) - self.window + 1, size=batch_size)
        return list(stream[starts[:, None] + np.arange(self.window)[None, :]]), rng

    def _batch(
        self,
        split: str,
        purpose: str,
        *,
        seed: int,
        index: int,
        batch_size: int,
        first: int,
        rows: slice | None,
    ) -> Batch:
        if not self.in_memory:  # Only `rows` are built.
            return self.stream.batch(
                split,
                seed=seed,
                stream=batch_stream(split, purpose),
                index=index,
                first=first,
                batch_size=batch_size,
                rows=rows,
            )
        if purpose == "eval" and reads_whole_split(self, split):
            batch = self._whole_split_batch(split, seed=seed, index=index, batch_size=batch_size)
        else:
            examples, rng = self._raw_examples(
                split, purpose, seed=seed, index=index, batch_size=batch_size, first=first
            )
            batch = self.make_batch(examples, rng)
        if rows is not None:
            batch = {k: v[rows] for k, v in batch.items()}
        return batch

    def _whole_split_batch(self, split: str, *, seed: int, index: int, batch_size: int) -> Batch:
        """Eval batch ``index`` of ``split`` read whole (``eval_whole_split``): consecutive
        windows, the padding rows' weights 0."""
        stream = self._split_stream(split)
        starts, valid = whole_split_windows(
            len(stream),
            window=self.window,
            stride=self.window,
            index=index,
            batch_size=batch_size,
            name=f"the {_SOURCE_SPLIT[split]} split of {self.source.name}",
        )
        examples = list(stream[starts[:, None] + np.arange(self.window)[None, :]])
        batch = self.make_batch(
            examples, batch_rng(seed=seed, split=split, purpose="eval", index=index)
        )
        weights = self.objective.weights
        batch[weights] = batch[weights] * valid[:, None].astype(batch[weights].dtype)
        return batch

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        """Batches of ``batch_size`` that cover ``split`` (``eval_whole_split``)."""
        n = len(self._split_stream(split))
        return whole_split_num_batches(
            n, window=self.window, stride=self.window, batch_size=batch_size
        )

    def make_batch(self, examples: list[np.ndarray], rng: np.random.Generator) -> Batch:
        """The model's batch from the examples; further draws come from ``rng``."""
        return self.batcher(examples, rng)

    # The Task protocol.
    @property
    def num_train_examples(self) -> int | None:
        """In memory, the training split in examples: its windows of ``window`` tokens
        (packing: an epoch reads every training token once) or its documents; None for a
        streaming source, whose size is not counted."""
        if not self.in_memory:
            return None
        if not self.packing:
            return len(self._split_docs("train"))
        return len(self._split_stream("train")) // self.window

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def tokens_per_example(self) -> int:
        return self.units_per_example

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.tokenizer.vocab_size}

    def train_batch(
        self, *, seed: int, step: int, batch_size: int, rows: slice | None = None
    ) -> Batch:
        return self._batch(
            "train",
            "train",
            seed=seed,
            index=step,
            batch_size=batch_size,
            first=(step - 1) * batch_size,
            rows=rows,
        )

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice | None = None
    ) -> Batch:
        return self._batch(
            split,
            "eval",
            seed=seed,
            index=index,
            batch_size=batch_size,
            first=index * batch_size,
            rows=rows,
        )


class MaskedLMTask(TextExamples):
    """BERT masked LM: ``experiments.data.mlm`` makes batches ``input_ids``,
    ``segment_ids``, ``attention_mask``, ``targets``, ``weights``, all
    ``(batch, seq_length)``; the objective is ``experiments.objectives.MaskedLM`` (the
    model is called as ``model.apply(variables, input_ids, segment_ids, attention_mask,
    deterministic=...)``).

    ``loss_normalization``: the training loss over the batch's masked tokens. "sqrt"
    (default) is the reference's ``sum / sqrt(number of masked tokens)``
    (jestimator/modeling.py ``normalize_loss_by_size``), for both optimizers, so that
    Amos' ``clip_value=1.0`` means what it means there; "mean" and "sum" as named. The
    reported eval loss is the per-token mean either way.
    """

    def __init__(
        self,
        source,
        tokenizer="char",
        seq_length: int = 128,
        *,
        packing: bool = True,
        mask_rate: float = mlm.MASK_RATE,
        mask_token_rate: float = mlm.MASK_TOKEN_RATE,
        random_token_rate: float = mlm.RANDOM_TOKEN_RATE,
        max_predictions: int | None = None,
        loss_normalization: str = "sqrt",
        num_workers: int | None = None,
        index_dir: str | None = None,
        eval_whole_split: bool = False,
    ):
        self.objective = MaskedLM(normalization=loss_normalization)
        if seq_length < 4:
            raise ConfigError(f"MaskedLMTask: seq_length={seq_length} must be at least 4")
        source = resolve_source(source)
        tok = resolve_tokenizer(tokenizer, source)
        mlm.check_tokenizer(tok)
        self.seq_length = seq_length
        self.mask_kwargs = dict(
            mask_rate=mask_rate,
            mask_token_rate=mask_token_rate,
            random_token_rate=random_token_rate,
            max_predictions=max_predictions,
        )
        window = mlm.window_length(tok, seq_length) if packing else seq_length
        super().__init__(
            source,
            tok,
            window=window,
            separator=mlm.separator_id(tok),
            packing=packing,
            batcher=mlm.MaskedLMBatcher(tok, seq_length, packing, self.mask_kwargs),
            num_workers=num_workers,
            index_dir=index_dir,
            eval_whole_split=eval_whole_split,
        )
        self.units_per_example = seq_length


class SpanCorruptionTask(TextExamples):
    """T5 span corruption: ``experiments.data.span_corruption`` makes batches
    ``encoder_input_tokens`` ``(batch, inputs_length)`` and ``decoder_input_tokens``,
    ``decoder_target_tokens``, ``decoder_loss_weights`` ``(batch, targets_length)``; the
    objective is ``experiments.objectives.Seq2Seq`` (the model is called as
    ``model.apply(variables, encoder_input_tokens, decoder_input_tokens,
    decoder_target_tokens, deterministic=...)``).

    ``loss_normalization``: "sum" (default) is the paper's T5 loss (T5X with no
    loss-normalizing factor), the batch's summed target cross-entropy, with which Amos'
    ``clip_value`` must be about ``sqrt(batch_size * targets_length)``; "mean" divides by
    the number of target tokens (clip 1.0); "sqrt" by its square root. The reported eval
    loss is the per-token mean either way.

    ``units_per_example`` counts the encoder's ``inputs_length`` tokens (T5's convention for
    tokens seen); each example is cut from ``tokens_length`` tokens of text (568 for 512).
    """

    def __init__(
        self,
        source,
        tokenizer,
        inputs_length: int = 512,
        targets_length: int = 114,
        *,
        noise_density: float = span_corruption.NOISE_DENSITY,
        mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
        loss_normalization: str = "sum",
        num_workers: int | None = None,
        index_dir: str | None = None,
        eval_whole_split: bool = False,
    ):
        self.objective = Seq2Seq(normalization=loss_normalization)
        if not 0.0 < noise_density < 1.0:
            raise ConfigError(
                f"SpanCorruptionTask: noise_density={noise_density} must be in (0, 1)"
            )
        if mean_noise_span_length < 1.0:
            raise ConfigError(
                f"SpanCorruptionTask: mean_noise_span_length="
                f"{mean_noise_span_length} must be at least 1"
            )
        tokens_length, needed = span_corruption.random_spans_helper(
            inputs_length, noise_density, mean_noise_span_length
        )
        if needed > targets_length:
            raise ConfigError(
                f"SpanCorruptionTask: targets_length={targets_length} is too short; "
                f"inputs_length={inputs_length} makes targets of {needed} tokens"
            )
        self.inputs_length = inputs_length
        self.targets_length = targets_length
        self.tokens_length = tokens_length
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.units_per_example = inputs_length
        source = resolve_source(source)
        tok = resolve_tokenizer(tokenizer, source)
        batcher = span_corruption.SpanCorruptionBatcher(
            tok, inputs_length, targets_length, noise_density, mean_noise_span_length
        )
        super().__init__(
            source,
            tok,
            window=tokens_length,
            separator=None,
            packing=True,
            batcher=batcher,
            num_workers=num_workers,
            index_dir=index_dir,
            eval_whole_split=eval_whole_split,
        )
        spans = int(round(round(tokens_length * noise_density) / mean_noise_span_length))
        if spans > self.tokenizer.num_sentinels:
            raise ConfigError(
                f"SpanCorruptionTask: {spans} noise spans per example need "
                f"as many sentinels; the tokenizer has "
                f"{self.tokenizer.num_sentinels}"
            )
