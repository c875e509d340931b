"""The checks of benchmarks/gpu_check.sh, in one process (run through the shell script).

Three parts, each recorded in `<out>/gpu_check.json` and summarized in `gpu_check.md` with
the command, git revision, machine and packages:

1. memory: the dry run's estimate against the real thing, on BERT-base (bert_base.gin on
   generated text: no data needed) with Amos. The estimate is what `launch/run.py
   --dry_run` prints on a machine without an accelerator: the train step compiled from
   shapes for the CPU (a subprocess with JAX_PLATFORMS=cpu), XLA's memory analysis. Against
   it: the same step compiled for this machine's device (its memory analysis), then run
   for a few steps from a real initial state, with the device's peak bytes in use
   (`Device.memory_stats()`, None on a CPU); and the step compiled for both in other
   COMPUTE_DTYPE and REMAT settings: what the dry run says each saves, and what it does.
2. step times: BERT-base steps per second and tokens per second with each optimizer
   (Amos, AdamW) in float32 and bfloat16, compiled outside the timing.
3. two processes: the tiny quickstart GPT trained by two `launch/run.py` processes
   (`--distributed=on`, one CPU device each: one GPU cannot be shared by two processes
   that each reserve its memory) against one process on two virtual CPU devices: the
   same mesh and batches, so the same losses up to the order of float32 reductions.

`--mode smoke` runs all three on the CPU at tiny size and with fewer settings, through
the same code as `--mode full` (tests/benchmarks/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from launch import provenance
from launch import run as run_cli
from launch import trainer as train_lib  # (its modules load at first use)
from launch.sharding import format_bytes
from launch.trainer import run_folder

REPO = Path(__file__).resolve().parents[1]

EXPERIMENT = "bert_base"
# Part 1 compiles Amos' step in each (COMPUTE_DTYPE, REMAT) setting, on the CPU and the
# device: what the dry run says each saves against what it saves; the first also runs.
VARIANTS = [
    ("float32", "none"),
    ("float32", "dots"),
    ("float32", "full"),
    ("bfloat16", "none"),
    ("bfloat16", "full"),
]
# Part 2's (optimizer, COMPUTE_DTYPE) settings.
TIMED = [(o, d) for o in ("amos", "adamw") for d in ("float32", "bfloat16")]
# Per mode: BERT-base's bindings, global batch, the settings, the steps run and timed, the
# two-process run's steps. The smoke mode takes fewer settings through the same code.
MODES = {
    "full": {
        "bindings": [],
        "batch": 32,
        "variants": VARIANTS,
        "timed": TIMED,
        "memory_steps": 5,
        "timed_steps": 20,
        "mp_steps": 100,
    },
    "smoke": {
        "bindings": [
            "BERT_SIZE = 'tiny'",
            "bert_model.num_layers = 1",
            "SEQ_LENGTH = 32",
            "DRY_RUN_VOCAB_SIZE = 512",
        ],
        "batch": 4,
        "variants": [VARIANTS[0], VARIANTS[-1]],
        "timed": [TIMED[0], TIMED[-1]],
        "memory_steps": 2,
        "timed_steps": 3,
        "mp_steps": 20,
    },
}
# The two-process run: the quickstart GPT at the test suite's tiny size.
TINY_QUICKSTART = [
    "--gin_file=experiments/quickstart.gin",
    "--optimizer=adamw",
    "--gin.GENERATED_CHARS=20000",
    "--gin.BATCH_SIZE=8",
    "--gin.BLOCK_SIZE=16",
    "--gin.gpt_model.width=32",
    "--gin.EVAL_BATCHES=4",
    "--gin.LOG_EVERY=10",
]
# Two processes and one on two virtual devices reduce in different orders: float32 noise.
MP_TOLERANCE = 1e-4


def build(optimizer: str, bindings: list[str]):
    """The BERT-base Trainer on generated text (`launch.trainer.dry_run_trainer`): its
    batches are real arrays, so it also trains, without any dataset."""
    files = [f"experiments/{EXPERIMENT}.gin", run_cli.optimizer_file(optimizer)]
    run_cli.load_gin(files, bindings, [])
    return train_lib.dry_run_trainer()[0]


def _bindings(mode: str, batch: int, *extra: str) -> list[str]:
    return [*MODES[mode]["bindings"], f"BATCH_SIZE = {batch}", *extra]


def _variant(dtype: str, remat: str) -> list[str]:
    return [f"COMPUTE_DTYPE = '{dtype}'", f"REMAT = '{remat}'"]


def estimate(mode: str) -> list[dict]:
    """The dry run's numbers: Amos' step compiled from shapes on this process's backend,
    in each of VARIANTS."""
    batch = MODES[mode]["batch"]
    return [
        train_lib.step_memory(build("amos", _bindings(mode, batch, *_variant(*v)))).as_dict()
        for v in MODES[mode]["variants"]
    ]


def start_cpu_estimate(mode: str, log: Path) -> subprocess.Popen:
    """The dry run's estimates, in a CPU process (JAX_PLATFORMS=cpu, one device: the batch
    per device is the whole batch) that runs beside the device's checks."""
    cmd = [sys.executable, __file__, "--part", "estimate", "--mode", mode]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    with open(log, "w") as err:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )


def cpu_estimates(proc: subprocess.Popen, log: Path) -> list[dict]:
    out, _ = proc.communicate(timeout=400)
    if proc.returncode:
        raise RuntimeError(f"the CPU estimate failed: {log.read_text()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def check_memory(mode: str) -> dict:
    """Part 1 on the device: the step compiled in each setting, and the peak of a few real
    steps of the first (before any other check has used the device's memory)."""
    batch, variants = MODES[mode]["batch"], MODES[mode]["variants"]
    trainer = build("amos", _bindings(mode, batch, *_variant(*variants[0])))
    compiled, seconds = train_lib.compile_train_step(trainer)
    device = train_lib.compiled_step_memory(trainer, compiled, batch, seconds).as_dict()
    state = trainer.init_state(trainer.config.seed)
    for step in range(1, MODES[mode]["memory_steps"] + 1):
        state, metrics = compiled(state, trainer.train_batch(step))
    loss = float(jax.device_get(metrics["loss"]))
    stats = jax.local_devices()[0].memory_stats()  # None on a CPU.
    del state, compiled
    device_variants = [device]
    for dtype, remat in variants[1:]:
        other = build("amos", _bindings(mode, batch, *_variant(dtype, remat)))
        device_variants.append(train_lib.step_memory(other).as_dict())
    return {
        "experiment": EXPERIMENT,
        "optimizer": "amos",
        "batch_size": batch,
        "device_compile": device,
        "device_variants": device_variants,
        "measured": {
            "steps": MODES[mode]["memory_steps"],
            "last_loss": loss,
            "peak_bytes_in_use": stats.get("peak_bytes_in_use") if stats else None,
            "bytes_limit": stats.get("bytes_limit") if stats else None,
            "what": "the device's peak bytes in use over the initial state and the steps "
            "(Device.memory_stats(); None on a CPU)",
        },
    }


def add_cpu_estimates(memory: dict, mode: str, cpu_variants: list[dict]) -> dict:
    """Part 1 complete: the dry run's estimates beside the device's numbers."""
    cpu, device = cpu_variants[0], memory["device_compile"]
    peak = memory["measured"]["peak_bytes_in_use"]
    pairs = zip(MODES[mode]["variants"], cpu_variants, memory.pop("device_variants"), strict=True)
    return {
        **memory,
        "cpu_estimate": cpu,
        "variants": [
            {"compute_dtype": dtype, "remat": remat, "cpu_estimate": c, "device_compile": d}
            for (dtype, remat), c, d in pairs
        ],
        "ratios": {
            "cpu_estimate_to_device_compile": cpu["total_bytes"] / device["total_bytes"],
            "device_compile_to_peak": device["total_bytes"] / peak if peak else None,
            "cpu_estimate_to_peak": cpu["total_bytes"] / peak if peak else None,
        },
    }


def check_step_times(mode: str) -> list[dict]:
    """Part 2: steps/s and tokens/s per optimizer and compute dtype."""
    batch, steps = MODES[mode]["batch"], MODES[mode]["timed_steps"]
    rows = []
    for optimizer, dtype in MODES[mode]["timed"]:
        trainer = build(optimizer, _bindings(mode, batch, f"COMPUTE_DTYPE = '{dtype}'"))
        compiled, compile_seconds = train_lib.compile_train_step(trainer)
        memory = train_lib.compiled_step_memory(trainer, compiled, batch, compile_seconds)
        state = trainer.init_state(trainer.config.seed)
        batches = [trainer.train_batch(s) for s in range(1, steps + 3)]
        for b in batches[:2]:  # Warm-up: the first runs pay for allocation.
            state, metrics = compiled(state, b)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for b in batches[2:]:
            state, metrics = compiled(state, b)
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        loss = float(jax.device_get(metrics["loss"]))
        del state, batches
        rows.append(
            {
                "optimizer": optimizer,
                "compute_dtype": dtype,
                "batch_size": batch,
                "timed_steps": steps,
                "steps_per_sec": steps / seconds,
                f"{trainer.unit_name}_per_sec": steps * trainer.units_per_batch / seconds,
                "compile_seconds": compile_seconds,
                "compiled_total_bytes": memory.total_bytes,
                "last_loss": loss,
            }
        )
        print(
            f"  {optimizer} {dtype}: {rows[-1]['steps_per_sec']:.2f} steps/s "
            f"(compiled in {compile_seconds:.1f} s)",
            flush=True,
        )
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(model_dir: Path) -> dict[str, float]:
    """{'<split> <step>': loss} of a run's metrics.jsonl."""
    out = {}
    for line in (model_dir / run_folder.METRICS_JSONL).read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[f"{record['split']} {record['step']}"] = record["loss"]
    return out


def check_two_processes(mode: str, work: Path) -> dict:
    """Part 3: two `run.py --distributed=on` processes against one on two CPU devices."""
    steps = MODES[mode]["mp_steps"]
    common = [*TINY_QUICKSTART, f"--gin.TRAIN_STEPS={steps}", f"--gin.EVAL_EVERY={steps}"]
    run_py = [sys.executable, str(REPO / "launch" / "run.py")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    start = time.perf_counter()
    port, two, one = _free_port(), work / "two_processes", work / "one_process"
    runs = [  # (command, extra environment, log name): all three at once.
        (
            [
                *run_py,
                *common,
                f"--gin.MODEL_DIR='{two}'",
                "--distributed=on",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={index}",
            ],
            {},
            f"process_{index}.log",
        )
        for index in range(2)
    ]
    runs.append(
        (
            [*run_py, *common, f"--gin.MODEL_DIR='{one}'"],
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            "one_process.log",
        )
    )
    procs = []
    for cmd, extra, name in runs:
        log = open(work / name, "w")  # noqa: SIM115 (closed below)
        procs.append(
            (subprocess.Popen(cmd, cwd=REPO, env={**env, **extra}, stdout=log, stderr=log), log)
        )
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=300))
        finally:
            log.close()
    record = {
        "steps": steps,
        "exit_codes": codes[:2],
        "reference_exit_code": codes[2],
        "seconds": time.perf_counter() - start,
    }
    if any(codes):
        logs = "".join((work / name).read_text()[-1500:] for _, _, name in runs)
        raise RuntimeError(f"two-process run failed: {record}\n{logs}")
    run_info = json.loads((two / run_folder.RUN_JSON).read_text())
    a, b = _losses(two), _losses(one)
    diff = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b)
    record.update(
        process_count=run_info["machine"]["process_count"],
        device_count=run_info["machine"]["device_count"],
        mesh=json.loads((two / run_folder.FINAL_JSON).read_text()).get("mesh"),
        losses_two_processes=a,
        losses_one_process=b,
        max_relative_difference=diff,
        tolerance=MP_TOLERANCE,
        same_losses=sorted(a) == sorted(b) and diff <= MP_TOLERANCE,
    )
    return record


def report(record: dict) -> list[str]:
    """gpu_check.md: the three parts as tables."""
    m = record["memory"]
    cpu, dev, measured = m["cpu_estimate"], m["device_compile"], m["measured"]
    peak = measured["peak_bytes_in_use"]
    lines = [
        f"# GPU check ({record['mode']})",
        "",
        f"command: `{' '.join(record['command'])}`  ",
        f"git: {record['git']['revision']} (dirty: {record['git']['dirty']}); machine: "
        f"{record['machine']['device_count']} x {record['machine']['device_kind']} "
        f"({record['machine']['backend']}), {record['machine']['cpu_count']} CPUs; "
        f"jax {record['packages'].get('jax')}",
        "",
        f"## Memory per device: the dry run's estimate against the device "
        f"({m['experiment']}, {m['optimizer']}, batch {m['batch_size']})",
        "",
        "| | arguments | outputs | aliased | temporaries | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, s in [
        ("dry run: compiled for the CPU", cpu),
        (f"compiled for {dev['backend']}", dev),
    ]:
        cells = [s[k] for k in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes")]
        lines.append(
            f"| {label} | " + " | ".join(format_bytes(c) for c in [*cells, s["total_bytes"]]) + " |"
        )
    lines += [
        f"| measured peak in use over {measured['steps']} steps | | | | | "
        f"{format_bytes(peak) if peak else 'n/a (no device memory stats)'} |",
        "",
        f"CPU estimate / device compile: {m['ratios']['cpu_estimate_to_device_compile']:.3f}"
        + (
            f"; device compile / measured peak: {m['ratios']['device_compile_to_peak']:.3f}"
            if peak
            else ""
        ),
        "",
        "What each setting saves, compiled for the CPU (the dry run there) and for the "
        "device: total per device, and its ratio to float32 without remat; FLOPs per step",
        "",
        "| COMPUTE_DTYPE | REMAT | CPU total | ratio | device total | ratio | device FLOPs |",
        "|---|---|---:|---:|---:|---:|---:|",
        *_variant_rows(m["variants"]),
        "",
        "## Step times",
        "",
        "| optimizer | compute dtype | batch | steps/s | tokens/s | compile (s) | compiled total |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["step_times"]:
        per_sec = next(v for k, v in r.items() if k.endswith("_per_sec") and k != "steps_per_sec")
        lines.append(
            f"| {r['optimizer']} | {r['compute_dtype']} | {r['batch_size']} | "
            f"{r['steps_per_sec']:.2f} | {per_sec:,.0f} | {r['compile_seconds']:.1f} | "
            f"{format_bytes(r['compiled_total_bytes'])} |"
        )
    mp = record["two_processes"]
    lines += [
        "",
        "## Two processes",
        "",
        f"{mp['process_count']} processes, {mp['device_count']} CPU devices, mesh {mp['mesh']}, "
        f"{mp['steps']} steps: losses {'match' if mp['same_losses'] else 'DIFFER from'} one "
        f"process on two devices (largest relative difference "
        f"{mp['max_relative_difference']:.2e}, tolerance {mp['tolerance']:.0e}).",
    ]
    return lines


def _variant_rows(variants: list[dict]) -> list[str]:
    base_cpu = variants[0]["cpu_estimate"]["total_bytes"]
    base_dev = variants[0]["device_compile"]["total_bytes"]
    rows = []
    for v in variants:
        cpu, dev = v["cpu_estimate"]["total_bytes"], v["device_compile"]["total_bytes"]
        flops = v["device_compile"]["flops"]
        rows.append(
            f"| {v['compute_dtype']} | {v['remat']} | {format_bytes(cpu)} | "
            f"{cpu / base_cpu:.3f} | {format_bytes(dev)} | {dev / base_dev:.3f} | "
            f"{'n/a' if flops is None else f'{flops:.4g}'} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="full")
    p.add_argument("--out", default=str(REPO / "results" / "gpu"))
    p.add_argument("--part", choices=["all", "estimate"], default="all")
    args = p.parse_args(argv)
    if args.part == "estimate":  # The CPU process beside the device's checks.
        print(json.dumps(estimate(args.mode)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "mode": args.mode,
        "command": [sys.executable, *(sys.argv if argv is None else ["gpu_check.py", *argv])],
        "git": provenance.git_revision(),
        "machine": provenance.describe_machine(),
        "packages": provenance.package_versions(),
    }

    def save() -> None:  # After each part: a run cut short keeps what it measured.
        (out / "gpu_check.json").write_text(json.dumps(record, indent=1) + "\n")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        log = Path(work) / "cpu_estimate.log"
        estimate_process = start_cpu_estimate(args.mode, log)
        print("[gpu_check] memory on the device (the dry run's CPU estimate beside)", flush=True)
        record["memory"] = check_memory(args.mode)
        save()
        print("[gpu_check] step times", flush=True)
        record["step_times"] = check_step_times(args.mode)
        save()
        print("[gpu_check] two processes", flush=True)
        record["two_processes"] = check_two_processes(args.mode, Path(work))
        save()
        print("[gpu_check] the dry run's CPU estimate", flush=True)
        cpu = cpu_estimates(estimate_process, log)
        record["memory"] = add_cpu_estimates(record["memory"], args.mode, cpu)
    record["seconds"] = time.perf_counter() - start
    save()
    (out / "gpu_check.md").write_text("\n".join(report(record)) + "\n")
    print("\n".join(report(record)))
    return 0 if record["two_processes"]["same_losses"] else 1


if __name__ == "__main__":
    sys.exit(main())
