"""Makes what the config files name resolvable by gin, found by convention rather than
listed: `amos/` and `experiments/` stay free of gin, and a new family, task or source is
named in gin by adding its file.

- Models: every function `<name>_model` or `<name>_classifier` defined in
  `experiments/<family>/models.py` (`@gpt_model`, `@bert_model`, `@resnet_model`, ...),
  called by the trainer with `**task.model_kwargs()`.
- Data: every class `<Name>Task` or `<Name>Source` defined in a module of
  `experiments/data/` (`@CharTextTask()`, `@TfdsSource()`, ...).
- Optimizers: every `<name>_optimizer` of `launch/optimizers.py` (`@amos_optimizer`,
  `@adamw_optimizer`, the plug-and-play arms), `@train_examples` and `@xi_guidance`.

Each family's Amos eta and slot rules are plain rule maps bound in its model gin file
(`amos_optimizer.gains`, `eta_overrides`, `shape_overrides`)."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import gin

import experiments
from launch import optimizers
from launch.trainer import config as _train_config  # noqa: F401  (registers `train`)

EXPERIMENTS = Path(experiments.__file__).resolve().parent
MODEL_FACTORY = re.compile(r"^[a-z][a-z0-9_]*_(model|classifier)$")
DATA_CLASS = re.compile(r"^[A-Z][A-Za-z0-9]*(Task|Source)$")


def _modules(pattern: str) -> Iterator[ModuleType]:
    """The modules of `experiments/` whose files match `pattern` (a glob), imported."""
    for path in sorted(EXPERIMENTS.glob(pattern)):
        parts = path.relative_to(EXPERIMENTS.parent).with_suffix("").parts
        yield importlib.import_module(".".join(parts))


def _defined(module: ModuleType, name_pattern: re.Pattern) -> Iterator[tuple[str, object]]:
    """The functions and classes `module` itself defines whose names match."""
    for name, value in vars(module).items():
        if name_pattern.match(name) and (inspect.isfunction(value) or inspect.isclass(value)):
            if value.__module__ == module.__name__:
                yield name, value


def register_all() -> None:
    """Registers every model factory and data class (module docstring) and the optimizers
    with gin, under their own names; two with one name are an error naming it."""
    found = [
        *(item for m in _modules("*/models.py") for item in _defined(m, MODEL_FACTORY)),
        *(item for m in _modules("data/*.py") for item in _defined(m, DATA_CLASS)),
        *(
            (name, value)
            for name, value in vars(optimizers).items()
            if name.endswith("_optimizer") and callable(value)
        ),
        ("train_examples", optimizers.train_examples),
        ("xi_guidance", optimizers.xi_guidance),
    ]
    names = [name for name, _ in found]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise RuntimeError(f"two definitions of {clashes} for gin; rename one")
    for name, value in found:
        gin.external_configurable(value, name)


register_all()
