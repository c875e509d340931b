"""Shardings for optimizer slots, given the parameters' shardings.

A slot mirrors its parameter: a full-size slot (Amos' momentum, Adam's moments) takes the
parameter's ``PartitionSpec``; a factored slot keeps the spec on its full axes and leaves
its reduced (size-1) axes unsharded; scalar slots and step counts are replicated. With
these, ``jax.jit(update, in_shardings=..., out_shardings=...)`` keeps the optimizer state
spread over a ``Mesh`` like the parameters (FSDP-style or tensor-parallel alike).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from amos.tree import map_param_shaped


def _slot_spec(slot: Any, param: Any, spec: PartitionSpec | None) -> PartitionSpec:
    slot_shape, param_shape = tuple(slot.shape), tuple(param.shape)
    if spec is None or not slot_shape:
        return PartitionSpec()
    axes = tuple(spec) + (None,) * (len(param_shape) - len(spec))
    return PartitionSpec(
        *(axis if s == d else None for axis, s, d in zip(axes, slot_shape, param_shape))
    )


def slot_partition_specs(state: Any, params: optax.Params, param_specs: Any) -> Any:
    """A tree like ``state`` holding the ``PartitionSpec`` of every state array.

    Args:
      state: an optimizer state, or its ``jax.eval_shape``.
      params: the parameters (arrays or ``ShapeDtypeStruct``s).
      param_specs: a tree like ``params`` of ``PartitionSpec`` (``None`` = replicated).
    """
    params_treedef = jax.tree_util.tree_structure(params)
    flat_params = params_treedef.flatten_up_to(params)
    flat_specs = params_treedef.flatten_up_to(param_specs)

    def param_shaped(tree: Any) -> Any:
        slots = params_treedef.flatten_up_to(tree)
        return params_treedef.unflatten(
            [
                None if slot is None else _slot_spec(slot, param, spec)
                for slot, param, spec in zip(slots, flat_params, flat_specs)
            ]
        )

    return map_param_shaped(state, params_treedef, param_shaped, lambda _: PartitionSpec())


def slot_shardings(state: Any, params: optax.Params, param_specs: Any, mesh: Mesh) -> Any:
    """:func:`slot_partition_specs` as ``NamedSharding``s on ``mesh``."""
    specs = slot_partition_specs(state, params, param_specs)
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
