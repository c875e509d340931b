"""Per-variable hyper-parameters: the model-oriented scale ``eta`` and the slot shapes.

Amos needs, for every variable, ``eta`` (the expected scale of its trained entries) and
the shape of its second-moment slots. Both are given as a ``ParamsFn(path, shape)``.
This module builds them two ways:

* :func:`rule_map_fn`: an ordered ``{regex: value}`` map, where a value may be a number,
  a tuple, or a small expression of ``SHAPE`` (e.g. ``"sqrt(2 / SHAPE[-1])"`` or
  ``"(1,) * (len(SHAPE) - 1) + SHAPE[-1:]"``), evaluated without ``eval``.
* :func:`default_eta_fn` / :func:`default_shape_fn`: the general rule of the paper
  (Tian & Parikh, 2022, appendix A.4), read off standard Flax variable names:
  ``eta = sqrt(gain / fan_in)`` for kernels, 0.5 for additive biases, 1.0 for
  normalization scales, ``sqrt(2 / width)`` for embeddings; kernel slots reduce every
  axis but the last, embedding slots reduce the last axis, vectors keep a scalar slot.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Mapping
from typing import Any

from amos.tree import ParamsFn, Path, Shape, path_name

KERNEL, BIAS, SCALE, EMBEDDING = "kernel", "bias", "scale", "embedding"

# Standard leaf names (Flax, Haiku, PyTorch-style) for each kind of variable.
_KERNEL_NAMES = frozenset({"kernel", "w", "weight"})
_BIAS_NAMES = frozenset({"bias", "b", "offset", "shift"})
_SCALE_NAMES = frozenset({"scale", "gamma"})
_EMBEDDING_SUFFIXES = ("embedding", "embeddings", "embed")


def variable_kind(path: Path, shape: Shape) -> str:
    """Classifies a variable as ``kernel``, ``bias``, ``scale`` or ``embedding`` by its name.

    Raises:
      ValueError: naming the variable when its leaf name is not a standard one.
    """
    leaf = path[-1].lower() if path else ""
    if leaf.endswith(_EMBEDDING_SUFFIXES):
        return EMBEDDING
    if leaf in _BIAS_NAMES:
        return BIAS
    if leaf in _SCALE_NAMES or (leaf == "weight" and len(shape) <= 1):
        return SCALE  # A 1-D PyTorch-style 'weight' is a normalization scale.
    if leaf in _KERNEL_NAMES:
        return KERNEL
    raise ValueError(
        f"Cannot tell what kind of variable '{path_name(path)}' (shape {tuple(shape)}) is: its "
        f"name '{leaf}' is none of kernel/bias/scale/embedding. Give it a rule in `overrides`."
    )


# ---------------------------------------------------------------------------------------
# Safe evaluation of small expressions of SHAPE.

_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS = {
    "sqrt": math.sqrt,
    "prod": lambda xs: math.prod(xs),
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
}


class ExpressionError(ValueError):
    """An expression in a rule map that cannot be parsed or evaluated."""


def _check_node(node: ast.AST, expression: str) -> None:
    """Rejects every syntax outside the small allowed language, before any evaluation."""
    allowed = (
        (
            ast.Expression,
            ast.Constant,
            ast.Name,
            ast.Load,
            ast.Subscript,
            ast.Slice,
            ast.Tuple,
            ast.BinOp,
            ast.UnaryOp,
            ast.Call,
        )
        + tuple(_BINARY_OPS)
        + tuple(_UNARY_OPS)
    )
    for child in ast.walk(node):
        if not isinstance(child, allowed):
            raise ExpressionError(
                f"Expression {expression!r} uses {type(child).__name__}, which is not allowed; "
                f"use numbers, SHAPE, indexing, arithmetic and {sorted(_FUNCTIONS)}."
            )
        if isinstance(child, ast.Name) and child.id != "SHAPE" and child.id not in _FUNCTIONS:
            raise ExpressionError(f"Expression {expression!r} names unknown '{child.id}'.")
        if isinstance(child, ast.Call) and (
            not isinstance(child.func, ast.Name)
            or child.func.id not in _FUNCTIONS
            or child.keywords
        ):
            raise ExpressionError(
                f"Expression {expression!r} calls something other than "
                f"{sorted(_FUNCTIONS)} with positional arguments."
            )
        if isinstance(child, ast.Constant) and not isinstance(child.value, (int, float)):
            raise ExpressionError(f"Expression {expression!r} has a non-numeric constant.")


def parse_expression(expression: str) -> ast.Expression:
    """Parses and checks an expression of ``SHAPE``; raises :class:`ExpressionError`."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"Expression {expression!r} is not valid: {e.msg}.") from None
    _check_node(tree, expression)
    return tree


def evaluate_expression(expression: str | ast.Expression, shape: Shape) -> Any:
    """Evaluates an expression such as ``"sqrt(1 / prod(SHAPE[:-1]))"`` for a shape."""
    tree = parse_expression(expression) if isinstance(expression, str) else expression

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return tuple(shape) if node.id == "SHAPE" else _FUNCTIONS[node.id]
        if isinstance(node, ast.Tuple):
            return tuple(walk(e) for e in node.elts)
        if isinstance(node, ast.Slice):
            return slice(
                *(None if p is None else walk(p) for p in (node.lower, node.upper, node.step))
            )
        if isinstance(node, ast.Subscript):
            return walk(node.value)[walk(node.slice)]
        if isinstance(node, ast.BinOp):
            return _BINARY_OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY_OPS[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Call):
            return walk(node.func)(*(walk(a) for a in node.args))
        raise ExpressionError(f"Unsupported syntax {type(node).__name__}.")  # Checked already.

    return walk(tree)


# ---------------------------------------------------------------------------------------
# Rule maps.


class RuleMap:
    """An ordered ``{regex: value}`` map used as a ``ParamsFn``; see :func:`rule_map_fn`."""

    def __init__(self, rules: Mapping[str, Any]):
        self._rules = []
        for regex, value in rules.items():
            try:
                pattern = re.compile(regex)
            except re.error as e:
                raise ValueError(f"Rule regex {regex!r} is not valid: {e}.") from None
            if isinstance(value, str):
                try:
                    value = parse_expression(value)
                except ExpressionError as e:
                    raise ExpressionError(f"Rule {regex!r}: {e}") from None
            self._rules.append((regex, pattern, value))

    def lookup(self, path: Path, shape: Shape) -> tuple[bool, Any]:
        """``(True, value)`` from the first matching rule, or ``(False, None)``."""
        name = path_name(path)
        for regex, pattern, value in self._rules:
            if pattern.search(name):
                if not isinstance(value, ast.Expression):
                    return True, value
                try:
                    return True, evaluate_expression(value, tuple(shape))
                except (ArithmeticError, IndexError, TypeError, ValueError) as e:
                    raise ValueError(
                        f"Rule {regex!r} failed for variable '{name}' of shape {tuple(shape)}: {e}"
                    ) from None
        return False, None

    def __call__(self, path: Path, shape: Shape) -> Any:
        matched, value = self.lookup(path, shape)
        if not matched:
            raise ValueError(
                f"No rule matches variable '{path_name(path)}' of shape {tuple(shape)}; "
                f"rules tried: {[regex for regex, _, _ in self._rules]}."
            )
        return value


def rule_map_fn(rules: Mapping[str, Any]) -> RuleMap:
    """Builds a ``ParamsFn`` from an ordered ``{regex: value}`` map.

    The variable path is joined with '/' and the first rule whose regex matches it
    (``re.search``, so anchor with ``^``/``$`` when needed) gives the value. String values
    are expressions of ``SHAPE`` (the variable's shape) with numbers, indexing, slicing,
    tuples, ``+ - * / // % **`` and ``sqrt``, ``prod``, ``len``, ``min``, ``max``, ``abs``,
    e.g. ``"sqrt(2 / SHAPE[0])"``; other values are returned as they are. Regexes and
    expressions are checked here, so a typo fails when the map is built.

    Raises:
      ValueError: for a bad regex or expression (naming it), and at call time when no
        rule matches a variable (naming the variable).
    """
    return RuleMap(rules)


def _lookup(rules: RuleMap | None, path: Path, shape: Shape) -> tuple[bool, Any]:
    return (False, None) if rules is None else rules.lookup(path, shape)


# ---------------------------------------------------------------------------------------
# The general rule.


def fan_in(shape: Shape) -> int:
    """Inputs summed into each output of a kernel: every axis but the last (Dense, Conv)."""
    return max(1, math.prod(shape[:-1]))


def default_eta_fn(
    gains: Mapping[str, float] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ParamsFn:
    """The model-oriented scale ``eta`` by the paper's general rule.

    ``eta`` is the expected scale of the trained entries:

    * kernel: ``sqrt(gain / fan_in)`` with ``fan_in = prod(shape[:-1])``; ``gain`` is 1 for
      an input of unit scale and 2 for an input that follows ReLU/GELU;
    * additive bias: 0.5; normalization scale: 1.0;
    * embedding ``(..., width)``: ``sqrt(2 / width)``, the BERT table's token embedding.

    Args:
      gains: ``{regex: gain}`` for kernels (first match wins; default gain 1), e.g.
        ``{"mlp/wo/kernel$": 2.0}`` for the MLP output kernel after GELU.
      overrides: a rule map (see :func:`rule_map_fn`) consulted before the general rule.
    """
    gain_rules = RuleMap(gains) if gains else None
    override_rules = RuleMap(overrides) if overrides else None

    def eta_fn(path: Path, shape: Shape) -> float:
        matched, value = _lookup(override_rules, path, shape)
        if matched:
            return value
        kind = variable_kind(path, shape)
        if kind == KERNEL:
            matched, gain = _lookup(gain_rules, path, shape)
            gain = gain if matched else 1.0
            if not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain <= 0:
                raise ValueError(
                    f"gain for variable '{path_name(path)}' is {gain!r}; a kernel's gain "
                    "must be a positive number (1 for a unit-scale input, 2 after ReLU/GELU)."
                )
            return math.sqrt(gain / fan_in(shape))
        if kind == EMBEDDING:
            return math.sqrt(2.0 / shape[-1])
        return 0.5 if kind == BIAS else 1.0

    return eta_fn


def default_shape_fn(overrides: Mapping[str, Any] | None = None) -> ParamsFn:
    """Factored slot shapes by the general rule.

    Kernels keep their last (output) axis and reduce the others, embeddings reduce their
    last (width) axis, and biases, scales and scalars get a scalar slot ``()``.

    Args:
      overrides: a rule map (see :func:`rule_map_fn`) consulted before the general rule.
    """
    override_rules = RuleMap(overrides) if overrides else None

    def shape_fn(path: Path, shape: Shape) -> Shape:
        matched, value = _lookup(override_rules, path, shape)
        if matched:
            return tuple(value)
        kind = variable_kind(path, shape)
        if len(shape) <= 1 or kind in (BIAS, SCALE):
            return ()
        if kind == KERNEL:
            return (1,) * (len(shape) - 1) + (shape[-1],)
        return tuple(shape[:-1]) + (1,)

    return shape_fn


# ---------------------------------------------------------------------------------------
# Validation used by the optimizer at init.


def checked_slot_shape(path: Path, shape: Shape, shape_fn: ParamsFn | None) -> Shape:
    """The slot shape for a variable, checked to be ``()`` or same-rank with axes 1 or full."""
    shape = tuple(shape)
    if shape_fn is None:
        return shape
    slot = shape_fn(path, shape)
    name = path_name(path)
    try:
        slot = tuple(int(d) for d in slot)
    except TypeError:
        raise ValueError(
            f"shape_fn returned {slot!r} for variable '{name}' of shape {shape}; "
            "expected a tuple of ints."
        ) from None
    if slot and (len(slot) != len(shape) or any(s not in (1, d) for s, d in zip(slot, shape))):
        raise ValueError(
            f"Slot shape {slot} for variable '{name}' of shape {shape} is not allowed: it must be "
            "() or have the same rank with every axis either 1 or the variable's size."
        )
    return slot


def checked_eta(path: Path, shape: Shape, eta_fn: ParamsFn) -> float:
    """``eta_fn(path, shape)`` as a float, checked to be present, finite and positive."""
    name = path_name(path)
    value = eta_fn(path, tuple(shape))
    if value is None:
        raise ValueError(
            f"eta is missing for variable '{name}' of shape {tuple(shape)}: eta_fn returned None."
        )
    try:
        eta = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"eta for variable '{name}' is {value!r}, not a number.") from None
    if not math.isfinite(eta) or eta <= 0.0:
        raise ValueError(
            f"eta for variable '{name}' of shape {tuple(shape)} is {eta}; "
            "it must be finite and positive."
        )
    return eta
