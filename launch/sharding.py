"""The device mesh and the shardings of the train state and the batch (launch/trainer/).

The mesh has three axes, ``data``, ``fsdp`` and ``model`` (``train.mesh_shape``, macros
``MESH_DATA``, ``MESH_FSDP`` and ``MESH_MODEL``; -1 takes the devices left over), laid
out in that order over the devices, so that a ``model`` group is adjacent devices (as
t5x and MaxText place it). The batch is split over ``data`` and ``fsdp`` and replicated
over ``model``; the parameters and the optimizer state are split over ``model`` (tensor
parallelism) and ``fsdp`` (FSDP / ZeRO-3 style: XLA gathers a parameter where a step
needs it):

* ``model``: through logical axis names, as t5x and MaxText do. The Transformer models
  name the axes of their kernels and embeddings (``experiments.layers.with_logical_axes``:
  ``vocab``, ``embed``, ``mlp``, ``joined_kv``, ``heads``, ...), and a rules table maps
  names to mesh axes (``train.logical_axis_rules``, default ``LOGICAL_AXIS_RULES``: t5x's
  1-D model-parallel rules, ``vocab``, ``mlp``, ``heads`` and ``joined_kv`` on
  ``model``), so that the MLP's and the attention's matmuls and the vocabulary are split
  Megatron-style. A mesh axis of size 1 is left out of every spec, so with
  ``MESH_MODEL = 1`` (the default) the layout is the FSDP one below, unchanged. An axis
  that the ``model`` size does not divide is a ConfigError naming ``MESH_MODEL``. Models
  without names (ResNet, the LSTM) are replicated over ``model``;
* ``fsdp``: a parameter is split along its largest axis whose size the ``fsdp`` size
  divides, among those the rules left unsplit (the first such axis among equal sizes),
  and not split when no axis divides or when it has fewer than ``train.fsdp_min_size``
  elements (biases and norm scales: gathering them costs more than they take). Rules
  that map a name to ``fsdp`` themselves (MaxText's ``embed``) take its place;
* optimizer slots follow their parameters through ``amos.slot_shardings``: a full-size
  slot (Adam's moments, Amos' momentum) takes its parameter's spec, a factored one (Amos'
  ``v`` and ``b``) keeps it on its full axes and leaves the reduced axes unsharded; step
  counts and scalars are replicated. This works for any optax state;
* the step counter and the non-parameter collections (batch statistics, the LSTM's
  carried state) are replicated.

With ``fsdp = model = 1`` (the default) everything but the batch is replicated: plain
data parallelism over every device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import amos
from amos.tree import named_leaves, path_name
from experiments.errors import ConfigError

MESH_AXES = ("data", "fsdp", "model")
# The macro that sets each axis (ConfigError messages name it).
MESH_MACROS = {"data": "MESH_DATA", "fsdp": "MESH_FSDP", "model": "MESH_MODEL"}
# The batch's leading axis is split over these; it is replicated over `model`.
BATCH_AXES = ("data", "fsdp")
# Where the mesh is bound (ConfigError messages name it).
MESH_BINDING = "train.mesh_shape (MESH_DATA, MESH_FSDP, MESH_MODEL)"
RULES_BINDING = "train.logical_axis_rules"
# Logical axis name -> mesh axis (or axes, or None: not split), first match first, as
# `nn.logical_to_mesh_axes` reads them: t5x's `standard_logical_axis_rules` for 1-D model
# parallelism (t5x/partitioning.py), without the activation names ('batch', 'length'),
# which no model here constrains. 'embed' stays off `model`, so a matmul's two kernels
# split on one side each (Megatron): `wi` (embed, mlp) on its output, `wo` (mlp, embed)
# on its input, with one all-reduce between.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("embed", None),
    ("kv", None),
    ("relpos_buckets", None),
)


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """``{'data': d, 'fsdp': f, 'model': m}`` with d * f * m = ``num_devices``: one axis may
    be -1 (the devices left over); a missing axis has size 1."""
    if not isinstance(mesh_shape, Mapping):
        raise ConfigError(
            f"{MESH_BINDING} must be a dict like {{'data': -1, 'fsdp': 1, 'model': 1}}, got "
            f"{mesh_shape!r}"
        )
    unknown = sorted(set(mesh_shape) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"{MESH_BINDING}: unknown mesh axes {unknown} (axes: {MESH_AXES})")
    shape = {axis: mesh_shape.get(axis, 1) for axis in MESH_AXES}
    for axis, size in shape.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(
                f"{MESH_BINDING}: the {axis!r} axis ({MESH_MACROS[axis]}) must be a positive "
                f"integer or -1 (the devices left over), got {size!r}"
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
    """The ('data', 'fsdp', 'model') mesh of ``devices`` (all of them by default), in their
    order: each host's devices hold a contiguous block of the batch rows, and a ``model``
    group is consecutive devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh_shape or {"data": -1}, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([shape[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def check_logical_axis_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
    """``rules`` (``train.logical_axis_rules``) as a tuple of ``(logical name, mesh axes)``
    pairs, the mesh axes None, one of ``MESH_AXES`` or a tuple of them; a ConfigError
    naming the binding otherwise. gin's lists become tuples."""
    example = "e.g. [('mlp', 'model'), ('embed', None)]"
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ConfigError(f"{RULES_BINDING} must be a list of (name, mesh axes) pairs, {example}")
    checked = []
    for rule in rules:
        pair = isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
        if not pair or not isinstance(rule[0], str):
            raise ConfigError(
                f"{RULES_BINDING}: {rule!r} is not a (name, mesh axes) pair, {example}"
            )
        axes = rule[1]
        if isinstance(axes, Sequence) and not isinstance(axes, str):
            axes = tuple(axes)
        names = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if not isinstance(names, tuple) or not all(isinstance(a, str) for a in names):
            raise ConfigError(
                f"{RULES_BINDING}: {rule!r}: the mesh axes must be None, a name or a list "
                f"of names, {example}"
            )
        unknown = [a for a in names if a not in MESH_AXES]
        if unknown:
            raise ConfigError(
                f"{RULES_BINDING}: {rule!r} names mesh axes {unknown} that the mesh does not "
                f"have ({MESH_AXES})"
            )
        checked.append((rule[0], axes))
    return tuple(checked)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int, split: Sequence[Any] = ()) -> P:
    """The PartitionSpec of a parameter of ``shape``: its largest axis that ``fsdp_size``
    divides on ``fsdp``, among those not ``split`` already (``split``: one entry per axis,
    the mesh axes already on it or None, kept in the spec); replicated (``P()``) when none
    does, when ``fsdp_size`` is 1 or when the parameter has fewer than ``min_size``
    elements."""
    shape = tuple(shape)
    entries = list(split) + [None] * (len(shape) - len(split))
    if fsdp_size > 1 and math.prod(shape) >= min_size:
        free = [i for i, d in enumerate(shape) if entries[i] is None and d % fsdp_size == 0]
        if free:
            axis = max(free, key=lambda i: (shape[i], -i))  # The largest; the first of ties.
            entries[axis] = "fsdp"
    return P(*entries) if any(e is not None for e in entries) else P()


def _mesh_shape(mesh: Mesh | Mapping[str, int]) -> dict[str, int]:
    return dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)


def param_spec(
    name: str,
    shape: Sequence[int],
    logical: P | None,
    mesh: Mesh | Mapping[str, int],
    min_size: int,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> P:
    """The PartitionSpec of the parameter ``name`` of ``shape``, whose logical axis names
    are ``logical`` (``P()`` or None: none): the mesh axes ``rules`` give its names, less
    those of size 1, then ``fsdp`` as `fsdp_spec` places it where the rules put none. A
    named axis that its mesh axes do not divide is a ConfigError."""
    sizes = _mesh_shape(mesh)
    shape = tuple(shape)
    names = tuple(logical or ())
    entries: list[Any] = [None] * len(shape)
    if any(n is not None for n in names):
        mapped = nn.logical_to_mesh_axes(names, rules)
        for i, axes in enumerate(tuple(mapped)[: len(shape)]):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            live = tuple(a for a in axes if sizes.get(a, 1) > 1)
            if not live:
                continue
            split = math.prod(sizes[a] for a in live)
            if shape[i] % split:
                macros = " x ".join(f"{MESH_MACROS[a]}={sizes[a]}" for a in live)
                raise ConfigError(
                    f"{macros} does not divide axis {i} ({names[i]!r}, size {shape[i]}) of "
                    f"{name} {shape}, which {RULES_BINDING} splits over {' x '.join(live)}: "
                    f"choose a mesh size that divides it, or map {names[i]!r} to None in "
                    f"{RULES_BINDING}"
                )
            entries[i] = live[0] if len(live) == 1 else live
    if any("fsdp" in ((e,) if isinstance(e, str) else e or ()) for e in entries):
        return P(*entries)
    return fsdp_spec(shape, sizes.get("fsdp", 1), min_size, entries)


def logical_specs(params: Any) -> Any:
    """A tree like the unboxed ``params`` of the logical axis names of each parameter
    (``nn.get_partition_spec``): those of its ``nn.LogicallyPartitioned`` box, ``P()``
    for a parameter without one."""
    return nn.get_partition_spec(params)


def param_specs(
    params: Any,
    mesh: Mesh | Mapping[str, int],
    min_size: int,
    logical: Any = None,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> Any:
    """A tree like ``params`` (arrays or ShapeDtypeStructs, unboxed) of PartitionSpecs
    (`param_spec`); ``logical`` is a like tree of logical axis names (`logical_specs`),
    None for none."""
    leaves, treedef = named_leaves(params)
    names = [None] * len(leaves) if logical is None else treedef.flatten_up_to(logical)
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            param_spec(path_name(path), x.shape, n, mesh, min_size, rules)
            for (path, x), n in zip(leaves, names, strict=True)
        ],
    )


def named(mesh: Mesh, specs: Any) -> Any:
    """``specs`` (a tree of PartitionSpecs) as NamedShardings on ``mesh``."""
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
    )


def opt_state_shardings(opt_state: Any, params: Any, mesh: Mesh, min_size: int) -> Any:
    """The NamedShardings of an optimizer state (any optax state, or its eval_shape):
    every slot like its parameter, reduced axes of factored slots unsharded. A parameter
    that carries a NamedSharding (the Trainer's ``abstract_state.params``) is taken as laid
    out; one without gets the FSDP rule."""

    def spec(path, x):
        laid_out = getattr(x, "sharding", None)
        if isinstance(laid_out, NamedSharding):
            return laid_out.spec
        return param_spec(path_name(path), x.shape, None, mesh, min_size)

    leaves, treedef = named_leaves(params)
    specs = jax.tree_util.tree_unflatten(treedef, [spec(p, x) for p, x in leaves])
    return amos.slot_shardings(opt_state, params, specs, mesh)


def state_shardings(
    abstract_state: Any,
    mesh: Mesh,
    min_size: int,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> Any:
    """The NamedShardings of a train state (``launch.trainer.TrainState``, or its
    ``jax.eval_shape``): parameters by their logical axis names and ``rules``, and FSDP
    (`param_spec`), optimizer slots like their parameters (``amos.slot_shardings``),
    everything else replicated. Its parameters may be boxed in ``nn.LogicallyPartitioned``
    (the models' names, kept by ``launch.trainer.init_train_state`` for this); the shardings
    are a tree like the unboxed state."""
    replicated = NamedSharding(mesh, P())
    logical = logical_specs(abstract_state.params)
    state = nn.meta.unbox(abstract_state)
    params = state.params
    specs = param_specs(params, mesh, min_size, logical, rules)
    return state.replace(
        step=replicated,
        params=named(mesh, specs),
        model_state=jax.tree_util.tree_map(lambda _: replicated, state.model_state),
        opt_state=amos.slot_shardings(state.opt_state, params, specs, mesh),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch's rows split over the mesh's data and fsdp axes (every device when
    model = 1), replicated over model."""
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
    (`launch.trainer.dry_run_trainer`). `arms` maps each optimizer's name to its abstract
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


def memory_report(memory: Any, *, compute_dtype: str, remat: str | None) -> list[str]:
    """The lines `run.py --dry_run` prints for the compiled train step: XLA's memory
    analysis per device and the FLOPs (``memory``: a ``launch.trainer.StepMemory``)."""
    m = memory
    rows = [
        ("arguments", m.argument_bytes, "the train state and the batch"),
        ("outputs", m.output_bytes, "the new state and the metrics"),
        ("aliased", m.alias_bytes, "outputs written over the donated state: counted once"),
        ("temporaries", m.temp_bytes, "activations, gradients and the update's intermediates"),
        ("code", m.code_bytes, "generated code on the device"),
        ("total", m.total_bytes, "code + arguments + outputs - aliased + temporaries"),
    ]
    flops = "n/a" if m.flops is None else f"{m.flops:.4g}"
    caveat = []
    if m.backend == "cpu" and (compute_dtype != "float32" or remat not in (None, "none")):
        caveat = [
            "  on the CPU, bfloat16 is computed through float32 copies and a remat's "
            "recomputation adds temporaries of its own: the CPU's numbers barely fall with "
            "them, or rise, whatever they save on a GPU or TPU (a dry run there shows it)"
        ]
    return [
        f"compiled train step, per device (XLA's memory analysis; batch {m.batch_size}, "
        f"{m.per_device_batch} per device; COMPUTE_DTYPE {compute_dtype!r}, REMAT {remat!r}; "
        f"compiled from shapes for {m.backend} in {m.compile_seconds:.1f} s):",
        *(f"  {name:<12} {n:>18,} ({format_bytes(n):>10})  {what}" for name, n, what in rows),
        f"  FLOPs per step and device: {flops} (XLA's cost analysis)",
        f"  these are the {m.backend} compiler's numbers: a GPU's or TPU's compiler fuses, "
        "schedules and places buffers differently (and bfloat16 natively), so its need "
        "differs; benchmarks/gpu_check.sh compares the two on a GPU",
        *caveat,
    ]


def fit_report(name: str, fit: Any) -> str:
    """One line of `run.py --dry_run_fit`: an arm's largest batch per device that fits
    (``fit``: a ``launch.trainer.BatchFit``)."""
    shards = fit.fits.batch_size // fit.fits.per_device_batch if fit.fits else None
    if fit.batch_size is None:
        need = fit.next_fails
        return (
            f"  {name:<20} none: {need.per_device_batch} per device already needs "
            f"{format_bytes(need.total_bytes)}  [{fit.compiles} compiles]"
        )
    text = (
        f"  {name:<20} {fit.fits.per_device_batch:>6} per device (global {fit.batch_size}, "
        f"{shards} shards): {format_bytes(fit.fits.total_bytes)}"
    )
    if fit.capped:
        text += " (the largest tried)"
    elif fit.next_fails is not None:
        text += (
            f"; {fit.next_fails.per_device_batch} per device needs "
            f"{format_bytes(fit.next_fails.total_bytes)}"
        )
    return text + f"  [{fit.compiles} compiles]"
