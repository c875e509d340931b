#!/usr/bin/env bash
# The checks to run whenever a GPU is at hand, in one go (under 8 minutes on one GPU):
#   1. the dry run's memory estimate (the train step compiled for the CPU, as
#      `launch/run.py --dry_run` does on a machine without an accelerator) against the
#      same step compiled for the GPU and the GPU's measured peak over a few real steps,
#      and what bfloat16 and REMAT save on each;
#   2. BERT-base step times with Amos and AdamW, in float32 and bfloat16;
#   3. a short two-process run (`launch/run.py --distributed=on`, CPU devices) against one
#      process on two devices.
# Results: <out>/gpu_check.json and gpu_check.md, with command, git revision, machine and
# packages (benchmarks/gpu_check.py does the work).
#
#   benchmarks/gpu_check.sh [--out DIR]      # on a GPU machine (default DIR: results/gpu)
#   benchmarks/gpu_check.sh --smoke --out DIR  # the same at tiny size on the CPU (CI)
#
# The venv needs JAX's CUDA build for the full mode (`python3 launch/cloud/gpu_node.py
# --setup` installs it); PYTHON overrides the interpreter (default .venv/bin/python).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
mode=full
out=results/gpu
while (($#)); do
  case "$1" in
    --smoke) mode=smoke ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    --out=*) out=${1#--out=} ;;
    -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (--smoke, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

unset XLA_FLAGS  # Each part sets the devices it needs.
if [[ $mode == smoke ]]; then
  export JAX_PLATFORMS=cpu
  limit=300
else
  backend=$("$python" -c 'import jax; print(jax.default_backend())')
  if [[ $backend != gpu ]]; then
    echo "gpu_check.sh: JAX's backend is '$backend', not 'gpu' (install jax[cuda12]:" \
      "python3 launch/cloud/gpu_node.py --setup); --smoke runs the checks on the CPU" >&2
    exit 2
  fi
  limit=480  # 8 minutes, all parts together.
fi

mkdir -p "$out"
timeout --kill-after=10 "$limit" "$python" benchmarks/gpu_check.py --mode "$mode" --out "$out"
echo "gpu_check.sh: wrote $out/gpu_check.json and $out/gpu_check.md"
