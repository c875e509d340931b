"""Pytree helpers shared by the optimizer, memory accounting and sharding.

Variables are named by their path in the parameter tree: a tuple of strings made of dict
keys, sequence indices and attribute names, e.g. ``('encoder', 'layers', '0', 'kernel')``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Path = tuple[str, ...]
Shape = tuple[int, ...]
ParamsFn = Callable[[Path, Shape], Any]


def key_to_str(key: Any) -> str:
    """One entry of a JAX key path as a plain string."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_to_tuple(key_path: tuple[Any, ...]) -> Path:
    return tuple(key_to_str(k) for k in key_path)


def path_name(path: Path) -> str:
    """The '/'-joined name used in rule maps and error messages."""
    return "/".join(path) if path else "<root>"


def named_leaves(tree: Any) -> tuple[list[tuple[Path, Any]], Any]:
    """Returns ``[(path, leaf), ...]`` and the treedef; ``None`` subtrees have no leaves."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_to_tuple(p), leaf) for p, leaf in leaves_with_path], treedef


def map_param_shaped(
    tree: Any,
    params_treedef: Any,
    param_shaped_fn: Callable[[Any], Any],
    other_leaf_fn: Callable[[Any], Any],
) -> Any:
    """Maps the subtrees of an optimizer state that mirror the parameter tree.

    Optax states are nests of NamedTuples whose slots (``mu``, ``nu``, ``v``, ``b``, ...)
    have the structure of the parameters. ``param_shaped_fn`` receives each such subtree;
    every other leaf (step counts, empty states) goes to ``other_leaf_fn``. When the
    parameters are a single bare array every array leaf looks parameter-shaped, so such
    trees should be wrapped in a dict first.
    """
    if jax.tree_util.tree_structure(tree) == params_treedef:
        return param_shaped_fn(tree)
    children, node_def = jax.tree_util.tree_flatten(tree, is_leaf=lambda node: node is not tree)
    if len(children) == 1 and children[0] is tree:  # A leaf that is not parameter-shaped.
        return other_leaf_fn(tree)
    mapped = [map_param_shaped(c, params_treedef, param_shaped_fn, other_leaf_fn) for c in children]
    return jax.tree_util.tree_unflatten(node_def, mapped)
