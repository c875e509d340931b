"""run.py --dry_run's compiled memory and FLOPs, --dry_run_fit's search for the largest
batch per device that fits, and the REMAT / COMPUTE_DTYPE bindings of the paper files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import gin
import pytest

from launch import run as run_cli
from launch import trainer as train_lib
from tests.launch.harness_helpers import PYTHON, REPO, TINY, env_with, run

QUICKSTART = ["--gin_file=experiments/quickstart.gin", *TINY]
GiB = 2**30


# ---------------------------------------------------------------- the search
def _brute_force(need, budget: int, limit: int) -> int:
    return max((k for k in range(1, limit + 1) if need(k) <= budget), default=0)


NEEDS = {
    "affine": lambda k: 10_000 + 2_500 * k,
    "convex": lambda k: 10_000 + 2_500 * k + 40 * k * k,
    "concave": lambda k: 10_000 + int(30_000 * math.sqrt(k)),
    "stairs": lambda k: 10_000 + 9_000 * (k // 7),  # Flat stretches: no slope to follow.
}


@pytest.mark.parametrize("shape", sorted(NEEDS))
def test_largest_fitting_is_the_brute_force_answer_in_few_calls(shape: str):
    need = NEEDS[shape]
    for limit in (1, 7, 64, 500):
        for budget in (9_999, 12_500, 40_000, 333_333, 10**9):
            for start in (1, 5, 64, 256):
                calls = []
                got = train_lib.largest_fitting(
                    lambda k, calls=calls: calls.append(k) or need(k),
                    budget,
                    start=start,
                    limit=limit,
                )
                assert got == _brute_force(need, budget, limit), (limit, budget, start)
                assert len(calls) == len(set(calls))  # Never the same k twice.
                # Of order log2 (2 x (log2 of the range) + a few), far fewer when affine.
                bound = 6 if shape == "affine" else 2 * math.ceil(math.log2(limit + 1)) + 6
                assert len(calls) <= bound, (limit, budget, start, calls)


def test_largest_fitting_reuses_what_is_known():
    need = NEEDS["affine"]  # 12,500 at k = 1; k = 132 is the last under 340,000.
    calls = []
    known = {k: need(k) for k in (100, 200)}
    got = train_lib.largest_fitting(
        lambda k: calls.append(k) or need(k), 340_000, start=1, limit=1000, known=known
    )
    assert got == 132 and not {100, 200} & set(calls) and len(calls) <= 2, calls


# ---------------------------------------------------------------- the flags
def test_memory_sizes_parse_with_their_units():
    assert run_cli.parse_bytes("16GiB") == 16 * GiB
    assert run_cli.parse_bytes("40GB") == 40 * 10**9
    assert run_cli.parse_bytes(" 1.5 tib ") == int(1.5 * 2**40)
    assert run_cli.parse_bytes("512MiB") == 512 * 2**20
    for bad in ("16", "16 gigs", "GiB", "-1GiB", "0GiB", ""):
        with pytest.raises(ValueError, match="memory size"):
            run_cli.parse_bytes(bad)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dry_run_fit=16 gigs"], "argument --dry_run_fit: '16 gigs' is not a memory size"),
        (["--dry_run_fit=32GiB,40"], "argument --dry_run_fit: '40' is not a memory size"),
        (
            ["--dry_run_fit=32GiB", "--dry_run_compile=off"],
            "--dry_run_fit compiles the train step: not with --dry_run_compile=off",
        ),
    ],
)
def test_a_bad_fit_flag_exits_2_naming_it(flags: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli.main([*QUICKSTART, "--optimizer=amos", *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_fit_implies_the_dry_run():
    args, _ = run_cli.parse_args(["--gin_file=x.gin", "--dry_run_fit=32GiB,40GB"])
    assert args.dry_run and args.dry_run_fit == [32 * GiB, 40 * 10**9]


def test_an_unknown_remat_is_a_configuration_error_naming_it(capsys):
    argv = [*QUICKSTART, "--optimizer=amos", "--dry_run", "--gin.REMAT='half'"]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ERROR: configuration:" in err and "remat (REMAT) 'half' is none of" in err, err


PAPER_FILES = ["bert_base", "bert_large", "t5_small", "t5_base", "t5_large"]
PAPER_FILES += ["rope_base", "rope_large", "rpe_base"]


@pytest.mark.parametrize("experiment", PAPER_FILES)
def test_paper_files_show_remat_and_compute_dtype_at_the_papers_settings(experiment: str):
    text = (REPO / "gin_configs" / "experiments" / f"{experiment}.gin").read_text()
    assert re.search(r"^COMPUTE_DTYPE = 'float32'$", text, re.M)
    assert re.search(r"^REMAT = 'none'$", text, re.M)
    try:
        run_cli.load_gin([f"experiments/{experiment}.gin", "optimizers/amos.gin"], [], [])
        model = "t5_model" if experiment.startswith("t5") else "bert_model"
        assert gin.query_parameter(f"{model}.remat").scoped_selector == "REMAT/gin.macro"
        assert (
            gin.query_parameter("train.compute_dtype").scoped_selector == "COMPUTE_DTYPE/gin.macro"
        )
    finally:
        gin.clear_config()


# ---------------------------------------------------------------- the compile
def _rows(out: str) -> dict[str, int]:
    """The per-device byte rows of the compiled-step report."""
    return {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(
            r"^  (arguments|outputs|aliased|temporaries|code|total)\s+([\d,]+)", out, re.M
        )
    }


def test_dry_run_prints_xlas_memory_of_the_compiled_step(tmp_path: Path, capsys):
    argv = [*QUICKSTART, "--optimizer=amos", "--dry_run", f"--gin.MODEL_DIR='{tmp_path / 'r'}'"]
    assert run_cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["total"] == (
        rows["code"] + rows["arguments"] + rows["outputs"] - rows["aliased"] + rows["temporaries"]
    )
    # The donated state is what is aliased: the parameters, Amos' slots and the int32 step.
    state = int(
        re.search(r"^per device, parameters \+ amos slots: ([\d,]+)", out, re.M)[1].replace(",", "")
    )
    assert rows["aliased"] == state + 4
    # The arguments are that state and the batch: 8 rows of 16 int32 inputs and targets.
    assert rows["arguments"] == rows["aliased"] + 2 * 8 * 16 * 4
    assert rows["temporaries"] > 0
    assert re.search(r"batch 8, 8 per device; COMPUTE_DTYPE 'float32', REMAT 'none'", out)
    flops = float(re.search(r"FLOPs per step and device: ([\d.e+]+)", out)[1])
    # At least the forward and backward matmuls: 6 x parameters x tokens (8 x 16).
    params = int(re.search(r"^parameters: ([\d,]+)", out, re.M)[1].replace(",", ""))
    assert flops > 6 * params * 8 * 16
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # a dozen compiles, on two virtual devices
def test_dry_run_fit_finds_the_largest_batch_per_device_that_fits(tmp_path: Path):
    budget = 3 * 2**20
    cmd = [
        PYTHON,
        str(REPO / "launch" / "run.py"),
        *QUICKSTART,
        "--optimizer=amos",
        f"--dry_run_fit={budget}B",
    ]
    p = run(cmd, env=env_with(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "global batches in multiples of 2, 2 batch shards" in out
    assert "batch 8, 4 per device" in out
    # Each compile is reported on stderr as it finishes: (arm, global batch) -> bytes.
    compiles = {
        (m[1], int(m[2])): (int(m[3]), float(m[4]) * {"KiB": 2**10, "MiB": 2**20}[m[5]])
        for m in re.finditer(
            r"\((\w+): batch (\d+), (\d+) per device, needs ([\d.]+) (KiB|MiB);", p.stderr
        )
    }
    fits = {}
    for m in re.finditer(
        r"^  (amos|adamw)(?: \(--optimizer\))?\s+(\d+) per device \(global (\d+), 2 shards\): "
        r"([\d.]+) MiB; (\d+) per device needs ([\d.]+) MiB  \[(\d+) compiles\]$",
        out,
        re.M,
    ):
        arm, per_device, global_batch = m[1], int(m[2]), int(m[3])
        fits[arm] = per_device
        assert global_batch == 2 * per_device
        # The largest: it fits, and one more row per device does not.
        assert float(m[4]) * 2**20 <= budget * 1.0001 and int(m[5]) == per_device + 1
        assert float(m[6]) * 2**20 > budget * 0.9999
        assert compiles[arm, global_batch][0] == per_device
        assert int(m[7]) <= 8  # A few compiles, not a scan over batch sizes.
    assert set(fits) == {"amos", "adamw"}, out
    # AdamW's second full-size slot leaves less room for activations.
    assert fits["amos"] >= fits["adamw"]
