"""Loads the public reference implementation, jestimator 0.3.3's ``amos.py``.

The package's ``__init__`` no longer imports on current JAX, so the file is loaded on its
own (it needs only jax, optax and flax). Install it with
``pip install --no-deps jestimator==0.3.3`` (requirements-test.txt).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_reference_amos() -> ModuleType | None:
    """The reference ``jestimator/amos.py`` module, or ``None`` when it is not installed."""
    spec = importlib.util.find_spec("jestimator")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "amos.py"
    module_spec = importlib.util.spec_from_file_location("jestimator_amos_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
