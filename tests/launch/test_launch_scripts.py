"""The cloud launch tools (launch/cloud/): the exact commands of their dry runs, the
quoting of run.py's arguments through every shell layer (checked by running the generated
shell text with bash against stand-in programs), and the real-run branches against a fake
gcloud/sbatch. Nothing here needs a network, gcloud, a TPU or a GPU."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.cloud import common, gpu_node, slurm, tpu_vm

REPO = Path(__file__).resolve().parents[2]
PIN = re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
TPU = ["--name", "amos-tpu", "--zone", "us-central2-b"]
# What the user's shell hands over for --gin.MODEL_DIR="'gs://bucket/run'", plus values a
# shell would mangle if a layer of quoting were missing: spaces, $, quotes, a glob.
RUN_ARGS = [
    "--gin_file=experiments/t5_base.gin",
    "--optimizer=amos",
    "--gin.MODEL_DIR='gs://bucket/run'",
    "--gin.ADAMW_SCHEDULE='cosine decay'",
    '--gin_bindings=train.note = "$HOME it\'s *"',
]


def dry(monkeypatch, capsys, tool, argv: list[str]) -> list[str]:
    """Runs a tool's main() in-process with subprocess forbidden; returns the printed
    lines (commands and # comments)."""

    def forbidden(*a, **k):
        raise AssertionError(f"a dry run ran a command: {a}")

    with monkeypatch.context() as m:
        m.setattr(subprocess, "run", forbidden)
        m.setattr(subprocess, "Popen", forbidden)
        assert tool.main(argv) == 0
    return capsys.readouterr().out.splitlines()


def commands(lines: list[str]) -> list[list[str]]:
    return [shlex.split(line) for line in lines if not line.startswith("#")]


def remote(cmd: list[str]) -> str:
    """The shell text of a `gcloud ... ssh --command TEXT` line."""
    return cmd[cmd.index("--command") + 1]


def usage_error(capsys, tool, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        tool.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def argv_recorder(path: Path, out: str, sleep: float = 0.0) -> Path:
    """A stand-in program that writes its argv (and a few variables) as JSON to `out`."""
    return executable(
        path,
        f"#!{sys.executable}\n"
        "import json, os, sys, time\n"
        "keys = ('XLA_PYTHON_CLIENT_MEM_FRACTION', 'JAX_LOCAL_DEVICE_IDS')\n"
        "rec = {'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in keys}}\n"
        f"open({out!r} + '.tmp', 'w').write(json.dumps(rec))\n"
        f"os.replace({out!r} + '.tmp', {out!r})\n"
        f"time.sleep({sleep})\n",
    )


def wait_for(path: Path, timeout: float = 20.0) -> dict:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    """Whether a process runs; a zombie (ended, not yet reaped, as where PID 1 does not
    reap orphans) counts as ended."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


# --- shared ---------------------------------------------------------------------------


def test_jax_pin_is_read_from_requirements(tmp_path):
    assert common.jax_pin() == PIN
    req = tmp_path / "requirements.txt"
    req.write_text("# pins\njaxlib==9.9.9\njax==1.2.3  # the pin\n")
    assert common.jax_pin(req) == "1.2.3"
    req.write_text("numpy==2.0\n")
    with pytest.raises(ValueError, match="jax==VERSION"):
        common.jax_pin(req)


@pytest.mark.parametrize(
    "tool, argv, option",
    [
        (tpu_vm, ["create", "--name", "t", "--accelerator_type", "v4-8", "--dry_run"], "--zone"),
        (tpu_vm, ["create", "--zone", "z", "--accelerator_type", "v4-8"], "--name"),
        (tpu_vm, ["create", *TPU, "--dry_run"], "--accelerator_type"),
        (tpu_vm, ["stage_data", *TPU, "--dry_run"], "--src"),
        (tpu_vm, ["run", *TPU, "--dry_run", "--", "--optimizer=amos"], "--accelerator_type"),
        (slurm, ["--gpus_per_node", "8", "--dry_run", "--", "--optimizer=amos"], "--nodes"),
        (slurm, ["--nodes", "2", "--dry_run", "--", "--optimizer=amos"], "--gpus_per_node"),
    ],
)
def test_a_missing_required_option_exits_2_and_names_it(capsys, tool, argv, option):
    assert option in usage_error(capsys, tool, argv)


@pytest.mark.parametrize(
    "tool, argv",
    [
        (tpu_vm, ["run", *TPU, "--accelerator_type", "v4-8", "--dry_run"]),
        (gpu_node, ["--dry_run"]),
        (slurm, ["--nodes", "2", "--gpus_per_node", "8", "--dry_run"]),
    ],
)
def test_no_run_py_arguments_is_a_usage_error(capsys, tool, argv):
    assert "after --" in usage_error(capsys, tool, argv)


# --- TPU VM ---------------------------------------------------------------------------


def test_create_describes_first_and_creates_with_the_generation_runtime(monkeypatch, capsys):
    argv = ["create", *TPU, "--project", "p1", "--accelerator_type", "v4-8", "--spot"]
    describe, create = commands(dry(monkeypatch, capsys, tpu_vm, [*argv, "--dry_run"]))
    assert describe == [
        *["gcloud", "compute", "tpus", "tpu-vm", "describe", "amos-tpu"],
        *["--format=value(acceleratorType,state)", "--zone=us-central2-b", "--project=p1"],
    ]
    assert create == [
        *["gcloud", "compute", "tpus", "tpu-vm", "create", "amos-tpu"],
        *["--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"],
        *["--zone=us-central2-b", "--project=p1", "--spot"],
    ]
    argv = ["create", *TPU, "--accelerator_type", "v5litepod-16", "--preemptible", "--dry_run"]
    create = commands(dry(monkeypatch, capsys, tpu_vm, argv))[-1]
    assert "--version=v2-alpha-tpuv5-lite" in create and "--preemptible" in create
    assert "--spot" not in create and not any(a.startswith("--project") for a in create)
    both = ["create", *TPU, "--accelerator_type", "v4-8", "--spot", "--preemptible"]
    assert "not allowed with" in usage_error(capsys, tpu_vm, both)
    assert "v4-8" in usage_error(capsys, tpu_vm, ["create", *TPU, "--accelerator_type", "4x8"])


def test_create_queued_asks_for_a_queued_resource(monkeypatch, capsys):
    argv = ["create", *TPU, "--accelerator_type", "v5litepod-16", "--spot", "--queued"]
    describe, create = commands(dry(monkeypatch, capsys, tpu_vm, [*argv, "--dry_run"]))
    queued = ["gcloud", "compute", "tpus", "queued-resources"]
    assert describe == [*queued, "describe", "amos-tpu", "--format=value(state.state)",
                        "--zone=us-central2-b"]  # fmt: skip
    assert create == [
        *[*queued, "create", "amos-tpu", "--node-id=amos-tpu"],
        *["--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite"],
        *["--zone=us-central2-b", "--spot"],
    ]
    both = ["create", *TPU, "--accelerator_type", "v4-8", "--queued", "--preemptible"]
    assert "--queued takes --spot" in usage_error(capsys, tpu_vm, both)


def test_setup_ships_head_and_installs_the_pinned_tpu_jax_on_every_worker(monkeypatch, capsys):
    lines = dry(monkeypatch, capsys, tpu_vm, ["setup", *TPU, "--dry_run"])
    status, archive, copy, install = commands(lines)
    assert status[:3] == ["git", "-C", str(REPO)] and "status" in status
    tarball = archive[-2].removeprefix("--output=")
    assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz", archive[-2], "HEAD"]
    assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert copy[5:8] == [tarball, "amos-tpu:amos-src.tar.gz", "--worker=all"]
    assert install[4:7] == ["ssh", "amos-tpu", "--worker=all"]
    steps = remote(install)
    subprocess.run(["bash", "-n", "-c", steps], check=True)
    words = shlex.split(steps)
    assert f"jax[tpu]=={PIN}" in words  # one word after the worker's shell unquotes it
    assert "tar -xzf amos-src.tar.gz -C amos" in steps
    for step in ["python3.11 -m venv .venv", "install --quiet -r requirements.txt"]:
        assert step in steps
    assert steps.endswith("install --quiet --no-deps -e .")
    # The order matters: requirements (CPU jax+jaxlib at the pin), then the TPU wheel.
    assert steps.index("-r requirements.txt") < steps.index("jax[tpu]") < steps.index("-e .")


def test_setup_from_a_repo_url_clones_instead_of_copying(monkeypatch, capsys):
    argv = ["setup", *TPU, "--repo_url", "https://example.com/amos.git", "--ref", "v1.0"]
    (install,) = commands(dry(monkeypatch, capsys, tpu_vm, [*argv, "--dry_run"]))
    steps = remote(install)
    assert "--worker=all" in install
    assert "git clone --quiet https://example.com/amos.git amos" in steps
    assert "git -C amos fetch --quiet origin v1.0 && git -C amos checkout" in steps
    assert f"'jax[tpu]=={PIN}'" in steps


@pytest.mark.parametrize(
    "accel, pod", [("v4-8", False), ("v5p-8", False), ("v5litepod-8", False), ("v6e-8", False),
                   ("v4-16", True), ("v4-32", True), ("v5litepod-16", True), ("v3-32", True)],
)  # fmt: skip
def test_pod_slices_are_the_types_with_more_than_8(accel, pod):
    assert tpu_vm.is_pod_slice(accel) is pod


def run_on_workers(monkeypatch, capsys, accel: str, run_args: list[str]) -> list[str]:
    argv = ["run", *TPU, "--accelerator_type", accel, "--dry_run", "--", *run_args]
    (cmd,) = commands(dry(monkeypatch, capsys, tpu_vm, argv))
    assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "amos-tpu", "--worker=all"]
    return cmd


def loop_text(text: str) -> str:
    """The restart loop in a worker command: the script of its `bash -c`."""
    words = shlex.split(text)
    i = words.index("nohup")
    assert words[i + 1 : i + 3] == ["bash", "-c"], words
    return words[i + 3]


def train_words(text: str) -> list[str]:
    """run.py's arguments in a worker command: the words of its restart loop between
    launch/run.py and the `&` that starts it."""
    words = shlex.split(loop_text(text))
    return words[words.index("launch/run.py") + 1 : words.index("&")]


def test_single_host_and_pod_slice_runs(monkeypatch, capsys):
    single = remote(run_on_workers(monkeypatch, capsys, "v4-8", RUN_ARGS))
    assert train_words(single) == RUN_ARGS  # run.py's own detection decides (nothing to find)
    pod = remote(run_on_workers(monkeypatch, capsys, "v4-32", RUN_ARGS))
    assert train_words(pod) == [*RUN_ARGS, "--distributed=on"]
    chosen = remote(run_on_workers(monkeypatch, capsys, "v5litepod-16", ["--distributed=off"]))
    assert train_words(chosen) == ["--distributed=off"]  # the user's choice stays, alone
    for text in (single, pod):
        subprocess.run(["bash", "-n", "-c", text], check=True)
        subprocess.run(["bash", "-n", "-c", loop_text(text)], check=True)
        assert "setsid nohup bash -c" in text and "runs/logs/run-$(hostname).log 2>&1" in text
        assert '[ "$rc" = 75 ] && [ "$stop" = 0 ] && [ "$n" -lt 100 ]' in loop_text(text)


def test_gin_quoting_survives_every_shell_layer(monkeypatch, capsys, tmp_path):
    """The printed line -> the local shell -> gcloud's --command -> the worker's bash ->
    run.py: run the worker part with bash against a stand-in python and compare argv."""
    argv = ["run", *TPU, "--accelerator_type", "v4-32", "--env", "LIBTPU_INIT_ARGS=--a=1 --b"]
    (cmd,) = commands(dry(monkeypatch, capsys, tpu_vm, [*argv, "--dry_run", "--", *RUN_ARGS]))
    text = remote(cmd)
    home = tmp_path / "home"
    record = home / "amos" / "argv.json"
    argv_recorder(home / "amos" / ".venv" / "bin" / "python", str(record), sleep=60)
    env = {**os.environ, "HOME": str(home)}
    started = subprocess.run(
        ["bash", "-c", text], cwd=home, env=env, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    pid_file = next((home / "amos" / "runs" / "logs").glob("run-*.pid"))
    pid = int(pid_file.read_text())
    try:
        got = wait_for(record)["argv"]
        assert got[0] == "launch/run.py" and got[1:] == [*RUN_ARGS, "--distributed=on"]
        assert "started pid" in started.stdout
        # What run.py makes of them: the gin string binding, quotes and all.
        from launch import run

        args, bindings = run.parse_args(got[1:])
        assert "MODEL_DIR = 'gs://bucket/run'" in bindings
        assert 'train.note = "$HOME it\'s *"' in bindings and args.distributed == "on"
        # A second start on the same worker refuses while the first one runs...
        again = subprocess.run(["bash", "-c", text], cwd=home, env=env, capture_output=True)
        assert again.returncode == 1 and b"still going" in again.stderr
        # ...and `stop` ends it (a SIGTERM to the restart loop, which passes it on).
        (stop,) = commands(dry(monkeypatch, capsys, tpu_vm, ["stop", *TPU, "--dry_run"]))
        subprocess.run(["bash", "-c", remote(stop)], cwd=home, env=env, check=True)
        deadline = time.time() + 20
        while alive(pid):
            assert time.time() < deadline, "stop did not end the run"
            time.sleep(0.05)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_stage_data_local_gs_and_in_place(monkeypatch, capsys, tmp_path):
    src = tmp_path / "tinyshakespeare"
    src.mkdir()
    argv = ["stage_data", *TPU, "--src", str(src), "--dry_run"]
    mkdir, copy = commands(dry(monkeypatch, capsys, tpu_vm, argv))
    assert "--worker=all" in mkdir and remote(mkdir) == "mkdir -p shared/data"
    assert copy[4:9] == ["scp", str(src), "amos-tpu:shared/data/", "--worker=all", "--recurse"]
    argv = ["stage_data", *TPU, "--src", "gs://bkt/tensorflow_datasets/", "--dest", "~/."]
    (sync,) = commands(dry(monkeypatch, capsys, tpu_vm, [*argv, "--dry_run"]))
    assert "--worker=all" in sync
    assert shlex.split(remote(sync)) == [
        *["mkdir", "-p", "./tensorflow_datasets", "&&", "gcloud", "storage", "rsync"],
        *["--recursive", "gs://bkt/tensorflow_datasets", "./tensorflow_datasets"],
    ]
    argv = ["stage_data", *TPU, "--src", "gs://bkt/tfds", "--in_place", "--dry_run"]
    lines = dry(monkeypatch, capsys, tpu_vm, argv)
    assert commands(lines) == [["gcloud", "storage", "ls", "gs://bkt/tfds"]]
    assert "--gin.DATA_DIR=\"'gs://bkt/tfds'\"" in lines[-1]
    local = ["stage_data", *TPU, "--src", str(src), "--in_place", "--dry_run"]
    assert "gs://" in usage_error(capsys, tpu_vm, local)
    assert "plain path" in usage_error(capsys, tpu_vm, [*local[:-2], "--dest", "a b"])


def test_logs_stop_delete(monkeypatch, capsys):
    argv = ["logs", *TPU, "--lines", "20", "--dry_run"]
    (tail,) = commands(dry(monkeypatch, capsys, tpu_vm, argv))
    assert "--worker=all" in tail
    assert (
        remote(tail) == 'tail -n 20 amos/runs/logs/run-$(hostname).log | sed "s/^/$(hostname): /"'
    )
    argv = ["logs", *TPU, "--worker", "3", "--fetch", "out dir", "--dry_run"]
    mkdir, copy = commands(dry(monkeypatch, capsys, tpu_vm, argv))
    assert mkdir == ["mkdir", "-p", "out dir"]
    assert copy[5:8] == ["amos-tpu:amos/runs/logs/run-*.log", "out dir/", "--worker=3"]
    (stop,) = commands(dry(monkeypatch, capsys, tpu_vm, ["stop", *TPU, "--dry_run"]))
    assert "--worker=all" in stop and remote(stop).startswith('kill "$(cat amos/runs/logs/run-')
    (delete,) = commands(dry(monkeypatch, capsys, tpu_vm, ["delete", *TPU, "--dry_run"]))
    assert delete == [*tpu_vm.GCLOUD_TPU, "delete", "amos-tpu", "--zone=us-central2-b"]
    (delete,) = commands(dry(monkeypatch, capsys, tpu_vm, ["delete", *TPU, "--yes", "--dry_run"]))
    assert delete[-2] == "--quiet"


def fake_gcloud(tmp_path, monkeypatch, describe_rc: int, describe_out: str) -> Path:
    """A gcloud on PATH that logs its argv; `describe` answers as told."""
    log = tmp_path / "gcloud.log"
    executable(
        tmp_path / "bin" / "gcloud",
        f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n'
        f'case "$*" in *describe*) printf "{describe_out}"; exit {describe_rc};; esac\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return log


def test_create_for_real_creates_only_when_missing(tmp_path, monkeypatch, capsys):
    argv = ["create", *TPU, "--accelerator_type", "v4-8"]
    log = fake_gcloud(tmp_path, monkeypatch, 1, "")
    assert tpu_vm.main(argv) == 0
    assert [line.split()[3] for line in log.read_text().splitlines()] == ["describe", "create"]
    log = fake_gcloud(tmp_path / "b", monkeypatch, 0, r"v4-8\tREADY\n")
    assert tpu_vm.main(argv) == 0
    assert len(log.read_text().splitlines()) == 1 and "reusing" in capsys.readouterr().out
    fake_gcloud(tmp_path / "c", monkeypatch, 0, r"v4-32\tREADY\n")
    with pytest.raises(SystemExit, match="exists as v4-32, not v4-8"):
        tpu_vm.main(argv)


def test_create_for_real_recreates_a_preempted_tpu(tmp_path, monkeypatch, capsys):
    log = fake_gcloud(tmp_path, monkeypatch, 0, r"v4-8\tPREEMPTED\n")
    assert tpu_vm.main(["create", *TPU, "--accelerator_type", "v4-8", "--spot"]) == 0
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [c[3] for c in calls] == ["describe", "delete", "create"]
    assert "--quiet" in calls[1] and "--spot" in calls[2]
    assert "PREEMPTED (taken back): deleting it" in capsys.readouterr().out


@pytest.mark.parametrize(
    "state, verbs", [("SUSPENDED", ["describe", "delete", "create"]),
                     ("WAITING_FOR_RESOURCES", ["describe"]), ("ACTIVE", ["describe"])],
)  # fmt: skip
def test_create_queued_for_real_reuses_a_live_one_and_replaces_a_suspended_one(
    tmp_path, monkeypatch, capsys, state, verbs
):
    log = fake_gcloud(tmp_path, monkeypatch, 0, rf"{state}\n")
    argv = ["create", *TPU, "--accelerator_type", "v4-8", "--spot", "--queued"]
    assert tpu_vm.main(argv) == 0
    calls = [line.split() for line in log.read_text().splitlines()]
    assert all(c[2] == "queued-resources" for c in calls)
    assert [c[3] for c in calls] == verbs
    if "delete" in verbs:
        assert {"--force", "--quiet"} <= set(calls[1])
    else:
        assert f"queued resource ({state}): reusing it" in capsys.readouterr().out


def preempting_python(path: Path, calls: Path, preempted_runs: int) -> Path:
    """A stand-in for the venv's python: each call appends a line to `calls`; the first
    `preempted_runs` calls exit 75 at once (a run stopped at a checkpoint), later ones run
    until a SIGTERM, on which they exit 75 as run.py does."""
    return executable(
        path,
        f"#!{sys.executable}\n"
        "import json, signal, sys, time\n"
        f"with open({str(calls)!r}, 'a+') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "    f.seek(0)\n"
        "    n = len(f.read().splitlines())\n"
        f"if n <= {preempted_runs}:\n"
        "    sys.exit(75)\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
        "time.sleep(60)\n",
    )


def start_worker(monkeypatch, capsys, home: Path, extra: list[str]) -> tuple[int, dict]:
    """Runs a `run` worker command with bash in `home`; returns the loop's pid and env."""
    monkeypatch.setattr(tpu_vm, "RESTART_DELAY_S", 0)
    argv = ["run", *TPU, "--accelerator_type", "v4-8", *extra, "--dry_run", "--", *RUN_ARGS]
    (cmd,) = commands(dry(monkeypatch, capsys, tpu_vm, argv))
    env = {**os.environ, "HOME": str(home)}
    started = subprocess.run(["bash", "-c", remote(cmd)], cwd=home, env=env, capture_output=True)
    assert started.returncode == 0, started.stderr
    pid_file = next((home / "amos" / "runs" / "logs").glob("run-*.pid"))
    return int(pid_file.read_text()), env


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_restart_loop_reruns_a_preempted_run_until_stop(monkeypatch, capsys, tmp_path):
    home = tmp_path / "home"
    calls = home / "calls.txt"
    preempting_python(home / "amos" / ".venv" / "bin" / "python", calls, preempted_runs=2)
    pid, env = start_worker(monkeypatch, capsys, home, [])
    try:
        # Two runs exit 75 and are rerun; the third runs until `stop`.
        wait_until(lambda: calls.exists() and len(calls.read_text().splitlines()) == 3)
        for call in calls.read_text().splitlines():
            assert json.loads(call) == ["launch/run.py", *RUN_ARGS]
        assert alive(pid)
        (stop,) = commands(dry(monkeypatch, capsys, tpu_vm, ["stop", *TPU, "--dry_run"]))
        subprocess.run(["bash", "-c", remote(stop)], cwd=home, env=env, check=True)
        wait_until(lambda: not alive(pid))  # It exited 75 on the SIGTERM: no restart.
        assert len(calls.read_text().splitlines()) == 3
        log = next((home / "amos" / "runs" / "logs").glob("run-*.log")).read_text()
        assert "restart 2 of at most 100" in log and "restart 3" not in log
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_restart_loop_gives_up_after_max_restarts(monkeypatch, capsys, tmp_path):
    home = tmp_path / "home"
    calls = home / "calls.txt"
    preempting_python(home / "amos" / ".venv" / "bin" / "python", calls, preempted_runs=99)
    pid, _ = start_worker(monkeypatch, capsys, home, ["--max_restarts", "1"])
    try:
        wait_until(lambda: not alive(pid))
        assert len(calls.read_text().splitlines()) == 2  # The run and one restart.
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_run_for_real_asks_gcloud_for_the_accelerator_type(tmp_path, monkeypatch):
    log = fake_gcloud(tmp_path, monkeypatch, 0, r"v4-32\n")
    assert tpu_vm.main(["run", *TPU, "--", "--optimizer=amos"]) == 0
    describe, ssh = log.read_text().splitlines()
    assert "describe" in describe and "--worker=all" in ssh and "--distributed=on" in ssh


# --- one GPU node ---------------------------------------------------------------------


def test_gpu_setup_installs_the_pinned_cuda_jax(monkeypatch, capsys):
    lines = dry(monkeypatch, capsys, gpu_node, ["--setup", "--dry_run"])
    assert lines[0] == f"# in {REPO}"
    cmds = commands(lines)
    pip = [".venv/bin/python", "-m", "pip", "install", "--quiet"]
    assert [*pip, "-r", "requirements.txt"] in cmds
    assert [*pip, f"jax[cuda12]=={PIN}"] in cmds
    assert cmds.index([*pip, "-r", "requirements.txt"]) < cmds.index([*pip, f"jax[cuda12]=={PIN}"])
    assert cmds[-2] == [*pip, "--no-deps", "-e", "."]
    assert cmds[-1][:2] == [".venv/bin/python", "-c"] and "platform" in cmds[-1][2]
    fresh = dry(monkeypatch, capsys, gpu_node, ["--setup", "--venv", "no/such/venv", "--dry_run"])
    assert commands(fresh)[0] == ["python3", "-m", "venv", "no/such/venv"]
    argv = ["--setup", "--cuda", "cuda13", "--dry_run"]
    cuda13 = commands(dry(monkeypatch, capsys, gpu_node, argv))
    assert [*pip, f"jax[cuda13]=={PIN}"] in cuda13


def test_gpu_run_one_process_all_gpus(monkeypatch, capsys):
    (cmd,) = commands(dry(monkeypatch, capsys, gpu_node, ["--dry_run", "--", *RUN_ARGS]))
    assert cmd == [".venv/bin/python", "launch/run.py", *RUN_ARGS, "--distributed=off"]
    argv = ["--gpus", "0,1", "--mem_fraction", "0.9", "--dry_run", "--", *RUN_ARGS]
    (cmd,) = commands(dry(monkeypatch, capsys, gpu_node, argv))
    assert cmd[:3] == ["env", "CUDA_VISIBLE_DEVICES=0,1", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]
    argv = ["--no_preallocate", "--dry_run", "--", "x"]
    (cmd,) = commands(dry(monkeypatch, capsys, gpu_node, argv))
    assert cmd[:2] == ["env", "XLA_PYTHON_CLIENT_PREALLOCATE=false"]
    assert "(0, 1]" in usage_error(capsys, gpu_node, ["--mem_fraction", "1.5", "--", "x"])
    both = ["--mem_fraction", "0.5", "--no_preallocate", "--", "x"]
    assert "not allowed with" in usage_error(capsys, gpu_node, both)


def test_gpu_run_for_real_passes_argv_and_memory_setting(tmp_path):
    record = tmp_path / "argv.json"
    argv_recorder(tmp_path / "venv" / "bin" / "python", str(record))
    argv = ["--venv", str(tmp_path / "venv"), "--mem_fraction", "0.85", "--", *RUN_ARGS]
    assert gpu_node.main(argv) == 0
    got = json.loads(record.read_text())
    assert got["argv"] == ["launch/run.py", *RUN_ARGS, "--distributed=off"]
    assert got["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.85"


# --- SLURM ----------------------------------------------------------------------------

SLURM = ["--nodes", "4", "--gpus_per_node", "8", "--partition", "gpu", "--account", "proj"]


def test_sbatch_script_lines_and_srun(monkeypatch, capsys, tmp_path):
    script_path = tmp_path / "job.sbatch"
    argv = [*SLURM, "--time", "12:00:00", "--job_name", "t5", "--cpus_per_task", "32"]
    argv += ["--sbatch_option=--qos=high", "--script", str(script_path), "--dry_run"]
    lines = dry(monkeypatch, capsys, slurm, [*argv, "--", *RUN_ARGS])
    assert not script_path.exists()  # a dry run writes nothing
    assert lines[0] == "#!/bin/bash"
    assert [x for x in lines if x.startswith("#SBATCH")] == [
        "#SBATCH --job-name=t5",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --time=12:00:00",
        f"#SBATCH --chdir={REPO}",
        f"#SBATCH --output={REPO}/runs/slurm/%x-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --signal=TERM@300",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --qos=high",
    ]
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in lines
    (srun,) = [shlex.split(x) for x in lines if x.startswith("srun ")]
    i = srun.index("launch/run.py")
    assert srun[:i] == [
        *["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=32"],
        str(REPO / ".venv" / "bin" / "python"),
    ]
    assert srun[i + 1 :] == [*RUN_ARGS, "--distributed=on"]
    assert commands(lines)[-2:] == [
        ["mkdir", "-p", *sorted([f"{REPO}/runs/slurm", str(tmp_path)])],
        ["sbatch", str(script_path)],
    ]


def test_sbatch_script_passes_bash_n_and_hands_srun_the_same_argv(tmp_path):
    args = slurm.parse_args([*SLURM, "--mem_fraction", "0.9", "--", *RUN_ARGS])
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render_script(args))
    subprocess.run(["bash", "-n", str(script)], check=True)
    record = tmp_path / "srun.json"
    argv_recorder(tmp_path / "bin" / "srun", str(record))
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **{"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "n[1-4]"},
    }
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    got = json.loads(record.read_text())
    i = got["argv"].index("launch/run.py")
    assert got["argv"][i + 1 :] == [*RUN_ARGS, "--distributed=on"]
    assert got["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
    assert got["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"


def test_the_preempted_exit_code_is_run_pys():
    from launch import preemption, run

    assert common.PREEMPTED_EXIT_CODE == preemption.EXIT_CODE == 75
    assert "75 preempted" in run.__doc__.replace("\n", " ")


@pytest.mark.parametrize("srun_exit, requeued", [(75, True), (0, False), (3, False)])
def test_sbatch_script_requeues_the_job_when_run_py_was_preempted(tmp_path, srun_exit, requeued):
    args = slurm.parse_args([*SLURM, "--signal_seconds", "600", "--", *RUN_ARGS])
    text = slurm.render_script(args)
    assert "#SBATCH --signal=TERM@600" in text.splitlines()
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    log = tmp_path / "scontrol.log"
    executable(tmp_path / "bin" / "srun", f"#!/bin/sh\nexit {srun_exit}\n")
    executable(tmp_path / "bin" / "scontrol", f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n')
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **{"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "n[1-4]"},
    }
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert p.returncode == srun_exit, p.stderr
    if requeued:
        assert log.read_text().split() == ["requeue", "7"]
        assert "requeueing it" in p.stdout
    else:
        assert not log.exists()


def test_sbatch_script_without_requeue_and_a_bad_signal_time(capsys):
    text = slurm.render_script(slurm.parse_args([*SLURM, "--no_requeue", "--", *RUN_ARGS]))
    assert "#SBATCH --requeue" not in text and "scontrol" not in text
    assert "#SBATCH --signal=TERM@300" in text and text.endswith('exit "$status"\n')
    bad = [*SLURM, "--signal_seconds", "0", "--", "x"]
    assert "--signal_seconds" in usage_error(capsys, slurm, bad)


def test_sbatch_values_cannot_inject_script_lines(capsys):
    bad = ["--nodes", "1", "--gpus_per_node", "1", "--partition", "gpu\nrm -rf ~", "--", "x"]
    assert "--partition" in usage_error(capsys, slurm, bad)
    assert "--qos" in usage_error(capsys, slurm, [*bad[:4], "--sbatch_option=qos=x", "--", "x"])


def test_slurm_for_real_writes_the_script_and_submits_it(tmp_path, monkeypatch):
    log = tmp_path / "sbatch.log"
    executable(tmp_path / "bin" / "sbatch", f'#!/bin/sh\necho "$@" > {shlex.quote(str(log))}\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    script = tmp_path / "jobs" / "t5.sbatch"
    out = tmp_path / "logs" / "%x-%j.out"
    argv = [*SLURM, "--script", str(script), "--output", str(out), "--", *RUN_ARGS]
    assert slurm.main(argv) == 0
    assert script.read_text() == slurm.render_script(slurm.parse_args(argv))
    assert log.read_text().split() == [str(script)]
    assert (tmp_path / "logs").is_dir()  # SLURM would not create it


# --- docs/cloud.md (the launch tools' page, once README's "Run it on a TPU VM / GPU") ---


def test_the_documented_commands_parse_and_dry_run(monkeypatch, capsys):
    section = (REPO / "docs" / "cloud.md").read_text()
    tools = {"tpu_vm.py": tpu_vm, "gpu_node.py": gpu_node, "slurm.py": slurm}
    ran = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            at = [i for i, w in enumerate(words) if w.startswith("launch/cloud/")]
            if not at:
                continue
            tool, argv = words[at[0]].removeprefix("launch/cloud/"), words[at[0] + 1 :]
            split = argv.index("--") if "--" in argv else len(argv)
            dry(monkeypatch, capsys, tools[tool], [*argv[:split], "--dry_run", *argv[split:]])
            ran.append(tool)
    assert {"tpu_vm.py", "gpu_node.py", "slurm.py"} <= set(ran) and len(ran) >= 15
