"""The packed token stream of a streaming text source, addressed by example number.

This is how the paper-scale text tasks (``MaskedLMTask`` / ``SpanCorruptionTask`` over a
streaming TFDS source: ``wikipedia_mlm``, ``c4_span``) read their data. The examples are
those of ``text_tasks``' streaming scheme: the split's documents in file order, each
tokenized (masked LM: followed by its separator), concatenated into one stream per pass
over the split and cut into consecutive windows; a pass's last partial window is dropped
and the next pass starts again at the first document. Example ``k`` of the endless stream
is window ``k mod E`` of a pass (``E`` windows per pass). Without packing (masked LM,
``packing=False``) example ``k`` is the ``k mod D``-th non-empty document (``D`` of them).

Three things make it scale:

* **Seek, never replay.** A token index (``TokenIndex``: the number of tokens of every
  document of the split) maps example ``k`` to the documents that hold it and its offset in
  the first, so a batch reads and tokenizes only its own documents: step 150,000 costs what
  step 1 costs, and a resumed run starts at once. The index costs one pass of tokenization
  over the split, in parallel, once: it is saved (``index_dir``, by default next to the
  data) under a name that digests the source and the tokenizer, and every later run,
  seed, optimizer and host loads it. This is the deterministic-position design of Grain's
  index sampler (a record's position is a pure function of the step, nothing of the
  iterator is checkpointed) over an offline, reusable pass as seqio's cached tasks make
  one; only token counts are stored, not the tokens, and tokenization still runs while
  training.
* **Each host its rows.** ``rows`` (a host's slice of the global batch) are the only
  examples built; a host reads the other hosts' documents at most to skip them (without
  decoding, past a few thousand documents: the source seeks).
* **Parallel.** Rows are cut into runs of consecutive examples, one job each, built by a
  pool of worker processes (``concurrent.futures``) that tokenize the run's documents and
  apply the objective. They start with ``forkserver`` (Python 3.14's default on Linux):
  a plain fork would copy the locks of JAX's and TensorFlow's threads, and each worker
  forks from a server that imported this module (NumPy, sentencepiece) once. As with
  ``spawn``, a worker imports the program's main module (keep its top level light, as
  launch/run.py's is). Row ``r`` of batch
  ``index`` draws its masking or noise from its own Generator,
  ``np.random.default_rng([seed, stream, index, r])`` (as Grain and seqio seed each
  example), so a batch does not depend on the number of workers or hosts: parallel and
  serial builds, and any host's rows and the same rows of a one-host batch, are equal.

The in-memory text tasks (the CPU experiments' text files and generated text) do not use
this module: their batches are random windows drawn from one Generator per batch, as
recorded in results/.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import inspect
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from experiments.data.tokenizers import Tokenizer
from experiments.errors import ConfigError

Batch = dict[str, np.ndarray]
Batcher = Callable[[Sequence[np.ndarray], Sequence[np.random.Generator]], Batch]

INDEX_VERSION = 1  # Part of the index's file name: a new layout takes a new number.
# A job is at least this many rows: each job re-reads and re-tokenizes the document it
# starts in, which costs about one document per job.
MIN_ROWS_PER_JOB = 8
DOCUMENTS_PER_COUNT_JOB = 512  # Documents per job while the token index is built.
PROGRESS_EVERY = 8192  # Jobs (4M documents) between two progress lines of a build.
MAX_DEFAULT_WORKERS = 32
# A reader more than this many documents short of the next one it needs seeks (re-opens the
# source there) instead of reading on: a TFDS seek costs about as much as decoding this many.
SEEK_DISTANCE = 4096

_log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """Worker processes when none is configured: the host's cores less one (the training
    loop's), at most ``MAX_DEFAULT_WORKERS``; none (build in-process) on two cores or
    fewer, where a pool would only take the loop's core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        cores = os.cpu_count() or 1
    return min(MAX_DEFAULT_WORKERS, cores - 1) if cores > 2 else 0


def example_rngs(*, seed: int, stream: int, index: int, rows: range) -> list[np.random.Generator]:
    """One Generator per row of batch ``index`` of a stream (``experiments.task.batch_stream``
    numbers the streams): a row's draws depend on nothing else."""
    return [np.random.default_rng([seed, stream, index, r]) for r in rows]


# ---------------------------------------------------------------------------- the index
@dataclasses.dataclass(frozen=True)
class TokenIndex:
    """The tokens of each document of a split (``counts``, in file order) and where each
    starts in the packed stream of one pass (``offsets``; a separator follows every
    non-empty document when ``separator``)."""

    counts: np.ndarray
    separator: bool

    def __post_init__(self):
        counts = np.asarray(self.counts, np.int64)
        lengths = counts + (self.separator & (counts > 0))
        object.__setattr__(self, "offsets", np.concatenate([[0], np.cumsum(lengths)]))
        object.__setattr__(self, "nonempty", np.flatnonzero(counts))

    @property
    def num_documents(self) -> int:
        return len(self.counts)

    @property
    def num_tokens(self) -> int:
        """Tokens in one pass's stream, separators included."""
        return int(self.offsets[-1])

    def documents_of(self, first_token: int, num_tokens: int) -> tuple[int, int, int]:
        """``(start, stop, skip)``: documents ``start`` to ``stop - 1`` hold stream tokens
        ``first_token`` to ``first_token + num_tokens - 1``, the first of them ``skip``
        tokens into document ``start``."""
        offsets = self.offsets
        start = int(np.searchsorted(offsets, first_token, side="right")) - 1
        stop = int(np.searchsorted(offsets, first_token + num_tokens, side="left"))
        return start, stop, first_token - int(offsets[start])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80]


def index_file(index_dir: str, source_key: str, tokenizer_key: str, split: str) -> str:
    """Where the index of a split lives: the name digests the source, split and tokenizer
    (``source_key`` must change whenever the split's documents do)."""
    key = json.dumps(
        {"source": source_key, "tokenizer": tokenizer_key, "version": INDEX_VERSION},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(index_dir, f"{_slug(source_key.split('|')[0])}-{split}-{digest}.npy")


def load_counts(path: str) -> np.ndarray | None:
    """The saved token counts at ``path``, or None where there is no (readable) file."""
    file = epath.Path(path)
    if not file.exists():
        return None
    try:
        with file.open("rb") as f:
            return np.load(f)
    except (OSError, ValueError) as e:
        _log.warning("token index %s is unreadable (%s); building it again", path, e)
        return None


def save_counts(path: str, counts: np.ndarray) -> None:
    """Writes the counts to ``path`` through a temporary file, so that a reader (or another
    host writing the same file) never sees half of it; a directory that cannot be written
    only costs the next run a rebuild."""
    file = epath.Path(path)
    partial = epath.Path(f"{path}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as f:
            np.save(f, np.asarray(counts, np.int32))
        partial.rename(file)
    except OSError as e:
        _log.warning("token index not saved to %s (%s): the next run builds it again", path, e)


# ---------------------------------------------------------------------------- documents
def _supports_start(source: Any) -> bool:
    try:
        return "start" in inspect.signature(source.iter_documents).parameters
    except (TypeError, ValueError):
        return False


class DocumentCursor:
    """Documents of one split by number, read forward from where the last read ended; one
    further back or far ahead re-opens the source there (``iter_documents(split,
    start=k)`` where the source has it, else it reads from the first document on). The
    last document read is kept: the next run of rows usually starts inside it."""

    def __init__(self, source: Any, split: str):
        self.source, self.split = source, split
        self._seeks = _supports_start(source)
        self._it: Iterator[str] | None = None
        self._next = 0
        self._last: tuple[int, str] | None = None

    def _open(self, start: int) -> None:
        if self._seeks:
            self._it = iter(self.source.iter_documents(self.split, start=start))
        else:
            self._it = itertools.islice(self.source.iter_documents(self.split), start, None)
        self._next = start

    def read(self, start: int, stop: int) -> list[str]:
        """The texts of documents ``start`` to ``stop - 1``."""
        texts: list[str] = []
        if self._last is not None and self._last[0] == start and start < stop:
            texts.append(self._last[1])
            start += 1
        if start < stop:
            ahead = start - self._next
            if self._it is None or ahead < 0 or (self._seeks and ahead > SEEK_DISTANCE):
                self._open(start)
            for _ in itertools.islice(self._it, start - self._next):
                pass
            fresh = list(itertools.islice(self._it, stop - start))
            if len(fresh) < stop - start:
                raise ConfigError(
                    f"the {self.split} split of {getattr(self.source, 'name', 'the source')} "
                    f"ended before document {stop - 1}, which its token index counts: the "
                    f"data changed under the same name; delete the index file to rebuild it"
                )
            texts.extend(fresh)
            self._next = stop
        if texts:
            self._last = (stop - 1, texts[-1])
        return texts


# ---------------------------------------------------------------------------- building rows
@dataclasses.dataclass(frozen=True)
class RowsJob:
    """Rows ``row_start`` to ``row_stop - 1`` of batch ``index`` of stream ``stream``: built
    from ``texts`` (the documents holding them), the first row ``skip`` tokens into the
    first document's stream tokens."""

    texts: list[str]
    skip: int
    row_start: int
    row_stop: int
    seed: int
    stream: int
    index: int


@dataclasses.dataclass(frozen=True)
class RowBuilder:
    """What a worker needs to turn documents into rows: the tokenizer, the packing, and
    the objective's batcher (``mlm.MaskedLMBatcher``, ``span_corruption.SpanCorruptionBatcher``).
    Picklable: each worker process receives one when it starts."""

    tokenizer: Tokenizer
    window: int
    separator: int | None
    packing: bool
    batcher: Batcher

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per document (no separator)."""
        return np.array([len(ids) for ids in self.tokenizer.encode_batch(texts)], np.int32)

    def rows(self, job: RowsJob) -> Batch:
        n = job.row_stop - job.row_start
        docs = [ids for ids in self.tokenizer.encode_batch(job.texts) if len(ids)]
        if self.packing:
            sep = np.array([] if self.separator is None else [self.separator], np.int32)
            parts = [p for d in docs for p in (np.asarray(d, np.int32), sep)]
            flat = np.concatenate(parts) if parts else sep[:0]
            needed = job.skip + n * self.window
            if len(flat) < needed:
                raise ConfigError(
                    f"the token index does not match the documents ({len(flat)} tokens where "
                    f"it counts at least {needed}): the data or the tokenizer changed under "
                    f"the same name; delete the index file to rebuild it"
                )
            examples = list(flat[job.skip : needed].reshape(n, self.window))
        else:
            if len(docs) != n:
                raise ConfigError(
                    "the token index does not match the documents (an empty document where it "
                    "counts tokens); delete the index file to rebuild it"
                )
            examples = [np.asarray(d, np.int32) for d in docs]
        rows = range(job.row_start, job.row_stop)
        rngs = example_rngs(seed=job.seed, stream=job.stream, index=job.index, rows=rows)
        return self.batcher(examples, rngs)


# Worker processes hold their RowBuilder here (set once, by the pool's initializer).
_WORKER_BUILDER: RowBuilder | None = None


def _worker_init(builder: RowBuilder, owner: int) -> None:
    global _WORKER_BUILDER
    _WORKER_BUILDER = builder
    # Ctrl-C or a preemption's SIGTERM sent to the whole process group is the owner's to
    # handle (it saves a checkpoint first, then shuts the pool down)...
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    # ...and a worker whose owner is gone (killed outright) ends too. The owner, not the
    # parent: the fork server is the parent, and it lives as long as its children do.
    def exit_without_owner() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # Alive, or its number taken by another user's.
                pass

    threading.Thread(target=exit_without_owner, name="owner-watch", daemon=True).start()


def _worker_rows(job: RowsJob) -> Batch:
    assert _WORKER_BUILDER is not None
    return _WORKER_BUILDER.rows(job)


def _worker_count(texts: list[str]) -> np.ndarray:
    assert _WORKER_BUILDER is not None
    return _WORKER_BUILDER.count(texts)


def concatenate(parts: Sequence[Batch]) -> Batch:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------- the stream
class PackedStream:
    """Batches of a streaming source's splits by example number (see the module doc).

    ``splits`` maps the harness' split names to the source's; ``source_key(split)`` (the
    source's ``index_key``, where it has one) names a split's documents for the saved
    index, which lives under ``index_dir`` (None: not saved, built by every new instance).
    ``num_workers``: worker processes (0 builds in this process; None:
    ``default_num_workers()``), started at the first batch.
    """

    def __init__(
        self,
        source: Any,
        splits: Mapping[str, str],
        builder: RowBuilder,
        *,
        num_workers: int | None = None,
        index_dir: str | None = None,
    ):
        if num_workers is not None and (isinstance(num_workers, bool) or num_workers < 0):
            raise ConfigError(f"num_workers={num_workers!r} must be None or an integer >= 0")
        self.source = source
        self.splits = dict(splits)
        self.builder = builder
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.index_dir = index_dir
        self._indexes: dict[str, TokenIndex] = {}
        self._cursors: dict[str, DocumentCursor] = {}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.RLock()  # One batch at a time: the cursors move.

    # Workers.
    def _executor(self) -> concurrent.futures.ProcessPoolExecutor | None:
        if self.num_workers == 0:
            return None
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            # What the server imports before it forks workers (its default, ['__main__'],
            # and this module); a server already running keeps its own list.
            context.set_forkserver_preload(["__main__", __name__])
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=context,
                initializer=_worker_init,
                initargs=(self.builder, os.getpid()),
            )
        return self._pool

    def _map(self, fn: Callable, local_fn: Callable, items: Iterator, in_flight: int) -> Iterator:
        """``fn`` over ``items`` in order on the pool (at most ``in_flight`` queued, so an
        endless or huge ``items`` is never read ahead), or ``local_fn`` here."""
        pool = self._executor()
        if pool is None:
            yield from map(local_fn, items)
            return
        pending: list[concurrent.futures.Future] = []
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= in_flight:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stops the worker processes (a later batch starts them again)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    # The index.
    def _source_key(self, split: str) -> str | None:
        key = getattr(self.source, "index_key", None)
        return key(self.splits[split]) if callable(key) else None

    def index(self, split: str) -> TokenIndex:
        """The split's token index: loaded, or built (and saved) on first use."""
        with self._lock:
            if split not in self._indexes:
                self._indexes[split] = self._load_or_build(split)
            return self._indexes[split]

    def _load_or_build(self, split: str) -> TokenIndex:
        separator = self.builder.separator is not None
        source_key = self._source_key(split)
        path = None
        if self.index_dir and source_key:
            path = index_file(
                self.index_dir, source_key, self.builder.tokenizer.fingerprint(), split
            )
            counts = load_counts(path)
            if counts is not None:
                return TokenIndex(counts, separator)
        # Visible without any logging set up: the first run's first step waits for this.
        name = f"{getattr(self.source, 'name', type(self.source).__name__)} ({self.splits[split]})"
        _log.warning(
            "building the token index of %s: one tokenization pass over it, %d workers%s",
            name,
            self.num_workers,
            f"; saved to {path}" if path else "",
        )
        started = time.perf_counter()
        texts = self.source.iter_documents(self.splits[split])
        chunks = iter(lambda: list(itertools.islice(texts, DOCUMENTS_PER_COUNT_JOB)), [])
        parts = []
        in_flight = 4 * max(1, self.num_workers)
        for part in self._map(_worker_count, self.builder.count, chunks, in_flight):
            parts.append(part)
            if len(parts) % PROGRESS_EVERY == 0:
                _log.warning("... %d documents counted", len(parts) * DOCUMENTS_PER_COUNT_JOB)
        counts = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        _log.warning(
            "token index of %s: %d documents, %d tokens, in %.1f s",
            name,
            len(counts),
            int(counts.sum()),
            time.perf_counter() - started,
        )
        if path:
            save_counts(path, counts)
        return TokenIndex(counts, separator)

    def examples_per_pass(self, split: str) -> int:
        index = self.index(split)
        if self.builder.packing:
            return index.num_tokens // self.builder.window
        return len(index.nonempty)

    # Batches.
    def _check(self, split: str) -> int:
        per_pass = self.examples_per_pass(split)
        if per_pass == 0:
            what = (
                f"fewer tokens than one example needs ({self.builder.window})"
                if self.builder.packing
                else "no documents"
            )
            name = getattr(self.source, "name", type(self.source).__name__)
            raise ConfigError(f"the {self.splits[split]} split of {name} has {what}")
        return per_pass

    def _jobs(
        self, split: str, *, first: int, rows: range, seed: int, stream: int, index: int
    ) -> Iterator[RowsJob]:
        per_pass = self._check(split)
        token_index = self.index(split)
        cursor = self._cursors.setdefault(split, DocumentCursor(self.source, self.splits[split]))
        size = max(MIN_ROWS_PER_JOB, math.ceil(len(rows) / max(1, self.num_workers)))
        r = rows.start
        while r < rows.stop:
            position = (first + r) % per_pass  # Within its pass.
            stop = min(rows.stop, r + size, r + per_pass - position)  # One pass per job.
            n = stop - r
            if self.builder.packing:
                window = self.builder.window
                start, end, skip = token_index.documents_of(position * window, n * window)
                texts = cursor.read(start, end)
            else:
                docs = token_index.nonempty[position : position + n]
                start, end, skip = int(docs[0]), int(docs[-1]) + 1, 0
                texts = [
                    t for t, c in zip(cursor.read(start, end), token_index.counts[start:end]) if c
                ]
            yield RowsJob(texts, skip, r, stop, seed, stream, index)
            r = stop

    def batch(
        self,
        split: str,
        *,
        seed: int,
        stream: int,
        index: int,
        first: int,
        batch_size: int,
        rows: slice | None = None,
    ) -> Batch:
        """Rows ``rows`` (all when None) of the batch of ``batch_size`` examples from
        example number ``first`` on; row ``r`` is example ``first + r``, its randomness
        from ``(seed, stream, index, r)``."""
        rows_range = range(*(rows or slice(None)).indices(batch_size))
        if rows_range.step != 1 or not rows_range:
            raise ValueError(f"rows={rows} must be a non-empty slice of consecutive rows")
        with self._lock:
            jobs = self._jobs(
                split, first=first, rows=rows_range, seed=seed, stream=stream, index=index
            )
            parts = list(self._map(_worker_rows, self.builder.rows, jobs, 2 * self.num_workers))
        return concatenate(parts)
