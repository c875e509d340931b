"""The seqio span-corruption Task over a local text file, with a sentencepiece vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.errors import ConfigError

seqio = pytest.importorskip("seqio")

from experiments.data import seqio_tasks  # noqa: E402
from experiments.data import span_corruption as sc  # noqa: E402
from experiments.data.tokenizers import SentencePieceTokenizer  # noqa: E402
from experiments.data.train_sentencepiece import train_sentencepiece  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory, shakespeare) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("seqio")
    lines = shakespeare.read_text().splitlines(keepends=True)
    (tmp / "train.txt").write_text("".join(lines[:1500]))
    (tmp / "validation.txt").write_text("".join(lines[-300:]))
    model = train_sentencepiece(
        [str(tmp / "train.txt")],
        str(tmp / "spm"),
        vocab_size=500,
        input_sentence_size=2000,
        seed_sentencepiece_size=20_000,
    )
    return {
        "train": str(tmp / "train.txt"),
        "validation": str(tmp / "validation.txt"),
        "model": model,
    }


def test_span_corruption_task_over_a_text_file(files):
    task = seqio_tasks.register_span_corruption_task(
        "amos_test_span_corruption",
        vocabulary_path=files["model"],
        text_files={"train": files["train"], "validation": files["validation"]},
    )
    assert seqio.get_mixture_or_task("amos_test_span_corruption") is task
    tok = SentencePieceTokenizer(files["model"])
    assert task.output_features["targets"].vocabulary.vocab_size == tok.vocab_size == 600

    lengths = {"inputs": 64, "targets": 16}
    raw = list(
        seqio.get_mixture_or_task("amos_test_span_corruption")
        .get_dataset(lengths, split="train", shuffle=False, seed=0, use_cached=False)
        .take(20)
        .as_numpy_iterator()
    )
    # The chunks are the file's tokens in order, tokens_length (70) at a time: inputs and
    # targets rebuild them exactly.
    tokens_length, _ = sc.random_spans_helper(64)
    stream = np.concatenate(
        [tok.encode(line) for line in Path(files["train"]).read_text().splitlines()]
    )
    for i, ex in enumerate(raw):
        assert ex["inputs"][-1] == tok.eos_id and ex["targets"][-1] == tok.eos_id
        assert len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 16
        assert ex["targets"][0] == tok.sentinel_id(0)
        np.testing.assert_array_equal(
            sc.reconstruct(ex["inputs"], ex["targets"], tok),
            stream[i * tokens_length : (i + 1) * tokens_length],
        )

    # T5X's features through the encoder-decoder converter; deterministic in the seed.
    def first(split, seed):
        ds = seqio_tasks.get_dataset(
            "amos_test_span_corruption", split=split, inputs_length=64, targets_length=16, seed=seed
        )
        return list(ds.take(4).as_numpy_iterator())

    a, b, c = first("train", 0), first("train", 0), first("train", 1)
    assert set(a[0]) == {
        "encoder_input_tokens",
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
    }
    assert a[0]["encoder_input_tokens"].shape == (64,)
    assert a[0]["decoder_target_tokens"].shape == (16,)
    np.testing.assert_array_equal(
        a[0]["decoder_input_tokens"][1:], a[0]["decoder_target_tokens"][:-1]
    )
    assert all(
        np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"]) for x, y in zip(a, b)
    )
    assert not all(
        np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"]) for x, y in zip(a, c)
    )
    val = first("validation", 0)
    assert (
        tok.decode(
            sc.reconstruct(val[0]["encoder_input_tokens"], val[0]["decoder_target_tokens"], tok)
        ).split()[0]
        == Path(files["validation"]).read_text().split()[0]
    )


def test_registration_errors_name_the_culprit(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        seqio_tasks.register_span_corruption_task(
            "amos_test_bad",
            vocabulary_path=str(tmp_path / "missing.model"),
            text_files={"train": files["train"]},
        )
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        seqio_tasks.register_span_corruption_task(
            "amos_test_bad",
            vocabulary_path=files["model"],
            text_files={"train": str(tmp_path / "nope.txt")},
        )
    with pytest.raises(ConfigError, match=r"'c4/en'.*" + str(tmp_path)):
        seqio_tasks.register_span_corruption_task(
            "amos_test_bad",
            vocabulary_path=files["model"],
            tfds_name="c4/en",
            tfds_data_dir=str(tmp_path),
        )
    with pytest.raises(ValueError, match="exactly one of"):
        seqio_tasks.register_span_corruption_task("amos_test_bad", vocabulary_path=files["model"])
