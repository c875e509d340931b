"""The names of everything a run writes in its directory (MODEL_DIR), in one place: the
trainer, launch/run.py, the sweeps, the benchmarks and the notebooks find its files here.

Names only, relative to MODEL_DIR (join them with `launch.summary_writer.join`, which
keeps cloud paths as they are); this module imports nothing, so that any tool can read a
run folder without importing JAX.
"""

from __future__ import annotations

# ---------------------------------------------------------------------- records
METRICS_JSONL = "metrics.jsonl"
"""Every train and eval record of the run, one JSON object a line
(launch/summary_writer.py); a resumed run drops the records after its checkpoint."""

DAMAGED_SUFFIX = ".damaged"
"""`metrics.jsonl.damaged`: lines of metrics.jsonl that were no records, set aside by a
resumed run."""

FINAL_JSON = "final.json"
"""The finished run's result (`Trainer.run`): its presence means the run is finished."""

RUN_JSON = "run.json"
"""The command, machine, revision, status and layout of the run (launch/run.py)."""

CONFIG_GIN = "config.gin"
"""gin's operative configuration of the run, against which a resume is checked
(launch/resume_check.py)."""


def config_before_step(step: int) -> str:
    """`config.before_step_<step>.gin`: the configuration that trained up to `step`, kept
    when a resume there changed it (`run.py --allow_config_change`)."""
    return f"config.before_step_{step}.gin"


# ---------------------------------------------------------------------- checkpoints
CHECKPOINTS = "checkpoints"
"""The folder of the Orbax checkpoints, one folder a step: `checkpoints/<step>`."""

CORRUPT_SUFFIX = ".corrupt"
"""`checkpoints/<step>.corrupt` (then `.corrupt.1`, ...): a checkpoint that could not be
restored, moved aside (`checkpoints.Checkpointer`)."""


def eval_json(step: int) -> str:
    """`eval_<step>.json`: `run.py --eval_only`'s evaluation of the checkpoint of `step`."""
    return f"eval_{step}.json"


EVAL_JSON_PATTERN = "eval_*.json"
"""The glob of every `eval_json`."""

# ---------------------------------------------------------------------- TensorBoard
TENSORBOARD_DIRS = ("train", "eval")
"""The folders of the TensorBoard event files, one a record split:
`<split>/events.out.tfevents.*` (launch/summary_writer.py)."""

EVENT_FILE_PREFIX = "events.out.tfevents."
"""How TensorBoard event files are named (TensorBoard finds them by it)."""

PROFILE_DIR = "profile"
"""The JAX profiler's traces of `train.profile_steps`: `profile/plugins/profile/<time>/`."""

# ---------------------------------------------------------------------- the run's own
LOCK_FILE = "run.lock"
"""The lock of the process training in the folder (launch/run_lock.py), which writes its
next contents to `run.lock.tmp.<pid>` and renames that over it."""


TMP_SUFFIX = ".tmp"
"""`<name>.tmp` beside `<name>`: an atomic write's temporary file
(`launch.summary_writer.write_text_atomic`)."""

TMP_PATTERN = f"*{TMP_SUFFIX}"
"""The glob of the temporary files a killed process leaves behind (removed by the next
run holding the lock)."""


def write_probe(pid: int) -> str:
    """`.write_probe.<pid>`: the empty file with which process `pid` checks that it may
    write the folder (removed at once)."""
    return f".write_probe.{pid}"


WRITE_PROBE_PATTERN = ".write_probe.*"
"""The glob of every `write_probe`."""
