"""T5's span-corruption objective on token ids, in NumPy.

A port of ``t5.data.preprocessors`` (``random_spans_helper``, ``random_spans_noise_mask``,
``noise_span_to_unique_sentinel``, ``nonnoise_span_to_unique_sentinel``): 15% of a chunk's
tokens are noise, in spans of mean length 3; the spans' count and lengths are fixed by the
chunk length, their positions random. The chunk always starts with a non-noise span and
ends with a noise span. Each noise span is replaced by one sentinel in the inputs
(``<extra_id_0>`` = ``vocab_size - 1`` first, counting down); the targets are each
sentinel followed by the tokens of its span. Both end with EOS.

Chunks are ``tokens_length`` ids of the documents concatenated without separators (T5's
``reduce_concat_tokens`` + ``split_tokens``), where ``tokens_length`` is the longest chunk
whose corrupted inputs fit ``inputs_length`` (T5: 568 tokens for inputs of 512, targets
114). T5's ``select_random_chunk`` (one random chunk of at most 65536 tokens per
document) is not applied: it matters only for documents far longer than a chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from experiments.data.tokenizers import Tokenizer

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


class SpanCorruptionError(ValueError):
    """A span-corruption setting that cannot work (lengths, too few sentinels)."""


def _lengths_after_corruption(
    tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    # Inputs: the kept tokens, a sentinel per span and EOS; targets: the noise tokens, a
    # sentinel per span and EOS.
    return (num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1)


def random_spans_helper(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """``(tokens_length, targets_length)``: the longest raw chunk whose corrupted inputs are
    at most ``inputs_length`` long (with EOS), and its targets' length (with EOS)."""
    if inputs_length < 3:
        raise SpanCorruptionError(f"inputs_length={inputs_length} must be at least 3")
    tokens_length = inputs_length - 1
    while (
        _lengths_after_corruption(tokens_length + 1, noise_density, mean_noise_span_length)[0]
        <= inputs_length
    ):
        tokens_length += 1
    _, targets_length = _lengths_after_corruption(
        tokens_length, noise_density, mean_noise_span_length
    )
    return tokens_length, targets_length


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of ``num_segments`` non-empty segments of ``num_items`` items, at random."""
    first_in_segment = np.zeros(num_items, np.int64)
    starts = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    first_in_segment[1:] = starts
    segment_id = np.cumsum(first_in_segment)
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> np.ndarray:
    """T5's noise mask: a bool array of ``length``, True on noise tokens."""
    orig_length = length
    length = max(length, 2)  # A noise span and a non-noise span need two tokens.
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    num_nonnoise_tokens = length - num_noise_tokens
    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
    interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(length, np.int64)
    span_start_indicator[span_starts] = 1
    is_noise = np.cumsum(span_start_indicator) % 2 == 1
    return is_noise[:orig_length]


def noise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int
) -> np.ndarray:
    """Each noise span replaced by one sentinel, ``vocab_size - 1`` for the first."""
    tokens = np.asarray(tokens)
    prev = np.concatenate([[False], noise_mask[:-1]])
    first_noise = noise_mask & ~prev
    subsequent_noise = noise_mask & prev
    sentinel = vocab_size - np.cumsum(first_noise)
    out = np.where(first_noise, sentinel, tokens)
    return out[~subsequent_noise].astype(np.int32)


def nonnoise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int
) -> np.ndarray:
    return noise_span_to_unique_sentinel(tokens, ~noise_mask, vocab_size)


def span_corrupt(
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    rng: np.random.Generator,
    *,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    add_eos: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of one chunk of ids (unpadded, with EOS if ``add_eos``)."""
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) == 0:
        raise SpanCorruptionError("span_corrupt: empty chunk")
    mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
    num_spans = int(np.sum(mask & ~np.concatenate([[False], mask[:-1]])))
    if num_spans > tokenizer.num_sentinels:
        raise SpanCorruptionError(
            f"{num_spans} noise spans need as many sentinels; the tokenizer has "
            f"num_sentinels={tokenizer.num_sentinels}"
        )
    inputs = noise_span_to_unique_sentinel(tokens, mask, tokenizer.vocab_size)
    targets = nonnoise_span_to_unique_sentinel(tokens, mask, tokenizer.vocab_size)
    if add_eos:
        eos = np.array([tokenizer.eos_id], np.int32)
        inputs, targets = np.concatenate([inputs, eos]), np.concatenate([targets, eos])
    return inputs, targets


def span_corruption_batch(
    chunks: list[np.ndarray] | np.ndarray,
    tokenizer: Tokenizer,
    rng: np.random.Generator | Sequence[np.random.Generator],
    *,
    inputs_length: int,
    targets_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> dict[str, np.ndarray]:
    """The encoder-decoder batch of chunks, padded with 0 to the given lengths.

    ``decoder_input_tokens`` are the targets shifted right with 0 (the pad id) as the start
    token, as T5's feature converter makes them; ``decoder_loss_weights`` are 1 on every
    target token including EOS. ``rng``: one Generator for all chunks, in order, or one
    per chunk.
    """
    n = len(chunks)
    if isinstance(rng, np.random.Generator):
        rngs = [rng] * n
    elif len(rng) != n:
        raise ValueError(f"{len(rng)} Generators for {n} chunks")
    else:
        rngs = list(rng)
    enc = np.zeros((n, inputs_length), np.int32)
    tgt = np.zeros((n, targets_length), np.int32)
    for i, chunk in enumerate(chunks):
        inputs, targets = span_corrupt(
            chunk,
            tokenizer,
            rngs[i],
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
        )
        if len(inputs) > inputs_length or len(targets) > targets_length:
            raise SpanCorruptionError(
                f"a chunk of {len(chunk)} tokens corrupts to {len(inputs)} inputs / "
                f"{len(targets)} targets, more than inputs_length={inputs_length} / "
                f"targets_length={targets_length}"
            )
        enc[i, : len(inputs)] = inputs
        tgt[i, : len(targets)] = targets
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": (tgt != tokenizer.pad_id).astype(np.float32),
    }


@dataclasses.dataclass(frozen=True)
class SpanCorruptionBatcher:
    """Chunks -> the span-corruption batch: what ``text_tasks.SpanCorruptionTask`` does to
    its examples, as a small picklable object that worker processes can run
    (``experiments.data.packed_stream``)."""

    tokenizer: Tokenizer
    inputs_length: int
    targets_length: int
    noise_density: float = NOISE_DENSITY
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH

    def __call__(
        self,
        chunks: Sequence[np.ndarray],
        rng: np.random.Generator | Sequence[np.random.Generator],
    ) -> dict[str, np.ndarray]:
        return span_corruption_batch(
            list(chunks),
            self.tokenizer,
            rng,
            inputs_length=self.inputs_length,
            targets_length=self.targets_length,
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
        )


def reconstruct(inputs, targets, tokenizer: Tokenizer) -> list[int]:
    """The original chunk from corrupted ``inputs`` and ``targets`` (padding and EOS
    ignored): each sentinel of the inputs replaced by the span that follows it in the
    targets."""

    def strip(ids):
        ids = [int(i) for i in ids]
        for end in (tokenizer.eos_id, tokenizer.pad_id):
            if end in ids:
                ids = ids[: ids.index(end)]
        return ids

    spans: dict[int, list[int]] = {}
    current = None
    for t in strip(targets):
        if tokenizer.is_sentinel(t):
            current = t
            spans[current] = []
        elif current is None:
            raise SpanCorruptionError("targets do not start with a sentinel")
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in strip(inputs):
        if tokenizer.is_sentinel(t):
            if t not in spans:
                raise SpanCorruptionError(f"sentinel {t} of the inputs is not in the targets")
            out.extend(spans[t])
        else:
            out.append(t)
    return out
