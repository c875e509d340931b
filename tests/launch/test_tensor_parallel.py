"""Tensor parallelism: the models' logical axis names, the rules that map them to the
('data', 'fsdp', 'model') mesh (launch/sharding.py), and tiny T5 runs on 8 CPU devices
(data 2 x fsdp 2 x model 2) against one device.

The eight-device run is a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8
(the device count is fixed when JAX starts), as in tests/launch/test_sharding.py.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from amos.tree import named_leaves, path_name
from experiments.bert.models import BertConfig, BertMlm
from experiments.errors import ConfigError
from experiments.gpt.models import GPT
from experiments.t5.models import T5, T5Config
from launch import run as run_cli
from launch import sharding
from launch import trainer as train_lib
from tests.launch.harness_helpers import PYTHON, env_with, run, run_cmd

RULES = sharding.LOGICAL_AXIS_RULES
IDS = jnp.ones((2, 16), jnp.int32)
# The models as the tests of this file build them, with the (sum of squares, sum) of
# their parameters at `init(jax.random.key(0), ...)`, measured before the models named
# their axes: the names must change no parameter.
MODELS = {
    "t5": (
        lambda: T5(T5Config.from_size("tiny", num_encoder_layers=1, num_decoder_layers=1)),
        (IDS, IDS),
        29,
        20049.559841861163,
        753.8455652610035,
    ),
    "rpe": (
        lambda: BertMlm(BertConfig.from_size("tiny", position_type="relative", num_layers=1)),
        (IDS,),
        26,
        548.8207588599362,
        504.93449734094355,
    ),
    "gpt": (
        lambda: GPT(65, block_size=16, num_layers=1, num_heads=2, width=32),
        (IDS,),
        9,
        100.97010603363827,
        92.44043414346652,
    ),
}


class _InitOnly:
    """The one method `train.init_train_state` asks of a task."""

    def __init__(self, inputs):
        self.inputs = inputs

    def init_variables(self, model, rng, batch):
        return model.init(rng, *self.inputs)


def _flat(params) -> dict[str, np.ndarray]:
    return {path_name(p): np.asarray(x) for p, x in named_leaves(params)[0]}


@pytest.mark.parametrize(
    "family",
    # T5 (every kind of name) in the fast suite; each case compiles its model's init.
    [
        "t5",
        pytest.param("rpe", marks=pytest.mark.slow),
        pytest.param("gpt", marks=pytest.mark.slow),
    ],
)
def test_axis_names_change_no_parameter_and_box_only_under_rules(family: str):
    build, inputs, count, squares, total = MODELS[family]
    model = build()
    init = dict(model=model, tx=optax.adam(1e-3), task=_InitOnly(inputs), example_batch={})
    # One compiled function (an eager init compiles op by op: slower): the model's own
    # init, outside any rules, and the trainer's, under them.
    plain, state = jax.jit(
        lambda: (
            model.init(jax.random.key(0), *inputs)["params"],
            train_lib.init_train_state(0, logical_axis_rules=RULES, **init),
        )
    )()
    flat = _flat(plain)
    # No box outside nn.logical_axis_rules: every caller of `init` sees what it always did.
    assert not any(
        isinstance(x, nn.LogicallyPartitioned)
        for x in jax.tree_util.tree_leaves(plain, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    )
    assert len(flat) == count
    squares_now = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in flat.values())
    assert math.isclose(squares_now, squares, rel_tol=1e-6)
    total_now = sum(float(np.sum(x.astype(np.float64))) for x in flat.values())
    assert math.isclose(total_now, total, rel_tol=1e-6)
    # The trainer's init: the same paths, dtypes and values, boxed only when asked, and
    # the optimizer's slots made for the plain values.
    got = _flat(state.params)
    assert list(got) == list(flat)
    for name, x in flat.items():
        assert got[name].dtype == x.dtype
        np.testing.assert_array_equal(got[name], x, err_msg=name)
    assert jax.tree_util.tree_structure(state.opt_state[0].mu) == jax.tree_util.tree_structure(
        plain
    )
    named = jax.eval_shape(
        lambda: train_lib.init_train_state(
            0, logical_axis_rules=RULES, keep_axis_names=True, **init
        )
    )
    specs = {path_name(p): s for p, s in named_leaves(nn.get_partition_spec(named.params))[0]}
    assert list(specs) == list(flat)
    names = {
        "t5": {
            "token_embedder/embedding": P("vocab", "embed"),
            "encoder/layers_0/mlp/wi_0/kernel": P("embed", "mlp"),
            "decoder/layers_0/mlp/wo/kernel": P("mlp", "embed"),
            "decoder/layers_0/encoder_decoder_attention/query/kernel": P("embed", "joined_kv"),
            "encoder/layers_0/attention/out/kernel": P("joined_kv", "embed"),
            "decoder/logits_dense/kernel": P("embed", "vocab"),
            "encoder/relpos_bias/relpos_embedding": P("relpos_buckets", "heads"),
            "encoder/encoder_norm/scale": P(),
        },
        "rpe": {
            "token_embedder/embedding": P("vocab", "embed"),
            "layers_0/mlp/wi/kernel": P("embed", "mlp"),
            "layers_0/mlp/wi/bias": P(),
            "layers_0/attention/key/kernel": P("embed", "joined_kv"),
            "layers_0/attention/relpos_embedding": P(),
            "segment_embedder/embedding": P(),
        },
        "gpt": {
            "wte/embedding": P("vocab", "embed"),
            "wpe/embedding": P(),
            "h_0/attn/c_attn/kernel": P("embed", "joined_kv"),
            "h_0/mlp/c_proj/kernel": P("mlp", "embed"),
        },
    }[family]
    for name, spec in names.items():
        assert specs[name] == spec, (name, specs[name])


def test_param_spec_puts_named_axes_on_model_and_fsdp_on_what_is_left():
    def spec(name, shape, logical, mesh, min_size=4096, rules=RULES):
        return sharding.param_spec(name, shape, P(*logical), mesh, min_size, rules)

    tp = {"data": 1, "fsdp": 4, "model": 2}
    # Megatron: the MLP's input kernel split on its output, the output kernel on its input;
    # fsdp takes the other axis.
    assert spec("wi", (1024, 2816), ("embed", "mlp"), tp) == P("fsdp", "model")
    assert spec("wo", (2816, 1024), ("mlp", "embed"), tp) == P("model", "fsdp")
    assert spec("emb", (32128, 1024), ("vocab", "embed"), tp) == P("model", "fsdp")
    # The model split ignores fsdp_min_size (a small table still follows its heads).
    assert spec("relpos", (32, 16), ("relpos_buckets", "heads"), tp) == P(None, "model")
    assert spec("scale", (1024,), (), tp) == P()  # No names: FSDP alone (too small here).
    assert spec("kernel", (512, 1024), (), tp) == P(None, "fsdp")
    # An axis of size 1 is left out: MESH_MODEL = 1 gives exactly the FSDP layout.
    fsdp_only = {"data": 2, "fsdp": 4, "model": 1}
    for shape, logical in [((1024, 2816), ("embed", "mlp")), ((32128, 1024), ("vocab", "embed"))]:
        assert spec("x", shape, logical, fsdp_only) == sharding.fsdp_spec(shape, 4, 4096)
    assert spec("x", (1024, 2816), ("embed", "mlp"), {"data": 8, "fsdp": 1, "model": 1}) == P()
    # Rules that put fsdp on a name themselves (MaxText's 'embed') replace the largest-axis
    # choice; several mesh axes on one name split it over their product.
    maxtext = (("embed", "fsdp"), ("mlp", "model"))
    assert spec("wo", (2816, 1024), ("mlp", "embed"), tp, rules=maxtext) == P("model", "fsdp")
    both = (("vocab", ("fsdp", "model")),)
    assert spec("emb", (32128, 1024), ("vocab", "embed"), tp, rules=both) == P(
        ("fsdp", "model"), None
    )
    # A model size that does not divide a named axis: a ConfigError naming MESH_MODEL.
    with pytest.raises(ConfigError) as e:
        spec("token_embedder/embedding", (30522, 1024), ("vocab", "embed"), {"model": 4})
    message = str(e.value)
    for part in ("MESH_MODEL=4", "token_embedder/embedding (30522, 1024)", "'vocab'"):
        assert part in message, message
    assert "train.logical_axis_rules" in message


def test_logical_axis_rules_are_checked_and_name_the_binding():
    check = sharding.check_logical_axis_rules
    assert check([["mlp", "model"], ["vocab", ["fsdp", "model"]], ["embed", None]]) == (
        ("mlp", "model"),
        ("vocab", ("fsdp", "model")),
        ("embed", None),
    )
    assert check(RULES) == RULES
    for rules, message in [
        ("mlp", "must be a list of (name, mesh axes) pairs"),
        ([("mlp",)], "is not a (name, mesh axes) pair"),
        ([("mlp", 2)], "the mesh axes must be None, a name or a list of names"),
        ([("mlp", "tensor")], "names mesh axes ['tensor'] that the mesh does not have"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as e:
            check(rules)
        assert "train.logical_axis_rules" in str(e.value)


def test_a_model_axis_that_does_not_fit_the_devices_is_a_configuration_error(
    tmp_path: Path, capsys
):
    argv = run_cmd(tmp_path / "run", "--gin.MESH_MODEL=2", steps=20)[2:]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ERROR: configuration:" in err and "MESH_MODEL" in err, err
    assert "'model': 2} does not fit the 1 devices" in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- eight devices
# A T5 of width 32 (one layer each side) on generated text, trained STEPS steps with Amos
# and AdamW on the mesh given; the vocabulary is padded to a multiple of 8, as t5x pads
# its own, so that the model axis divides it. With 8 devices the script also runs the
# tiny quickstart with MESH_MODEL=2, whose GPT has the 65 characters of its text.
_SCRIPT = textwrap.dedent("""
    import contextlib, dataclasses, io, json, sys
    import jax
    from amos.tree import named_leaves, path_name
    from experiments.data.sources import GeneratedTextSource
    from experiments.data.text_tasks import SpanCorruptionTask
    from experiments.t5.models import T5, T5Config
    from launch import optimizers, run as run_cli, sharding, trainer as train_lib
    from tests.launch.harness_helpers import run_cmd

    base, mesh, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    task = SpanCorruptionTask(GeneratedTextSource(num_chars=20_000), "byte", 32, 8)
    config = T5Config.from_size("tiny", d_model=32, num_heads=2, d_kv=16, d_ff=64,
                                num_encoder_layers=1, num_decoder_layers=1)
    model = lambda vocab_size: T5(dataclasses.replace(config, vocab_size=-(-vocab_size // 8) * 8))
    arms = {
        "amos": lambda n: optimizers.amos_optimizer(n, xi=0.01, momentum=0.9, clip_value=1.0),
        "adamw": lambda n: optimizers.adamw_optimizer(n, learning_rate=1e-3, warmup_steps=2),
    }
    out = {"devices": jax.device_count()}
    for name, optimizer in arms.items():
        trainer = train_lib.Trainer(train_lib.TrainConfig(
            model_dir=f"{base}/{name}", train_steps=steps, batch_size=8, model=model,
            task=task, optimizer=optimizer, mesh_shape=mesh, fsdp_min_size=256,
            progress=False))
        state, losses = trainer.init_state(0), []
        for step in range(1, steps + 1):
            state, metrics = trainer.train_step(state, trainer.train_batch(step))
            losses.append(float(metrics["loss"]))
        params = named_leaves(state.params)[0]
        out[name] = {
            "losses": losses,
            "layout": trainer.layout(),
            "params_per_device": sharding.addressable_bytes(state.params),
            "slots_per_device": sharding.addressable_bytes(state.opt_state),
            "param_bytes": {path_name(p): x.nbytes for p, x in params},
            "specs": {path_name(p): str(x.sharding.spec) for p, x in params},
            "slots": [
                [path_name(p), list(x.shape), str(x.sharding.spec)]
                for p, x in named_leaves(state.opt_state)[0]
                if path_name(p).endswith("encoder/layers_0/mlp/wi_0/kernel")
            ],
        }
    if jax.device_count() == 8:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            argv = run_cmd(base + "/gpt", "--gin.MESH_MODEL=2", steps=20)[2:]
            out["gpt_exit"] = run_cli.main(argv)
        out["gpt_error"] = err.getvalue()
    print("RESULT " + json.dumps(out))
""")
STEPS = 6


def _run(base: Path, mesh: dict, devices: int) -> dict:
    env = env_with(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    p = run([PYTHON, "-c", _SCRIPT, str(base), json.dumps(mesh), str(STEPS)], env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _split(spec: str, mesh: dict) -> int:
    """Into how many parts a spec's string (e.g. "P('fsdp', 'model')") splits a variable."""
    return math.prod(mesh[axis] for axis in re.findall(r"'(\w+)'", spec))


@pytest.mark.slow  # two processes, one of them on 8 virtual devices (about a minute each)
def test_data2_fsdp2_model2_t5_matches_one_device_with_a_quarter_of_the_bytes(tmp_path: Path):
    one = _run(tmp_path / "one", {"data": 1, "fsdp": 1, "model": 1}, devices=1)
    mesh = {"data": 2, "fsdp": 2, "model": 2}
    eight = _run(tmp_path / "eight", mesh, devices=8)
    assert one["devices"] == 1 and eight["devices"] == 8
    for arm in ("amos", "adamw"):
        a, b = one[arm], eight[arm]
        assert b["layout"]["mesh"] == mesh
        # Float32 noise only (the split matmuls and reductions sum in another order):
        # measured at most 7.9e-8 relative over the 6 steps, both optimizers.
        for step, (x, y) in enumerate(zip(a["losses"], b["losses"], strict=True), 1):
            assert math.isclose(x, y, rel_tol=1e-6), (arm, step, x, y)
        assert a["losses"][-1] < a["losses"][0]
        specs = b["specs"]
        # Megatron-style: the MLP's, attention's and vocabulary's named axes on `model`,
        # the other axis of each kernel on `fsdp`; norm scales replicated.
        for name, spec in {
            "encoder/layers_0/mlp/wi_0/kernel": "P('fsdp', 'model')",
            "decoder/layers_0/mlp/wo/kernel": "P('model', 'fsdp')",
            "decoder/layers_0/encoder_decoder_attention/key/kernel": "P('fsdp', 'model')",
            "encoder/layers_0/attention/out/kernel": "P('model', 'fsdp')",
            "token_embedder/embedding": "P('model', 'fsdp')",
            "decoder/logits_dense/kernel": "P('fsdp', 'model')",
            "encoder/relpos_bias/relpos_embedding": "P(None, 'model')",
            "encoder/encoder_norm/scale": "P()",
        }.items():
            assert specs[name] == spec, (arm, name, specs[name])
        # Bytes per device, measured from the arrays' shards: each variable's bytes over
        # its split (the parameters are replicated over `data`), as the layout computed.
        sizes = a["param_bytes"]
        expected = sum(n // _split(specs[k], mesh) for k, n in sizes.items())
        assert b["params_per_device"] == expected == b["layout"]["param_bytes_per_device"]
        assert b["slots_per_device"] == b["layout"]["slot_bytes_per_device"]
        replicated = sum(n for k, n in sizes.items() if specs[k] == "P()")
        total = sum(sizes.values())
        assert b["params_per_device"] == pytest.approx(
            (total - replicated) / 4 + replicated, rel=0.01
        )
        assert b["params_per_device"] / a["params_per_device"] < 0.27  # Measured 0.254.
        # Measured 0.254 (AdamW) and 0.269 (Amos, whose factored slots are split only on
        # their full axis).
        assert b["slots_per_device"] / a["slots_per_device"] < 0.28
        # The slots follow the kernel: full-size ones like it, factored ones (Amos' v, b
        # of shape (1, d_ff)) keep `model` on their full axis, none on the reduced one.
        slots = b["slots"]
        assert slots, arm
        for name, shape, spec in slots:
            if shape == [32, 64]:
                assert spec == "P('fsdp', 'model')", (name, spec)
            else:
                assert shape == [1, 64] and spec == "P(None, 'model')", (name, shape, spec)
    # A model axis that does not divide a named axis (the tiny quickstart's characters,
    # an odd count) stops the run before anything starts: exit 2, one line naming
    # MESH_MODEL.
    assert eight["gpt_exit"] == 2
    error = eight["gpt_error"]
    found = re.fullmatch(
        r"ERROR: configuration: MESH_MODEL=2 does not divide axis 0 \('vocab', size (\d+)\) of "
        r"wte/embedding \((\d+), 32\), which train.logical_axis_rules splits over model: .*"
        r"map 'vocab' to None in train.logical_axis_rules\n",
        error,
    )
    assert found and found[1] == found[2] and int(found[1]) % 2 == 1, error
