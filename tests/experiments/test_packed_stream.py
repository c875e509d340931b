"""experiments/data/packed_stream.py through the streaming text tasks: a host builds only
its rows, any step is a seek, worker processes build what one process builds, and the
token index is saved, reused and checked."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from experiments.data import packed_stream
from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
from experiments.data.tokenizers import SentencePieceTokenizer
from experiments.data.train_sentencepiece import train_sentencepiece
from experiments.errors import ConfigError


class ListSource:
    """A streaming source over lists of documents: what a TFDS source offers (numbered
    documents in a fixed order, a seek, a key for the saved index), without TFDS. It
    records where every read starts (None: a read without `start`, as the index pass)."""

    in_memory = False

    def __init__(self, splits: dict[str, list[str]], name: str = "paragraphs"):
        self.splits, self.name = splits, name
        self.reads: list[tuple[str, int | None]] = []

    def iter_documents(self, split: str, start: int | None = None):
        self.reads.append((split, start))
        return iter(self.splits[split][start or 0 :])

    def index_key(self, split: str) -> str:
        return f"{self.name}|{split}|{len(self.splits[split])}"


@pytest.fixture(scope="module")
def paragraphs(shakespeare: Path) -> dict[str, list[str]]:
    """Tiny Shakespeare's speeches, in order: 90% train, then validation and test."""
    docs = [p for p in shakespeare.read_text().split("\n\n") if p.strip()]
    n = int(len(docs) * 0.9)
    return {"train": docs[:n], "validation": docs[n:-400], "test": docs[-400:]}


@pytest.fixture(scope="module")
def spm_model(shakespeare: Path, tmp_path_factory) -> str:
    prefix = tmp_path_factory.mktemp("spm") / "shakespeare"
    return train_sentencepiece([str(shakespeare)], str(prefix), vocab_size=2000)


def mlm_task(paragraphs, spm_model, **kwargs) -> MaskedLMTask:
    kwargs.setdefault("num_workers", 0)
    source = ListSource(paragraphs)
    return MaskedLMTask(source, SentencePieceTokenizer(spm_model), seq_length=64, **kwargs)


def span_task(paragraphs, spm_model, **kwargs) -> SpanCorruptionTask:
    kwargs.setdefault("num_workers", 0)
    source = ListSource(paragraphs)
    return SpanCorruptionTask(source, SentencePieceTokenizer(spm_model), 64, 16, **kwargs)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def one_pass(tok, texts: list[str]) -> np.ndarray:
    """The masked-LM stream of one pass: every document's ids, then [SEP]."""
    return np.concatenate([np.array(tok.encode(t) + [tok.sep_id], np.int32) for t in texts])


def unmasked(batch: dict) -> np.ndarray:
    """A masked-LM batch's original ids, without [CLS]."""
    return np.where(batch["weights"] > 0, batch["targets"], batch["input_ids"])[:, 1:]


@pytest.mark.parametrize("make", [mlm_task, span_task], ids=["mlm", "span"])
def test_a_hosts_rows_are_those_rows_of_the_one_host_batch(make, paragraphs, spm_model):
    task = make(paragraphs, spm_model)
    hosts, batch_size = 4, 16
    for step in (1, 2, 977):
        whole = task.train_batch(seed=3, step=step, batch_size=batch_size)
        for host in range(hosts):
            rows = slice(host * 4, host * 4 + 4)
            part = task.train_batch(seed=3, step=step, batch_size=batch_size, rows=rows)
            assert_same(part, {k: v[rows] for k, v in whole.items()})
    whole = task.eval_batch("val", seed=0, index=2, batch_size=batch_size)
    rows = slice(8, 12)
    part = task.eval_batch("val", seed=0, index=2, batch_size=batch_size, rows=rows)
    assert_same(part, {k: v[rows] for k, v in whole.items()})
    # The randomness is per row and per seed; the windows do not depend on the seed.
    other = task.train_batch(seed=4, step=977, batch_size=batch_size)
    key = "input_ids" if "input_ids" in other else "encoder_input_tokens"
    assert not np.array_equal(other[key], task.train_batch(seed=3, step=977, batch_size=16)[key])


def test_any_step_is_a_seek_and_follows_the_stream(paragraphs, spm_model):
    task = mlm_task(paragraphs, spm_model)
    tok, batch_size = task.tokenizer, 8
    run = [task.train_batch(seed=0, step=s, batch_size=batch_size) for s in range(1, 6)]
    fresh = mlm_task(paragraphs, spm_model)
    assert_same(fresh.train_batch(seed=0, step=4, batch_size=batch_size), run[3])

    stream = one_pass(tok, paragraphs["train"])
    window = 63  # 64 less [CLS]
    per_pass = len(stream) // window
    assert fresh.stream.examples_per_pass("train") == per_pass
    np.testing.assert_array_equal(
        np.concatenate([unmasked(b) for b in run]).ravel(), stream[: 5 * batch_size * window]
    )
    # Step 150,000 on a fresh task (its index built first): one seek, no replay.
    far = mlm_task(paragraphs, spm_model)
    far.stream.index("train")
    far.source.reads.clear()
    started = time.perf_counter()
    batch = far.train_batch(seed=0, step=150_000, batch_size=batch_size)
    assert time.perf_counter() - started < 1.0
    first = (149_999 * batch_size) % per_pass
    if first + batch_size <= per_pass:  # Not across the end of a pass.
        expected = stream[first * window : (first + batch_size) * window]
        np.testing.assert_array_equal(unmasked(batch).ravel(), expected)
    (split, start), *_ = far.source.reads
    assert split == "train" and start > 0  # Opened where the batch begins.


def test_windows_wrap_at_the_end_of_a_pass(paragraphs, spm_model):
    task = mlm_task(paragraphs, spm_model)
    stream = one_pass(task.tokenizer, paragraphs["train"])
    per_pass, batch_size = task.stream.examples_per_pass("train"), 6
    step = per_pass // batch_size + 1  # Its rows straddle the end of the first pass.
    assert (step - 1) * batch_size < per_pass < step * batch_size
    batch = task.train_batch(seed=1, step=step, batch_size=batch_size)
    # The rows past the end are the first windows again, with their own masks.
    positions = [((step - 1) * batch_size + r) % per_pass for r in range(batch_size)]
    expected = np.stack([stream[p * 63 : (p + 1) * 63] for p in positions])
    np.testing.assert_array_equal(unmasked(batch), expected)
    rows = slice(2, 6)
    part = task.train_batch(seed=1, step=step, batch_size=batch_size, rows=rows)
    assert_same(part, {k: v[rows] for k, v in batch.items()})


def test_unpacked_masked_lm_takes_one_document_per_example(paragraphs, spm_model):
    task = mlm_task(paragraphs, spm_model, packing=False)
    batch = task.train_batch(seed=0, step=2, batch_size=4)
    tok = task.tokenizer
    for row, text in zip(unmasked(batch), paragraphs["train"][4:8]):
        ids = tok.encode(text)[:62] + [tok.sep_id]
        np.testing.assert_array_equal(row[: len(ids)], ids)
    part = task.train_batch(seed=0, step=2, batch_size=4, rows=slice(1, 3))
    assert_same(part, {k: v[1:3] for k, v in batch.items()})


@pytest.mark.parametrize("make", [mlm_task, span_task], ids=["mlm", "span"])
def test_worker_processes_build_what_one_process_builds(make, paragraphs, spm_model):
    serial = make(paragraphs, spm_model)
    parallel = make(paragraphs, spm_model, num_workers=2)
    try:
        assert parallel.stream.index("train").counts.tolist() == (
            serial.stream.index("train").counts.tolist()
        )
        for step in (1, 2, 5000):
            assert_same(
                parallel.train_batch(seed=0, step=step, batch_size=40),  # 2 jobs of 20 rows
                serial.train_batch(seed=0, step=step, batch_size=40),
            )
        assert_same(
            parallel.eval_batch("test", seed=0, index=1, batch_size=24, rows=slice(8, 24)),
            serial.eval_batch("test", seed=0, index=1, batch_size=24, rows=slice(8, 24)),
        )
    finally:
        parallel.close()


def test_the_index_is_saved_reused_and_checked(paragraphs, spm_model, tmp_path: Path):
    task = mlm_task(paragraphs, spm_model, index_dir=str(tmp_path))
    batch = task.train_batch(seed=0, step=7, batch_size=4)
    assert ("train", None) in task.source.reads  # The pass that counts the tokens.
    (saved,) = tmp_path.glob("paragraphs-train-*.npy")
    assert np.load(saved).tolist() == task.stream.index("train").counts.tolist()

    again = mlm_task(paragraphs, spm_model, index_dir=str(tmp_path))
    assert_same(again.train_batch(seed=0, step=7, batch_size=4), batch)
    assert ("train", None) not in again.source.reads  # Loaded, not counted again.

    # Other text under the same name: the saved counts no longer fit, and the error says so.
    changed = {**paragraphs, "train": [p[: len(p) // 3] for p in paragraphs["train"]]}
    stale = MaskedLMTask(
        ListSource(changed),
        SentencePieceTokenizer(spm_model),
        seq_length=64,
        num_workers=0,
        index_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="delete the index file"):
        for step in range(1, 50):
            stale.train_batch(seed=0, step=step, batch_size=16)


def test_a_split_too_short_for_one_example_is_a_configuration_error(spm_model):
    source = ListSource({"train": ["a few words"], "validation": [""], "test": ["x"]})
    task = MaskedLMTask(source, SentencePieceTokenizer(spm_model), 64, num_workers=0)
    with pytest.raises(ConfigError, match="train split of paragraphs has fewer tokens"):
        task.train_batch(seed=0, step=1, batch_size=2)
    unpacked = MaskedLMTask(
        source, SentencePieceTokenizer(spm_model), 64, packing=False, num_workers=0
    )
    with pytest.raises(ConfigError, match="validation split of paragraphs has no documents"):
        unpacked.eval_batch("val", seed=0, index=0, batch_size=2)
    with pytest.raises(ConfigError, match="num_workers=-1"):
        MaskedLMTask(source, SentencePieceTokenizer(spm_model), 64, num_workers=-1)


def test_token_index_positions():
    index = packed_stream.TokenIndex(np.array([3, 0, 5, 2]), separator=True)
    # Stream: doc 0 (3 + sep), doc 1 nothing, doc 2 (5 + sep), doc 3 (2 + sep): 4, 4, 10, 13.
    assert index.offsets.tolist() == [0, 4, 4, 10, 13]
    assert index.num_tokens == 13 and index.nonempty.tolist() == [0, 2, 3]
    assert index.documents_of(0, 4) == (0, 1, 0)
    assert index.documents_of(2, 4) == (0, 3, 2)  # Skips the empty document's slot.
    assert index.documents_of(4, 6) == (2, 3, 0)
    assert index.documents_of(9, 4) == (2, 4, 5)


_ORPHAN_SCRIPT = """
import time
from experiments.data.mlm import MaskedLMBatcher
from experiments.data.packed_stream import PackedStream, RowBuilder
from experiments.data.tokenizers import ByteTokenizer


class Source:
    def iter_documents(self, split, start=0):
        return iter([f"document {i} " * 20 for i in range(200)][start:])


if __name__ == "__main__":
    tok = ByteTokenizer()
    batcher = MaskedLMBatcher(tok, 32, True, {})
    stream = PackedStream(
        Source(), {"train": "train"}, RowBuilder(tok, 31, tok.sep_id, True, batcher),
        num_workers=2,
    )
    stream.batch("train", seed=0, stream=0, index=1, first=0, batch_size=32)
    time.sleep(2)  # Both workers past their start (the second may start with its job).
    print(*[p.pid for p in stream._pool._processes.values()], flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # A zombie has ended; only its parent has to reap it.


@pytest.mark.slow  # a second Python process, and seconds of waiting for the workers
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_outlive_neither_their_parent_nor_a_group_sigterm(tmp_path: Path):
    """Workers ignore SIGTERM and Ctrl-C (the parent decides when to stop: a preempted run
    saves first), and end by themselves when the parent is killed outright."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_running(p) for p in pids)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        assert all(_running(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(p) for p in pids)
