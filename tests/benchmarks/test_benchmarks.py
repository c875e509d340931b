"""Every benchmark runs at a smoke size, so that none can rot unnoticed (the full sizes are
run by hand: `make bench`, `benchmarks/harness_overhead.py`). `device_count_drift.py` runs
in tests/launch/test_device_count.py, whose 300-step check it makes."""

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


@pytest.mark.slow  # trains a sentencepiece model, starts worker processes
def test_input_pipeline_prints_rates_and_resume_times_and_records_them(tmp_path: Path, capsys):
    from benchmarks import input_pipeline

    argv = ["--smoke", "--workers", "2", "--write", "--results_dir", str(tmp_path)]
    assert input_pipeline.main(argv) == 0
    out = capsys.readouterr().out
    rows = re.findall(
        r"^\| (BERT-base|T5-base) .*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M
    )
    assert [r[0] for r in rows] == ["BERT-base", "T5-base"]
    for _, ratio, resume, _ in rows:
        assert float(ratio) > 0 and 0 < float(resume) < 60
    assert (tmp_path / "input_pipeline.md").read_text().strip() == out.strip()
    record = json.loads((tmp_path / "input_pipeline.json").read_text())
    bert, t5 = record["rows"]
    # A v4-8 at 50% MFU: BERT-base's 256 x 512 step takes about 0.17 s, T5-base's 0.09 s.
    assert 150 < bert["v4_8_step_ms"] < 200 and 75 < t5["v4_8_step_ms"] < 110
    assert bert["parallel_examples_per_s"] > 0 and t5["index_documents"] > 0
