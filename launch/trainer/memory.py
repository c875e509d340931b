"""What the compiled train step needs per device (XLA's memory and cost analysis, from
shapes alone), and the search for the largest batch that fits a memory budget."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from launch.trainer.loop import Trainer


# XLA's analysis of the compiled train step, from shapes alone: what `run.py --dry_run`
# prints per device, what `--dry_run_fit` searches over (benchmarks/memory_fit.py,
# benchmarks/gpu_check.py use the same functions).
@dataclasses.dataclass(frozen=True)
class StepMemory:
    """What one device needs to run the compiled train step, from XLA's memory analysis
    (`jax.stages.Compiled.memory_analysis()`), in bytes, and the step's FLOPs on one
    device (its cost analysis: the SPMD-partitioned program), on the backend it was
    compiled for. The numbers are that compiler's: another backend's fuses, schedules and
    lays out buffers differently."""

    batch_size: int  # Global.
    per_device_batch: int  # Rows of one batch shard.
    argument_bytes: int  # The inputs: the train state and the batch.
    output_bytes: int  # The new train state and the metrics.
    alias_bytes: int  # Outputs written over donated inputs (the state): counted once.
    temp_bytes: int  # Everything else live during the step: activations, gradients, ...
    code_bytes: int  # Generated code held in device memory (0 on CPU).
    flops: float | None
    backend: str
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """The least one device needs to run the step, by XLA's own account of
        `CompiledMemoryStats` (xla/pjrt/pjrt_executable.h): code + arguments + outputs -
        aliased + temporaries. The step donates the state (`donate_argnums=0`), so the new
        state is written over the old one, and the aliased bytes are not counted twice."""
        return (
            self.code_bytes
            + self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def model_remat(model: nn.Module) -> str | None:
    """The model's REMAT setting (`remat` of the model or of its `config`), None if it has
    none (a model without Transformer blocks)."""
    return getattr(model, "remat", getattr(getattr(model, "config", None), "remat", None))


def batch_shards(trainer: Trainer) -> int:
    """Into how many shards the rows of a batch are split: the product of the mesh axes
    its leading axis is sharded over (`launch.sharding.BATCH_AXES`)."""
    spec = trainer.batch_sharding.spec
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    return math.prod(trainer.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))


def batch_unit(trainer: Trainer) -> int:
    """The global batch sizes the step compiles for are the multiples of this: every
    batch shard holds the same rows, in `grad_accum_steps` equal micro-batches."""
    return batch_shards(trainer) * trainer.config.grad_accum_steps


def abstract_train_batch(trainer: Trainer, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes, dtypes and sharding of a global training batch of `batch_size` rows."""
    return {
        k: jax.ShapeDtypeStruct(
            (batch_size, *v.shape[1:]), v.dtype, sharding=trainer.batch_sharding
        )
        for k, v in trainer.example_batch.items()
    }


def compile_train_step(trainer: Trainer, batch_size: int | None = None) -> tuple[Any, float]:
    """`trainer.train_step` compiled ahead of time for a global batch of `batch_size` rows
    (the configured one by default), from the abstract state and batch: nothing is
    allocated and no data is read. Returns the `jax.stages.Compiled` (callable on a real
    state and batch of those shapes) and the seconds lowering and compiling took."""
    c = trainer.config
    batch_size = c.batch_size if batch_size is None else batch_size
    if trainer.state_collections and batch_size != c.batch_size:
        raise ValueError(
            f"the task carries a recurrent state sized by the batch "
            f"({trainer.state_collections}): only BATCH_SIZE={c.batch_size} compiles"
        )
    unit = batch_unit(trainer)
    if batch_size < 1 or batch_size % unit:
        raise ValueError(
            f"batch {batch_size} is not a positive multiple of {unit} (the batch shards "
            f"{batch_shards(trainer)} x GRAD_ACCUM_STEPS {c.grad_accum_steps})"
        )
    start = time.perf_counter()
    lowered = trainer.train_step.lower(
        trainer.abstract_state, abstract_train_batch(trainer, batch_size)
    )
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start


def compiled_step_memory(
    trainer: Trainer, compiled: Any, batch_size: int, compile_seconds: float = 0.0
) -> StepMemory:
    """The StepMemory of `compiled` (`compile_train_step`'s) at a global `batch_size`."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis")
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per partitioned program.
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    return StepMemory(
        batch_size=batch_size,
        per_device_batch=batch_size // batch_shards(trainer),
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        code_bytes=int(stats.generated_code_size_in_bytes),
        flops=None if flops is None else float(flops),
        backend=trainer.mesh.devices.flat[0].platform,
        compile_seconds=compile_seconds,
    )


def step_memory(trainer: Trainer, batch_size: int | None = None) -> StepMemory:
    """XLA's memory and cost analysis of the train step compiled from shapes for a global
    batch of `batch_size` rows (the configured one by default)."""
    batch_size = trainer.config.batch_size if batch_size is None else batch_size
    compiled, seconds = compile_train_step(trainer, batch_size)
    return compiled_step_memory(trainer, compiled, batch_size, seconds)


def largest_fitting(
    need: Callable[[int], int],
    budget: int,
    *,
    start: int,
    limit: int,
    known: Mapping[int, int] | None = None,
) -> int:
    """The largest k in 1 .. `limit` with `need(k) <= budget`, 0 if not even k = 1 fits,
    for a `need` that grows with k (the bytes of the step compiled for k batch units),
    calling it as few times as it can: each call is a compile.

    From `start`, doubling while k fits (halving while it does not) until a fitting and a
    failing k bracket the answer, then bisection. Each step's k is first guessed from the
    straight line through the two nearest values known (memory is close to affine in the
    batch: fixed state plus activations per row), which usually lands on the answer in
    one or two calls; after three guesses in a row that did worse than the plain step
    (doubling, halving, the midpoint), the next step is the plain one, so the calls stay
    of order log2. `known`: values of `need` already measured (another budget's search).
    """
    seen = {k: v for k, v in (known or {}).items() if 1 <= k <= limit}

    def fits(k: int) -> bool:
        if k not in seen:
            seen[k] = need(k)
        return seen[k] <= budget

    lo = max((k for k, v in seen.items() if v <= budget), default=0)  # 0: none known to fit
    hi = min((k for k, v in seen.items() if v > budget and k > lo), default=limit + 1)
    if not seen:
        k = min(max(start, 1), limit)
        lo, hi = (k, hi) if fits(k) else (lo, k)
    stalls = 0  # Guesses in a row that did worse than a plain step would have.
    while hi - lo > 1:
        old_lo, old_hi, width = lo, hi, hi - lo
        guess = _affine_guess(seen, lo, hi, budget, limit) if stalls < 3 else None
        guessed = guess is not None
        if not guessed:
            if hi > limit:  # Nothing known to fail yet: double.
                guess = min(2 * lo, limit)
            elif not lo:  # Nothing known to fit yet: halve.
                guess = max(hi // 2, 1)
            else:
                guess = (lo + hi) // 2
        if fits(guess):
            lo = guess
        else:
            hi = guess
        if old_hi > limit:  # As good as doubling: twice as far, or a failure found.
            good = guess >= 2 * old_lo or hi <= limit
        elif not old_lo:  # As good as halving.
            good = 2 * guess <= old_hi or lo > 0
        else:  # As good as bisection.
            good = 2 * (hi - lo) <= width
        stalls = stalls + 1 if guessed and not good else 0
    return lo


def _affine_guess(seen: Mapping[int, int], lo: int, hi: int, budget: int, limit: int) -> int | None:
    """The k where the line through the two measured points nearest the budget reaches it,
    strictly inside the bracket (lo, hi); None without two such points or a rising line."""
    if lo >= 1 and hi <= limit:
        (k1, n1), (k2, n2) = (lo, seen[lo]), (hi, seen[hi])
    else:
        side = sorted(k for k in seen if (k <= lo if hi > limit else k >= hi))
        if len(side) < 2:
            return None
        pair = side[-2:] if hi > limit else side[:2]
        (k1, n1), (k2, n2) = [(k, seen[k]) for k in pair]
    slope = (n2 - n1) / (k2 - k1)
    if slope <= 0:
        return None
    guess = k1 + math.floor((budget - n1) / slope)
    # Within the bracket, and beyond a known side by at most 16x (a guess from a noisy line).
    low = lo + 1 if lo else max(1, hi // 16)
    high = hi - 1 if hi <= limit else min(limit, 16 * lo)
    return min(max(guess, low), high) if low <= high else None


@dataclasses.dataclass(frozen=True)
class BatchFit:
    """The largest global batch whose compiled train step fits `budget_bytes` per device."""

    budget_bytes: int
    unit: int  # The batch sizes tried are multiples of this (`batch_unit`).
    batch_size: int | None  # None: not even `unit` rows fit.
    fits: StepMemory | None  # The step at `batch_size`.
    next_fails: StepMemory | None  # The smallest batch tried above it (None: at the cap).
    capped: bool  # Stopped at the largest batch tried (`max_per_device`), which fit.
    compiles: int  # Compiles this search added.


def fit_batch(
    trainer: Trainer,
    budget_bytes: int,
    *,
    probes: dict[int, StepMemory] | None = None,
    max_per_device: int = 65536,
    say: Callable[[StepMemory], None] | None = None,
) -> BatchFit:
    """The largest global batch (a multiple of `batch_unit`) whose train step, compiled
    from shapes, needs at most `budget_bytes` per device (`StepMemory.total_bytes`), by
    `largest_fitting` from the configured batch. `probes` (global batch -> StepMemory)
    holds the compiles done so far and gains this search's, so that a second budget reuses
    them; `say` hears of each new compile."""
    if trainer.state_collections:
        raise ValueError(
            f"the task carries a recurrent state sized by the batch "
            f"({trainer.state_collections}): its batch is not searched"
        )
    probes = {} if probes is None else probes
    unit, before = batch_unit(trainer), len(probes)

    def need(k: int) -> int:
        if k * unit not in probes:
            probes[k * unit] = step_memory(trainer, k * unit)
            if say:
                say(probes[k * unit])
        return probes[k * unit].total_bytes

    limit = max(1, max_per_device // trainer.config.grad_accum_steps)
    known = {b // unit: m.total_bytes for b, m in probes.items() if b % unit == 0}
    k = largest_fitting(
        need,
        budget_bytes,
        start=max(1, trainer.config.batch_size // unit),
        limit=limit,
        known=known,
    )
    above = [b for b in probes if b > k * unit]
    return BatchFit(
        budget_bytes=budget_bytes,
        unit=unit,
        batch_size=k * unit or None,
        fits=probes[k * unit] if k else None,
        next_fails=probes[min(above)] if above else None,
        capped=k == limit,
        compiles=len(probes) - before,
    )
