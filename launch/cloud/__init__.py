"""Launch tools for Cloud TPU VMs, single GPU nodes and SLURM GPU clusters.

Each tool is a stdlib-only CLI that prints every shell command before it runs it, and
with `--dry_run` only prints them: `tpu_vm.py`, `gpu_node.py`, `slurm.py`.
"""
