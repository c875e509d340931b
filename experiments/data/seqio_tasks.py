"""T5 span corruption as a seqio Task, for T5X-style pipelines.

``register_span_corruption_task`` registers a Task over local text files (one document
per line, ``seqio.TextLineDataSource``) or a TFDS dataset prepared under a data directory
(``seqio.TfdsDataSource`` in read-only mode: never downloads), with a
``seqio.SentencePieceVocabulary`` whose ``extra_ids`` are the T5 sentinels. Its
preprocessors are T5's ``span_corruption`` chain, written here since ``t5`` is not a
dependency:

1. the text feature becomes ``targets`` and is tokenized (no EOS);
2. all documents are concatenated and split into chunks of ``tokens_length`` tokens
   (T5's ``reduce_concat_tokens`` + ``split_tokens``; ``tokens_length`` from
   ``random_spans_helper`` so inputs fit ``sequence_length["inputs"]``);
3. each chunk is corrupted by ``experiments.data.span_corruption`` in a
   ``tf.numpy_function``, with a per-example seed from seqio's seed manager (so
   ``get_dataset(seed=...)`` makes it deterministic);
4. ``append_eos_after_trim`` ends inputs and targets with EOS.

The result is the same objective as ``SpanCorruptionTask``; ``get_dataset`` below adds the
encoder-decoder feature converter, giving ``encoder_input_tokens``,
``decoder_input_tokens``, ``decoder_target_tokens`` and ``decoder_loss_weights``.

Everything TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from experiments.data import span_corruption
from experiments.data.sources import tfds_builder
from experiments.data.tokenizers import NUM_SENTINELS


def span_corruption_preprocessor(
    dataset,
    sequence_length,
    output_features,
    *,
    noise_density: float = span_corruption.NOISE_DENSITY,
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
):
    """Tokenized ``targets`` documents -> span-corrupted ``inputs`` / ``targets`` (no EOS)."""
    import seqio
    import tensorflow as tf

    tokens_length, _ = span_corruption.random_spans_helper(
        sequence_length["inputs"], noise_density, mean_noise_span_length
    )
    vocab_size = output_features["targets"].vocabulary.vocab_size

    chunks = dataset.map(lambda x: x["targets"]).unbatch().batch(tokens_length)

    def corrupt_np(tokens: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([int(s) % 2**32 for s in seed])
        mask = span_corruption.random_spans_noise_mask(
            len(tokens), rng, noise_density, mean_noise_span_length
        )
        return (
            span_corruption.noise_span_to_unique_sentinel(tokens, mask, vocab_size),
            span_corruption.nonnoise_span_to_unique_sentinel(tokens, mask, vocab_size),
        )

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(tokens, seed):
        inputs, targets = tf.numpy_function(
            corrupt_np, [tokens, seed], [tf.int32, tf.int32], stateful=False
        )
        inputs.set_shape([None])
        targets.set_shape([None])
        return {"inputs": inputs, "targets": targets}

    return corrupt(chunks.map(lambda t: tf.cast(t, tf.int32)))


def _lines_to_targets(dataset):
    return dataset.map(lambda line: {"targets": line})


def register_span_corruption_task(
    name: str,
    *,
    vocabulary_path: str,
    text_files: dict[str, str] | None = None,
    tfds_name: str | None = None,
    tfds_data_dir: str | None = None,
    tfds_splits: dict[str, str] | None = None,
    text_feature: str = "text",
    num_sentinels: int = NUM_SENTINELS,
    noise_density: float = span_corruption.NOISE_DENSITY,
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
) -> Any:
    """Registers (or re-registers) the Task ``name`` and returns it.

    Give either ``text_files`` (split name -> path or file pattern, e.g.
    ``{"train": ..., "validation": ...}``) or ``tfds_name`` (+ ``tfds_data_dir``, optional
    ``tfds_splits`` mapping split names to TFDS splits, and the ``text_feature``).
    """
    import seqio

    if (text_files is None) == (tfds_name is None):
        raise ValueError(
            f"register_span_corruption_task({name!r}): give exactly one of text_files and tfds_name"
        )
    if not os.path.isfile(vocabulary_path):
        raise FileNotFoundError(
            f"sentencepiece model not found: {vocabulary_path!r} (vocabulary_path)"
        )
    if text_files is not None:
        for split, path in text_files.items():
            if not any(c in path for c in "*?[") and not os.path.isfile(path):
                raise FileNotFoundError(f"text file for split {split!r} not found: {path!r}")
        source = seqio.TextLineDataSource(dict(text_files))
        to_targets = [_lines_to_targets]
    else:
        tfds_builder(tfds_name, tfds_data_dir)  # A clear error if it is not prepared.
        source = seqio.TfdsDataSource(
            tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=tfds_splits, read_only=True
        )
        to_targets = [
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_feature})
        ]

    vocabulary = seqio.SentencePieceVocabulary(vocabulary_path, extra_ids=num_sentinels)
    output_features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }
    preprocessors = to_targets + [
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        functools.partial(
            span_corruption_preprocessor,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
        ),
        seqio.preprocessors.append_eos_after_trim,
    ]
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=preprocessors,
        output_features=output_features,
        metric_fns=[],
    )


def get_dataset(
    name: str,
    *,
    split: str,
    inputs_length: int,
    targets_length: int,
    seed: int | None = 0,
    shuffle: bool = False,
    pack: bool = False,
):
    """The encoder-decoder features of a registered Task (or Mixture), as T5X feeds them."""
    import seqio

    return seqio.get_dataset(
        name,
        {"inputs": inputs_length, "targets": targets_length},
        feature_converter=seqio.EncDecFeatureConverter(pack=pack),
        dataset_split=split,
        use_cached=False,
        shuffle=shuffle,
        seed=seed,
    )
