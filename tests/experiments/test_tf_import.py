"""TensorFlow is kept off the GPUs on every path that reads data through it."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from experiments.data import tf_import

REPO = Path(__file__).resolve().parents[2]


def test_tensorflow_is_imported_only_through_tf_import():
    """A module importing tensorflow, tensorflow_datasets or seqio (which imports both) on
    its own could touch TensorFlow's devices before the GPUs are hidden."""
    direct = re.compile(r"^\s*(import|from)\s+(tensorflow|tensorflow_datasets|seqio)\b", re.M)
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("amos", "experiments", "launch", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "tf_import.py" and direct.search(path.read_text())
    ]
    assert offenders == []


def test_the_gpus_are_hidden_from_tensorflow(monkeypatch):
    calls = []

    def set_visible_devices(devices, kind):
        calls.append((list(devices), kind))
        if len(calls) > 1:  # As TensorFlow does once its devices are initialized.
            raise RuntimeError("Visible devices cannot be modified after being initialized")

    fake = types.SimpleNamespace(
        config=types.SimpleNamespace(set_visible_devices=set_visible_devices)
    )
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    assert tf_import.tensorflow() is fake
    assert tf_import.tensorflow() is fake  # Too late to hide them: no error.
    assert calls == [([], "GPU"), ([], "GPU")]
