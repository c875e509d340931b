"""A model gin file as run.py reads it: the model it builds and the Amos rules it binds.

The model tests compare these with the reference tables written in the tests.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

import amos

GIN_DIR = Path(__file__).resolve().parents[2] / "gin_configs"


@dataclasses.dataclass
class ModelFile:
    model: nn.Module
    eta_fn: amos.ParamsFn
    shape_fn: amos.ParamsFn
    # The bound rule maps themselves (None when the file binds none).
    gains: dict[str, Any] | None
    eta_overrides: dict[str, Any] | None
    shape_overrides: dict[str, Any] | None


def load_model_file(name: str, vocab_size: int, bindings: tuple[str, ...] = ()) -> ModelFile:
    """Parses ``gin_configs/models/<name>`` (plus ``bindings``, e.g. the data file's
    ``SEQ_LENGTH``), builds ``train.model`` for ``vocab_size`` and the Amos ``eta_fn`` /
    ``shape_fn`` that ``amos_optimizer`` gets from the bound ``gains`` / ``eta_overrides``
    / ``shape_overrides``."""
    import launch.configurables  # noqa: F401  (registers train, the models, amos_optimizer)

    def query(parameter: str) -> Any:
        try:
            return gin.query_parameter(parameter)
        except ValueError:  # Not bound.
            return None

    with gin.unlock_config():
        gin.clear_config()
        gin.add_config_file_search_path(str(GIN_DIR))
        logging.disable(logging.ERROR)  # gin logs every search path a file is not under.
        try:
            gin.parse_config_files_and_bindings([str(GIN_DIR / "models" / name)], bindings)
        finally:
            logging.disable(logging.NOTSET)
        try:
            factory = query("train.model")
            model = factory.scoped_configurable_fn(vocab_size)
            gains = query("amos_optimizer.gains")
            eta_overrides = query("amos_optimizer.eta_overrides")
            shape_overrides = query("amos_optimizer.shape_overrides")
            assert query("amos_optimizer.eta_fn") is None, "no eta_fn wrappers any more"
            assert query("amos_optimizer.shape_fn") is None, "no shape_fn wrappers any more"
        finally:
            gin.clear_config()
    return ModelFile(
        model,
        amos.default_eta_fn(gains, eta_overrides),
        amos.default_shape_fn(shape_overrides),
        gains,
        eta_overrides,
        shape_overrides,
    )


def abstract_params(model: nn.Module, *inputs: jax.ShapeDtypeStruct) -> Any:
    """Parameter shapes from ``jax.eval_shape``: nothing is allocated."""
    return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *inputs)["params"]


def int_input(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.int32)
