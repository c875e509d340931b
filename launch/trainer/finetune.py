"""Fine-tuning starts (`train.init_from`): another checkpoint's parameters copied into a
fresh train state by path, where their shapes match the model's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from experiments.errors import ConfigError
from launch import pretrained
from launch.trainer.state import TrainState


def load_pretrained(
    state: TrainState,
    init_from: str,
    init_from_step: int | None,
    *,
    with_params: Callable[[TrainState, Any], TrainState],
    say: Callable[[str], None],
) -> tuple[TrainState, dict[str, Any]]:
    """`state` with the parameters of `init_from`'s checkpoint copied in by path where
    the shapes match, and a report of what was loaded, what is fresh and what of the
    checkpoint went unused (the Trainer's `init_report`); the optimizer state is
    initialized afresh for the result (`with_params`), the non-parameter collections stay.

    `init_from` is another run's MODEL_DIR (its newest checkpoint, or
    `init_from_step`), a t5x checkpoint or a Flax/Orbax PyTree checkpoint
    (launch/pretrained.py, which maps t5x's T5 names). Only parameters are read. A
    variable of the model absent from the checkpoint keeps its initialization (a
    classifier head); one present with another shape, or a checkpoint sharing no
    variable with the model, is a ConfigError naming them with their shapes. `say`
    prints what was loaded, what is fresh and what of the checkpoint went unused."""
    checkpoint = pretrained.open_checkpoint(init_from, init_from_step)
    saved = checkpoint.shapes
    paths, leaves, treedef = _named_leaves(state.params)
    wanted = dict(zip(paths, leaves, strict=True))
    where = f"{pretrained.BINDING} = {init_from!r} ({checkpoint.label})"
    mismatched = [p for p in paths if p in saved and saved[p][0] != tuple(wanted[p].shape)]
    if mismatched:
        shown = "; ".join(
            f"{'/'.join(p)}: {saved[p][0]} in the checkpoint, {tuple(wanted[p].shape)} in the model"
            for p in mismatched[:_SHOWN]
        )
        more = f"; and {len(mismatched) - _SHOWN} more" if len(mismatched) > _SHOWN else ""
        raise ConfigError(
            f"{where}: {len(mismatched)} variable(s) have other shapes than the model's: "
            f"{shown}{more}"
        )
    loaded = [p for p in paths if p in saved]
    if not loaded:
        raise ConfigError(
            f"{where}: the checkpoint shares no variable with the model (checkpoint: "
            f"{_shapes(saved)}; model: "
            f"{_shapes({p: (tuple(wanted[p].shape), None) for p in paths})})"
        )
    restored = checkpoint.load(
        {
            p: jax.ShapeDtypeStruct(saved[p][0], saved[p][1], sharding=wanted[p].sharding)
            for p in loaded
        }
    )
    merged = [restored[p].astype(wanted[p].dtype) if p in restored else wanted[p] for p in paths]
    state = with_params(state, jax.tree_util.tree_unflatten(treedef, merged))
    fresh = [p for p in paths if p not in saved]
    unused = [p for p in saved if p not in wanted]
    names = lambda ps: ", ".join("/".join(p) for p in ps) or "none"  # noqa: E731
    say(
        f"init_from {init_from} ({checkpoint.label}): loaded {len(loaded)} of the "
        f"model's {len(paths)} variables; fresh (initialized here): {names(fresh)}; "
        f"unused from the checkpoint: {names(unused)}"
    )
    report = {
        "path": init_from,
        "checkpoint": checkpoint.label,
        "loaded": ["/".join(p) for p in loaded],
        "fresh": ["/".join(p) for p in fresh],
        "unused": ["/".join(p) for p in unused],
    }
    return state, report


_SHOWN = 5  # Variables a fine-tuning mismatch names.


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _named_leaves(tree: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
    """(paths as tuples of names, leaves, treedef) of a parameter tree."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [tuple(_key_name(k) for k in path) for path, _ in with_paths]
    return paths, [leaf for _, leaf in with_paths], treedef


def _shapes(variables: Mapping[tuple[str, ...], tuple[tuple[int, ...], Any]]) -> str:
    shown = ", ".join(
        f"{'/'.join(p)} {shape}" for p, (shape, _) in list(variables.items())[:_SHOWN]
    )
    more = f", ... ({len(variables)} in all)" if len(variables) > _SHOWN else ""
    return (shown + more) or "none"
