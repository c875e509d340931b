"""T5 span corruption as a seqio Task, for T5X-style pipelines, and the harness task over it.

``register_span_corruption_task`` registers a Task over local text files (one document
per line): one file split into train, validation and test by its last lines
(``corpus_path``: the held-out lines cut in two, validation then test), or one file
(pattern) per split (``seqio.TextLineDataSource``); or over a TFDS dataset prepared under a
data directory (``seqio.TfdsDataSource`` in read-only mode: never downloads; without a
``'test'`` entry in ``tfds_splits`` the validation split is cut in two, as
``experiments.data.sources.TfdsSource`` does), with a ``seqio.SentencePieceVocabulary``
whose ``extra_ids`` are the T5 sentinels. Its preprocessors are T5's ``span_corruption``
chain, written here since ``t5`` is not a dependency:

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

``SeqioSpanCorruptionTask`` feeds such a Task (or any registered seq2seq Task or Mixture,
looked up by name) to the harness (``experiments/task.py``):

* Training batch ``s`` is batch ``s - 1`` of ``get_dataset(split='train', shuffle=True,
  num_epochs=None, seed=...)``, the seed derived from the run seed, so the order and the
  corruption are a function of (seed, step). The reader keeps its tf.data iterator and
  position: consecutive steps cost one batch each. Any other step (a resumed run's first)
  re-creates the pipeline and ``skip``s to it, which costs running the input pipeline
  (reading, tokenizing, corrupting) over every example before it, on each host, once per
  resume; T5X avoids this by checkpointing the iterator, which the harness does not do.
* Evaluation batch ``i`` of a split is batch ``i`` of one unshuffled pass over it
  (``'val'`` is seqio's ``'validation'``, ``'test'`` its ``'test'``), corrupted from
  ``eval_seed``: the same at every evaluation and for every run. A split too small for
  the batches asked is an error, not a silent repeat.
* Hosts: the global batch of a step is the concatenation, in shard order, of that step's
  batch of ``num_shards`` seqio shards (``seqio.ShardInfo``; by default one per host,
  ``jax.process_count()``), ``batch_size / num_shards`` examples each. The harness asks a
  host for its rows, which are exactly its shard, so a host reads and preprocesses only
  its shard: whole files when the source has at least as many files as shards (c4's train
  split has 1024), else every ``num_shards``-th document. This is T5X's choice, made here
  because T5's chunks cut one concatenated stream of documents: finding a host's rows of
  a single global stream would need each host to preprocess all of it. The price is that
  the data depends on ``num_shards``: pin it in gin to resume on a different number of
  hosts with the same batches.

Everything TensorFlow is imported inside the functions, and TensorFlow is kept off the
accelerators (the input pipeline runs on the CPU; JAX owns the devices).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from experiments.data import files, span_corruption
from experiments.data.sources import VALIDATION_FRACTION, default_tfds_data_dir, tfds_builder
from experiments.data.splits import halve_tfds_split, validation_size
from experiments.data.tf_import import seqio_module, tensorflow
from experiments.data.tokenizers import NUM_SENTINELS, SentencePieceTokenizer
from experiments.errors import ConfigError
from experiments.objectives import Seq2Seq
from experiments.task import Batch, ObjectiveTask, batch_stream

# The harness' split names and seqio's.
SEQIO_SPLITS = {"train": "train", "val": "validation", "test": "test"}
SHUFFLE_BUFFER_SIZE = 1000  # seqio's default, T5X's too.


# TensorFlow, kept off the GPUs (it only runs the input pipeline), as every tfds reader.
_tensorflow = tensorflow
_seqio = seqio_module


def span_corruption_preprocessor(
    dataset,
    sequence_length,
    output_features,
    *,
    noise_density: float = span_corruption.NOISE_DENSITY,
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
):
    """Tokenized ``targets`` documents -> span-corrupted ``inputs`` / ``targets`` (no EOS)."""
    seqio, tf = _seqio(), _tensorflow()

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


def text_file_splits(path: str, validation_fraction: float = VALIDATION_FRACTION) -> Any:
    """A seqio source of one text file's non-empty lines, the last ``validation_fraction``
    of them held out, the first half of those the validation split and the second half
    the test split: the hold-out of ``TextFileSource``, for a corpus that comes as one file
    (Tiny Shakespeare). Counting the lines reads the file once."""
    seqio, tf = _seqio(), _tensorflow()

    def lines():
        ds = tf.data.TextLineDataset(path)
        return ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)

    count = int(lines().reduce(np.int64(0), lambda n, _: n + 1))
    num_train = int(count * (1.0 - validation_fraction))
    num_val = validation_size(count - num_train)
    if not 0 < num_train < num_train + num_val < count:
        raise ValueError(
            f"text file {path!r} has {count} non-empty lines: too few to hold out "
            f"validation_fraction={validation_fraction} of them as validation and test"
        )

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed  # One file: there are no files to shuffle.
        if split == "train":
            return lines().take(num_train)
        if split == "validation":
            return lines().skip(num_train).take(num_val)
        return lines().skip(num_train + num_val)

    class TextFileSplits(seqio.FunctionDataSource):
        # One file has no files to shuffle (the Task shuffles examples); asking the base
        # class to shuffle only logs a warning about uncached sources.
        def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kw):
            return super().get_dataset(split, shuffle=False, seed=seed, shard_info=shard_info)

    return TextFileSplits(dataset_fn, splits=("train", "validation", "test"))


def register_span_corruption_task(
    name: str,
    *,
    vocabulary_path: str,
    corpus_path: str | None = None,
    validation_fraction: float = VALIDATION_FRACTION,
    text_files: dict[str, str] | None = None,
    tfds_name: str | None = None,
    tfds_data_dir: str | None = None,
    tfds_splits: dict[str, str] | None = None,
    text_feature: str = "text",
    num_sentinels: int = NUM_SENTINELS,
    noise_density: float = span_corruption.NOISE_DENSITY,
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
    shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE,
) -> Any:
    """Registers (or re-registers) the Task ``name`` and returns it.

    Give exactly one source: ``corpus_path`` (one text file, split by
    ``text_file_splits``), ``text_files`` (split name -> path or file pattern, e.g.
    ``{"train": ..., "validation": ..., "test": ...}``) or ``tfds_name`` (+
    ``tfds_data_dir``, optional ``tfds_splits`` mapping split names to TFDS splits, by
    default train, and validation cut into validation and test halves; and the
    ``text_feature``).
    """
    seqio = _seqio()
    if sum(x is not None for x in (corpus_path, text_files, tfds_name)) != 1:
        raise ValueError(
            f"register_span_corruption_task({name!r}): give exactly one of corpus_path, "
            f"text_files and tfds_name"
        )
    if not files.is_file(vocabulary_path):
        raise FileNotFoundError(
            f"sentencepiece model not found: {vocabulary_path!r} (vocabulary_path)"
        )
    to_targets = [_lines_to_targets]
    if corpus_path is not None:
        if not files.is_file(corpus_path):
            raise FileNotFoundError(f"text file not found: {corpus_path!r} (corpus_path)")
        source = text_file_splits(corpus_path, validation_fraction)
    elif text_files is not None:
        for split, path in text_files.items():
            if not any(c in path for c in "*?[") and not files.is_file(path):
                raise FileNotFoundError(f"text file for split {split!r} not found: {path!r}")
        source = seqio.TextLineDataSource(dict(text_files))
    else:
        tfds_data_dir = default_tfds_data_dir(tfds_data_dir)
        builder = tfds_builder(tfds_name, tfds_data_dir)  # A clear error if not prepared.
        tfds_splits = dict(tfds_splits or {"train": "train", "validation": "validation"})
        if "test" not in tfds_splits:  # The held-out split, cut in two.
            if "validation" not in tfds_splits:
                raise ConfigError(
                    f"tfds_splits={tfds_splits!r} (SeqioSpanCorruptionTask.tfds_splits) "
                    f"names neither a 'validation' nor a 'test' split"
                )
            tfds_splits["validation"], tfds_splits["test"] = halve_tfds_split(
                tfds_splits["validation"],
                builder.info.splits,
                "SeqioSpanCorruptionTask.tfds_splits['validation']",
            )
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
        shuffle_buffer_size=shuffle_buffer_size,
    )


def get_dataset(
    name: str | Any,
    *,
    split: str,
    inputs_length: int,
    targets_length: int,
    seed: int | None = 0,
    shuffle: bool = False,
    pack: bool = False,
    num_epochs: int | None = 1,
    shard_info: Any = None,
):
    """The encoder-decoder features of a registered Task or Mixture (by name, or the
    object), as T5X feeds them; ``num_epochs=None`` repeats forever, ``shard_info`` (a
    ``seqio.ShardInfo``) reads one host's shard."""
    seqio = _seqio()
    return seqio.get_dataset(
        name,
        {"inputs": inputs_length, "targets": targets_length},
        feature_converter=seqio.EncDecFeatureConverter(pack=pack),
        dataset_split=split,
        use_cached=False,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=shard_info,
        seed=seed,
    )


class _BatchReader:
    """Batches of one tf.data pipeline by 0-based index. The next batch costs one batch;
    any other re-creates the pipeline and skips to it (running the pipeline over all the
    data before it). The last batch is kept: the harness asks for a step's batch more than
    once (to initialize, to compile, to train)."""

    def __init__(self, make_dataset: Callable[[], Any]):
        self._make_dataset = make_dataset
        self._it: Iterator[Batch] | None = None
        self._next = 0
        self._last: tuple[int, Batch] | None = None

    def get(self, index: int) -> Batch | None:
        """Batch ``index``, or None past the end of the data."""
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._it is None or index != self._next:
            self._it = self._make_dataset().skip(index).as_numpy_iterator()
        batch = next(self._it, None)
        if batch is None:
            self._it = None
            return None
        self._next, self._last = index + 1, (index, batch)
        return batch


def _model_batch(batch: Batch) -> Batch:
    """The dtypes ``SpanCorruptionTask`` gives: int32 tokens, float32 loss weights."""
    return {
        k: np.asarray(v, np.float32 if k == "decoder_loss_weights" else np.int32)
        for k, v in batch.items()
    }


class SeqioSpanCorruptionTask(ObjectiveTask):
    """T5 span corruption through a seqio Task, for the harness (see the module docstring
    for the order of the batches, resuming and host sharding).

    With ``corpus_path`` (one text file, the last ``validation_fraction`` of its lines
    held out: validation, then test), ``text_files`` (``{"train": ..., "validation": ...,
    "test": ...}`` paths or patterns) or ``tfds_name`` (a TFDS dataset prepared under
    ``tfds_data_dir``, read-only) the Task ``name`` is registered with the sentencepiece
    model ``vocabulary_path``; with none of them, ``name`` is looked up in seqio's
    registries: a Task or Mixture with ``inputs`` and ``targets`` features registered by
    code imported beforehand (a gin ``import`` line does it).

    Batches and objective are those of ``SpanCorruptionTask`` (``encoder_input_tokens``,
    ``decoder_input_tokens``, ``decoder_target_tokens``, ``decoder_loss_weights``; the
    ``Seq2Seq`` objective with ``loss_normalization``), so the T5 models and their gin
    files run unchanged. ``shuffle`` shuffles the training examples in a buffer of
    ``shuffle_buffer_size`` (filled before the first batch, and again at a resume);
    ``num_shards`` is the number of input shards the global batch is split into (default:
    the number of hosts).
    """

    unit_name = "tokens"
    split_names = SEQIO_SPLITS

    def __init__(
        self,
        name: str = "amos_span_corruption",
        *,
        vocabulary_path: str | None = None,
        corpus_path: str | None = None,
        validation_fraction: float = VALIDATION_FRACTION,
        text_files: dict[str, str] | None = None,
        tfds_name: str | None = None,
        tfds_data_dir: str | None = None,
        tfds_splits: dict[str, str] | None = None,
        text_feature: str = "text",
        inputs_length: int = 512,
        targets_length: int = 114,
        noise_density: float = span_corruption.NOISE_DENSITY,
        mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
        num_sentinels: int = NUM_SENTINELS,
        loss_normalization: str = "sum",
        shuffle: bool = True,
        shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE,
        num_shards: int | None = None,
    ):
        where = type(self).__name__
        self.objective = Seq2Seq(normalization=loss_normalization)
        if not 0.0 < noise_density < 1.0:
            raise ConfigError(f"{where}.noise_density={noise_density} must be in (0, 1)")
        if mean_noise_span_length < 1.0:
            raise ConfigError(
                f"{where}.mean_noise_span_length={mean_noise_span_length} must be at least 1"
            )
        tokens_length, needed = span_corruption.random_spans_helper(
            inputs_length, noise_density, mean_noise_span_length
        )
        if needed > targets_length:
            raise ConfigError(
                f"{where}.targets_length={targets_length} is too short: "
                f"inputs_length={inputs_length} makes targets of {needed} tokens"
            )
        if num_shards is not None and (not isinstance(num_shards, int) or num_shards < 1):
            raise ConfigError(f"{where}.num_shards={num_shards!r} must be None or positive")
        self.name = name
        self.inputs_length = inputs_length
        self.targets_length = targets_length
        self.units_per_example = inputs_length
        self.shuffle = shuffle
        self.num_shards = num_shards
        self.corpus_path = corpus_path
        self.data_dir = default_tfds_data_dir(tfds_data_dir) if tfds_name else None
        self.tokenizer: SentencePieceTokenizer | None = None
        self._readers: dict[tuple, _BatchReader] = {}

        sources = {"corpus_path": corpus_path, "text_files": text_files, "tfds_name": tfds_name}
        given = [k for k, v in sources.items() if v is not None]
        if len(given) > 1:
            raise ConfigError(
                f"{where}: give one of corpus_path, text_files and tfds_name, not "
                f"{' and '.join(given)}"
            )
        if not given:
            self.seqio_task = self._look_up(name, where)
            self.source = f"seqio {type(self.seqio_task).__name__} {name!r}"
            self.vocab_path = vocabulary_path
            return

        self.tokenizer = self._check_vocabulary(vocabulary_path, num_sentinels, where)
        self.vocab_path = vocabulary_path
        spans = int(round(round(tokens_length * noise_density) / mean_noise_span_length))
        if spans > num_sentinels:
            raise ConfigError(
                f"{where}: {spans} noise spans per example need as many sentinels; "
                f"num_sentinels={num_sentinels}"
            )
        if corpus_path is not None:
            if not files.is_file(corpus_path):
                raise ConfigError(f"{where}.corpus_path={corpus_path!r}: no such file")
            if not 0.0 < validation_fraction < 1.0:
                raise ConfigError(
                    f"{where}.validation_fraction={validation_fraction} must be in (0, 1)"
                )
            self.source = f"seqio Task {name!r} over text file {corpus_path!r}"
        elif text_files is not None:
            missing = set(SEQIO_SPLITS.values()) - set(text_files)
            if missing:
                raise ConfigError(
                    f"{where}.text_files has no {sorted(missing)} split; it needs "
                    f"{sorted(SEQIO_SPLITS.values())}"
                )
            for split, path in text_files.items():
                if not any(c in path for c in "*?[") and not files.is_file(path):
                    raise ConfigError(f"{where}.text_files[{split!r}]={path!r}: no such file")
            self.source = f"seqio Task {name!r} over text files {dict(text_files)!r}"
        else:
            self.source = f"seqio Task {name!r} over TFDS {tfds_name!r}"
        try:
            self.seqio_task = register_span_corruption_task(
                name,
                vocabulary_path=vocabulary_path,
                corpus_path=corpus_path,
                validation_fraction=validation_fraction,
                text_files=text_files,
                tfds_name=tfds_name,
                tfds_data_dir=self.data_dir,
                tfds_splits=tfds_splits,
                text_feature=text_feature,
                num_sentinels=num_sentinels,
                noise_density=noise_density,
                mean_noise_span_length=mean_noise_span_length,
                shuffle_buffer_size=shuffle_buffer_size,
            )
        except ConfigError:
            raise
        except ValueError as e:  # e.g. a corpus too short to hold out a validation split.
            raise ConfigError(f"{where}: {e}") from e

    @staticmethod
    def _check_vocabulary(path: str | None, num_sentinels: int, where: str):
        if not path or not files.is_file(path):
            raise ConfigError(
                f"{where}.vocabulary_path={path!r}: no sentencepiece model there; train one "
                f"with `python -m experiments.data.train_sentencepiece --input=CORPUS "
                f"--model_prefix=PREFIX --vocab_size=1000` and bind PREFIX.model"
            )
        try:
            return SentencePieceTokenizer(path, num_sentinels)
        except ValueError as e:  # A model without T5's pad / EOS layout.
            raise ConfigError(f"{where}.vocabulary_path: {e}") from e

    @staticmethod
    def _look_up(name: str, where: str) -> Any:
        seqio = _seqio()
        try:
            provider = seqio.get_mixture_or_task(name)
        except ValueError as e:
            raise ConfigError(
                f"{where}.name={name!r}: no seqio Task or Mixture of that name is registered "
                f"and no corpus_path, text_files or tfds_name is given to register one "
                f"(import the module that registers it, e.g. with a gin `import` line)"
            ) from e
        if "targets" not in provider.output_features:
            raise ConfigError(f"{where}.name={name!r}: the seqio provider has no 'targets'")
        return provider

    # The Task protocol.
    @property
    def vocab_size(self) -> int:
        return int(self.seqio_task.output_features["targets"].vocabulary.vocab_size)

    @property
    def tokens_per_example(self) -> int:
        return self.units_per_example

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def train_batch(
        self, *, seed: int, step: int, batch_size: int, rows: slice | None = None
    ) -> Batch:
        if step < 1:
            raise ValueError(f"training steps count from 1, got step={step}")
        return self._batch("train", "train", seed, step - 1, batch_size, rows)

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice | None = None
    ) -> Batch:
        if split not in SEQIO_SPLITS:
            raise ConfigError(
                f"train.eval_splits: no split {split!r}; expected one of {sorted(SEQIO_SPLITS)}"
            )
        available = getattr(self.seqio_task, "splits", None)
        if available is not None and SEQIO_SPLITS[split] not in available:
            raise ConfigError(
                f"train.eval_splits: {self.source} has no {SEQIO_SPLITS[split]!r} split "
                f"(it has {sorted(available)}); register it with one"
            )
        return self._batch(split, "eval", seed, index, batch_size, rows)

    # Shards and readers.
    def shard_count(self) -> int:
        """``num_shards``, or the number of hosts."""
        if self.num_shards is not None:
            return self.num_shards
        import jax  # here: this data module does not otherwise need jax

        return jax.process_count()

    def _batch(
        self, split: str, purpose: str, seed: int, index: int, batch_size: int, rows: slice | None
    ) -> Batch:
        """Rows ``rows`` of the global batch: the batches of the shards they fall in."""
        shards = self.shard_count()
        if batch_size % shards:
            raise ConfigError(
                f"the batch size {batch_size} does not split into {shards} input shards "
                f"({type(self).__name__}.num_shards, by default the number of hosts)"
            )
        per_shard = batch_size // shards
        start, stop, stride = (rows or slice(None)).indices(batch_size)
        if stride != 1 or stop <= start:
            raise ValueError(f"rows={rows} is not a non-empty range of {batch_size} rows")
        first, last = start // per_shard, (stop - 1) // per_shard
        parts = [
            self._shard_batch(split, purpose, seed, index, per_shard, shard, shards)
            for shard in range(first, last + 1)
        ]
        offset = first * per_shard
        return {
            k: np.concatenate([p[k] for p in parts])[start - offset : stop - offset]
            for k in parts[0]
        }

    def _shard_batch(
        self, split: str, purpose: str, seed: int, index: int, size: int, shard: int, shards: int
    ) -> Batch:
        key = (split, purpose, seed, size, shard, shards)
        if key not in self._readers:
            self._readers[key] = _BatchReader(
                functools.partial(self._dataset, split, purpose, seed, size, shard, shards)
            )
        batch = self._readers[key].get(index)
        if batch is None:
            seqio_split = SEQIO_SPLITS[split]
            of = f" (shard {shard} of {shards})" if shards > 1 else ""
            if purpose == "train":
                raise ConfigError(f"the train split of {self.source} has no examples{of}")
            raise ConfigError(
                f"the {seqio_split} split of {self.source} has fewer than {index + 1} "
                f"batches of {size} examples{of}; lower train.eval_batches or "
                f"train.eval_batch_size"
            )
        return _model_batch(batch)

    def _dataset(
        self, split: str, purpose: str, seed: int, size: int, shard: int, shards: int
    ) -> Any:
        """One shard's batches of ``size``: training repeats and shuffles the split,
        evaluation reads one pass in order; the seqio seed (order and corruption) comes
        from (seed, the split's stream), so training and evaluation never share draws."""
        seqio = _seqio()
        seqio_seed = int(
            np.random.SeedSequence([seed, batch_stream(split, purpose)]).generate_state(1)[0] >> 1
        )
        train = purpose == "train"
        ds = get_dataset(
            self.seqio_task,
            split=SEQIO_SPLITS[split],
            inputs_length=self.inputs_length,
            targets_length=self.targets_length,
            seed=seqio_seed,
            shuffle=train and self.shuffle,
            num_epochs=None if train else 1,
            shard_info=seqio.ShardInfo(index=shard, num_shards=shards) if shards > 1 else None,
        )
        return ds.batch(size, drop_remainder=True)
