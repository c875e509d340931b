"""TensorBoard scalars without TensorFlow, plus the same numbers as JSON lines.

Event files are written with `tensorboard`'s record format and protos through a plain
file: its own EventFileWriter opens files through `tensorboard.compat.tf`, which imports
all of TensorFlow whenever it is installed (seconds per run). `tensorboard --logdir
PARENT` then compares runs.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

_file_counter = itertools.count()


class EventFile:
    """One TensorBoard event file in `directory`, named as TensorBoard expects."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        name = (
            f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_file_counter)}"
        )
        self.path = os.path.join(directory, name)
        self._records = RecordWriter(open(self.path, "wb"))
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class ScalarWriter:
    """Scalars into MODEL_DIR/<split>/events.* (TensorBoard) and MODEL_DIR/metrics.jsonl."""

    def __init__(self, model_dir: str, enabled: bool = True):
        self._dir = model_dir
        self._enabled = enabled
        self._writers: dict[str, EventFile] = {}
        self.jsonl_path = os.path.join(model_dir, "metrics.jsonl")

    def _writer(self, split: str) -> EventFile:
        if split not in self._writers:
            self._writers[split] = EventFile(os.path.join(self._dir, split))
        return self._writers[split]

    def restart_at(self, step: int, splits=("train", "eval")) -> None:
        """Drops records after `step` left by an interrupted run.

        metrics.jsonl is rewritten (without a half-written last line, left by a kill during
        an append); TensorBoard gets a SessionLog.START event, which makes it discard the
        orphaned points of larger steps from the earlier event files.
        """
        if not self._enabled:
            return
        if os.path.exists(self.jsonl_path):
            kept = [
                line.rstrip("\n") + "\n"
                for line, record in _records(self.jsonl_path)
                if record["step"] <= step
            ]
            tmp = self.jsonl_path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.jsonl_path)
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
            value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        )
        self._writer(split).add_event(
            event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        )
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _records(path: str) -> list[tuple[str, dict]]:
    """(line, record) of each line of a metrics.jsonl.

    A last line that does not parse is what a kill in the middle of an append leaves; it is
    no record and is skipped. A bad line before the last is real damage and raises.
    """
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return out


def read_metrics(model_dir: str) -> list[dict]:
    """All records of MODEL_DIR/metrics.jsonl, in order (a half-written last line skipped)."""
    return [record for _, record in _records(os.path.join(model_dir, "metrics.jsonl"))]
