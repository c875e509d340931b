"""benchmarks/memory_fit.py and benchmarks/gpu_check.sh at smoke size (the full sizes are run
by hand: memory_fit.py on any machine, gpu_check.sh on a GPU), and the notebook that
renders memory_fit.py's results."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from benchmarks import memory_fit
from launch.sharding import format_bytes
from notebooks.execute import execute
from tests.launch.harness_helpers import REPO, TINY, env_with

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_rejects_what_it_does_not_know():
    p = subprocess.run(
        ["bash", str(SCRIPT), "--fast"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 2 and "unknown argument '--fast'" in p.stderr
    p = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "--smoke" in p.stdout


@pytest.mark.slow  # the three checks at tiny size: a dozen compiles, four processes
def test_gpu_check_smoke_runs_every_check_and_records_them(tmp_path: Path):
    p = subprocess.run(
        ["bash", str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env_with(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["mode"] == "smoke" and record["git"]["revision"]
    assert record["machine"]["backend"] == "cpu" and record["packages"]["jax"]
    memory = record["memory"]
    # On the CPU the "device" is the CPU: the dry run's estimate, made in another process,
    # is the compile of this one, byte for byte.
    assert memory["cpu_estimate"] == {
        **memory["device_compile"],
        "compile_seconds": memory["cpu_estimate"]["compile_seconds"],
    }
    assert memory["ratios"]["cpu_estimate_to_device_compile"] == 1.0
    assert memory["measured"]["peak_bytes_in_use"] is None  # No memory stats on a CPU.
    (base, other) = memory["variants"]
    assert (base["compute_dtype"], base["remat"]) == ("float32", "none")
    assert (other["compute_dtype"], other["remat"]) == ("bfloat16", "full")
    # Full remat recomputes the blocks' forward pass: more FLOPs.
    assert other["device_compile"]["flops"] > base["device_compile"]["flops"]
    steps = record["step_times"]
    assert [(r["optimizer"], r["compute_dtype"]) for r in steps] == [
        ("amos", "float32"),
        ("adamw", "bfloat16"),
    ]
    assert all(r["steps_per_sec"] > 0 and r["tokens_per_sec"] > 0 for r in steps)
    two = record["two_processes"]
    assert (two["process_count"], two["device_count"], two["exit_codes"]) == (2, 2, [0, 0])
    assert two["same_losses"] and two["max_relative_difference"] <= two["tolerance"]
    assert set(two["losses_two_processes"]) == set(two["losses_one_process"])
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## Memory per device", "## Step times", "## Two processes"):
        assert heading in md


def _table(markdown: str, heading: str) -> list[dict[str, str]]:
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


@pytest.mark.slow  # a dozen compiles of the tiny GPT
def test_memory_fit_records_each_arms_fit_and_the_notebook_shows_them(tmp_path: Path):
    results = tmp_path / "results"
    argv = ["--experiments", "quickstart", "--devices", "small=2MiB,big=4MiB"]
    argv += ["--variants", "8", "--settings", "float32:none,float32:full"]
    argv += ["--out_dir", str(results / "memory"), *TINY]
    assert memory_fit.main(argv) == 0
    record = json.loads((results / "memory" / "quickstart.json").read_text())
    assert record["backend"] == "cpu" and record["git"]["revision"]
    for arm in ("amos", "adamw"):
        a = record["arms"][arm]
        compiles = {c["batch_size"]: c["total_bytes"] for c in a["compiles"]}
        for device, budget in record["devices"].items():
            fit = a["fits"][device]
            n = fit["per_device_batch"]
            # The largest batch that fits: it was compiled and fits, and one more does not.
            assert compiles[n] == fit["total_bytes"] <= budget < compiles[n + 1], (arm, device)
            assert fit["next_per_device_batch"] == n + 1
    assert record["arms"]["amos"]["slot_bytes"] < record["arms"]["adamw"]["slot_bytes"]
    none, full = record["variants"]
    assert none["remat"] == "none" and full["remat"] == "full" and full["flops"] > none["flops"]

    out = tmp_path / "out"
    execute(
        REPO / "notebooks" / "memory_fit.py",
        env={"AMOS_RESULTS": str(results), "AMOS_NOTEBOOK_OUT": str(out)},
        timeout=300,
    )
    md = (out / "memory_fit.md").read_text()
    rows = {r["optimizer"]: r for r in _table(md, "## Amos against AdamW")}
    for arm in ("amos", "adamw"):
        fits = record["arms"][arm]["fits"]
        for device in ("small", "big"):
            fit = fits[device]
            expected = f"{fit['per_device_batch']} ({format_bytes(fit['total_bytes'])})"
            assert rows[arm][device] == expected
    ratio = rows["Amos / AdamW"]
    for device in ("small", "big"):
        amos, adamw = (
            record["arms"][a]["fits"][device]["per_device_batch"] for a in ("amos", "adamw")
        )
        assert ratio[device] == f"{amos / adamw:.2f}"
    variants = _table(md, "## COMPUTE_DTYPE and REMAT")
    assert [v["REMAT"] for v in variants] == ["none", "full"]
    assert variants[1]["FLOPs / float32 none"] == f"{full['flops'] / none['flops']:.3f}"
    assert re.search(r"- `quickstart`: `.*memory_fit.py --experiments quickstart", md)
