"""The parameters a fine-tuning run starts from (`INIT_FROM`), from three kinds of checkpoint.

`open_checkpoint(path, step)` recognizes, in this order:

* a MODEL_DIR of this repository: `path/checkpoints/<step>/state` (Orbax), the newest
  step or `INIT_FROM_STEP`; only the parameters are read (an Orbax partial restore, laid
  out directly in the run's shardings);
* a t5x checkpoint: `path` is a `checkpoint_<step>` directory holding t5x's msgpack file
  `checkpoint` (what t5x's `INITIAL_CHECKPOINT_PATH` names), or a directory of such
  directories (the newest, or `INIT_FROM_STEP`). Small arrays are inline in the msgpack;
  large ones are TensorStore arrays the msgpack points to by a path relative to the
  checkpoint directory. The parameters are the state dict's `target` (`optimizer/target`
  in t5x's older layout);
* a Flax / Orbax PyTree checkpoint (`orbax.checkpoint.PyTreeCheckpointer().save(path,
  tree)`, as Flax's examples write it): the parameters are the tree's `params` or `target`
  entry, or the whole tree.

The two foreign kinds go through one name map, `from_t5x`, so that t5x's T5 1.1
(t5x/examples/t5/network.py) loads into experiments/t5/models.py: the names are the same
except the relative-position table (`relpos_bias/rel_embedding`, `(heads, buckets)` in t5x;
`relpos_bias/relpos_embedding`, `(buckets, heads)` here), and t5x's attention projections
are 3-D (`DenseGeneral`: query/key/value `(embed, heads, head_dim)`, out `(heads, head_dim,
embed)`) where these are 2-D `(embed, heads * head_dim)` and `(heads * head_dim, embed)`,
with the heads in the same order. Any other name loads where it is the model's own name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from experiments.errors import ConfigError
from launch.summary_writer import join
from launch.trainer import run_folder
from launch.trainer.checkpoints import checkpoint_steps, quiet_absl

Path = tuple[str, ...]
Shapes = dict[Path, tuple[tuple[int, ...], Any]]

BINDING = "train.init_from (INIT_FROM)"
T5X_MSGPACK = "checkpoint"  # t5x's file in each checkpoint_<step> directory.
_T5X_STEP_DIR = re.compile(r"checkpoint_(\d+)$")


@dataclasses.dataclass
class PretrainedCheckpoint:
    """A checkpoint's parameters: their shapes (read without the arrays) and `load`, which
    returns the arrays of the paths asked for, laid out as the given abstract arrays
    (shape, dtype of the checkpoint, sharding of the run)."""

    path: str
    label: str  # "step 10", "t5x step 1000000", "Flax checkpoint": where messages say so.
    shapes: Shapes
    load: Callable[[dict[Path, jax.ShapeDtypeStruct]], dict[Path, jax.Array]]


def open_checkpoint(path: str, step: int | None) -> PretrainedCheckpoint:
    """The checkpoint `INIT_FROM = path` names (see the module docstring); a ConfigError
    naming the binding if there is none or the step is not there."""
    root = epath.Path(path)
    if (root / run_folder.CHECKPOINTS).is_dir():
        return _model_dir_checkpoint(path, step)
    if (root / T5X_MSGPACK).is_file():
        if step is not None:
            raise ConfigError(
                f"train.init_from_step (INIT_FROM_STEP) = {step}: {path} is one t5x checkpoint "
                "(a checkpoint_<step> directory); name its parent to choose a step"
            )
        return _t5x_checkpoint(path)
    t5x_steps = _t5x_steps(root) if root.is_dir() else {}
    if t5x_steps:
        chosen = max(t5x_steps) if step is None else step
        if chosen not in t5x_steps:
            raise ConfigError(
                f"train.init_from_step (INIT_FROM_STEP) = {step}: {path} has the t5x "
                f"checkpoints {sorted(t5x_steps)}"
            )
        return _t5x_checkpoint(t5x_steps[chosen])
    if root.is_dir() and _is_pytree_checkpoint(root):
        if step is not None:
            raise ConfigError(
                f"train.init_from_step (INIT_FROM_STEP) = {step}: {path} is one Flax/Orbax "
                "checkpoint, which has no steps to choose from"
            )
        return _pytree_checkpoint(path)
    raise ConfigError(
        f"{BINDING} = {path!r}: no checkpoint to start from (neither a MODEL_DIR with "
        "checkpoints/, nor a t5x checkpoint, nor a Flax/Orbax PyTree checkpoint)"
    )


# ---------------------------------------------------------------------- this repository
def _model_dir_checkpoint(path: str, step: int | None) -> PretrainedCheckpoint:
    source = join(path, run_folder.CHECKPOINTS)
    steps = checkpoint_steps(source)
    if not steps:
        raise ConfigError(
            f"{BINDING} = {path!r}: no checkpoint to start from ({source} holds none)"
        )
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ConfigError(
            f"train.init_from_step (INIT_FROM_STEP) = {step}: {source} has the steps {steps}"
        )
    item = join(source, str(step), "state")
    with quiet_absl():
        metadata = ocp.PyTreeCheckpointer().metadata(item).item_metadata.tree
    shapes = {
        name: (tuple(leaf.shape), leaf.dtype)
        for name, leaf in flax.traverse_util.flatten_dict(
            dict(metadata.get("params") or {})
        ).items()
    }

    def load(wanted: dict[Path, jax.ShapeDtypeStruct]) -> dict[Path, jax.Array]:
        # A partial restore of `params`: the optimizer state is never read.
        target = flax.traverse_util.unflatten_dict(wanted)
        restore_args = jax.tree_util.tree_map(
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), target
        )
        with quiet_absl():
            restored = ocp.PyTreeCheckpointer().restore(
                item,
                args=ocp.args.PyTreeRestore(
                    item={"params": target},
                    restore_args={"params": restore_args},
                    partial_restore=True,
                ),
            )["params"]
        return flax.traverse_util.flatten_dict(restored)

    return PretrainedCheckpoint(path, f"step {step}", shapes, load)


# ---------------------------------------------------------------------- foreign checkpoints
def _host_checkpoint(path: str, label: str, arrays: dict[Path, np.ndarray]) -> PretrainedCheckpoint:
    """A checkpoint read whole onto the host (foreign layouts), after `from_t5x`."""
    arrays = from_t5x(arrays)

    def load(wanted: dict[Path, jax.ShapeDtypeStruct]) -> dict[Path, jax.Array]:
        return {p: jax.device_put(arrays[p], x.sharding) for p, x in wanted.items()}

    shapes = {p: (tuple(a.shape), a.dtype) for p, a in arrays.items()}
    return PretrainedCheckpoint(path, label, shapes, load)


def _t5x_steps(root: epath.Path) -> dict[int, str]:
    found = {}
    for child in root.iterdir():
        match = _T5X_STEP_DIR.match(child.name)
        if match and (child / T5X_MSGPACK).is_file():
            found[int(match.group(1))] = str(child)
    return found


def _t5x_checkpoint(directory: str) -> PretrainedCheckpoint:
    """t5x's layout: a msgpack state dict whose array leaves are inline, or TensorStore
    specs (dicts with `driver`, `kvstore`, `metadata`) with a path relative to `directory`."""
    state = flax.serialization.msgpack_restore((epath.Path(directory) / T5X_MSGPACK).read_bytes())
    params = state.get("target")
    if params is None:
        params = (state.get("optimizer") or {}).get("target")
    if not isinstance(params, Mapping):
        raise ConfigError(
            f"{BINDING} = {directory!r}: a t5x checkpoint without parameters (no 'target' "
            f"or 'optimizer/target' in its state dict; it has {sorted(state)})"
        )
    arrays = {name: _read_t5x_leaf(directory, leaf) for name, leaf in _flatten_t5x(params).items()}
    match = _T5X_STEP_DIR.search(directory.rstrip("/"))
    label = f"t5x step {match.group(1)}" if match else "t5x checkpoint"
    return _host_checkpoint(directory, label, arrays)


def _is_tensorstore_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and {"driver", "kvstore"} <= set(value)


def _flatten_t5x(tree: Mapping) -> dict[Path, Any]:
    """Paths to leaves, a TensorStore spec (a dict itself) counting as one leaf."""
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and not _is_tensorstore_spec(value):
            out.update({(str(key), *rest): v for rest, v in _flatten_t5x(value).items()})
        else:
            out[(str(key),)] = value
    return out


def _read_t5x_leaf(directory: str, leaf: Any) -> np.ndarray:
    if not _is_tensorstore_spec(leaf):
        return np.asarray(leaf)
    import tensorstore as ts  # orbax's own dependency; needed only for these arrays.

    spec = dict(leaf)
    kvstore = dict(spec["kvstore"])
    relative = kvstore.get("path", spec.get("path", ""))
    bucket = re.fullmatch(r"gs://([^/]+)/?(.*)", directory)
    if bucket:  # t5x writes a placeholder bucket; the checkpoint's own is the real one.
        kvstore = {"driver": "gcs", "bucket": bucket.group(1)}
        kvstore["path"] = "/".join(p for p in (bucket.group(2).rstrip("/"), relative) if p)
    else:
        kvstore = {"driver": "file", "path": join(directory, relative)}
    spec["kvstore"] = kvstore
    spec.pop("path", None)
    return np.asarray(ts.open(spec, open=True).result().read().result())


def _is_pytree_checkpoint(root: epath.Path) -> bool:
    return any(
        (root / name).exists() for name in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
    )


def _pytree_checkpoint(path: str) -> PretrainedCheckpoint:
    with quiet_absl():
        checkpointer = ocp.PyTreeCheckpointer()
        metadata = checkpointer.metadata(path).item_metadata.tree
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(metadata)
        )
        tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    params = tree
    for key in ("params", "target"):
        if isinstance(tree, Mapping) and isinstance(tree.get(key), Mapping):
            params = tree[key]
            break
    arrays = {
        tuple(str(k) for k in name): np.asarray(leaf)
        for name, leaf in flax.traverse_util.flatten_dict(dict(params)).items()
    }
    return _host_checkpoint(path, "Flax checkpoint", arrays)


# ---------------------------------------------------------------------- t5x names
def from_t5x(arrays: Mapping[Path, np.ndarray]) -> dict[Path, np.ndarray]:
    """t5x T5 1.1 parameters under experiments/t5/models.py's names and shapes (module
    docstring); every other parameter as it is."""
    out = {}
    for name, array in arrays.items():
        if name[-2:] == ("relpos_bias", "rel_embedding") and array.ndim == 2:
            name, array = (*name[:-1], "relpos_embedding"), array.T
        elif name[-1] == "kernel" and array.ndim == 3 and len(name) >= 2:
            if name[-2] in ("query", "key", "value"):
                array = array.reshape(array.shape[0], -1)
            elif name[-2] == "out":
                array = array.reshape(-1, array.shape[-1])
        out[name] = array
    return out
