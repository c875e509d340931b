"""Executes the notebooks headless: each jupytext percent source ``notebooks/<name>.py``
runs in a fresh kernel of this interpreter, from the repository root, and is saved with
its outputs as ``notebooks/executed/<name>.ipynb`` (not versioned).

  .venv/bin/python notebooks/execute.py [NAME ...]    # `make notebooks`: all of them

The kernel is this Python (``sys.executable``) through a kernelspec written to a
temporary directory, so no installed Jupyter kernel, PATH or activated venv is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NOTEBOOKS = Path(__file__).resolve().parent
REPO = NOTEBOOKS.parent
EXECUTED = NOTEBOOKS / "executed"
KERNEL = "amos-notebooks"


def sources() -> list[Path]:
    """The notebooks: ``notebooks/*.py`` files with percent-format cells."""
    return sorted(p for p in NOTEBOOKS.glob("*.py") if "\n# %%" in p.read_text())


def kernel_manager_class(spec_dir: Path) -> type[AsyncKernelManager]:
    """A manager class whose kernel ``KERNEL`` is ``sys.executable -m ipykernel_launcher``,
    from a kernelspec written under ``spec_dir``. nbclient starts it and shuts it down."""
    kernel_dir = spec_dir / KERNEL
    kernel_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))

    class Manager(AsyncKernelManager):
        @default("transport")
        def _local_sockets(self) -> str:
            return "ipc"  # Unix sockets, not open TCP ports.

        @default("ip")
        def _sockets_path(self) -> str:  # Absolute: the kernel runs in another directory.
            return str(spec_dir / "kernel-ipc")

        @default("kernel_spec_manager")
        def _only_this_kernelspec(self) -> KernelSpecManager:
            return KernelSpecManager(kernel_dirs=[str(spec_dir)])

    return Manager


def execute(
    source: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> nbformat.NotebookNode:
    """Runs every cell of ``source`` in a fresh kernel from the repository root; a cell
    that raises raises ``nbclient.exceptions.CellExecutionError``. ``env`` adds variables
    (``AMOS_RESULTS``, ``AMOS_NOTEBOOK_OUT``) to this process's environment."""
    notebook = jupytext.read(source)
    bin_dir = str(Path(sys.executable).parent)
    kernel_env = {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
        **(env or {}),
    }
    with tempfile.TemporaryDirectory() as spec_dir:
        client = NotebookClient(
            notebook,
            kernel_name=KERNEL,
            kernel_manager_class=kernel_manager_class(Path(spec_dir)),
            timeout=timeout,
            resources={"metadata": {"path": str(REPO)}},
        )
        client.execute(cwd=str(REPO), env=kernel_env)
    return notebook


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="notebook names (default: all)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = p.parse_args(argv)
    chosen = [s for s in sources() if not args.names or s.stem in args.names]
    unknown = set(args.names) - {s.stem for s in chosen}
    if unknown:
        p.error(f"no notebook {sorted(unknown)}; have {[s.stem for s in sources()]}")
    EXECUTED.mkdir(exist_ok=True)
    for source in chosen:
        print(f"[notebooks] {source.relative_to(REPO)}", flush=True)
        notebook = execute(source, timeout=args.timeout)
        nbformat.write(notebook, EXECUTED / f"{source.stem}.ipynb")
    print(f"[notebooks] executed notebooks in {EXECUTED.relative_to(REPO)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
