"""BERT's masked-LM objective on token ids, in NumPy.

Examples (``seq_length`` ids each) are built in one of two ways:

* packed (default): the documents' ids, each followed by ``[SEP]``, form one stream; an
  example is ``[CLS]`` followed by a window of ``seq_length - 1`` stream ids. A window
  usually spans several documents (or parts of them), which BERT also does with its
  sentence pairs; nothing is padded.
* truncated: one document per example, ``[CLS] doc[:seq_length - 2] [SEP]`` then padding.

Segment ids are BERT's token types, 0 or 1: they alternate from one document to the next
within an example (a ``[SEP]`` belongs to the document it ends), so the model's
``type_vocab_size=2`` embedding sees document boundaries as BERT sees sentence pairs.
The attention mask is 1 on every non-padding position: attention crosses documents, as in
BERT (there is no next-sentence objective; the paper trains with masked LM only).

A tokenizer without ``[CLS]`` (a sentencepiece model trained without it) gets no leading
token, and one without ``[SEP]`` separates documents with EOS; ``[MASK]`` is required.

Masking follows BERT's ``create_pretraining_data.py``: in each example,
``max(1, round(0.15 * n))`` of its ``n`` maskable positions (not a special token, not
padding) are chosen uniformly without replacement; of those, 80% become ``[MASK]``, 10% a
random ordinary token, 10% stay. ``targets`` hold the original ids and ``weights`` 1 at
chosen positions, 0 elsewhere. Every draw comes from the NumPy Generator the caller seeds
(the tasks seed it with (seed, stream, step)), or from one Generator per example (the
streaming tasks seed row ``r`` with (seed, stream, step, r), so that a host, or a worker
process, can make any rows of a batch alone: ``experiments.data.packed_stream``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.data.tokenizers import Tokenizer
from experiments.errors import ConfigError

MASK_RATE = 0.15
MASK_TOKEN_RATE = 0.8
RANDOM_TOKEN_RATE = 0.1


def check_tokenizer(tokenizer: Tokenizer) -> None:
    if tokenizer.mask_id is None:
        raise ConfigError(
            "masked LM needs a [MASK] token; this tokenizer has none (train the sentencepiece "
            "model with user_defined_symbols including '[MASK]')"
        )


def separator_id(tokenizer: Tokenizer) -> int:
    return tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id


def window_length(tokenizer: Tokenizer, seq_length: int) -> int:
    """Stream ids per packed example: ``seq_length`` less the leading [CLS], if any."""
    return seq_length - (tokenizer.cls_id is not None)


def document_stream(token_docs: Sequence[np.ndarray], tokenizer: Tokenizer) -> np.ndarray:
    """All documents, each followed by the separator, as one int32 array."""
    sep = np.array([separator_id(tokenizer)], dtype=np.int32)
    parts = [p for doc in token_docs for p in (np.asarray(doc, np.int32), sep)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def packed_examples(windows: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """``(B, window_length)`` stream windows -> ``(B, seq_length)`` examples."""
    windows = np.asarray(windows, np.int32)
    if tokenizer.cls_id is None:
        return windows
    cls = np.full((windows.shape[0], 1), tokenizer.cls_id, np.int32)
    return np.concatenate([cls, windows], axis=1)


def truncated_examples(
    token_docs: Sequence[np.ndarray], tokenizer: Tokenizer, seq_length: int
) -> np.ndarray:
    """One example per document: ``[CLS] doc... [SEP]`` truncated, then padding."""
    head = [] if tokenizer.cls_id is None else [tokenizer.cls_id]
    room = seq_length - len(head) - 1
    out = np.full((len(token_docs), seq_length), tokenizer.pad_id, np.int32)
    for i, doc in enumerate(token_docs):
        ids = head + list(np.asarray(doc)[:room]) + [separator_id(tokenizer)]
        out[i, : len(ids)] = ids
    return out


def segment_ids(tokens: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """0/1 token types alternating per document; a separator ends its own document."""
    is_sep = tokens == separator_id(tokenizer)
    seg = (np.cumsum(is_sep, axis=-1) - is_sep) % 2
    return np.where(tokens == tokenizer.pad_id, 0, seg).astype(np.int32)


Rng = np.random.Generator | Sequence[np.random.Generator]


def draw(rng: Rng, shape: tuple[int, ...], sample: Callable[..., np.ndarray]) -> np.ndarray:
    """``sample(generator, shape)`` from one Generator for the whole array, or row by row
    from one Generator per row (``shape[0]`` of them)."""
    if isinstance(rng, np.random.Generator):
        return sample(rng, shape)
    if len(rng) != shape[0]:
        raise ValueError(f"{len(rng)} Generators for {shape[0]} rows")
    rows = [sample(r, shape[1:]) for r in rng]
    return np.stack(rows) if rows else sample(np.random.default_rng(0), shape)


def _uniform(generator: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return generator.random(shape)


def mask_tokens(
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    rng: Rng,
    *,
    mask_rate: float = MASK_RATE,
    mask_token_rate: float = MASK_TOKEN_RATE,
    random_token_rate: float = RANDOM_TOKEN_RATE,
    max_predictions: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT's masking of ``(B, L)`` ids: returns ``(input_ids, targets, weights)``.

    ``rng``: one Generator for the batch, or one per row (each row then draws its own
    scores, choices and random ids, in that order)."""
    check_tokenizer(tokenizer)
    if not 0.0 < mask_rate < 1.0:
        raise ConfigError(f"mask_rate={mask_rate} must be in (0, 1)")
    if mask_token_rate < 0 or random_token_rate < 0 or mask_token_rate + random_token_rate > 1:
        raise ConfigError(
            f"mask_token_rate={mask_token_rate} and random_token_rate="
            f"{random_token_rate} must be >= 0 and sum to at most 1"
        )
    tokens = np.asarray(tokens, np.int32)
    maskable = ~tokenizer.is_special(tokens) & (tokens != tokenizer.pad_id)
    n = maskable.sum(axis=-1)
    k = np.where(n > 0, np.maximum(1, np.round(n * mask_rate)), 0).astype(np.int64)
    if max_predictions is not None:
        k = np.minimum(k, max_predictions)
    # A uniform draw without replacement per row: the k maskable positions of lowest score.
    scores = np.where(maskable, draw(rng, tokens.shape, _uniform), np.inf)
    ranks = np.argsort(np.argsort(scores, axis=-1, kind="stable"), axis=-1, kind="stable")
    chosen = maskable & (ranks < k[:, None])

    u = draw(rng, tokens.shape, _uniform)
    to_mask = chosen & (u < mask_token_rate)
    to_random = chosen & (u >= mask_token_rate) & (u < mask_token_rate + random_token_rate)
    normal = tokenizer.normal_ids()
    picks = draw(rng, tokens.shape, lambda g, shape: g.integers(0, len(normal), size=shape))
    random_ids = normal[picks]
    inputs = np.where(to_mask, tokenizer.mask_id, np.where(to_random, random_ids, tokens))
    targets = np.where(chosen, tokens, 0).astype(np.int32)
    return inputs.astype(np.int32), targets, chosen.astype(np.float32)


def mlm_batch(
    tokens: np.ndarray, tokenizer: Tokenizer, rng: Rng, **mask_kwargs
) -> dict[str, np.ndarray]:
    """The model's batch from ``(B, L)`` examples: input ids, segment ids, attention mask,
    targets and weights, all ``(B, L)``."""
    tokens = np.asarray(tokens, np.int32)
    input_ids, targets, weights = mask_tokens(tokens, tokenizer, rng, **mask_kwargs)
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids(tokens, tokenizer),
        "attention_mask": (tokens != tokenizer.pad_id).astype(np.int32),
        "targets": targets,
        "weights": weights,
    }


@dataclasses.dataclass(frozen=True)
class MaskedLMBatcher:
    """Examples (packed stream windows, or documents) -> the masked-LM batch: what
    ``text_tasks.MaskedLMTask`` does to its examples, as a small picklable object that
    worker processes can run (``experiments.data.packed_stream``)."""

    tokenizer: Tokenizer
    seq_length: int
    packing: bool
    mask_kwargs: dict[str, Any]

    def __call__(self, examples: Sequence[np.ndarray], rng: Rng) -> dict[str, np.ndarray]:
        if self.packing:
            tokens = packed_examples(np.stack(examples), self.tokenizer)
        else:
            tokens = truncated_examples(examples, self.tokenizer, self.seq_length)
        return mlm_batch(tokens, self.tokenizer, rng, **self.mask_kwargs)
