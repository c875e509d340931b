"""Optimizer factories that gin files bind (`train.optimizer = @amos_optimizer`).

Each factory takes the run's total step count and returns an `OptimizerSpec`: the optax
transformation plus what the trainer logs about it (the learning rate in force at a step,
Amos's diagnostics). The arms: `adamw_optimizer`, `amos_optimizer`, and Adam with the
plug-and-play schedules (`adam_pnp_isq_optimizer`, `adam_pnp_itime_optimizer`: amos/schedules.py,
docs/recipes.md); `train_examples` gives AdamW's EMA timescale (Wang & Aitchison 2024) the
train-set size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

import amos
from amos.schedules import decay_rate, schedule_decay
from experiments.errors import ConfigError

OPTIMIZER_FILES = Path(__file__).resolve().parents[1] / "gin_configs" / "optimizers"


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str
    tx: optax.GradientTransformation
    # Learning rate applied at step t = 1, 2, ... (for Amos: the global rate xi).
    learning_rate: Callable[[int], float]
    # (opt_state, params) -> {name: scalar}, jittable; None when there is nothing to add.
    diagnostics: Callable[[Any, Any], dict[str, jax.Array]] | None = None


@dataclasses.dataclass(frozen=True)
class DesignKnob:
    """A knob of the study's quasi-random design (launch/study/designs.py): the gin macro it
    sets (or `WARMUP_FRACTION`, the warmup as a fraction of TRAIN_STEPS, bound as
    WARMUP_STEPS), its range, as factors of the experiment's value when `relative`, and how
    values are spaced: "log", "linear" or "log1m" (log of 1 - value, for a beta)."""

    name: str
    low: float
    high: float
    scale: str = "log"
    relative: bool = False


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What the study (launch/study/) tunes of an optimizer, declared beside its factory
    with `@tuned`: `knob`, the macro of its one-knob grid (launch/study/sweep.py);
    `labels`, the short names of its knobs in trial directories; `coupled`, macros scaled
    with the knob so that a trial keeps the schedule's shape (nanoGPT's min_lr = lr / 10);
    `horizon_binding`, the binding that keeps its schedule's horizon at the planned
    TRAIN_STEPS when a run continues past it (None: no horizon); `design`, its knobs on the
    second edition's quasi-random design (launch/study/study2.py)."""

    knob: str
    labels: Mapping[str, str]
    coupled: tuple[str, ...] = ()
    horizon_binding: str | None = None
    design: tuple[DesignKnob, ...] = ()


def tuned(tuning: Tuning) -> Callable:
    """Declares an optimizer factory's `Tuning` (its `tuning` attribute)."""

    def declare(factory):
        factory.tuning = tuning
        return factory

    return declare


def arm_tuning(arm: str) -> Tuning:
    """The `Tuning` of an arm: that of the factory its optimizer file binds
    (gin_configs/optimizers/<arm>.gin: `train.optimizer = @<factory>`)."""
    path = OPTIMIZER_FILES / f"{arm}.gin"
    if not path.is_file():
        raise ConfigError(f"no optimizer arm {arm!r}: {path} does not exist")
    bound = re.search(r"^train\.optimizer\s*=\s*@(\w+)", path.read_text(), re.M)
    factory = globals().get(bound.group(1)) if bound else None
    if getattr(factory, "tuning", None) is None:
        raise ConfigError(
            f"{path}: its factory {bound.group(1) if bound else '(none bound)'} declares no "
            f"Tuning (`@tuned` in launch/optimizers.py), so the study cannot tune it"
        )
    return factory.tuning


def checked_number(
    binding: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    allow_low: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a float in (low, high) (``[low, high)`` with ``allow_low``), or a
    ConfigError naming the binding; 0 learning rates or NaN knobs would train nothing."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if not (ok and math.isfinite(number) and (number >= low if allow_low else number > low)):
        ok = False
    if not ok or not number < high:
        bounds = f"{'[' if allow_low else '('}{low:g}, {high:g})"
        raise ConfigError(f"{binding} must be a finite number in {bounds}, got {value!r}")
    return number


def checked_steps(binding: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{binding} must be a non-negative integer, got {value!r}")
    return value


def _named_init(tx: optax.GradientTransformation, bindings: str) -> optax.GradientTransformation:
    """``tx`` whose ``init`` reports the optimizer's own ValueErrors (a bad eta or slot
    shape for a variable, an integer variable) as ConfigErrors that add the bindings
    behind them to the variable the optimizer names."""

    def init(params):
        try:
            return tx.init(params)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{e} (gin bindings: {bindings})") from e

    return optax.GradientTransformation(init, tx.update)


def _matrices_only(params):
    """nanoGPT's decay mask: every tensor with 2+ dims (matmul kernels, embeddings)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def nanogpt_lr(
    step: int | jax.Array,
    *,
    learning_rate: float,
    warmup_steps: int,
    decay_steps: int,
    min_learning_rate: float,
) -> jax.Array:
    """nanoGPT's `get_lr(it)`, it = 0, 1, ...: linear warmup then cosine down to min_lr."""
    it = jnp.asarray(step, jnp.float32)
    warm = learning_rate * (it + 1) / (warmup_steps + 1)
    ratio = jnp.clip((it - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = min_learning_rate + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (
        learning_rate - min_learning_rate
    )
    return jnp.where(
        it < warmup_steps, warm, jnp.where(it > decay_steps, min_learning_rate, cosine)
    )


ADAMW_SCHEDULES = ("linear_decay", "constant", "nanogpt_cosine")
ADAMW_DECAY_MASKS = ("paper", "matrices")


def adamw_schedule(
    total_steps: int,
    *,
    learning_rate: float,
    warmup_steps: int,
    schedule: str,
    min_learning_rate: float = 0.0,
) -> optax.Schedule:
    """AdamW's learning rate at the 0-based update count (optax's convention).

    ``linear_decay``: the paper's AdamW baseline (``amos.adamw_baseline``), linear warmup to
    ``learning_rate`` then linear decay to ``min_learning_rate`` (0 in the paper) at
    ``total_steps``.
    ``constant``: linear warmup, then constant (the paper's Adam baseline for the LSTM).
    ``nanogpt_cosine``: nanoGPT's ``get_lr`` (linear warmup, cosine to ``min_learning_rate``
    at ``total_steps``).
    """
    if schedule == "linear_decay":
        return amos.warmup_linear_decay_schedule(
            learning_rate, warmup_steps, total_steps, min_learning_rate
        )
    if schedule == "constant":
        return linear_warmup(learning_rate, warmup_steps)
    if schedule == "nanogpt_cosine":
        return lambda count: nanogpt_lr(
            count,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            min_learning_rate=min_learning_rate,
        )
    raise ConfigError(f"ADAMW_SCHEDULE={schedule!r} is not one of {ADAMW_SCHEDULES}")


def linear_warmup(peak: float, warmup_steps: int) -> optax.Schedule:
    """``n -> peak * min(1, n / warmup_steps)``; constant ``peak`` when ``warmup_steps=0``.

    Amos calls its schedule with the 1-based step ``t``, which gives the reference's
    ``xi * min(1, t / warmup_steps)`` (jestimator/models/bert/pretrain.py, ``lr_schedule``);
    optax's AdamW passes the 0-based update count, as ``amos.warmup_linear_decay_schedule``.
    """
    checked_steps("WARMUP_STEPS", warmup_steps)
    if warmup_steps == 0:
        return optax.constant_schedule(peak)
    return optax.linear_schedule(0.0, peak, warmup_steps)


def adamw_weight_decay(
    weight_decay: float | None,
    tau_epochs: float | None,
    *,
    learning_rate: float,
    batch_size: int | None,
    train_examples: int | None,
) -> float:
    """AdamW's decoupled weight decay: ``weight_decay`` as given, or the one whose EMA
    timescale is ``tau_epochs`` epochs (Wang & Aitchison 2024; docs/recipes.md)::

        tau_iter = 1 / (lr * wd),  tau_epoch = tau_iter / (train_examples / batch_size)
        =>  wd = batch_size / (lr * train_examples * tau_epochs)

    (``amos.weight_decay_from_timescale``) at the peak learning rate ``lr``. Exactly one
    of the two is set; the other is None.
    """
    if (weight_decay is None) == (tau_epochs is None):
        raise ConfigError(
            "set one of adamw_optimizer.weight_decay (ADAMW_WEIGHT_DECAY) and "
            "adamw_optimizer.tau_epochs (ADAMW_TAU_EPOCHS), the other None; got "
            f"{weight_decay!r} and {tau_epochs!r}"
        )
    if tau_epochs is None:
        return checked_number("adamw_optimizer.weight_decay", weight_decay, allow_low=True)

    checked_number("adamw_optimizer.tau_epochs (ADAMW_TAU_EPOCHS)", tau_epochs)
    for binding, value in [
        ("adamw_optimizer.batch_size (BATCH_SIZE)", batch_size),
        ("adamw_optimizer.train_examples (@train_examples())", train_examples),
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"{binding} must be a positive integer when ADAMW_TAU_EPOCHS is set "
                f"(the timescale is counted in epochs), got {value!r}"
            )
    return amos.weight_decay_from_timescale(learning_rate, tau_epochs, batch_size, train_examples)


def train_examples(task: Any, *, binding: str = "train_examples.task", needs: str = "") -> int:
    """The size of a task's training split in examples (its ``num_train_examples``), for
    ``adamw_optimizer.train_examples = @train_examples()`` with ``train_examples.task =
    %TASK``: the EMA timescale's epoch comes from the data."""
    n = task.num_train_examples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(
            f"{binding}: {type(task).__name__} does not give its training-set size "
            f"(num_train_examples = {n!r}); "
            f"{needs or 'the weight-decay timescale needs it'}"
        )
    return n


def xi_guidance(task: Any, batch_size: int) -> float:
    """Amos' global learning rate by the authors' guidance, ``xi = 1/sqrt(N)`` for ``N =
    num_train_examples / batch_size`` independent batches (an epoch's steps; the authors'
    guidance, docs/optimizer.md). ``AMOS_XI = @xi_guidance()`` is the default of
    every experiment (gin_configs/train_defaults.gin); one where the paper fixes xi, or
    whose task does not count its examples (a streaming source), sets the number."""
    n = train_examples(
        task,
        binding="xi_guidance.task (TASK)",
        needs="set AMOS_XI to a number instead of the guidance 1/sqrt(N)",
    )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(
            f"xi_guidance.batch_size (BATCH_SIZE) must be a positive integer, got {batch_size!r}"
        )
    return (n / batch_size) ** -0.5


@tuned(
    Tuning(
        knob="ADAMW_LR",
        labels={
            "ADAMW_LR": "lr",
            "WARMUP_FRACTION": "wu",
            "ADAMW_TAU_EPOCHS": "tau",  # launch/study/timescale_sweep.py's knobs
            "ADAMW_WEIGHT_DECAY": "wd",
        },
        coupled=("ADAMW_MIN_LR",),
        horizon_binding="adamw_optimizer.horizon_steps",
        # The peak rate from 1/16 to 4 times the recipe's, the warmup from 0 to 0.2 of the run.
        design=(
            DesignKnob("ADAMW_LR", 1 / 16, 4.0, relative=True),
            DesignKnob("WARMUP_FRACTION", 0.0, 0.2, "linear"),
        ),
    )
)
def adamw_optimizer(
    total_steps: int,
    *,
    learning_rate: float,
    warmup_steps: int,
    schedule: str = "linear_decay",
    min_learning_rate: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float | None = 0.01,
    decay_mask: str = "paper",
    clip_global_norm: float | None = None,
    horizon_steps: int | None = None,
    tau_epochs: float | None = None,
    batch_size: int | None = None,
    train_examples: int | None = None,
) -> OptimizerSpec:
    """AdamW with a schedule of ``adamw_schedule``; the paper's baseline by default.

    ``decay_mask``: ``paper`` decays all but biases and normalization scales
    (``amos.adamw_baseline``); ``matrices`` decays tensors of 2+ axes (nanoGPT).
    ``clip_global_norm`` clips the gradient's global norm first (nanoGPT: 1.0).

    ``horizon_steps``: the step where the schedule ends (None: ``total_steps``). A run
    trained past it stays at the schedule's end rate (0 for the paper's linear decay):
    how a run planned for ``horizon_steps`` continues, without a restart of its schedule
    (``launch/sweep.py --continue_to``).

    ``tau_epochs``: set the weight decay by its EMA timescale in epochs instead of
    ``weight_decay`` (which is then None; see ``adamw_weight_decay``), from the peak
    ``learning_rate``, ``batch_size`` and the task's ``train_examples``.
    """

    if decay_mask not in ADAMW_DECAY_MASKS:
        raise ConfigError(f"ADAMW_DECAY_MASK={decay_mask!r} is not one of {ADAMW_DECAY_MASKS}")
    checked_number("adamw_optimizer.learning_rate (ADAMW_LR)", learning_rate)
    checked_number("adamw_optimizer.min_learning_rate", min_learning_rate, allow_low=True)
    checked_number("adamw_optimizer.b1", b1, high=1.0, allow_low=True)
    checked_number("adamw_optimizer.b2", b2, high=1.0, allow_low=True)
    checked_number("adamw_optimizer.eps", eps)
    weight_decay = adamw_weight_decay(
        weight_decay,
        tau_epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        train_examples=train_examples,
    )
    checked_number("adamw_optimizer.clip_global_norm", clip_global_norm, allow_none=True)
    if horizon_steps is None:
        horizon_steps = total_steps
    elif checked_steps("adamw_optimizer.horizon_steps", horizon_steps) == 0:
        raise ConfigError("adamw_optimizer.horizon_steps must be positive, got 0")
    rate = adamw_schedule(
        horizon_steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_learning_rate=min_learning_rate,
    )
    mask = amos.default_weight_decay_mask if decay_mask == "paper" else _matrices_only
    tx = amos.adamw_baseline(
        rate,
        total_steps=total_steps,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        weight_decay_mask=mask,
    )
    if clip_global_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_global_norm), tx)
    return OptimizerSpec("adamw", tx, lambda t: float(rate(t - 1)))


@tuned(
    Tuning(
        knob="AMOS_XI",
        labels={"AMOS_XI": "xi", "AMOS_BETA": "beta"},
        # xi from 1/16 to 4 times the guidance; 1 - beta from 5e-2 down to 1e-4 (log): the
        # paper's 0.999 and 0.95 inside.
        design=(
            DesignKnob("AMOS_XI", 1 / 16, 4.0, relative=True),
            DesignKnob("AMOS_BETA", 0.95, 0.9999, "log1m"),
        ),
    )
)
def amos_optimizer(
    total_steps: int,
    *,
    xi: float,
    warmup_steps: int = 0,
    beta: float = 0.999,
    momentum: float | None = None,
    clip_value: float | None = None,
    gains: Mapping[str, float] | None = None,
    eta_overrides: Mapping[str, float | str] | None = None,
    shape_overrides: Mapping[str, str] | None = None,
    extra_l2: float = 0.0,
    d_coef: float = 0.25,
    c_coef: float = 0.25,
) -> OptimizerSpec:
    """Amos with ``xi`` warmed up linearly over ``warmup_steps`` (the reference's
    ``xi * min(1, step / warmup_steps)``, jestimator/models/bert/pretrain.py), eta from
    ``amos.default_eta_fn(gains, eta_overrides)`` and slot shapes from
    ``amos.default_shape_fn(shape_overrides)``: a model family's rules are data, bound in
    its model gin file.

    ``total_steps`` is unused: Amos needs no schedule length (its decay comes from ``b``).
    """
    del total_steps

    checked_number("amos_optimizer.xi (AMOS_XI)", xi)
    checked_number("amos_optimizer.beta (AMOS_BETA)", beta, high=1.0, allow_low=True)
    checked_number(
        "amos_optimizer.momentum (AMOS_MOMENTUM)",
        momentum,
        high=1.0,
        allow_low=True,
        allow_none=True,
    )
    checked_number("amos_optimizer.clip_value (AMOS_CLIP_VALUE)", clip_value, allow_none=True)
    checked_number("amos_optimizer.extra_l2", extra_l2, allow_low=True)
    checked_number("amos_optimizer.d_coef", d_coef, allow_low=True)
    checked_number("amos_optimizer.c_coef", c_coef, allow_low=True)
    xi_schedule = linear_warmup(xi, warmup_steps)
    try:
        eta_fn = eta_rules_fn(gains, eta_overrides)
        shape_fn = amos.default_shape_fn(shape_overrides)
    except ValueError as e:  # A bad regex or expression in a rule map.
        raise ConfigError(f"amos_optimizer.eta_overrides / shape_overrides / gains: {e}") from e
    tx = amos.amos(
        xi_schedule,
        eta_fn,
        shape_fn,
        beta=beta,
        momentum=momentum,
        clip_value=clip_value,
        extra_l2=extra_l2,
        d_coef=d_coef,
        c_coef=c_coef,
    )
    tx = _named_init(tx, "amos_optimizer.gains, eta_overrides, shape_overrides")

    def diagnostics(opt_state, params):
        return amos.amos_diagnostics(
            opt_state, params, xi_schedule, eta_fn, d_coef=d_coef, c_coef=c_coef
        )

    return OptimizerSpec("amos", tx, lambda t: float(xi_schedule(t)), diagnostics)


def eta_rules_fn(
    gains: Mapping[str, float] | None, overrides: Mapping[str, float | str] | None
) -> Callable:
    """A family's eta rules as a function of (path, shape): ``amos.default_eta_fn`` with
    the ``gains`` and ``overrides`` rule maps that its model gin file binds (raises
    ValueError on a bad rule)."""

    return amos.default_eta_fn(gains=dict(gains or {}), overrides=overrides)


def bound_amos_eta_rules() -> tuple[dict | None, dict | None]:
    """(gains, eta_overrides) as gin binds them for ``amos_optimizer`` (the model gin
    file's table), None where unbound or outside gin: other arms that need a variable's
    scale read the one table instead of a copy of it."""
    rules = []
    for name in ("gains", "eta_overrides"):
        try:
            rules.append(gin.query_parameter(f"amos_optimizer.{name}"))
        except ValueError:  # Not bound (or no configuration parsed).
            rules.append(None)
    return rules[0], rules[1]


# The plug-and-play arms (amos/schedules.py; docs/recipes.md): gin name stem -> variant.
PNP_ARMS = {"adam_pnp_isq": "inverse_square", "adam_pnp_itime": "inverse_time"}
# sigma of a normalization scale: the schedules' derivation (amos/schedules.py) takes 0.5
# for biases and norm parameters alike (its expected change); Amos' eta of a scale is 1.0,
# its expected value.
PNP_SCALE_RULE = {r"(^|/)(scale|gamma)$": 0.5}


def adam_pnp_optimizer(
    total_steps: int,
    *,
    variant: str,
    learning_rate: float,
    half_life: float,
    warmup_steps: int = 0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    q: float = 1.0,
    clip_global_norm: float | None = None,
    gains: Mapping[str, float] | None = None,
    eta_overrides: Mapping[str, float | str] | None = None,
) -> OptimizerSpec:
    """Adam's direction with the plug-and-play learning rate and weight decay
    (``amos.adam_plug_and_play``; amos/schedules.py). For a variable ``theta`` of ``k``
    entries and scale ``sigma``, at the 0-based update count ``t``::

        u_t     = Adam's bias-corrected m_t / (sqrt(v_t) + eps)   (b1, b2, eps)
        d_t     = 1 / (alpha_0 p t + 1)**2,  alpha_0 p = (sqrt(2) - 1) / T   (inverse_square)
                = 1 / (t / T + 1)                                          (inverse_time)
        alpha_t = alpha_0 * sqrt(k) * sigma / ||u_t|| * d_t
        rho_t   = alpha_0**2 / (2 q) * d_t
        w_t     = min(1, (t + 1) / W)   (1 when W = 0)
        theta  <- theta - w_t * (alpha_t u_t + rho_t theta)

    with ``alpha_0`` = ``learning_rate``, the half-life ``T`` = ``half_life`` (both
    schedules halve after T steps) and ``W`` = ``warmup_steps``. Nothing depends on
    ``total_steps`` (unused): the schedules run on past any planned horizon.

    Warmup: the whole update is scaled by ``w_t``, linear over the experiment's
    WARMUP_STEPS (Amos' convention: ``min(1, n / W)`` at the 1-based step ``n``, so the
    first update is not zero), and the schedule's clock is not delayed. Why: the
    derivation has no warmup, but every other arm of the comparison warms up over the same
    steps (Adam's second moment is a poor estimate at first), so that this arm differs from
    them only in its decay; a warmup needs no horizon; and keeping ``t`` from the first
    update keeps ``T`` the half-life from the start (W is a few percent of T).

    sigma: the family's Amos eta rules (``gains``, ``eta_overrides``; by default those gin
    binds for ``amos_optimizer`` in the model gin file), which give kernels their init std
    ``sqrt(gain / fan_in)`` and biases 0.5 as the derivation asks (amos/schedules.py), with
    normalization scales at 0.5 instead of Amos' 1.0. ``clip_global_norm`` clips the gradient first.
    """

    arm = next((a for a, v in PNP_ARMS.items() if v == variant), None)
    if arm is None:
        raise ConfigError(f"adam_pnp variant {variant!r} is not one of {list(PNP_ARMS.values())}")
    del total_steps
    name = f"{arm}_optimizer"
    checked_number(f"{name}.learning_rate (PNP_LR)", learning_rate)
    checked_number(f"{name}.half_life (PNP_HALF_LIFE)", half_life)
    checked_steps("WARMUP_STEPS", warmup_steps)
    checked_number(f"{name}.b1 (PNP_B1)", b1, high=1.0, allow_low=True)
    checked_number(f"{name}.b2 (PNP_B2)", b2, high=1.0, allow_low=True)
    checked_number(f"{name}.eps (PNP_EPS)", eps)
    checked_number(f"{name}.q (PNP_Q)", q)
    checked_number(f"{name}.clip_global_norm (PNP_CLIP_NORM)", clip_global_norm, allow_none=True)
    if gains is None and eta_overrides is None:
        gains, eta_overrides = bound_amos_eta_rules()
    try:
        sigma_fn = eta_rules_fn(gains, {**(eta_overrides or {}), **PNP_SCALE_RULE})
    except ValueError as e:  # A bad regex or expression in a rule map.
        raise ConfigError(f"{name}: sigma from amos_optimizer.gains / eta_overrides: {e}") from e
    tx = amos.adam_plug_and_play(
        learning_rate, sigma_fn, b1=b1, b2=b2, eps=eps, variant=variant, half_life=half_life, q=q
    )
    if warmup_steps:
        tx = optax.chain(
            tx, optax.scale_by_schedule(lambda n: jnp.minimum(1.0, (n + 1) / warmup_steps))
        )
    if clip_global_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_global_norm), tx)
    tx = _named_init(tx, "amos_optimizer.gains, eta_overrides (sigma of the plug-and-play arm)")
    rate = decay_rate(variant, half_life)

    def global_rate(t: int) -> float:
        """alpha_0 * w * d at the 1-based step t (without the per-variable factor)."""
        warm = min(1.0, t / warmup_steps) if warmup_steps else 1.0
        return float(learning_rate * warm * schedule_decay(variant, rate, jnp.float32(t - 1)))

    return OptimizerSpec(arm, tx, global_rate)


def _pnp_arm(variant: str) -> Callable[..., OptimizerSpec]:
    arm = functools.partial(adam_pnp_optimizer, variant=variant)
    arm.tuning = Tuning(knob="PNP_HALF_LIFE", labels={"PNP_HALF_LIFE": "T"})
    return arm


# The plug-and-play arms' factories (gin_configs/optimizers/<arm>.gin binds
# `train.optimizer = @<arm>_optimizer`); the study tunes their half-life T.
adam_pnp_isq_optimizer = _pnp_arm(PNP_ARMS["adam_pnp_isq"])
adam_pnp_itime_optimizer = _pnp_arm(PNP_ARMS["adam_pnp_itime"])


def slot_bytes(opt_state) -> int:
    """Bytes held by an optimizer state; `amos.slot_bytes` when the package provides it."""
    try:
        return int(amos.slot_bytes(opt_state))
    except (ImportError, AttributeError):
        leaves = jax.tree_util.tree_leaves(opt_state)
        return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))
