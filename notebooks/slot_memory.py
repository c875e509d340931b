# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Optimizer-slot memory at the paper's sizes
#
# The paper claims Amos needs at most 51% of AdamW's optimizer-slot memory
# (the paper's abstract): AdamW keeps two full-size slots, Amos a
# full-size momentum plus its factored `v` and `b`, and without momentum almost nothing.
# Here, at the paper's model sizes (BERT-base, BERT-large, T5 1.1 small / base / large),
# everything comes from shapes, nothing is allocated:
#
# - the model and the Amos optimizer are built the way `launch/run.py` builds them, from
#   the paper-scale experiment file `gin_configs/experiments/<name>.gin` with
#   `optimizers/amos.gin`: `train.model` at the model config's default vocabulary, and
#   `train.optimizer` (`amos_optimizer` with the model file's eta and slot rule maps and
#   the experiment's `AMOS_MOMENTUM`); "no momentum" rebinds `AMOS_MOMENTUM = None`;
# - parameters from `jax.eval_shape(model.init, ...)`, slot bytes from
#   `amos.compare_slot_memory` (both states from `jax.eval_shape`, against `optax.adamw`).
#
# A last row repeats the comparison on `amos.model_shapes.bert_param_shapes()` with the
# default rules, the tree that `tests/amos/test_memory.py` asserts on.

# %%
import dataclasses
import logging
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
from IPython.display import Markdown

import amos
import launch.configurables  # noqa: F401  (registers train, the models, the optimizers)
from amos.model_shapes import bert_param_shapes, count_parameters
from experiments.bert.models import BertConfig
from experiments.t5.models import T5, T5Config

REPO = Path.cwd()

GIN_DIR = REPO / "gin_configs"
if not GIN_DIR.is_dir():
    raise FileNotFoundError(f"no {GIN_DIR}: run the notebook from the repository root")

# The paper's sizes and the experiment files that train them.
PAPER_SIZES = {
    "BERT-base": "bert_base",
    "BERT-large": "bert_large",
    "T5 1.1 small": "t5_small",
    "T5 1.1 base": "t5_base",
    "T5 1.1 large": "t5_large",
}
CLAIM = 0.51  # Amos / AdamW slot bytes, at most (the paper's abstract).


def default_vocab(config_class) -> int:
    """The vocabulary size a model config defaults to (run.py takes it from the data)."""
    return next(f.default for f in dataclasses.fields(config_class) if f.name == "vocab_size")


VOCAB = {"bert_model": default_vocab(BertConfig), "t5_model": default_vocab(T5Config)}


def build(experiment: str, bindings: tuple[str, ...] = ()):
    """(model, vocabulary size, Amos transformation) of an experiment file with the Amos arm."""
    files = [GIN_DIR / "experiments" / f"{experiment}.gin", GIN_DIR / "optimizers" / "amos.gin"]
    with gin.unlock_config():
        gin.clear_config()
        gin.add_config_file_search_path(str(GIN_DIR))
        logging.disable(logging.ERROR)  # gin logs every search path a file is not under.
        try:
            gin.parse_config_files_and_bindings([str(f) for f in files], list(bindings))
            factory = gin.query_parameter("train.model")
            vocab = VOCAB[factory.configurable.name]
            model = factory.scoped_configurable_fn(vocab)
            spec = gin.query_parameter("train.optimizer").scoped_configurable_fn(
                gin.query_parameter("%TRAIN_STEPS")
            )
        finally:
            logging.disable(logging.NOTSET)
            gin.clear_config()
    return model, vocab, spec.tx


def abstract_params(model):
    """Parameter shapes of a repository model, from ``jax.eval_shape``."""
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    inputs = (ids, ids) if isinstance(model, T5) else (ids,)
    return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *inputs)["params"]


# %% [markdown]
# ## Bytes and ratios

# %%
rows = []
for label, experiment in PAPER_SIZES.items():
    model, vocab, with_momentum = build(experiment)
    _, _, without_momentum = build(experiment, ("AMOS_MOMENTUM = None",))
    params = abstract_params(model)
    rows.append(
        {
            "model": label,
            "source": f"`experiments/{experiment}.gin`, vocabulary {vocab}",
            "parameters": count_parameters(params),
            "momentum": amos.compare_slot_memory(with_momentum, params),
            "no momentum": amos.compare_slot_memory(without_momentum, params),
        }
    )
    print(f"{label}: done")

shapes = bert_param_shapes()
rows.append(
    {
        "model": "BERT-base (shapes only)",
        "source": "`amos.model_shapes.bert_param_shapes()`, default rules",
        "parameters": count_parameters(shapes),
        **{
            label: amos.compare_slot_memory(
                amos.amos(1.0, amos.default_eta_fn(), amos.default_shape_fn(), **kwargs), shapes
            )
            for label, kwargs in [("momentum", {"momentum": 0.9}), ("no momentum", {})]
        },
    }
)


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


lines = [
    "| model | built from | parameters | AdamW slots (MiB) | Amos + momentum (MiB) | "
    f"ratio | claim (≤ {CLAIM:.2f}) | Amos, no momentum (MiB) | ratio |",
    "|---|---|---:|---:|---:|---:|---|---:|---:|",
]
for r in rows:
    m, n = r["momentum"], r["no momentum"]
    assert m["baseline_bytes"] == n["baseline_bytes"]
    lines.append(
        f"| {r['model']} | {r['source']} | {r['parameters'] / 1e6:.1f}M | "
        f"{mib(m['baseline_bytes'])} | {mib(m['bytes'])} | {m['ratio']:.4f} | "
        f"{'met' if m['ratio'] <= CLAIM else 'not met'} | {mib(n['bytes'])} | "
        f"{n['ratio']:.4f} |"
    )
table = "\n".join(lines)
Markdown(table)

# %% [markdown]
# With momentum, Amos keeps one full-size float32 slot, half of AdamW's two, plus `v` and
# `b`, which are factored to one row or column per matrix (about 2 / width of each
# matrix's size), so the ratio sits just above one half, closer to it the wider the model.
# Without momentum only `v`, `b` and the step count are left.

# %%
for r in rows:
    m, n = r["momentum"], r["no momentum"]
    print(
        f"{r['model']:>24}: AdamW {m['baseline_bytes']:>13,} B, Amos {m['bytes']:>13,} B "
        f"(momentum alone {m['bytes'] - n['bytes']:>13,} B), no momentum {n['bytes']:>10,} B"
    )
