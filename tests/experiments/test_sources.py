"""Sources: text files with a held-out split, and TFDS datasets read without downloading."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data.sources import (
    GeneratedTextSource,
    InMemorySource,
    TextFileSource,
    split_documents,
)
from experiments.errors import ConfigError


def test_split_documents_modes():
    text = "a b\nc\n\nd e\n\n\nf\n"
    assert split_documents(text, "lines") == ["a b", "c", "d e", "f"]
    assert split_documents(text, "paragraphs") == ["a b\nc", "d e", "f"]
    assert split_documents(text, "whole") == [text]
    with pytest.raises(ConfigError, match="'sentences'"):
        split_documents(text, "sentences")


def test_text_file_held_out_fraction(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    source = TextFileSource(str(path), validation_fraction=0.2)
    # Training: the first 80% of the lines, as before the test split existed; the held-out
    # 20% is cut in two, validation then test.
    assert source.documents("train") == [f"line {i}" for i in range(80)]
    assert source.documents("validation") == [f"line {i}" for i in range(80, 90)]
    assert source.documents("test") == [f"line {i}" for i in range(90, 100)]
    assert list(source.iter_documents("test"))[0] == "line 90"
    whole = TextFileSource(str(path), mode="whole")
    text = path.read_text()
    train, val, test = (whole.documents(split)[0] for split in ("train", "validation", "test"))
    assert train == text[: int(len(text) * 0.9)] and train + val + test == text
    assert len(val) == (len(text) - len(train) + 1) // 2
    with pytest.raises(ConfigError, match="split 'dev'"):
        source.documents("dev")


def test_in_memory_splits_are_disjoint_and_cover_the_documents():
    docs = [f"document {i}" for i in range(45)]
    source = InMemorySource(docs)
    splits = [source.documents(split) for split in ("train", "validation", "test")]
    assert splits[0] == docs[: int(45 * 0.9)]  # the training split as it was: 40 documents
    assert [len(x) for x in splits] == [40, 3, 2]
    assert splits[0] + splits[1] + splits[2] == docs
    assert source.text() == "\n".join(docs)
    # Too few held-out documents for a test split: an error, not an empty split.
    with pytest.raises(ConfigError, match="the test split is empty"):
        InMemorySource(["a", "b"], validation_fraction=0.4)


def test_text_file_errors_name_the_culprit(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="nope.txt"):
        TextFileSource(missing)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty.txt.*split is empty"):
        TextFileSource(str(tmp_path / "empty.txt"), mode="lines")
    (tmp_path / "one.txt").write_text("only line\n")
    with pytest.raises(ConfigError, match="mode='rows'"):
        TextFileSource(str(tmp_path / "one.txt"), mode="rows")
    with pytest.raises(ConfigError, match="validation_fraction=1.5"):
        InMemorySource(["a", "b"], validation_fraction=1.5)


def test_generated_source_is_deterministic():
    a, b = GeneratedTextSource(10_000, seed=3), GeneratedTextSource(10_000, seed=3)
    assert a.documents("train") == b.documents("train") and len(a.documents("validation")) > 5


# TFDS: a tiny dataset built in a temporary data_dir; nothing is downloaded.
tfds = pytest.importorskip("tensorflow_datasets")


class TinyAmosText(tfds.core.GeneratorBasedBuilder):
    """Two splits of short documents, and a non-text feature."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "id": np.int64})
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples("t", 60),
            "validation": self._generate_examples("v", 12),
        }

    def _generate_examples(self, tag, n):
        for i in range(n):
            yield i, {"text": f"{tag}{i:03d} a short document for the test.", "id": i}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds"))
    TinyAmosText(data_dir=path).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return path


def test_tfds_source_streams_and_loads(data_dir):
    from experiments.data.sources import TfdsSource

    source = TfdsSource("tiny_amos_text", data_dir)
    assert not source.in_memory
    train = list(source.iter_documents("train"))
    assert sorted(train) == [f"t{i:03d} a short document for the test." for i in range(60)]
    assert list(source.iter_documents("train")) == train  # a fixed order: resumable
    # No test split of its own: validation is cut in two, in file order.
    assert source.split_names == {
        "train": "train",
        "validation": "validation[0:6]",
        "test": "validation[6:12]",
    }
    val, test = (list(source.iter_documents(split)) for split in ("validation", "test"))
    assert len(val) == len(test) == 6 and not set(val) & set(test)
    assert sorted(val + test) == [f"v{i:03d} a short document for the test." for i in range(12)]
    assert list(source.iter_documents("test")) == test
    with pytest.raises(ConfigError, match="in_memory=False"):
        source.documents("train")
    own = TfdsSource(
        "tiny_amos_text",
        data_dir,
        split_names={"train": "train[:50]", "validation": "validation", "test": "train[50:]"},
    )
    assert own.split_names["validation"] == "validation"
    assert len(list(own.iter_documents("validation"))) == 12
    assert sorted(own.iter_documents("test")) == sorted(
        set(train) - set(own.iter_documents("train"))
    )
    small = TfdsSource(
        "tiny_amos_text",
        data_dir,
        in_memory=True,
        max_documents=5,
        split_names={"train": "train", "validation": "train[50:]"},
    )
    assert len(small.documents("train")) == 5
    assert small.split_names["validation"] == "train[50:55]"
    assert small.split_names["test"] == "train[55:60]"
    assert len(small.documents("validation")) == len(small.documents("test")) == 5
    # max_documents caps the held-out split before it is cut in two.
    capped = TfdsSource("tiny_amos_text", data_dir, in_memory=True, max_documents=5)
    assert capped.split_names["validation"] == "validation[0:3]"
    assert capped.split_names["test"] == "validation[3:5]"


def test_tfds_errors_name_data_dir_and_dataset(data_dir, tmp_path):
    from experiments.data.sources import TfdsSource

    empty = str(tmp_path / "empty_tfds")
    with pytest.raises(ConfigError, match=r"'wikipedia/20230601.en'.*" + empty):
        TfdsSource("wikipedia/20230601.en", empty)
    (tmp_path / "empty_tfds").mkdir()
    with pytest.raises(ConfigError, match=r"'c4/en'.*empty_tfds"):
        TfdsSource("c4/en", empty)
    with pytest.raises(ConfigError, match=r"'no_such_dataset_xyz'.*empty_tfds"):
        TfdsSource("no_such_dataset_xyz", empty)
    with pytest.raises(ConfigError, match="feature 'content'"):
        TfdsSource("tiny_amos_text", data_dir, feature="content")
    with pytest.raises(ConfigError, match="no split 'test'"):
        TfdsSource("tiny_amos_text", data_dir, split_names={"train": "train", "validation": "test"})


def test_tasks_over_tfds(data_dir):
    from experiments.data.sources import TfdsSource
    from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
    from experiments.data.tokenizers import ByteTokenizer

    task = MaskedLMTask(TfdsSource("tiny_amos_text", data_dir), ByteTokenizer(), seq_length=32)
    b2 = task.train_batch(seed=0, step=2, batch_size=4)
    fresh = MaskedLMTask(TfdsSource("tiny_amos_text", data_dir), ByteTokenizer(), seq_length=32)
    fresh.train_batch(seed=0, step=1, batch_size=4)
    for k, v in fresh.train_batch(seed=0, step=2, batch_size=4).items():
        np.testing.assert_array_equal(v, b2[k])
    assert task.eval_batch("val", seed=0, index=0, batch_size=4)["input_ids"].shape == (4, 32)
    span = SpanCorruptionTask(
        TfdsSource("tiny_amos_text", data_dir, in_memory=True),
        ByteTokenizer(),
        inputs_length=32,
        targets_length=8,
    )
    assert span.train_batch(seed=0, step=1, batch_size=3)["encoder_input_tokens"].shape == (3, 32)


class TinyAmosFiles(TinyAmosText):
    """More documents, to be written in several files of more than 16 documents each (TFDS
    reads 16 at a time from each of 16 files unless told to read one file at a time)."""

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples("t", 200),
            "validation": self._generate_examples("v", 40),
        }


@pytest.fixture(scope="module")
def sharded_data_dir(tmp_path_factory) -> str:
    """A dataset written in four files per split, as large datasets are."""
    path = str(tmp_path_factory.mktemp("tfds_sharded"))
    TinyAmosFiles(data_dir=path).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=4)
    )
    return path


def test_tfds_source_seeks_to_a_document(sharded_data_dir):
    """`iter_documents(split, start=k)` is the split read in file order from its k-th
    document on: the packed stream's token index counts documents in that order."""
    from experiments.data.sources import TfdsSource

    source = TfdsSource(
        "tiny_amos_files",
        sharded_data_dir,
        split_names={
            "train": "train[5:195]",
            "validation": "validation[:20]",
            "test": "validation[20:]+train[:5]",  # Two parts: a seek may skip the first.
        },
    )
    assert len(source.builder.info.splits["train"].shard_lengths) == 4
    for split, size in (("train", 190), ("validation", 20), ("test", 25)):
        docs = list(source.iter_documents(split))
        assert len(docs) == source.num_documents(split) == size
        for start in (0, 1, 17, 20, 21, 44, 45, 46, 100, size - 1, size, size + 3):
            assert list(source.iter_documents(split, start=start)) == docs[start:]
    # The key of a split's saved token index names the dataset, version, slice and size.
    assert source.index_key("train") == "tiny_amos_files|1.0.0|text|train[5:195]|190"
    assert source.index_key("test") != source.index_key("validation")
