"""experiments/task.py: the whole-split windows every held-out split read whole uses."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.errors import ConfigError
from experiments.task import whole_split_num_batches, whole_split_num_windows, whole_split_windows


def test_whole_split_windows_tile_the_split_and_pad_the_last_batch():
    # 23 tokens, windows of 5 every 4: starts 0, 4, ..., 16 (5 windows); 20 + 5 > 23.
    assert whole_split_num_windows(23, window=5, stride=4) == 5
    assert whole_split_num_batches(23, window=5, stride=4, batch_size=2) == 3
    starts, valid = whole_split_windows(23, window=5, stride=4, index=2, batch_size=2, name="val")
    np.testing.assert_array_equal(starts, [16, 0])
    np.testing.assert_array_equal(valid, [True, False])
    starts, valid = whole_split_windows(23, window=5, stride=4, index=0, batch_size=2, name="val")
    np.testing.assert_array_equal(starts, [0, 4])
    assert valid.all()
    assert whole_split_num_windows(4, window=5, stride=5) == 0


def test_past_the_end_names_the_split():
    with pytest.raises(
        ConfigError, match="test: 5 examples make 3 batches of 2; evaluation batch 3"
    ):
        whole_split_windows(23, window=5, stride=4, index=3, batch_size=2, name="test")


def test_the_protocol_declares_every_member_the_trainer_reads():
    """Every `task.<name>` the harness reads (launch/, bar the run record's description of
    whatever a task exposes) is a member of `Task`, with a default in `ObjectiveTask`
    where it is optional."""
    import re
    import typing
    from pathlib import Path

    from experiments.task import ObjectiveTask, Task

    root = Path(__file__).resolve().parents[2] / "launch"
    read = set()
    for path in root.rglob("*.py"):
        if path.name != "data_description.py":
            read |= set(re.findall(r"(?<![/\w])task\.([a-z_]+)\b", path.read_text()))
    declared = set(typing.get_type_hints(Task)) | {n for n in vars(Task) if not n.startswith("_")}
    assert read and read <= declared, read - declared
    for optional in ("state_collections", "eval_whole_split", "num_train_examples"):
        assert hasattr(ObjectiveTask, optional)
    with pytest.raises(ConfigError, match="draws its evaluation batches"):
        ObjectiveTask().eval_num_batches("val", 8)
