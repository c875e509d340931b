"""Every benchmark runs at a smoke size, so that none can rot unnoticed (the full sizes are
run by hand: `make bench`, `benchmarks/harness_overhead.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import harness_overhead, optimizer_step
from tests.launch.harness_helpers import TINY


@pytest.mark.slow  # compiles eight optimizers' updates
def test_optimizer_step_prints_a_ratio_for_every_optimizer(capsys):
    assert optimizer_step.main(["--rounds", "2", "--hidden", "32", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(
            r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M
        )
    }
    assert {"adamw", "amos (momentum, factored)", "amos (no momentum, factored)"} <= set(rows)
    assert rows["adamw"][1] == "1.00" and rows["adamw"][3] == "1.000"
    # Factored Amos with momentum keeps one full-size slot against AdamW's two.
    assert 0.5 <= float(rows["amos (momentum, factored)"][3]) < 0.7


@pytest.mark.slow  # two short training loops, compiled twice
def test_harness_overhead_runs_both_loops_and_records_them(tmp_path: Path, capsys):
    out_file = tmp_path / "overhead.json"
    argv = ["--steps", "20", "--repeats", "1", "--out", str(out_file), *TINY]
    assert harness_overhead.main(argv) == 0
    assert re.search(r"^overhead: -?[\d.]+% \(goal < 5%\)$", capsys.readouterr().out, re.M)
    record = json.loads(out_file.read_text())
    assert record["steps"] == 20
    assert record["bare_steps_per_sec"][0] > 0 and record["harness_steps_per_sec"][0] > 0


@pytest.mark.slow  # Two runs, one on 8 virtual devices.
def test_device_count_drift_compares_one_and_eight_devices(tmp_path: Path):
    from benchmarks import device_count_drift

    out_file = tmp_path / "drift.md"
    tiny = [b for b in TINY if not b.startswith("--gin.LOG_EVERY")]  # it logs every step
    argv = ["--steps", "5", "--settings", "1", "--out", str(out_file), *tiny]
    assert device_count_drift.main(argv) == 0
    table = out_file.read_text()
    assert "| amos, AMOS_XI / 4 |" in table and "step 1 |" in table
    record = json.loads(out_file.with_suffix(".json").read_text())
    setting = record["settings"]["amos, AMOS_XI / 4"]
    # The quarter of the quickstart's xi = 0.053 reached the run as a binding.
    assert "--gin.AMOS_XI=0.01325" in setting["bindings"]
    assert setting["relative_loss_difference"]["1"] < 1e-5
