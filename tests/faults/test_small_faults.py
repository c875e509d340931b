"""The smaller faults: a zero block size, --optimizer without an experiment, a kill that
left a temporary record behind, a MODEL_DIR with a space in the `done:` line."""

from __future__ import annotations

import shlex

import pytest

from launch import run as run_cli
from tests.launch.harness_helpers import run_cmd


def test_a_zero_block_size_is_a_configuration_error(tmp_path, capsys):
    assert run_cli.main(run_cmd(tmp_path / "run", "--gin.BLOCK_SIZE=0", steps=10)[2:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ERROR: configuration:") and "block_size=0" in err[-1]
    assert not (tmp_path / "run").exists()


def test_optimizer_without_an_experiment_names_the_missing_file(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli.parse_args(["--optimizer=amos"])
    assert exit_.value.code == 2
    assert "--optimizer=amos needs an experiment: --gin_file=" in capsys.readouterr().err


@pytest.mark.slow
def test_leftover_temporaries_go_and_the_done_line_quotes_the_directory(tmp_path, capsys):
    d = tmp_path / "with space's" / "run"
    d.mkdir(parents=True)
    (d / "run.json.tmp").write_text('{"half": ')  # A kill between writing and renaming.
    args = [a for a in run_cmd(d, steps=10)[2:] if not a.startswith("--gin.MODEL_DIR=")]
    assert run_cli.main([*args, f"--gin.MODEL_DIR={str(d)!r}"]) == 0
    assert not list(d.glob("*.tmp"))
    done = [x for x in capsys.readouterr().out.splitlines() if x.startswith("done:")]
    assert done == [f"done: {d} (tensorboard --logdir {shlex.quote(str(d))})"]


def test_an_amos_xi_far_from_the_guidance_is_warned_about(capsys):
    base = ["--gin_file=experiments/quickstart.gin", "--optimizer=amos", "--dry_run"]
    base.append("--dry_run_compile=off")
    assert run_cli.main([*base, "--gin.AMOS_XI=100"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: AMOS_XI=100 is 1875x above the authors' guidance 1/sqrt(N) = 0.0533" in err
    assert "N = 5625 training examples / 16 per batch = 352 batches" in err
    assert run_cli.main(base) == 0
    assert "AMOS_XI" not in capsys.readouterr().err  # The experiment's own xi: no warning.


def test_a_binding_that_nothing_reads_is_an_error(capsys):
    # The corpus file's binding of CharTextTask.corpus_path is overridden by the
    # generated-text file included after it: CORPUS_PATH would be ignored.
    files = ["--gin_file=experiments/nanogpt_cpu.gin", "--gin_file=data/generated_char.gin"]
    dry = ["--optimizer=adamw", "--dry_run", "--dry_run_compile=off"]
    assert run_cli.main([*files, *dry, "--gin.CORPUS_PATH='/missing.txt'"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "nothing in this configuration reads CORPUS_PATH" in err
    # Another arm's knob is let through: compare.py gives every arm the same bindings.
    assert run_cli.main([*files, *dry, "--gin.AMOS_XI=0.01"]) == 0
