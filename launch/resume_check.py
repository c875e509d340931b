"""A resumed run must be the run its records describe: `launch/run.py` compares the
configuration it is about to resume with with the one recorded in MODEL_DIR/config.gin.

A run resumes when MODEL_DIR holds a checkpoint. Then every binding of the recorded
operative config that the new one also has must be equal, except those that may change
without changing what the steps before compute (`SAFE_TO_CHANGE`: the horizon, where and
how often to log, evaluate and checkpoint, the device mesh, data worker counts). A
difference exits 2 naming the bindings, before anything is written; with
`--allow_config_change` the run goes on, and the records keep both: the config that
trained up to the checkpoint's step is kept as `config.before_step_<step>.gin` and
run.json's `config_changes` lists each change with its step. A horizon below the step
already reached is an error in any case (the records would say the run ended before it
did).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from experiments.errors import ConfigError

# Bindings (gin macros, or configurable.parameter patterns) that may change on resume.
SAFE_TO_CHANGE = (
    # The horizon: a run may be extended (and the schedules pinned to a horizon told so).
    "TRAIN_STEPS",
    "train.train_steps",
    "*.horizon_steps",
    # Where the run is, and what it logs, evaluates and keeps along the way.
    "MODEL_DIR",
    "train.model_dir",
    "EVAL_EVERY",
    "train.eval_every",
    "LOG_EVERY",
    "train.log_every",
    "CHECKPOINT_EVERY",
    "train.checkpoint_every",
    "KEEP_CHECKPOINTS",
    "train.keep_checkpoints",
    "train.first_checkpoint_at",
    "PROFILE_START",
    "PROFILE_STEPS",
    "train.profile_steps",
    # How the same computation is laid out: another slice, another device count.
    "MESH_DATA",
    "MESH_FSDP",
    "MESH_MODEL",
    "train.mesh_shape",
    "FSDP_MIN_SIZE",
    "train.fsdp_min_size",
    "*.num_workers",
)

_BINDING = re.compile(r"^([A-Za-z_][\w./]*)\s*=\s*(.*)$")


def parse_operative_config(text: str) -> dict[str, str]:
    """gin's operative config (`gin.operative_config_str()`, config.gin) as binding name ->
    value text, whitespace normalized; a value continued on indented lines is joined."""
    bindings: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = None if line[0].isspace() else _BINDING.match(line)
        if match:
            name = match.group(1)
            bindings[name] = match.group(2).strip()
        elif name is not None:  # A continuation of a multi-line value.
            bindings[name] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in bindings.items()}


def safe_to_change(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SAFE_TO_CHANGE)


@dataclass(frozen=True)
class ConfigChange:
    """How the configuration of a resume differs from the recorded one."""

    step: int  # The checkpoint it resumes from.
    changed: dict[str, tuple[str, str]]  # name -> (recorded, new); none safe to change.

    def describe(self) -> str:
        return ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in self.changed.items())


def compare(recorded: str, new: str, step: int) -> ConfigChange:
    """The bindings that `new` (an operative config) changes from `recorded` for a resume
    at `step`, leaving out those safe to change and those only one of them has (a config
    recorded at the end of a run names configurables that are built only then)."""
    old, now = parse_operative_config(recorded), parse_operative_config(new)
    changed = {
        name: (old[name], now[name])
        for name in sorted(old.keys() & now.keys())
        if old[name] != now[name] and not safe_to_change(name)
    }
    return ConfigChange(step, changed)


def check_resume(
    recorded: str | None, new: str, step: int, train_steps: int, model_dir: str, allow: bool
) -> ConfigChange | None:
    """None if nothing but safe bindings changed (or nothing was recorded); the change if
    `allow`; otherwise a ConfigError naming what differs. A `train_steps` below `step`
    is an error in any case."""
    if train_steps < step:
        raise ConfigError(
            f"TRAIN_STEPS={train_steps} is below step {step}, which the run in "
            f"{model_dir!r} already reached; a run cannot be shortened (start another)"
        )
    if recorded is None:
        return None
    change = compare(recorded, new, step)
    if not change.changed:
        return None
    if allow:
        return change
    raise ConfigError(
        f"resuming {model_dir!r} at step {step} with another configuration than the one "
        f"recorded in its config.gin ({change.describe()}); undo those bindings, use "
        "another MODEL_DIR, or pass --allow_config_change to go on and record the change"
    )
