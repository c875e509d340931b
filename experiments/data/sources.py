"""Where documents come from: text files, generated text, or prepared tfds datasets.

A source has three splits, ``"train"``, ``"validation"`` and ``"test"``, and either holds
its documents in memory (``in_memory = True``: ``documents(split)`` returns the list) or
streams them (``iter_documents(split)``: the same documents in the same fixed order on
every call). Every source provides ``iter_documents``; in-memory ones also provide
``documents``. ``iter_documents(split, start=k)`` begins at the ``k``-th document: a TFDS
source seeks there (the documents before it are not decoded), so a reader positioned by
``experiments.data.packed_stream``'s token index resumes without replaying the split.

Where a dataset has no test split of its own, the held-out part (the last 10% of a text,
or the dataset's validation split) is cut in two: its first half is validation, its
second half test (``experiments.data.splits``); the training split stays as it was.

TFDS datasets are read with download-never semantics: the dataset must already be
prepared under ``data_dir`` (``tfds build`` or ``download_and_prepare`` done beforehand);
otherwise the error names ``data_dir`` and the dataset. TensorFlow is imported only when a
TFDS source is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from experiments.data import files
from experiments.data.char_text import generated_text
from experiments.data.files import read_text
from experiments.data.splits import halve_tfds_split, halves
from experiments.data.tf_import import tensorflow_datasets
from experiments.errors import ConfigError

SPLITS = ("train", "validation", "test")
TEXT_FILE_MODES = ("lines", "paragraphs", "whole")
VALIDATION_FRACTION = 0.1  # The last 10%, as nanoGPT and char_text hold out.


def _check_split(split: str, source: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"{source}: unknown split {split!r}; expected one of {SPLITS}")


def split_documents(text: str, mode: str) -> list[str]:
    """A text as documents: each non-empty line, each blank-line-separated paragraph, or the
    whole text as one document."""
    if mode == "lines":
        return [line for line in text.splitlines() if line.strip()]
    if mode == "paragraphs":
        paragraphs = (p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n"))
        return [p for p in paragraphs if p.strip()]
    if mode == "whole":
        return [text] if text else []
    raise ConfigError(f"unknown text mode {mode!r}; expected one of {TEXT_FILE_MODES}")


class InMemorySource:
    """Documents held in memory: the last ``validation_fraction`` of them (or, for a single
    document, of its characters) is held out, deterministically: its first half is the
    validation split, its second half the test split."""

    in_memory = True

    def __init__(
        self,
        documents: Sequence[str],
        *,
        validation_fraction: float = VALIDATION_FRACTION,
        name: str = "in-memory text",
    ):
        if not 0.0 < validation_fraction < 1.0:
            raise ConfigError(
                f"{name}: validation_fraction={validation_fraction} must be in (0, 1)"
            )
        self.name = name
        documents = list(documents)
        if len(documents) == 1:
            # One document (a whole corpus): hold out the tail of its text, as char_text.
            text = documents[0]
            n = int(len(text) * (1.0 - validation_fraction))
            val, test = halves(text[n:])
            self._splits = {"train": [text[:n]], "validation": [val], "test": [test]}
        else:
            n = int(len(documents) * (1.0 - validation_fraction))
            val, test = halves(documents[n:])
            self._splits = {"train": documents[:n], "validation": val, "test": test}
        for split, docs in self._splits.items():
            if not any(docs):
                raise ConfigError(
                    f"{name}: the {split} split is empty ({len(documents)} "
                    f"documents, validation_fraction={validation_fraction})"
                )

    def documents(self, split: str) -> list[str]:
        _check_split(split, self.name)
        return self._splits[split]

    def iter_documents(self, split: str, start: int = 0) -> Iterator[str]:
        return iter(self.documents(split)[start:])

    def text(self) -> str:
        """All documents of every split, e.g. to build a character vocabulary."""
        return "\n".join(doc for split in SPLITS for doc in self._splits[split])


class TextFileSource(InMemorySource):
    """A plain UTF-8 text file: one document per line (``mode='lines'``), per paragraph
    (``'paragraphs'``, blank-line separated), or the whole file as one (``'whole'``)."""

    def __init__(
        self, path: str, *, mode: str = "lines", validation_fraction: float = VALIDATION_FRACTION
    ):
        if mode not in TEXT_FILE_MODES:
            raise ConfigError(f"TextFileSource: mode={mode!r} is not one of {TEXT_FILE_MODES}")
        text = read_text(path, "TextFileSource.path")
        self.path = path
        self.mode = mode
        super().__init__(
            split_documents(text, mode),
            validation_fraction=validation_fraction,
            name=f"text file {path!r}",
        )


class GeneratedTextSource(InMemorySource):
    """``char_text.generated_text``, one sentence per document: runs without any corpus."""

    def __init__(
        self,
        num_chars: int = 200_000,
        seed: int = 0,
        validation_fraction: float = VALIDATION_FRACTION,
    ):
        super().__init__(
            split_documents(generated_text(num_chars, seed), "lines"),
            validation_fraction=validation_fraction,
            name=f"generated_text(num_chars={num_chars}, seed={seed})",
        )


def default_tfds_data_dir(data_dir: str | None) -> str:
    """``data_dir``, or TFDS' default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    if data_dir:
        return os.path.expanduser(data_dir)
    tfds = tensorflow_datasets()

    return os.path.expanduser(tfds.core.constants.DATA_DIR)


def tfds_builder(name: str, data_dir: str | None):
    """The builder of a TFDS dataset prepared under ``data_dir``; never downloads.

    A dataset that is not there (not prepared, or unknown to TFDS and not in the
    directory) is an error naming both the data directory and the dataset.
    """
    tfds = tensorflow_datasets()

    data_dir = default_tfds_data_dir(data_dir)
    missing = ConfigError(
        f"TFDS dataset {name!r} is not prepared under data_dir={data_dir!r}; this source "
        f"never downloads: prepare it first, e.g. `tfds build {name.split('/')[0]} "
        f"--data_dir={data_dir}`"
    )
    if not files.is_dir(data_dir):  # gs:// too, as tfds reads it
        raise missing
    try:
        # try_gcs=False: the builder must not reach for Google's bucket either.
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError as e:
        raise missing from e
    if not builder.is_prepared():
        raise missing
    return builder


class TfdsSource:
    """A text feature of a TFDS dataset already prepared under ``data_dir``; never downloads.

    ``name`` is what ``tfds.builder`` takes, e.g. ``'wikipedia/20230601.en'``, ``'c4/en'``
    or ``'lm1b'``; ``feature`` is the text feature (``'text'`` for all three).
    ``split_names`` maps our splits to the dataset's (C4 calls its held-out split
    ``'validation'``, lm1b ``'test'``, and wikipedia has only ``'train'``: hold out a slice
    with TFDS's split syntax, e.g. ``{"train": "train[:99%]", "validation": "train[99%:]"}``).
    Without a ``'test'`` entry, the ``'validation'`` one is cut in two, in file order
    (first half validation, second half test; ``split_names`` then holds the two halves);
    name a ``'test'`` split where the dataset has its own.

    Streaming by default (``in_memory=False``); ``in_memory=True`` loads the splits (at most
    ``max_documents`` each) into lists, for small datasets. Documents come in file order
    (files in order, one at a time), so the ``k``-th document of a split is the one at
    absolute position ``k`` of its TFDS slices, where ``iter_documents(split, start=k)``
    seeks.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | None = None,
        *,
        feature: str = "text",
        split_names: dict[str, str] | None = None,
        in_memory: bool = False,
        max_documents: int | None = None,
    ):
        split_names = dict(split_names or {"train": "train", "validation": "validation"})
        for split in ("train", "validation"):
            if split not in split_names:
                raise ConfigError(f"TfdsSource({name!r}): split_names has no {split!r} entry")
        unknown = sorted(set(split_names) - set(SPLITS))
        if unknown:
            raise ConfigError(
                f"TfdsSource({name!r}): split_names has {unknown}; its keys are {SPLITS}"
            )
        self.name = name
        self.data_dir = default_tfds_data_dir(data_dir)
        self.feature = feature
        self.split_names = split_names
        self.in_memory = in_memory
        self.max_documents = max_documents
        self.builder = tfds_builder(name, self.data_dir)
        features = self.builder.info.features
        if feature not in features:
            raise ConfigError(
                f"TFDS dataset {name!r} has no feature {feature!r} (feature "
                f"option); it has {sorted(features.keys())}"
            )
        for split, tfds_split in split_names.items():
            base = tfds_split.split("[")[0]
            if base not in self.builder.info.splits:
                raise ConfigError(
                    f"TFDS dataset {name!r} under {self.data_dir!r} has no split {base!r} "
                    f"(split_names[{split!r}]); it has {sorted(self.builder.info.splits)}"
                )
        if "test" not in split_names:  # The held-out split, cut in two.
            split_names["validation"], split_names["test"] = halve_tfds_split(
                self._capped(split_names["validation"]),
                self.builder.info.splits,
                f"TfdsSource({name!r}).split_names['validation']",
            )
        self._cache: dict[str, list[str]] = {}

    def _capped(self, tfds_split: str) -> str:
        """A whole split cut to its first ``max_documents`` documents (a slice stays)."""
        if self.max_documents is not None and "[" not in tfds_split:
            return f"{tfds_split}[:{self.max_documents}]"
        return tfds_split

    def _tfds_split(self, split: str) -> str:
        _check_split(split, f"TfdsSource({self.name!r})")
        return self._capped(self.split_names[split])

    def _tfds_split_from(self, split: str, start: int) -> str | None:
        """The split from its ``start``-th document on, as absolute TFDS slices (None when
        nothing is left): TFDS then opens the file holding that document and skips only
        the records before it in that file."""
        tfds = tensorflow_datasets()

        spec = self._tfds_split(split)
        if start == 0:
            return spec
        splits = self.builder.info.splits
        parts = []
        for part in tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits):
            total = splits[part.splitname].num_examples
            begin = 0 if part.from_ is None else min(part.from_, total)
            end = total if part.to is None else min(part.to, total)
            if start >= end - begin:
                start -= end - begin
                continue
            parts.append(f"{part.splitname}[{begin + start}:{end}]")
            start = 0
        return "+".join(parts) or None

    def num_documents(self, split: str) -> int:
        """How many documents the split has (from the dataset's metadata: nothing is read)."""
        return self.builder.info.splits[self._tfds_split(split)].num_examples

    def index_key(self, split: str) -> str:
        """What names the split's documents (dataset, version, feature, slice, count): the
        key of its saved token index (experiments.data.packed_stream)."""
        version = self.builder.info.version
        return (
            f"{self.name}|{version}|{self.feature}|{self._tfds_split(split)}|"
            f"{self.num_documents(split)}"
        )

    def tf_dataset(self, split: str, start: int = 0):
        """The split's text feature as a ``tf.data.Dataset`` of strings, in file order, from
        its ``start``-th document on."""
        tfds = tensorflow_datasets()

        tfds_split = self._tfds_split_from(split, start)
        if tfds_split is None:
            return None
        # No auto-cache: a streaming reader stops part-way, which a cache would warn about.
        # One file at a time (TFDS interleaves 16 by default): file order, so that document
        # k of the split is the one TFDS's slice `[k:]` starts with.
        ds = self.builder.as_dataset(
            split=tfds_split,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False, interleave_cycle_length=1),
        )
        feature = self.feature
        return ds.map(lambda x: x[feature])

    def iter_documents(self, split: str, start: int = 0) -> Iterator[str]:
        if self.in_memory:
            yield from self.documents(split)[start:]
            return
        ds = self.tf_dataset(split, start)
        if ds is None:
            return
        # In batches: one Python step per 256 documents, not per document.
        for texts in ds.batch(256).prefetch(2).as_numpy_iterator():
            for text in texts:
                yield text.decode("utf-8")

    def documents(self, split: str) -> list[str]:
        if not self.in_memory:
            raise ConfigError(
                f"TfdsSource({self.name!r}) streams (in_memory=False); use "
                f"iter_documents, or in_memory=True with max_documents"
            )
        if split not in self._cache:
            ds = self.tf_dataset(split)
            self._cache[split] = [t.decode("utf-8") for t in ds.as_numpy_iterator()]
        return self._cache[split]
