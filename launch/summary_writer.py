"""TensorBoard scalars without TensorFlow, plus the same numbers as JSON lines.

Event files are written with `tensorboard`'s record format and protos through a plain
file: its own EventFileWriter opens files through `tensorboard.compat.tf`, which imports
all of TensorFlow whenever it is installed (seconds per run). `tensorboard --logdir
PARENT` then compares runs.

Every file goes through `etils.epath.Path` (as orbax and tfds do), so MODEL_DIR may be a
Cloud Storage path (`gs://bucket/run`, through gcsfs) as well as a local one. Object stores
cannot append, and an object appears only once its upload is complete: there metrics.jsonl
is rewritten whole at each record (`append_text`), an event file whole at each flush
(`EventFile`), and a JSON file is written in place (one upload is already all or nothing).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from experiments.errors import ConfigError
from launch.trainer import run_folder

_file_counter = itertools.count()

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
    """Whether `path` is on the local filesystem (not a `scheme://` cloud path)."""
    return "://" not in os.fspath(path)


def join(directory: PathLike, *parts: str) -> str:
    """`directory/parts...` as a string: local paths made absolute (messages name them so),
    cloud paths (`gs://...`) joined as they are."""
    path = epath.Path(directory).joinpath(*parts)
    return os.path.abspath(os.fspath(path)) if is_local(path) else os.fspath(path)


def append_text(path: PathLike, text: str) -> None:
    """Appends `text` to the file `path` (created if missing). A local file is opened in
    append mode; an object store (GCS, S3) cannot append, so there the file is read and
    rewritten whole, which a run's metrics.jsonl (thousands of lines) affords."""
    target = epath.Path(path)
    if is_local(path):
        with target.open("a") as f:
            f.write(text)
        return
    old = target.read_text() if target.exists() else ""
    target.write_text(old + text)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Writes `text` to `path` so that a reader (or a kill) never sees half a file: locally
    through a temporary file renamed over it; on an object store directly, since an object
    is replaced only by a complete upload (and a rename there is a copy and a delete)."""
    target = epath.Path(path)
    if not is_local(path):
        target.write_text(text)
        return
    tmp = target.parent / (target.name + run_folder.TMP_SUFFIX)
    try:
        tmp.write_text(text)
        tmp.replace(target)
    finally:  # A failed write (a full disk) leaves no temporary file behind.
        tmp.unlink(missing_ok=True)


def remove_leftover_temporaries(directory: PathLike) -> list[str]:
    """Deletes the temporary files of `write_text_atomic` in `directory` that a process
    killed between writing and renaming left behind (call it holding the run's lock);
    returns their names."""
    if not is_local(directory) or not epath.Path(directory).is_dir():
        return []
    left = sorted(epath.Path(directory).glob(run_folder.TMP_PATTERN))
    for path in left:
        path.unlink(missing_ok=True)
    return [path.name for path in left]


def write_json(path: PathLike, obj: Any) -> None:
    """`obj` as indented JSON at `path`, atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def read_json(path: PathLike) -> Any:
    return json.loads(epath.Path(path).read_text())


class EventFile:
    """One TensorBoard event file in `directory`, named as TensorBoard expects.

    On an object store (gs://) the records are kept in memory and the whole file is
    uploaded at each `flush` that has new ones: an object being written appears only when
    it is closed, so a running job's points would otherwise show only at its end (and a
    killed job's never). A run's event file is small (hundreds of bytes per record).
    """

    def __init__(self, directory: PathLike):
        epath.Path(directory).mkdir(parents=True, exist_ok=True)
        name = (
            f"{run_folder.EVENT_FILE_PREFIX}{time.time():010.0f}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_file_counter)}"
        )
        self.path = os.fspath(epath.Path(directory) / name)
        self._local = is_local(self.path)
        self._buffer = None if self._local else io.BytesIO()
        sink = epath.Path(self.path).open("wb") if self._local else self._buffer
        self._records = RecordWriter(sink)
        self._unsaved = False
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._unsaved = True

    def flush(self) -> None:
        self._records.flush()
        if self._buffer is not None and self._unsaved:
            epath.Path(self.path).write_bytes(self._buffer.getvalue())
        self._unsaved = False

    def close(self) -> None:
        self.flush()
        self._records.close()


# TensorBoard draws one chart per tag, with a line per split: a tag shared by the train
# and eval records must mean the same quantity in both. The train record's `loss` is the
# training objective as normalized (a sum for span corruption, sum / sqrt(count) for masked
# LM), not comparable with the eval loss per target; its `token_loss` is. So TensorBoard
# shows the train `token_loss` as `loss` and the objective as `objective`; metrics.jsonl
# keeps the record's own names.
TENSORBOARD_TAGS = {"train": {"loss": "objective", "token_loss": "loss"}}


def tensorboard_tag(split: str, name: str) -> str:
    """The TensorBoard tag of scalar `name` of a `split` record (`TENSORBOARD_TAGS`)."""
    return TENSORBOARD_TAGS.get(split, {}).get(name, name)


class ScalarWriter:
    """Scalars into MODEL_DIR/<split>/events.* (TensorBoard, tags by `tensorboard_tag`) and
    MODEL_DIR/metrics.jsonl."""

    def __init__(self, model_dir: PathLike, enabled: bool = True):
        self._dir = os.fspath(model_dir)
        self._enabled = enabled
        self._writers: dict[str, EventFile] = {}
        self.jsonl_path = os.fspath(epath.Path(model_dir) / run_folder.METRICS_JSONL)

    def _writer(self, split: str) -> EventFile:
        if split not in self._writers:
            self._writers[split] = EventFile(epath.Path(self._dir) / split)
        return self._writers[split]

    def restart_at(self, step: int, splits=run_folder.TENSORBOARD_DIRS) -> None:
        """Drops records after `step` left by an interrupted run.

        metrics.jsonl is rewritten (without a half-written last line, left by a kill during
        an append); TensorBoard gets a SessionLog.START event, which makes it discard the
        orphaned points of larger steps from the earlier event files.
        """
        if not self._enabled:
            return
        if epath.Path(self.jsonl_path).exists():
            kept = [
                line.rstrip("\n") + "\n"
                for line, record in _records(self.jsonl_path, keep_going=True)
                if record["step"] <= step
            ]
            write_text_atomic(self.jsonl_path, "".join(kept))
        for split in splits:
            event = event_pb2.Event(
                wall_time=time.time(),
                step=step + 1,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            )
            self._writer(split).add_event(event)

    def write(self, split: str, step: int, scalars: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=tensorboard_tag(split, k), simple_value=v)
                for k, v in values.items()
            ]
        )
        self._writer(split).add_event(
            event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        )
        append_text(
            self.jsonl_path, json.dumps({"step": int(step), "split": split, **values}) + "\n"
        )

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _records(path: PathLike, *, keep_going: bool = False) -> list[tuple[str, dict]]:
    """(line, record) of each line of a metrics.jsonl.

    A last line that does not parse is what a kill in the middle of an append leaves; it is
    no record and is skipped. A bad line before the last is real damage (a disk fault, an
    editor): a ConfigError naming the file and the line, or with `keep_going` a warning,
    the line set aside in `<path>.damaged` and the other records returned.
    """
    # Lines as iterating the file gives them (split at "\n" only).
    lines = [line for line in io.StringIO(epath.Path(path).read_text()) if line.strip()]
    out, damaged = [], []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record or "split" not in record:
                raise json.JSONDecodeError("not a record with a step and a split", line, 0)
            out.append((line, record))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                continue
            if not keep_going:
                raise ConfigError(
                    f"{path}: line {i + 1} is not a metrics record ({e.msg}); a resumed run "
                    "sets such lines aside, or repair the file"
                ) from None
            damaged.append((i + 1, line))
    if damaged:
        aside = f"{os.fspath(path)}{run_folder.DAMAGED_SUFFIX}"
        append_text(aside, "".join(line.rstrip("\n") + "\n" for _, line in damaged))
        print(
            f"WARNING: {path}: lines {[n for n, _ in damaged]} are not metrics records; "
            f"moved to {aside}",
            file=sys.stderr,
            flush=True,
        )
    return out


def read_metrics(model_dir: PathLike) -> list[dict]:
    """All records of MODEL_DIR/metrics.jsonl, in order (a half-written last line skipped)."""
    return [record for _, record in _records(epath.Path(model_dir) / run_folder.METRICS_JSONL)]
