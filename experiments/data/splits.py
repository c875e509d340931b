"""Validation and test from one held-out part: the first half and the second half.

The study's protocol (docs/study.md, "The reproduction study: protocol") gives every task three
disjoint splits. A dataset without its own labelled test split keeps its training split
exactly as before (so training runs do not change) and has its held-out part cut in two,
in its fixed order: the first ``ceil(n / 2)`` items are validation, the rest test. The
rounding gives validation the odd item, so a tiny held-out part keeps a validation split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from experiments.data.tf_import import tensorflow_datasets
from experiments.errors import ConfigError

T = TypeVar("T", bound=Sequence)


def validation_size(held_out: int) -> int:
    """How many of ``held_out`` items, from the start, are validation (the rest: test)."""
    return (held_out + 1) // 2


def halves(held_out: T) -> tuple[T, T]:
    """``held_out`` (a list, string or array) as (validation, test): first and second half."""
    k = validation_size(len(held_out))
    return held_out[:k], held_out[k:]


def halve_tfds_split(spec: str, split_infos: Mapping[str, Any], binding: str) -> tuple[str, str]:
    """A TFDS split spec (``'validation'``, ``'train[99%:]'``, ``'validation[:500]'``) as two
    absolute specs, its first and second half in file order.

    ``split_infos`` is a builder's ``info.splits``; ``binding`` names the setting to fix
    when the spec cannot be halved (a union such as ``'train+test'``).
    """
    tfds = tensorflow_datasets()

    try:
        parts = tfds.core.ReadInstruction.from_spec(spec).to_absolute(split_infos)
    except (ValueError, KeyError, AssertionError) as e:
        raise ConfigError(f"{binding}: cannot read the TFDS split {spec!r}: {e}") from e
    if len(parts) != 1:
        raise ConfigError(
            f"{binding}: the held-out split {spec!r} joins several splits; cutting it into "
            f"validation and test is ambiguous: name the test split explicitly"
        )
    (part,) = parts
    total = split_infos[part.splitname].num_examples
    start = 0 if part.from_ is None else min(part.from_, total)
    stop = total if part.to is None else min(part.to, total)
    if stop - start < 2:
        raise ConfigError(
            f"{binding}: the held-out split {spec!r} has {max(stop - start, 0)} examples, "
            f"too few to cut into validation and test"
        )
    middle = start + validation_size(stop - start)
    name = part.splitname
    return f"{name}[{start}:{middle}]", f"{name}[{middle}:{stop}]"


def first_fraction(train: T, fraction: float, binding: str) -> T:
    """The first ``int(len(train) * fraction)`` items of a training split, in its fixed
    order: a smaller training set (``fraction`` 0.25: the first quarter) for studies of how
    a setting scales with the dataset size. Validation and test are not touched, so losses
    on them compare across fractions.

    ``binding`` names the setting in the error when ``fraction`` is not in (0, 1] or leaves
    no item.
    """
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not (ok and 0 < fraction <= 1):
        raise ConfigError(f"{binding} must be a fraction in (0, 1], got {fraction!r}")
    n = int(len(train) * fraction)
    if n < 1:
        raise ConfigError(f"{binding}={fraction!r} leaves none of the {len(train)} training items")
    return train[:n]
