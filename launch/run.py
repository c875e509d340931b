"""Train one configuration: `launch/run.py --gin_file=FILE [--gin.NAME=VALUE ...]`.

t5x conventions: `--gin_file` may repeat (later files override earlier ones), as may
`--gin.NAME=VALUE` (applied after all files), and `--gin_search_paths` lists directories
where `--gin_file` and `include` look (gin_configs/ is always searched). An experiment file
(gin_configs/experiments/) holds the model, data, loop and both optimizers' knobs;
`--optimizer=NAME` adds gin_configs/optimizers/NAME.gin, which picks the arm. Example:

  .venv/bin/python launch/run.py --gin_file=experiments/nanogpt_cpu.gin --optimizer=adamw \\
      --gin.MODEL_DIR="'runs/nanogpt_adamw'" --gin.TRAIN_STEPS=2000

`--dry_run` builds the configuration, model and optimizers with `jax.eval_shape` (nothing
allocated, no data read, MODEL_DIR untouched), prints the parameter count, both arms' slot
bytes, the bytes per device under the mesh and the largest variables' shardings, then
compiles the train step from those shapes and prints XLA's memory analysis per device
(arguments, outputs, temporaries, total) and its FLOPs, and exits. `--dry_run_fit=32GiB`
adds, for each arm, the largest batch per device whose compiled step fits that memory.

`--eval_only` evaluates the newest checkpoint of MODEL_DIR that restores on the configured
evaluation splits (the same gin files and bindings as its training), read-only: it takes
no lock (a trainer may be running there), writes no checkpoint, metrics.jsonl, run.json or
config.gin, prints the metrics and writes them to MODEL_DIR/eval_<step>.json.

Exit codes: 0 done, 2 configuration error (one line naming the culprit, no traceback;
`--verbose` adds it), 3 training diverged, 74 a write failed (a checkpoint or a record
could not be written: a full disk, no permission; one line naming the directory and the
cause, run.json "write failed" where it still fits; 74 is sysexits.h's EX_IOERR), 75
preempted: a SIGTERM or SIGINT (to any
process of a multi-process run) stopped training at a step every process agreed on, after
a checkpoint of that step was complete; run.json says "preempted" with the step, the lock
is released, and the same command, on this host or another, resumes there
(launch/preemption.py; 75 is sysexits.h's EX_TEMPFAIL, "try again later").
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path

# etils.epath reaches gs:// through TensorFlow's gfile whenever TensorFlow is installed (it
# is, for tfds and seqio): every MODEL_DIR file would import all of TensorFlow, and gfile's
# endpoint cannot be moved to a test server. Its other backend, gcsfs (pinned), is the one
# epath uses without TensorFlow. EPATH_USE_TF=true in the environment brings gfile back.
os.environ.setdefault("EPATH_USE_TF", "false")  # Before anything imports etils, below.

import gin  # noqa: E402
from etils import epath  # noqa: E402

from experiments.data import files  # noqa: E402
from experiments.errors import ConfigError  # noqa: E402
from launch import preemption, resume_check, run_lock  # noqa: E402
from launch import trainer as train_lib  # noqa: E402  (its modules load at first use)
from launch.provenance import describe_machine, git_revision, package_versions  # noqa: E402
from launch.summary_writer import (  # noqa: E402
    join,
    read_json,
    remove_leftover_temporaries,
    write_json,
    write_text_atomic,
)
from launch.trainer import run_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

EXIT_IO_ERROR = 74  # sysexits.h EX_IOERR: a checkpoint or a record could not be written.

DEFAULT_SEARCH_PATH = str(REPO / "gin_configs")
# The arms an experiment file can be run with: gin_configs/optimizers/<name>.gin. The
# study's two come first (every experiment file defines their knobs), then the others (the
# plug-and-play schedules, whose knobs their study's experiment files define).
STUDY_ARMS = ("adamw", "amos")
OPTIMIZERS = [
    *STUDY_ARMS,
    *sorted(
        p.stem
        for p in (REPO / "gin_configs" / "optimizers").glob("*.gin")
        if p.stem not in STUDY_ARMS
    ),
]


def optimizer_file(name: str) -> str:
    """The gin file of an arm; it binds `train.optimizer` and sets no macro of its own."""
    return f"optimizers/{name}.gin"


# Environment variables that mean "this process is one of several" (TPU pod, SLURM, MPI,
# an explicit coordinator); jax.distributed.initialize() reads the details itself.
_MULTIHOST_ENV = ["JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS"]


def multihost_detected(env=os.environ) -> bool:
    if any(env.get(k) for k in _MULTIHOST_ENV):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin config file; repeat, later files override earlier ones",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="the arm: adds gin_configs/optimizers/NAME.gin after the --gin_file files",
    )
    parser.add_argument(
        "--gin_search_paths",
        default="",
        help="comma-separated directories for --gin_file and include",
    )
    parser.add_argument(
        "--gin_bindings",
        action="append",
        default=[],
        help="a binding 'NAME = VALUE' (same as --gin.NAME=VALUE)",
    )
    parser.add_argument(
        "--distributed",
        choices=["auto", "on", "off"],
        default="auto",
        help="call jax.distributed.initialize(): auto = when a multi-host "
        "environment (TPU pod, SLURM, MPI, coordinator) is detected",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print the traceback of a configuration error or a failed write too, and "
        "the libraries' error log (orbax's)",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="build everything abstractly (jax.eval_shape), print sizes and shardings, "
        "exit without training or writing anything",
    )
    parser.add_argument(
        "--dry_run_compile",
        choices=["on", "off"],
        default="on",
        help="--dry_run compiles the train step from shapes for XLA's memory analysis per "
        "device and FLOPs (on: seconds to minutes); off: sizes and shardings only",
    )
    parser.add_argument(
        "--dry_run_fit",
        type=_budgets,
        default=None,
        metavar="SIZE[,SIZE...]",
        help="implies --dry_run: for each optimizer arm, the largest batch per device whose "
        "compiled train step fits SIZE of device memory (16GiB, 40GB, 512MiB, ...; a list "
        "fits each), searched by compiling from shapes (a few compiles per arm and size)",
    )
    parser.add_argument(
        "--eval_only",
        action="store_true",
        help="evaluate the newest restorable checkpoint of MODEL_DIR read-only (no lock, "
        "no training, no checkpoint or metrics written), print the metrics and write "
        "MODEL_DIR/eval_<step>.json",
    )
    parser.add_argument(
        "--allow_config_change",
        action="store_true",
        help="resume although bindings other than the horizon, logging and layout differ "
        "from the recorded config.gin (by default an error naming them); the records keep "
        "both (launch/resume_check.py)",
    )
    parser.add_argument(
        "--break_lock",
        action="store_true",
        help="take over MODEL_DIR/run.lock whoever holds it (with a warning naming the "
        "holder): for a lock that its rules cannot see is stale, when you know its run is "
        "gone (launch/run_lock.py)",
    )
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    args, rest = parser.parse_known_args(argv)
    unknown = []
    for item in rest:  # t5x's --gin.NAME=VALUE form.
        if item.startswith("--gin.") and "=" in item:
            name, value = item[len("--gin.") :].split("=", 1)
            args.gin_bindings.append(f"{name} = {value}")
        else:
            unknown.append(item)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.dry_run_fit:
        args.dry_run = True
        if args.dry_run_compile == "off":
            parser.error("--dry_run_fit compiles the train step: not with --dry_run_compile=off")
    if args.optimizer:
        if not args.gin_file:  # The optimizer file alone configures no experiment.
            parser.error(
                f"--optimizer={args.optimizer} needs an experiment: --gin_file="
                "experiments/NAME.gin (gin_configs/experiments/ lists them)"
            )
        args.gin_file.append(optimizer_file(args.optimizer))
    return args, args.gin_bindings


# Units of a memory size: SI (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB).
_SIZE_UNITS = {
    "b": 1,
    **{f"{p}b": 1000**i for i, p in enumerate("kmgt", 1)},
    **{f"{p}ib": 1024**i for i, p in enumerate("kmgt", 1)},
}


def parse_bytes(text: str) -> int:
    """Bytes of a size with its unit: '16GiB' = 16 * 2**30, '40GB' = 40 * 10**9, '1.5TiB',
    '512 MiB' (units case-insensitive). A ValueError names what is wrong."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]+)\s*", text)
    unit = match and _SIZE_UNITS.get(match.group(2).lower())
    if not unit:
        raise ValueError(
            f"{text!r} is not a memory size: a number and a unit, e.g. 16GiB, 40GB or 512MiB"
        )
    size = int(float(match.group(1)) * unit)
    if size < 1:
        raise ValueError(f"{text!r} is not a positive memory size")
    return size


def _budgets(text: str) -> list[int]:
    """`--dry_run_fit`'s comma-separated sizes (argparse exits 2 naming the flag)."""
    try:
        return [parse_bytes(part) for part in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _check_macros(bindings: list[str]) -> None:
    """A `--gin.NAME=...` for a macro no file defines is almost always a typo (gin would
    silently create a new unused macro), so it is an error here."""
    for b in bindings:
        name = b.split("=", 1)[0].strip()
        if "." in name or "/" in name:
            continue  # configurable.parameter: gin itself rejects unknown ones.
        try:
            gin.query_parameter(f"%{name}")
        except ValueError:
            raise ConfigError(
                f"unknown gin macro {name!r} in binding '{b}': no gin file defines it"
            ) from None


def _check_macros_read(bindings: list[str]) -> None:
    """A `--gin.NAME=...` for a macro that nothing in the configuration reads would be
    ignored: every binding that used it was overridden by a later file (CORPUS_PATH with
    a generated-text data file included after the corpus one), so it is an error here.
    Another arm's knob (a macro an optimizer file reads, e.g. AMOS_XI on the AdamW arm) is
    let through: compare.py and sweep.py give every arm the same bindings."""
    config = gin.config_str()
    for b in bindings:
        name = b.split("=", 1)[0].strip()
        if "." in name or "/" in name:
            continue
        reads = re.compile(rf"%{re.escape(name)}\b")
        if reads.search(config) or name in _optimizer_file_macros() or name in READ_BY_CODE:
            continue
        raise ConfigError(
            f"gin binding '{b}': nothing in this configuration reads {name} (the bindings "
            "that used it were overridden by a later gin file); remove it, or change the "
            "files"
        )


# Macros the code reads itself (gin.query_parameter), which no binding references.
READ_BY_CODE = ("DRY_RUN_VOCAB_SIZE",)  # launch/trainer/dry_run.py, dry_run_trainer


@functools.cache
def _optimizer_file_macros() -> frozenset[str]:
    """The macros the optimizer files (gin_configs/optimizers/) read: the arms' knobs."""
    names: set[str] = set()
    for path in (Path(DEFAULT_SEARCH_PATH) / "optimizers").glob("*.gin"):
        names.update(re.findall(r"%([A-Za-z_]\w*)", path.read_text()))
    return frozenset(names)


# An `include 'path.gin'` statement of a gin file, on its own line.
_INCLUDE = re.compile(r"""^[ \t]*include[ \t]+(['"])([^'"]+)\1[ \t]*(#.*)?$""", re.MULTILINE)


def _find_gin_file(name: str, search_paths: list[str], included_by: str | None) -> str:
    """`name` as gin resolves it, relative to the working directory or one of the search
    paths (this repository's gin_configs/ last); a ConfigError naming it (and the file
    that includes it) if none has it."""
    prefixes = [""] if os.path.isabs(name) else ["", *search_paths, DEFAULT_SEARCH_PATH]
    for prefix in prefixes:
        path = os.path.join(prefix, name)
        if os.path.isfile(path):
            return path
    where = f" (included by {included_by})" if included_by else ""
    raise ConfigError(
        f"gin file {name!r}{where} is not in the working directory or under "
        f"{[p for p in prefixes if p]} (--gin_search_paths)"
    )


def _parse_gin_file(path: str, search_paths: list[str], including: tuple[str, ...] = ()) -> None:
    """Parses one gin file, its includes in place, in order. The includes are resolved
    here rather than by gin, whose lookup of a file inside Python packages crashes
    (TypeError) on a namespace package (a folder such as `data/` on the path)."""
    if path in including:
        raise ConfigError(f"gin file {path} includes itself: {' -> '.join([*including, path])}")
    with open(path) as f:
        text = f.read()
    position = 0
    for include in _INCLUDE.finditer(text):
        _parse_gin_text(text[position : include.start()], path)
        found = _find_gin_file(include.group(2), search_paths, included_by=path)
        _parse_gin_file(found, search_paths, (*including, path))
        position = include.end()
    _parse_gin_text(text[position:], path)


def _parse_gin_text(text: str, path: str) -> None:
    try:
        gin.parse_config(text)
    except Exception as e:  # Whatever gin raises while reading a file is a configuration error.
        raise ConfigError(f"gin file {path}: {_first_line(e)}") from e


def load_gin(files: list[str], bindings: list[str], search_paths: list[str]) -> None:
    import launch.configurables  # noqa: F401  (registers the configurables)

    gin.clear_config()  # main() may run more than once in a process (tests, benchmarks).
    if not files:
        raise ConfigError("no --gin_file given")
    for name in files:
        _parse_gin_file(_find_gin_file(name, search_paths, included_by=None), search_paths)
    _check_macros(bindings)
    for binding in bindings:  # One at a time, so that an error names its binding.
        try:
            gin.parse_config(binding)
        except Exception as e:  # SyntaxError, tokenize.TokenError, ValueError, ...
            raise ConfigError(f"gin binding '{binding}': {_first_line(e)}") from e
    _check_macros_read(bindings)
    try:
        gin.finalize()
    except ValueError as e:  # A macro no file defines, e.g. an arm's knob (--optimizer).
        raise ConfigError(f"gin files {files}: {_undefined_macro(e)}") from e
    try:
        gin.query_parameter("train.optimizer")
    except ValueError:
        raise ConfigError(
            f"no optimizer: pass --optimizer={'|'.join(OPTIMIZERS)} (an experiment file "
            f"sets the knobs of the arms it runs with; gin_configs/optimizers/NAME.gin picks one)"
        ) from None


def _undefined_macro(error: ValueError) -> str:
    """gin's "No bindings specified for 'NAME/gin.macro' in config string: <the whole
    config>" as one line naming the macro; any other error's first line."""
    match = re.match(r"No bindings specified for '([^'/]+)/gin\.macro'", str(error))
    if not match:
        return _first_line(error)
    return (
        f"no gin file defines the macro {match.group(1)} (the experiment file defines the "
        "knobs of every arm it runs with)"
    )


def _first_line(error: BaseException) -> str:
    """An error's message without what gin appends ("In call to configurable ...")."""
    args = error.args
    # tokenize.TokenError and SyntaxError carry (message, position): the message is enough.
    text = args[0] if len(args) > 1 and isinstance(args[0], str) else str(error)
    lines = text.strip().splitlines()
    return (lines[0] if lines else "") or type(error).__name__


def check_model_dir(path: str) -> None:
    """MODEL_DIR must be a directory this process can create and write (a file, a path under
    a file or a read-only place would otherwise fail mid-run with an OSError traceback):
    a local one, or on Cloud Storage (gs://BUCKET/PATH: a missing bucket or credentials
    that may not write there fail the same probe). Any other scheme (memory://, s3://, ...)
    is an error naming the path (`files.check_scheme`)."""
    files.check_scheme(path, what="MODEL_DIR")
    if "://" in path:
        _check_cloud_model_dir(path)
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"MODEL_DIR {path!r} is a file, not a directory")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"MODEL_DIR {path!r} is under {str(parent)!r}, which is a file")
    try:
        os.makedirs(target, exist_ok=True)
        probe = target / run_folder.write_probe(os.getpid())
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"MODEL_DIR {path!r} is not writable: {e.strerror or e}") from None


def _check_cloud_model_dir(path: str) -> None:
    probe = epath.Path(path) / run_folder.write_probe(os.getpid())
    try:
        probe.write_text("")
        probe.unlink()
    except Exception as e:  # gcsfs and google-auth raise types of their own.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"MODEL_DIR {path!r} is not writable: {reason}") from None


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    command = [sys.executable, *sys.argv] if argv is None else ["launch/run.py", *argv]
    argv = sys.argv[1:] if argv is None else argv
    args, bindings = parse_args(argv)
    if from_command_line and not args.verbose:
        # A failed restore or save is reported in one line, not as orbax's log and the
        # exceptions its threads leave behind (a caller in-process keeps its own hooks).
        logging.getLogger("absl").addFilter(_without_orbax_errors)
        logging.getLogger("asyncio").addFilter(_without_orbax_errors)
        sys.unraisablehook = _without_unraisable_noise
        # The same reads, collected at exit before they ran.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    try:
        return _train(args, bindings, command, argv)
    except ConfigError as e:  # The one place a configuration mistake is reported.
        if args.verbose:
            traceback.print_exc()
        print(f"ERROR: configuration: {_first_line(e)}", file=sys.stderr)
        return 2


def _without_orbax_errors(record: logging.LogRecord) -> bool:
    """A logging filter: False for orbax's ERROR records (a traceback of each background
    thread a failed save ran in; orbax starts its messages with '[process=N]') and for
    asyncio's "exception was never retrieved" of a failed restore's reads, which the
    harness reports in one line of its own."""
    if record.levelno < logging.ERROR:
        return True
    message = record.getMessage()
    if record.name == "asyncio":  # A failed restore's reads, collected after the error.
        return "exception was never retrieved" not in message
    return not (message.startswith("[process=") or "orbax" in record.pathname)


def _without_unraisable_noise(unraisable) -> None:
    """sys.unraisablehook without --verbose: drops the exceptions Python could only
    ignore (tensorstore's reads and writes left behind by a failed restore or save, in
    coroutines collected later or callbacks into a closed event loop); the harness
    reports the failure itself, in one line."""


def _build_trainer(build=None):
    try:
        return (build or (lambda: train_lib.train(build_only=True)))()
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # e.g. a model setting the model rejects
        raise ConfigError(f"{type(e).__name__}: {_first_line(e)}") from e


def _train(args: argparse.Namespace, bindings: list[str], command: list[str], argv) -> int:
    # jax (and launch.sharding, which imports it) load here, not at the top: the study's
    # tools and `--help` import this module for its parsing, without needing jax.
    import jax

    if args.distributed == "on" or (args.distributed == "auto" and multihost_detected()):
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    search_paths = [p for p in args.gin_search_paths.split(",") if p]
    load_gin(args.gin_file, bindings, search_paths)
    if args.dry_run:
        return _dry_run(args, bindings, search_paths)
    trainer = _build_trainer()
    if args.eval_only:
        return _eval_only(trainer)
    model_dir = trainer.model_dir
    is_chief = jax.process_index() == 0
    if is_chief:
        check_model_dir(model_dir)
    info = {
        "command": command,
        "argv": argv,
        "cwd": os.getcwd(),
        "git": git_revision(),
        "packages": package_versions(),
        "machine": describe_machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "running",
        "optimizer": trainer.opt.name,
        "num_params": trainer.num_params,
        "slot_bytes": trainer.slot_bytes,
        "layout": trainer.layout(),
        "data": trainer.describe_data(),
    }

    def record(**fields) -> None:
        info.update(fields)
        if is_chief:
            _write_json(join(model_dir, run_folder.RUN_JSON), info)

    # One process per MODEL_DIR: a second run (any seed) would interleave its metrics and
    # overwrite run.json, so it stops here naming the holder. SIGTERM and SIGINT from here
    # on stop training at a step all processes agree on, with a checkpoint there
    # (launch/preemption.py); the lock is released on the way out, so that a restart, on
    # this host or another, resumes.
    with preemption.Watch() as watch, run_lock.acquire(model_dir, break_lock=args.break_lock):
        change = _check_resume(trainer, allow=args.allow_config_change)
        if is_chief:
            remove_leftover_temporaries(model_dir)  # Of a run killed mid-write.
            if change is not None:
                _record_config_change(model_dir, change, info)
            _write_config(model_dir)
        record()
        try:
            result = trainer.run(preemption=watch)
        except train_lib.TrainingDiverged as e:
            print(f"ERROR: training diverged: {e}", file=sys.stderr)
            record(status="diverged", error=str(e))
            return 3
        except ConfigError as e:  # Found while training, e.g. no checkpoint restores.
            if change is not None and is_chief:  # Nothing resumed: the change did not happen.
                _undo_config_change(model_dir, change, info)
            record(status="configuration error", error=_first_line(e))
            raise
        except (train_lib.CheckpointSaveFailed, OSError) as e:  # A full disk, say.
            what = _first_line(e)
            if isinstance(e, OSError):
                what = f"cannot write {e.filename or model_dir!r}: {e.strerror or what}"
            if args.verbose:
                traceback.print_exc()
            try:  # On a full disk even run.json may not fit.
                record(status="write failed", error=what)
            except OSError as again:
                print(f"WARNING: run.json not updated: {again}", file=sys.stderr)
            print(f"ERROR: {what} (exit {EXIT_IO_ERROR})", file=sys.stderr, flush=True)
            return EXIT_IO_ERROR
        except preemption.Preempted as p:
            record(
                status="preempted",
                preempted=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                step=p.step,
                **({"signal": watch.signal} if watch.signal else {}),
            )
            if is_chief:
                print(
                    f"preempted at step {p.step} ({p.where}): run the same command again "
                    f"to resume there (exit {preemption.EXIT_CODE})",
                    flush=True,
                )
            return preemption.EXIT_CODE
        if is_chief:
            _write_config(model_dir)
        record(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), result=result)
    if is_chief:
        print(f"done: {model_dir} (tensorboard --logdir {shlex.quote(model_dir)})", flush=True)
    return 0


def _eval_only(trainer) -> int:
    """`--eval_only`: the newest good checkpoint's evaluation, read-only (no lock taken)."""
    files.check_scheme(trainer.model_dir or "", what="MODEL_DIR")
    result = trainer.evaluate_checkpoint()
    if trainer.is_chief:
        metrics = ", ".join(f"{k} {v:.6g}" for k, v in result["eval"].items())
        print(f"eval-only: step {result['step']} of {trainer.model_dir}: {metrics}", flush=True)
        print(f"wrote {result['path']}", flush=True)
    return 0


def _dry_run(args: argparse.Namespace, bindings: list[str], search_paths: list[str]) -> int:
    """`--dry_run`: the configuration's sizes and shardings, from shapes alone; then XLA's
    memory analysis of the train step compiled from those shapes (`--dry_run_compile`),
    and with `--dry_run_fit` each arm's largest batch per device that fits."""
    import jax  # here, as in _train

    from launch import sharding

    trainer, data_note = _build_trainer(train_lib.dry_run_trainer)
    config, state = trainer.config, trainer.abstract_state
    chosen = trainer.opt.name
    # The other arms' slots, from the same files with their optimizer file instead; for a
    # fit, each arm's whole Trainer too (its own step to compile).
    arms = {chosen: (state.opt_state, trainer.state_sharding.opt_state)}
    trainers = {chosen: trainer}
    for name in OPTIMIZERS:
        if name == chosen:
            continue
        files = [f for f in args.gin_file if f != optimizer_file(chosen)] + [optimizer_file(name)]
        try:
            load_gin(files, bindings, search_paths)
            factory = gin.query_parameter("train.optimizer").scoped_configurable_fn
            tx = _build_trainer(lambda f=factory: f(config.train_steps)).tx
            if args.dry_run_fit:
                trainers[name] = _build_trainer(train_lib.dry_run_trainer)[0]
        except ConfigError as e:
            arms[name] = f"not built: {_first_line(e)}"
            continue
        opt_state = jax.eval_shape(tx.init, state.params)
        arms[name] = (
            opt_state,
            sharding.opt_state_shardings(
                opt_state, state.params, trainer.mesh, config.fsdp_min_size
            ),
        )
    load_gin(args.gin_file, bindings, search_paths)  # Back to the configuration asked for.
    for line in sharding.dry_run_report(
        trainer, arms, chosen=chosen, data_note=data_note, gin_files=args.gin_file
    ):
        print(line)
    if args.dry_run_compile == "off":
        return 0
    print(f"(compiling the train step from shapes for {jax.default_backend()})", flush=True)
    memory = train_lib.step_memory(trainer)
    remat = train_lib.model_remat(trainer.model)
    for line in sharding.memory_report(memory, compute_dtype=config.compute_dtype, remat=remat):
        print(line)
    if args.dry_run_fit:
        _dry_run_fit(args.dry_run_fit, trainers, arms, chosen, memory)
    return 0


def _dry_run_fit(budgets: list[int], trainers: dict, arms: dict, chosen: str, memory) -> None:
    """`--dry_run_fit`: per memory size and arm, the largest batch per device whose step,
    compiled from shapes, fits (launch.trainer.fit_batch); the compiles of one arm serve all
    sizes. Each compile is reported on stderr as it finishes."""
    from launch import sharding  # imports jax: see _train

    trainer = trainers[chosen]
    print(
        "largest batch per device that fits (each arm's train step compiled from shapes at "
        f"the batches tried: global batches in multiples of {train_lib.batch_unit(trainer)}, "
        f"{train_lib.batch_shards(trainer)} batch shards x GRAD_ACCUM_STEPS "
        f"{trainer.config.grad_accum_steps}; the total as above, assumed to grow with the "
        "batch):",
        flush=True,
    )
    probes = {name: {} for name in trainers}
    probes[chosen][memory.batch_size] = memory
    for budget in budgets:
        print(f" {sharding.format_bytes(budget)} ({budget:,} bytes) per device:", flush=True)
        for name, arm in arms.items():
            tag = f"{name} (--optimizer)" if name == chosen else name
            if isinstance(arm, str):
                print(f"  {tag:<20} {arm}")
                continue

            def say(m, name=name) -> None:
                print(
                    f"  ({name}: batch {m.batch_size}, {m.per_device_batch} per device, needs "
                    f"{sharding.format_bytes(m.total_bytes)}; compiled in "
                    f"{m.compile_seconds:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )

            try:
                fit = train_lib.fit_batch(trainers[name], budget, probes=probes[name], say=say)
            except ValueError as e:  # A task whose batch cannot change (a recurrent state).
                print(f"  {tag:<20} not searched: {_first_line(e)}")
                continue
            print(sharding.fit_report(tag, fit), flush=True)


def _check_resume(trainer, allow: bool):
    """launch/resume_check.py: before a resume writes anything, the configuration it
    resumes with against the recorded one (every process, so that all stop alike)."""
    # The checkpoints' folders, listed without orbax: a manager would sync the processes,
    # and they reach this point at different times.
    directory = epath.Path(trainer.checkpoint_dir)
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    steps = sorted(int(name) for name in names if name.isdigit())
    if not steps:
        return None  # Nothing to resume: the run starts over.
    config = epath.Path(join(trainer.model_dir, run_folder.CONFIG_GIN))
    return resume_check.check_resume(
        config.read_text() if config.exists() else None,
        gin.operative_config_str(),
        steps[-1],
        trainer.config.train_steps,
        trainer.model_dir,
        allow,
    )


def _record_config_change(model_dir: str, change, info: dict) -> None:
    """--allow_config_change: keeps the config that trained up to the resumed step as
    config.before_step_<step>.gin and lists the change in run.json's config_changes
    (carried over from the run.json before)."""
    old = epath.Path(join(model_dir, run_folder.CONFIG_GIN)).read_text()
    write_text_atomic(join(model_dir, run_folder.config_before_step(change.step)), old)
    previous = epath.Path(join(model_dir, run_folder.RUN_JSON))
    changes = read_json(previous).get("config_changes", []) if previous.exists() else []
    changes.append(
        {
            "step": change.step,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "changed": {name: list(values) for name, values in change.changed.items()},
        }
    )
    info["config_changes"] = changes
    print(
        f"WARNING: resuming at step {change.step} with a changed configuration "
        f"({change.describe()}); the config before is kept as "
        f"{run_folder.config_before_step(change.step)}",
        file=sys.stderr,
        flush=True,
    )


def _undo_config_change(model_dir: str, change, info: dict) -> None:
    """`_record_config_change` taken back, for a resume that failed to restore: config.gin
    is the recorded one again, and run.json lists no change."""
    before = epath.Path(join(model_dir, run_folder.config_before_step(change.step)))
    write_text_atomic(join(model_dir, run_folder.CONFIG_GIN), before.read_text())
    before.unlink()
    info["config_changes"] = info["config_changes"][:-1]
    if not info["config_changes"]:
        del info["config_changes"]


def _write_config(model_dir: str) -> None:
    write_text_atomic(join(model_dir, run_folder.CONFIG_GIN), gin.operative_config_str())


def _write_json(path: str, obj) -> None:
    write_json(path, obj)


def exit_now(code: int) -> None:
    """Ends the process with `code` without waiting for other threads: after a failed
    save, orbax's background threads wait for signals that never come and would keep a
    normal exit waiting forever (the lock is released by then; streams are flushed)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if code == EXIT_IO_ERROR:
        exit_now(code)
    sys.exit(code)
