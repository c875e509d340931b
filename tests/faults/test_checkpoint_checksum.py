"""A checkpoint whose data changed after it was written (a flipped bit, one momentum
value 4x off) is caught by the checksums saved beside it, treated as damaged (moved
aside) and an older checkpoint is used; the resumed run ends as an uninterrupted one."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch import trainer as train_lib
from tests.launch.harness_helpers import EVERY_20, build_trainer

pytestmark = pytest.mark.slow


def test_a_changed_momentum_value_is_caught_and_an_older_checkpoint_used(tmp_path, capsys):
    trainer = build_trainer(tmp_path / "unused", *EVERY_20)
    reference = tmp_path / "reference"
    assert trainer.replace(model_dir=str(reference)).run()["finished"]
    d = tmp_path / "run"
    shutil.copytree(reference, d)
    (d / "final.json").unlink()
    # Step 60's first Adam moment, one value 4x off, written back in place under the same
    # metadata: orbax itself restores it without complaint.
    state_dir = d / "checkpoints" / "60" / "state"
    restored = ocp.StandardCheckpointer().restore(state_dir, trainer.abstract_state)
    leaves, treedef = jax.tree_util.tree_flatten(restored)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(restored)]
    target = next(i for i, path in enumerate(paths) if ".mu" in path and leaves[i].size > 8)
    changed = np.array(leaves[target])
    changed.flat[3] = changed.flat[3] * 4 + 1e-3
    leaves[target] = jax.device_put(changed, leaves[target].sharding)
    shutil.rmtree(state_dir)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(state_dir, jax.tree_util.tree_unflatten(treedef, leaves))
    checkpointer.wait_until_finished()
    capsys.readouterr()

    result = trainer.replace(model_dir=str(d)).run()

    err = capsys.readouterr().err
    assert "checkpoints/60 cannot be restored (ValueError: checksum mismatch: 1 array(s)" in err
    assert "falling back to the checkpoint of step 40" in err
    assert (d / "checkpoints" / "60.corrupt").is_dir()
    assert result["finished"]
    final, want = (json.loads((p / "final.json").read_text())["eval"] for p in (d, reference))
    timing = {"eval_seconds", "steps_per_sec", "train_time_s"}
    assert {k: v for k, v in final.items() if k not in timing} == {
        k: v for k, v in want.items() if k not in timing
    }


def test_checksums_see_every_value_and_its_place():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    swapped = x.copy()
    swapped[0, 0], swapped[0, 1] = x[0, 1], x[0, 0]
    flipped = x.copy()
    flipped.view(np.uint32)[2, 3] ^= 1 << 20  # One bit.
    sums = [
        [list(map(int, pair)) for pair in jax.jit(train_lib.state_checksums)({"n": 7, "w": w})]
        for w in (x, swapped, flipped)
    ]
    assert sums[0][0] == [7, 7]  # The integer 7: its bits, at position 1.
    assert sums[1][1][0] == sums[0][1][0] and sums[1][1][1] != sums[0][1][1]  # Swapped.
    assert sums[2][1][0] != sums[0][1][0]  # A flipped bit.
