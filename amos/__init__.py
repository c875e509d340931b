"""Amos: an Adam-style optimizer with adaptive weight decay towards model-oriented scale.

Tian & Parikh, 2022 (arXiv:2210.11693), as optax transforms, with helpers for the
per-variable scale ``eta`` and slot shapes, slot-memory accounting, slot sharding, the
paper's AdamW baseline, and two related recipes (AdamW weight decay from an EMA timescale;
plug-and-play learning-rate and weight-decay schedules).
"""

from amos.baselines import (
    adamw_baseline,
    default_weight_decay_mask,
    timescale_from_weight_decay,
    warmup_linear_decay_schedule,
    weight_decay_from_timescale,
)
from amos.memory import compare_slot_memory, slot_bytes, slot_bytes_by_variable
from amos.optimizer import (
    ScaleByAmosState,
    amos,
    amos_diagnostics,
    find_amos_state,
    lr_decay_factor,
    scale_by_amos,
    wd_decay_factor,
)
from amos.params import (
    RuleMap,
    default_eta_fn,
    default_shape_fn,
    evaluate_expression,
    rule_map_fn,
    variable_kind,
)
from amos.schedules import PlugAndPlayState, adam_plug_and_play, plug_and_play_decay
from amos.sharding import slot_partition_specs, slot_shardings
from amos.tree import ParamsFn

__all__ = [
    "ParamsFn",
    "PlugAndPlayState",
    "RuleMap",
    "ScaleByAmosState",
    "adam_plug_and_play",
    "adamw_baseline",
    "amos",
    "amos_diagnostics",
    "compare_slot_memory",
    "default_eta_fn",
    "default_shape_fn",
    "default_weight_decay_mask",
    "evaluate_expression",
    "find_amos_state",
    "lr_decay_factor",
    "plug_and_play_decay",
    "rule_map_fn",
    "scale_by_amos",
    "slot_bytes",
    "slot_bytes_by_variable",
    "slot_partition_specs",
    "slot_shardings",
    "timescale_from_weight_decay",
    "variable_kind",
    "warmup_linear_decay_schedule",
    "wd_decay_factor",
    "weight_decay_from_timescale",
]
