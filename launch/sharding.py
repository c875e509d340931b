"""The device mesh and the shardings of the train state and the batch (launch/train.py).

The mesh has two axes, ``data`` and ``fsdp`` (``train.mesh_shape``, macros ``MESH_DATA``
and ``MESH_FSDP``; -1 takes the devices left over). The batch is split over both, so
every device computes on its own rows; the parameters and the optimizer state are split
over ``fsdp`` only (FSDP / ZeRO-3 style: XLA gathers a parameter where a step needs it):

* a parameter is split along its largest axis whose size the ``fsdp`` size divides (the
  first such axis among equal sizes), and replicated when no axis divides or when it has
  fewer than ``train.fsdp_min_size`` elements (biases and norm scales: gathering them
  costs more than they take);
* optimizer slots follow their parameters through ``amos.slot_shardings``: a full-size
  slot (Adam's moments, Amos' momentum) takes its parameter's spec, a factored one (Amos'
  ``v`` and ``b``) keeps it on its full axes and leaves the reduced axes unsharded; step
  counts and scalars are replicated. This works for any optax state;
* the step counter and the non-parameter collections (batch statistics, the LSTM's
  carried state) are replicated.

With ``fsdp = 1`` (the default) everything but the batch is replicated: plain data
parallelism over every device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import amos
from amos.tree import named_leaves, path_name
from experiments.errors import ConfigError

MESH_AXES = ("data", "fsdp")
# The batch's leading axis is split over every device.
BATCH_AXES = ("data", "fsdp")
# Where the mesh is bound (ConfigError messages name it).
MESH_BINDING = "train.mesh_shape (MESH_DATA, MESH_FSDP)"


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """``{'data': d, 'fsdp': f}`` with d * f = ``num_devices``: one axis may be -1 (the
    devices left over); a missing axis has size 1."""
    if not isinstance(mesh_shape, Mapping):
        raise ConfigError(
            f"{MESH_BINDING} must be a dict like {{'data': -1, 'fsdp': 1}}, got {mesh_shape!r}"
        )
    unknown = sorted(set(mesh_shape) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"{MESH_BINDING}: unknown mesh axes {unknown} (axes: {MESH_AXES})")
    shape = {axis: mesh_shape.get(axis, 1) for axis in MESH_AXES}
    for axis, size in shape.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(
                f"{MESH_BINDING}: the {axis!r} axis must be a positive integer or -1 (the "
                f"devices left over), got {size!r}"
            )
    free = [axis for axis, size in shape.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f"{MESH_BINDING}: only one axis can be -1, got {shape}")
    fixed = math.prod(size for size in shape.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"{MESH_BINDING}: {shape} does not fit the {num_devices} devices "
                f"({num_devices} is not divisible by {fixed})"
            )
        shape[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"{MESH_BINDING}: {shape} makes {fixed} devices, but there are {num_devices} "
            "(use -1 for one axis to take the devices left over)"
        )
    return shape


def make_mesh(
    mesh_shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """The ('data', 'fsdp') mesh of ``devices`` (all of them by default), in their order,
    so that each host's devices hold a contiguous block of the batch rows."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh_shape or {"data": -1}, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([shape[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """The PartitionSpec of a parameter of ``shape``: its largest axis that ``fsdp_size``
    divides on ``fsdp``; replicated (``P()``) when none does, when ``fsdp_size`` is 1 or
    when the parameter has fewer than ``min_size`` elements."""
    shape = tuple(shape)
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    divisible = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda i: (shape[i], -i))  # The largest; the first of ties.
    return P(*(("fsdp" if i == axis else None) for i in range(len(shape))))


def param_specs(params: Any, mesh: Mesh, min_size: int) -> Any:
    """A tree like ``params`` (arrays or ShapeDtypeStructs) of PartitionSpecs."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(lambda x: fsdp_spec(x.shape, fsdp, min_size), params)


def named(mesh: Mesh, specs: Any) -> Any:
    """``specs`` (a tree of PartitionSpecs) as NamedShardings on ``mesh``."""
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
    )


def opt_state_shardings(opt_state: Any, params: Any, mesh: Mesh, min_size: int) -> Any:
    """The NamedShardings of an optimizer state (any optax state, or its eval_shape):
    every slot like its parameter, reduced axes of factored slots unsharded."""
    return amos.slot_shardings(opt_state, params, param_specs(params, mesh, min_size), mesh)


def state_shardings(abstract_state: Any, mesh: Mesh, min_size: int) -> Any:
    """The NamedShardings of a train state (``launch.train.TrainState``, or its
    ``jax.eval_shape``): parameters FSDP-style, optimizer slots like their parameters
    (``amos.slot_shardings``), everything else replicated."""
    replicated = NamedSharding(mesh, P())
    params = abstract_state.params
    specs = param_specs(params, mesh, min_size)
    return abstract_state.replace(
        step=replicated,
        params=named(mesh, specs),
        model_state=jax.tree_util.tree_map(lambda _: replicated, abstract_state.model_state),
        opt_state=amos.slot_shardings(abstract_state.opt_state, params, specs, mesh),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch's rows split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


# ---------------------------------------------------------------------- bytes
def _itemsize(x: Any) -> int:
    return np.dtype(x.dtype).itemsize


def total_bytes(tree: Any) -> int:
    """Bytes of every array (or ShapeDtypeStruct) of ``tree``, unsharded."""
    return int(sum(math.prod(x.shape) * _itemsize(x) for x in jax.tree_util.tree_leaves(tree)))


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of ``tree`` laid out by ``shardings`` (a like tree of
    NamedShardings), from the shard shapes: nothing needs to be allocated. Every device
    holds the same amount under these shardings (an axis is only split where it divides)."""
    leaves = jax.tree_util.tree_leaves(tree)
    specs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    return int(
        sum(
            math.prod(s.shard_shape(tuple(x.shape))) * _itemsize(x)
            for x, s in zip(leaves, specs, strict=True)
        )
    )


def addressable_bytes(tree: Any) -> int:
    """Bytes the most loaded local device holds of ``tree`` (jax.Arrays), counted from
    their ``addressable_shards``: what the arrays really take, per device."""
    per_device: dict[Any, int] = {}
    for x in jax.tree_util.tree_leaves(tree):
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_sharded(spec: P) -> bool:
    return any(axis is not None for axis in spec)


def sharding_table(params: Any, shardings: Any, top: int = 12) -> list[str]:
    """Lines of a table of the ``top`` largest variables: name, shape, dtype,
    PartitionSpec and bytes per device; a last line sums up the rest."""
    leaves, _ = named_leaves(params)
    specs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    rows = []
    for (path, x), s in zip(leaves, specs, strict=True):
        per_device = math.prod(s.shard_shape(tuple(x.shape))) * _itemsize(x)
        rows.append((math.prod(x.shape), path_name(path), x, s.spec, per_device))
    rows.sort(key=lambda r: -r[0])
    shown = rows[:top]
    width = max([len(r[1]) for r in shown] + [len("variable")])
    lines = [f"  {'variable':<{width}}  {'shape':<16} {'dtype':<8} {'spec':<24} per device"]
    for _, name, x, spec, per_device in shown:
        shape = "(" + ", ".join(str(d) for d in x.shape) + ")"
        lines.append(
            f"  {name:<{width}}  {shape:<16} {str(np.dtype(x.dtype)):<8} {str(spec):<24} "
            f"{format_bytes(per_device)}"
        )
    rest = rows[top:]
    if rest:
        n_rest = sum(r[0] for r in rest)
        bytes_rest = sum(r[4] for r in rest)
        replicated = sum(1 for r in rest if not is_sharded(r[3]))
        lines.append(
            f"  ... {len(rest)} more variables ({n_rest:,} parameters, {replicated} of them "
            f"replicated): {format_bytes(bytes_rest)} per device"
        )
    return lines


def dry_run_report(
    trainer: Any, arms: dict[str, Any], *, chosen: str, data_note: str, gin_files: list[str]
) -> list[str]:
    """The lines `run.py --dry_run` prints for a Trainer built on shapes alone
    (`launch.train.dry_run_trainer`). `arms` maps each optimizer's name to its abstract
    state and shardings, or to a line saying why it could not be built."""
    config, state, mesh = trainer.config, trainer.abstract_state, trainer.mesh
    params, param_shardings = state.params, trainer.state_sharding.params
    n_dev = mesh.devices.size
    param_total = total_bytes(params)
    param_device = per_device_bytes(params, param_shardings)
    leaves = jax.tree_util.tree_leaves(params)
    dtypes = sorted({str(np.dtype(x.dtype)) for x in leaves})
    lines = [
        "dry run: built from shapes (jax.eval_shape): nothing allocated, nothing written"
        + (f" (MODEL_DIR {config.model_dir!r} untouched)" if config.model_dir else ""),
        f"config: {' + '.join(gin_files)}",
        f"task: {type(getattr(trainer.task, 'wrapped', trainer.task)).__name__}; data: {data_note}",
        f"model: {type(trainer.model).__name__}("
        + ", ".join(f"{k}={v}" for k, v in trainer.task.model_kwargs().items())
        + ")",
        f"parameters: {trainer.num_params:,} ({len(leaves)} variables, "
        f"{format_bytes(param_total)} {'/'.join(dtypes)})",
        f"batch: {config.batch_size} examples per step, {config.batch_size // n_dev} per device: "
        + ", ".join(
            f"{k} {np.dtype(v.dtype)}{(config.batch_size, *v.shape[1:])}"
            for k, v in trainer.example_batch.items()
        ),
        f"mesh: {' x '.join(f'{a}={s}' for a, s in mesh.shape.items())} "
        f"({n_dev} {mesh.devices.flat[0].platform} devices); variables with fewer than "
        f"{config.fsdp_min_size} elements replicated (train.fsdp_min_size)",
        f"parameter bytes: {param_total:,} in all, {param_device:,} per device "
        f"({format_bytes(param_device)}, {param_device / max(param_total, 1):.3f} of all)",
        "optimizer slot bytes (in all, per device):",
    ]
    for name, arm in arms.items():
        tag = f"{name} (--optimizer)" if name == chosen else name
        if isinstance(arm, str):
            lines.append(f"  {tag:<20} {arm}")
            continue
        opt_state, shardings = arm
        total, device = total_bytes(opt_state), per_device_bytes(opt_state, shardings)
        lines.append(
            f"  {tag:<20} {total:>16,} ({format_bytes(total)}, {total / max(param_total, 1):.2f}"
            f" x parameters); per device {device:>16,} ({format_bytes(device)})"
        )
    opt_state, shardings = arms[chosen]
    whole = param_total + total_bytes(opt_state)
    device = param_device + per_device_bytes(opt_state, shardings)
    lines.append(
        f"per device, parameters + {chosen} slots: {device:,} bytes ({format_bytes(device)}), "
        f"{device / max(whole, 1):.4f} of the {whole:,} a replicated layout holds"
    )
    lines.append(f"largest variables (of {len(leaves)}) and their shardings:")
    lines.extend(sharding_table(params, param_shardings))
    return lines
