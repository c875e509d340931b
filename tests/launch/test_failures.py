"""Configuration mistakes stop launch/run.py before training, naming the culprit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launch import run as run_cli
from tests.launch.harness_helpers import run, run_cmd

CASES = [
    (["--gin_file=experiments/no_such_file.gin"], "no_such_file.gin"),
    (["--gin.TRAIN_STEP=5"], "unknown gin macro 'TRAIN_STEP'"),
    (["--gin.train.no_such_setting=1"], "no_such_setting"),
    (["--gin.no_such_configurable.x=1"], "no_such_configurable"),
    (["--gin.BATCH_SIZE=0"], "BATCH_SIZE must be a positive integer"),
    (["--gin.gpt_model.num_heads=3"], "not divisible by num_heads=3"),
    (
        ["--gin.CORPUS_PATH='/no/such/corpus.txt'", "--gin_file=experiments/nanogpt_cpu.gin"],
        "corpus file not found: '/no/such/corpus.txt' (gin binding CORPUS_PATH)",
    ),
]


@pytest.mark.parametrize(("extra", "message"), CASES)
def test_bad_configuration_fails_before_training(tmp_path: Path, capsys, extra, message):
    # In-process (main() is what the script runs) to keep the suite fast; the subprocess
    # test below checks the exit status end to end.
    d = tmp_path / "run"
    files = [a for a in extra if a.startswith("--gin_file")]
    argv = run_cmd(d, *[a for a in extra if a not in files], steps=20, tiny=not files)[2:]
    if files:
        argv = [*files, *argv[1:]]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert not (d / "metrics.jsonl").exists()


# Issue 11's probes: each used to train nothing silently, or to exit 1 with a traceback.
AMOS_CASES = [
    (["--gin.AMOS_XI=0.0"], "amos_optimizer.xi (AMOS_XI) must be a finite number in (0, inf)"),
    (["--gin.AMOS_XI=-0.01"], "amos_optimizer.xi (AMOS_XI) must be a finite number"),
    (["--gin.AMOS_XI=-1e999"], "got -inf"),
    (["--gin.AMOS_XI=1e999"], "got inf"),
    (
        ["--gin.AMOS_XI='abc'"],
        "amos_optimizer.xi (AMOS_XI) must be a finite number in (0, inf), got 'abc'",
    ),
    (["--gin.AMOS_BETA=1.5"], "amos_optimizer.beta (AMOS_BETA) must be a finite number in [0, 1)"),
    (["--gin.BATCH_SIZE=["], "gin binding 'BATCH_SIZE = ['"),
    (["--gin.BATCH_SIZE=)"], "gin binding 'BATCH_SIZE = )'"),
    (
        ["--gin.amos_optimizer.gains={'c_proj/kernel$': -2.0}"],
        "gain for variable 'h_0/attn/c_proj/kernel' is -2.0",
    ),
]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.parametrize(("extra", "message"), AMOS_CASES)
def test_bad_values_are_one_line_naming_the_binding(tmp_path: Path, capsys, extra, message):
    d = tmp_path / "run"
    argv = run_cmd(d, *extra, optimizer="amos", steps=20)[2:]
    assert run_cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("ERROR: configuration: ") and message in line, line
    assert not (d / "metrics.jsonl").exists()


def test_a_negative_gain_names_the_binding_too(tmp_path: Path, capsys):
    argv = run_cmd(
        tmp_path / "run", "--gin.amos_optimizer.gains={'kernel$': -1.0}", optimizer="amos"
    )
    assert run_cli.main(argv[2:]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "gain for variable" in line and "amos_optimizer.gains" in line, line


def test_verbose_adds_the_traceback(tmp_path: Path, capsys):
    argv = run_cmd(tmp_path / "run", "--gin.AMOS_XI=0.0", "--verbose", optimizer="amos")
    assert run_cli.main(argv[2:]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "AMOS_XI" in err.splitlines()[-1], err[-2000:]


def _unwritable_dir(tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):  # Not root: permissions apply.
        return locked / "run"
    try:  # Root ignores permissions; /sys refuses new entries even to root.
        os.mkdir("/sys/amos_probe")
    except OSError:
        return Path("/sys/amos_run")
    os.rmdir("/sys/amos_probe")
    pytest.skip("no directory here refuses writes to this user")


@pytest.mark.parametrize("kind", ["file", "under_file", "not_writable"])
def test_an_unusable_model_dir_is_named(tmp_path: Path, capsys, kind):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    model_dir = {
        "file": a_file,
        "under_file": a_file / "run",
        "not_writable": _unwritable_dir(tmp_path) if kind == "not_writable" else None,
    }[kind]
    argv = run_cmd(model_dir, steps=20)[2:]
    assert run_cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    want = {
        "file": "is a file, not a directory",
        "under_file": "which is a file",
        "not_writable": "is not writable",
    }[kind]
    assert f"MODEL_DIR '{model_dir}'" in line and want in line, line


def test_a_binary_corpus_names_the_file(tmp_path: Path, capsys):
    corpus = tmp_path / "corpus.bin"
    corpus.write_bytes(bytes(range(256)) * 64)
    argv = [
        "--gin_file=experiments/nanogpt_cpu.gin",
        *run_cmd(tmp_path / "run", f"--gin.CORPUS_PATH='{corpus}'", steps=20, tiny=False)[3:],
    ]
    assert run_cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"corpus file '{corpus}' (gin binding CORPUS_PATH) is not UTF-8 text" in line, line


def test_an_experiment_without_an_optimizer_names_the_choices(tmp_path: Path, capsys):
    argv = ["--gin_file=experiments/quickstart.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no optimizer: pass --optimizer=adamw|amos" in err, err


def test_exit_status_and_message_in_a_subprocess(tmp_path: Path):
    d = tmp_path / "run"
    p = run(run_cmd(d, "--gin.EVAL_EVRY=5", steps=20))
    assert p.returncode == 2
    assert "unknown gin macro 'EVAL_EVRY'" in p.stderr
    assert not d.exists()


def test_gin_includes_resolve_past_namespace_folders_and_name_a_missing_one(
    tmp_path: Path, monkeypatch
):
    """A `data/` and a `models/` folder without __init__.py in the working directory (and
    so on sys.path) are namespace packages; gin's own lookup of package files crashed on
    them (TypeError) while resolving `include 'data/...'`. A missing include is an error
    naming it and the file that includes it."""
    from experiments.errors import ConfigError

    for folder in ("data", "models"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_cli.load_gin(["experiments/rope_cpu.gin", "optimizers/amos.gin"], [], [])
    assert run_cli.gin.query_parameter("%TRAIN_STEPS") == 600
    # The working directory comes first, as in gin: a local file of the same name wins.
    (tmp_path / "mine.gin").write_text("include 'experiments/rope_cpu.gin'\nTRAIN_STEPS = 7\n")
    run_cli.load_gin(["mine.gin", "optimizers/amos.gin"], [], [])
    assert run_cli.gin.query_parameter("%TRAIN_STEPS") == 7
    (tmp_path / "broken.gin").write_text("TRAIN_STEPS = 3\ninclude 'models/no_such.gin'\n")
    with pytest.raises(ConfigError, match=r"'models/no_such.gin' \(included by broken.gin\)"):
        run_cli.load_gin(["broken.gin"], [], [])
    (tmp_path / "loop.gin").write_text("include 'loop.gin'\n")
    with pytest.raises(ConfigError, match="loop.gin includes itself"):
        run_cli.load_gin(["loop.gin"], [], [])
    run_cli.gin.clear_config()
