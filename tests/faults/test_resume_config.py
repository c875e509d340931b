"""A resume compares its configuration with the recorded one (launch/resume_check.py):
a change to anything but the horizon, logging and layout exits 2 naming the bindings
and writes nothing; --allow_config_change goes on and the records keep both; a horizon
below the step reached is refused; compare.py and sweep.py refuse to reuse a run made
with other bindings."""

from __future__ import annotations

import json

import pytest

from launch import resume_check
from launch.study import compare
from tests.launch.harness_helpers import run, run_cmd

RECORDED = """# Macros:
# ==========
SEED = 0
TRAIN_STEPS = 200
MODEL_DIR = '/old/place'

# Parameters for train:
# ==========
train.eval_splits = ['val',
    'test']
adamw_optimizer.horizon_steps = None
gpt_model.width = 32
"""


def test_only_bindings_that_change_the_computation_count():
    moved = RECORDED.replace("/old/place", "/new/place").replace("200", "250")
    moved = moved.replace("horizon_steps = None", "horizon_steps = 200")
    assert resume_check.compare(RECORDED, moved, 200).changed == {}
    reseeded = RECORDED.replace("SEED = 0", "SEED = 7").replace("width = 32", "width = 48")
    change = resume_check.compare(RECORDED, reseeded, 200)
    assert change.changed == {"SEED": ("0", "7"), "gpt_model.width": ("32", "48")}
    assert resume_check.parse_operative_config(RECORDED)["train.eval_splits"] == ("['val', 'test']")
    with pytest.raises(Exception, match=r"SEED: 0 -> 7, gpt_model.width: 32 -> 48"):
        resume_check.check_resume(RECORDED, reseeded, 200, 250, "/d", allow=False)
    assert resume_check.check_resume(RECORDED, reseeded, 200, 250, "/d", allow=True) == change
    with pytest.raises(Exception, match="TRAIN_STEPS=100 is below step 200"):
        resume_check.check_resume(RECORDED, RECORDED, 200, 100, "/d", allow=True)


def test_compare_and_sweep_refuse_a_run_made_with_other_bindings(tmp_path, capsys):
    d = tmp_path / "seed_0"
    d.mkdir()
    cmd = compare.train_command("quickstart", "amos", 0, d, ["--gin.AMOS_XI=0.01"])
    (d / "run.json").write_text(json.dumps({"argv": cmd[2:]}))
    compare.check_reuse(d, cmd, "compare")  # The same request: reused.
    other = compare.train_command("quickstart", "amos", 0, d, ["--gin.AMOS_XI=0.02"])
    with pytest.raises(SystemExit) as refused:
        compare.check_reuse(d, other, "sweep")
    assert refused.value.code == 2
    assert f"[sweep] ERROR: {d} was run with another configuration" in capsys.readouterr().err


@pytest.mark.slow
def test_a_resume_with_another_seed_is_refused_or_recorded(tmp_path):
    d = tmp_path / "run"
    every_20 = ["--gin.EVAL_EVERY=20", "--gin.CHECKPOINT_EVERY=20"]
    assert run(run_cmd(d, *every_20, steps=40), timeout=120).returncode == 0
    before = {name: (d / name).read_text() for name in ("config.gin", "run.json")}
    reseeded = run(run_cmd(d, *every_20, "--gin.SEED=7", steps=60), timeout=120)
    assert reseeded.returncode == 2
    assert "SEED: 0 -> 7" in reseeded.stderr.strip().splitlines()[-1]
    assert {name: (d / name).read_text() for name in before} == before  # Nothing written.
    shorter = run(run_cmd(d, *every_20, steps=20), timeout=120)
    assert shorter.returncode == 2 and "TRAIN_STEPS=20 is below step 40" in shorter.stderr
    allowed = run(
        run_cmd(d, *every_20, "--gin.SEED=7", "--allow_config_change", steps=60), timeout=120
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "SEED = 0" in (d / "config.before_step_40.gin").read_text()
    assert "SEED = 7" in (d / "config.gin").read_text()
    changes = json.loads((d / "run.json").read_text())["config_changes"]
    assert [(c["step"], c["changed"]) for c in changes] == [(40, {"SEED": ["0", "7"]})]
    longer = run(run_cmd(d, *every_20, "--gin.SEED=7", steps=80), timeout=120)
    assert longer.returncode == 0, longer.stderr[-3000:]  # A longer horizon is safe.
    assert json.loads((d / "final.json").read_text())["step"] == 80
