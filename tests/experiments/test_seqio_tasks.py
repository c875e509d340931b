"""The seqio span-corruption Task over a local text file, with a sentencepiece vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments.errors import ConfigError

seqio = pytest.importorskip("seqio")

from experiments.data import seqio_tasks  # noqa: E402
from experiments.data import span_corruption as sc  # noqa: E402
from experiments.data.tokenizers import SentencePieceTokenizer  # noqa: E402
from experiments.data.train_sentencepiece import train_sentencepiece  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory, shakespeare) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("seqio")
    lines = shakespeare.read_text().splitlines(keepends=True)
    (tmp / "train.txt").write_text("".join(lines[:1500]))
    (tmp / "validation.txt").write_text("".join(lines[-300:]))
    (tmp / "test.txt").write_text("".join(lines[-600:-300]))
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
        "test": str(tmp / "test.txt"),
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


# SeqioSpanCorruptionTask: the seqio pipeline behind the harness' Task protocol.
TASK_NAME = "amos_test_harness_span_corruption"
CHUNK = sc.random_spans_helper(64)[0]  # 70 tokens per example.


def make_task(files, **kw) -> seqio_tasks.SeqioSpanCorruptionTask:
    """A fresh task object, as a fresh (e.g. resumed) process builds it."""
    kw.setdefault("text_files", {split: files[split] for split in ("train", "validation", "test")})
    kw.setdefault("vocabulary_path", files["model"])
    kw.setdefault("targets_length", 14)
    kw.setdefault("shuffle_buffer_size", 64)  # Small: the buffer fills before a first batch.
    return seqio_tasks.SeqioSpanCorruptionTask(TASK_NAME, inputs_length=64, **kw)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def differ(a: dict, b: dict) -> bool:
    return not np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])


def token_stream(tok: SentencePieceTokenizer, lines: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(tok.encode(line), np.int64) for line in lines])


def test_batches_are_the_model_features_and_a_function_of_seed_and_step(files):
    task = make_task(files)
    assert task.model_kwargs() == {"vocab_size": 600}
    assert (task.unit_name, task.units_per_example, task.reports_perplexity) == ("tokens", 64, True)
    steps = {s: task.train_batch(seed=0, step=s, batch_size=8) for s in range(1, 5)}
    b = steps[1]
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "encoder_input_tokens": ((8, 64), np.int32),
        "decoder_input_tokens": ((8, 14), np.int32),
        "decoder_target_tokens": ((8, 14), np.int32),
        "decoder_loss_weights": ((8, 14), np.float32),
    }
    np.testing.assert_array_equal(
        b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1]
    )
    np.testing.assert_array_equal(b["decoder_loss_weights"], b["decoder_target_tokens"] != 0)
    assert differ(steps[1], steps[2]) and differ(steps[2], steps[3])

    # A resumed run: a fresh object asked for step 3 first, then 4, sees what the
    # uninterrupted one saw; going back (a re-created pipeline) too.
    resumed = make_task(files)
    assert_same(resumed.train_batch(seed=0, step=3, batch_size=8), steps[3])
    assert_same(resumed.train_batch(seed=0, step=4, batch_size=8), steps[4])
    assert_same(task.train_batch(seed=0, step=2, batch_size=8), steps[2])
    assert differ(make_task(files).train_batch(seed=1, step=3, batch_size=8), steps[3])


def test_eval_batches_are_fixed_passes_over_the_split(files):
    task = make_task(files)
    tok = SentencePieceTokenizer(files["model"])
    first = [task.eval_batch("val", seed=0, index=i, batch_size=8) for i in range(3)]
    assert_same(make_task(files).eval_batch("val", seed=0, index=2, batch_size=8), first[2])
    # In order and unshuffled: example k is chunk k of the validation file's tokens.
    stream = token_stream(tok, Path(files["validation"]).read_text().splitlines())
    for i, batch in enumerate(first):
        for r in range(8):
            k = i * 8 + r
            got = sc.reconstruct(
                batch["encoder_input_tokens"][r], batch["decoder_target_tokens"][r], tok
            )
            np.testing.assert_array_equal(got, stream[k * CHUNK : (k + 1) * CHUNK])
    # Evaluation on the training split never shares the training batches' draws.
    assert differ(
        task.eval_batch("train", seed=0, index=0, batch_size=8),
        task.train_batch(seed=0, step=1, batch_size=8),
    )
    available = -(-len(stream) // CHUNK) // 8  # Whole batches of the chunks, the last short.
    with pytest.raises(ConfigError, match="train.eval_batches"):
        task.eval_batch("val", seed=0, index=available, batch_size=8)
    with pytest.raises(ConfigError, match="train.eval_splits"):
        task.eval_batch("dev", seed=0, index=0, batch_size=8)


def test_test_batches_are_a_fixed_pass_over_the_test_split(files):
    task = make_task(files)
    tok = SentencePieceTokenizer(files["model"])
    batch = task.eval_batch("test", seed=0, index=1, batch_size=4)
    assert_same(make_task(files).eval_batch("test", seed=0, index=1, batch_size=4), batch)
    assert differ(batch, task.eval_batch("val", seed=0, index=1, batch_size=4))
    stream = token_stream(tok, Path(files["test"]).read_text().splitlines())
    for r in range(4):
        got = sc.reconstruct(
            batch["encoder_input_tokens"][r], batch["decoder_target_tokens"][r], tok
        )
        np.testing.assert_array_equal(got, stream[(4 + r) * CHUNK : (5 + r) * CHUNK])
    # A registered Task without a test split: asking for one names the split.
    seqio_tasks.register_span_corruption_task(
        "amos_test_no_test_split",
        vocabulary_path=files["model"],
        text_files={"train": files["train"], "validation": files["validation"]},
    )
    looked_up = seqio_tasks.SeqioSpanCorruptionTask(
        "amos_test_no_test_split", inputs_length=64, targets_length=14
    )
    with pytest.raises(ConfigError, match="has no 'test' split"):
        looked_up.eval_batch("test", seed=0, index=0, batch_size=4)


def test_rows_split_the_global_batch_and_each_host_reads_its_shard(files):
    full = make_task(files, num_shards=2).train_batch(seed=0, step=3, batch_size=8)
    hosts = [make_task(files, num_shards=2) for _ in range(2)]
    parts = [
        h.train_batch(seed=0, step=3, batch_size=8, rows=slice(4 * p, 4 * p + 4))
        for p, h in enumerate(hosts)
    ]
    assert_same({k: np.concatenate([p[k] for p in parts]) for k in full}, full)
    assert differ(parts[0], parts[1])
    # A host builds the pipeline of its own shard only.
    assert [{key[4] for key in h._readers} for h in hosts] == [{0}, {1}]
    # Rows inside one shard (the trainer's one-row init sample) are those rows.
    assert_same(
        hosts[1].train_batch(seed=0, step=3, batch_size=8, rows=slice(5, 6)),
        {k: v[5:6] for k, v in full.items()},
    )

    # Shard p of the validation split holds every other line, from line p: a host
    # tokenizes and corrupts only its documents.
    tok = SentencePieceTokenizer(files["model"])
    lines = Path(files["validation"]).read_text().splitlines()
    for p, h in enumerate(hosts):
        batch = h.eval_batch("val", seed=0, index=0, batch_size=8, rows=slice(4 * p, 4 * p + 4))
        stream = token_stream(tok, lines[p::2])
        for r in range(4):
            got = sc.reconstruct(
                batch["encoder_input_tokens"][r], batch["decoder_target_tokens"][r], tok
            )
            np.testing.assert_array_equal(got, stream[r * CHUNK : (r + 1) * CHUNK])
    with pytest.raises(ConfigError, match="num_shards"):
        hosts[0].train_batch(seed=0, step=1, batch_size=7, rows=slice(0, 3))


def test_one_corpus_file_and_a_registered_task(files):
    """``corpus_path`` holds out the file's last lines, validation then test; with no
    source, ``name`` is looked up."""
    tok = SentencePieceTokenizer(files["model"])
    task = make_task(files, text_files=None, corpus_path=files["train"], validation_fraction=0.2)
    lines = [line for line in Path(files["train"]).read_text().splitlines() if line.strip()]
    n = int(len(lines) * 0.8)
    k = (len(lines) - n + 1) // 2
    for split, expected in [("val", lines[n : n + k]), ("test", lines[n + k :])]:
        batch = task.eval_batch(split, seed=0, index=0, batch_size=4)
        got = sc.reconstruct(
            batch["encoder_input_tokens"][0], batch["decoder_target_tokens"][0], tok
        )
        np.testing.assert_array_equal(got, token_stream(tok, expected)[:CHUNK])
    # The source's three splits: training as before (the first 80% of the lines), then the
    # held-out lines cut in two; disjoint, and together the whole file.
    source = seqio_tasks.text_file_splits(files["train"], 0.2)
    got = {
        split: [b.decode() for b in source.get_dataset(split, shuffle=False).as_numpy_iterator()]
        for split in ("train", "validation", "test")
    }
    assert got["train"] == lines[:n]
    assert got["validation"] == lines[n : n + k] and got["test"] == lines[n + k :]
    assert got["train"] + got["validation"] + got["test"] == lines

    looked_up = seqio_tasks.SeqioSpanCorruptionTask(TASK_NAME, inputs_length=64, targets_length=14)
    assert looked_up.seqio_task is task.seqio_task and looked_up.model_kwargs() == {
        "vocab_size": 600
    }
    assert_same(
        looked_up.train_batch(seed=0, step=2, batch_size=4),
        task.train_batch(seed=0, step=2, batch_size=4),
    )


def test_a_tfds_source_without_a_test_split_has_its_validation_cut_in_two(files, tmp_path):
    """As TfdsSource: validation's first half stays validation, its second half is test."""
    import tensorflow_datasets as tfds

    from tests.experiments.test_sources import TinyAmosText

    TinyAmosText(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    task = seqio_tasks.register_span_corruption_task(
        "amos_test_tfds_span_corruption",
        vocabulary_path=files["model"],
        tfds_name="tiny_amos_text:1.0.0",
        tfds_data_dir=str(tmp_path),
    )

    def texts(split: str) -> list[bytes]:
        ds = task.source.get_dataset(split, shuffle=False)
        return [x["text"] for x in ds.as_numpy_iterator()]

    assert len(texts("train")) == 60
    val, test = texts("validation"), texts("test")
    assert len(val) == len(test) == 6 and not set(val) & set(test)
    assert sorted(val + test) == [
        f"v{i:03d} a short document for the test.".encode() for i in range(12)
    ]


def test_configuration_errors_name_the_binding(files, tmp_path):
    where = "SeqioSpanCorruptionTask"
    with pytest.raises(
        ConfigError, match=rf"{where}\.vocabulary_path=.*missing\.model.*train_sentencepiece"
    ):
        make_task(files, vocabulary_path=str(tmp_path / "missing.model"))
    with pytest.raises(ConfigError, match=rf"{where}\.corpus_path=.*nope\.txt"):
        make_task(files, text_files=None, corpus_path=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="not corpus_path and text_files"):
        make_task(files, corpus_path=files["train"])
    with pytest.raises(ConfigError, match=rf"{where}\.text_files has no \['test', 'validation'\]"):
        make_task(files, text_files={"train": files["train"]})
    with pytest.raises(ConfigError, match=rf"{where}\.targets_length=10 is too short"):
        make_task(files, targets_length=10)
    with pytest.raises(ConfigError, match=rf"{where}\.name='amos_no_such_task'"):
        seqio_tasks.SeqioSpanCorruptionTask("amos_no_such_task")


def test_c4_data_file_names_the_missing_dataset(files, tmp_path):
    """The paper-scale gin file builds the task and stops at the unprepared C4."""
    import gin

    import launch.configurables  # noqa: F401

    gin.clear_config()
    try:
        gin.add_config_file_search_path(str(ROOT / "gin_configs"))
        gin.parse_config_files_and_bindings(
            ["train_defaults.gin", "data/c4_seqio_span.gin"],
            [f"DATA_DIR = '{tmp_path}'", f"TOKENIZER = '{files['model']}'"],
        )
        assert gin.query_parameter("%INPUTS_LENGTH") == 512
        with pytest.raises(ConfigError, match=rf"'c4/en'.*{tmp_path}"):
            gin.query_parameter("train.task").scoped_configurable_fn()
    finally:
        gin.clear_config()


@pytest.mark.slow
def test_t5_seqio_cpu_runs_learns_and_resumes_exactly(files, shakespeare, tmp_path, capsys):
    """launch/run.py end to end on experiments/t5_seqio_cpu.gin with Amos: the loss falls,
    and a run preempted after its step-10 checkpoint finishes as the uninterrupted one.
    Both runs are in this process (`run.main`), which has TensorFlow imported already."""
    from launch import run as run_cli
    from tests.launch.harness_helpers import metrics, numbers

    def run_py(model_dir: Path) -> str:
        capsys.readouterr()
        code = run_cli.main(
            [
                "--gin_file=experiments/t5_seqio_cpu.gin",
                "--optimizer=amos",
                f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.CORPUS_PATH='{shakespeare}'",
                f"--gin.TOKENIZER='{files['model']}'",
                "--gin.TRAIN_STEPS=20",
                "--gin.WARMUP_STEPS=5",
                "--gin.BATCH_SIZE=16",
                "--gin.LOG_EVERY=5",
                "--gin.EVAL_EVERY=10",
                "--gin.EVAL_BATCHES=2",
                "--gin.CHECKPOINT_EVERY=10",
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0, err[-3000:]
        return out

    first = tmp_path / "run"
    run_py(first)
    train = [r["loss"] for r in metrics(first) if r["split"] == "train" and "loss" in r]
    evals = [r["loss"] for r in metrics(first) if r["split"] == "eval"]
    assert len(train) == 4 and train[-1] < 0.9 * train[0], train
    assert len(evals) == 2 and evals[1] < evals[0], evals
    data = json.loads((first / "run.json").read_text())["data"]
    assert data["task"] == "SeqioSpanCorruptionTask", data

    # Preempted after the step-10 checkpoint: the later checkpoint and final.json lost.
    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")
    (resumed / "final.json").unlink()
    assert "resumed from checkpoint at step 10" in run_py(resumed)
    assert numbers(resumed) == numbers(first)
