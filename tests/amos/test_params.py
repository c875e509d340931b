"""Rule maps, the default eta and slot shapes against the reference tables, validation."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

import amos
from amos.model_shapes import bert_param_shapes, lstm_param_shapes
from amos.params import ExpressionError
from amos.tree import named_leaves, path_name


def test_rule_map_numbers_expressions_and_order():
    fn = amos.rule_map_fn(
        {
            r"norm/scale$": 1.0,
            r"embedding$": "sqrt(2 / SHAPE[-1])",
            r"conv.*kernel$": "sqrt(2 / prod(SHAPE[:-1]))",
            r"kernel$": "SHAPE[0] ** -0.25",
            r".": 0.5,
        }
    )
    assert fn(("norm", "scale"), (8,)) == 1.0
    assert fn(("tok", "embedding"), (100, 32)) == pytest.approx(0.25)
    assert fn(("conv1", "kernel"), (3, 3, 2, 16)) == pytest.approx(math.sqrt(2 / 18))
    assert fn(("dense", "kernel"), (16, 4)) == pytest.approx(0.5)
    assert fn(("dense", "bias"), (4,)) == 0.5


def test_rule_map_shape_expressions():
    fn = amos.rule_map_fn(
        {
            "kernel": "(1,) * (len(SHAPE) - 1) + SHAPE[-1:]",
            "embedding": "SHAPE[:-1] + (1,)",
            "bias": (),
            "other": "(min(SHAPE), max(SHAPE) // 2, -(-3))",
        }
    )
    assert fn(("a", "kernel"), (3, 3, 8, 16)) == (1, 1, 1, 16)
    assert fn(("e", "embedding"), (100, 32)) == (100, 1)
    assert fn(("b", "bias"), (5,)) == ()
    assert fn(("other",), (4, 10)) == (4, 5, 3)


def test_rule_map_errors_name_the_culprit():
    fn = amos.rule_map_fn({"kernel$": 0.1})
    with pytest.raises(
        ValueError, match=r"No rule matches variable 'encoder/bias' of shape \(4,\)"
    ):
        fn(("encoder", "bias"), (4,))
    with pytest.raises(ValueError, match=r"Rule regex '\(unclosed' is not valid"):
        amos.rule_map_fn({"(unclosed": 1.0})
    with pytest.raises(ValueError, match=r"Rule 'x' failed for variable 'x' of shape \(2,\)"):
        amos.rule_map_fn({"x": "SHAPE[3]"})(("x",), (2,))
    with pytest.raises(ValueError, match=r"failed for variable 'x'.*division"):
        amos.rule_map_fn({"x": "1 / (SHAPE[0] - 2)"})(("x",), (2,))


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "SHAPE.index(1)",
        "[1, 2]",
        "lambda: 1",
        "'text'",
        "open('f')",
        "sqrt(x=1)",
        "1 if SHAPE else 2",
        "SHAPE[0",
    ],
)
def test_unsafe_or_invalid_expressions_are_rejected_when_the_map_is_built(expression):
    with pytest.raises(ExpressionError, match="Rule 'v'"):
        amos.rule_map_fn({"v": expression})


def test_evaluate_expression_directly():
    assert amos.evaluate_expression("sqrt(prod(SHAPE)) / 2", (4, 9)) == pytest.approx(3.0)
    assert amos.evaluate_expression("abs(-SHAPE[1]) % 5", (4, 9)) == 4


def test_variable_kind_and_unknown_names():
    assert amos.variable_kind(("a", "kernel"), (3, 4)) == "kernel"
    assert amos.variable_kind(("ln", "weight"), (4,)) == "scale"
    assert amos.variable_kind(("fc", "weight"), (4, 3)) == "kernel"
    assert amos.variable_kind(("relpos_embedding",), (32, 8)) == "embedding"
    with pytest.raises(ValueError, match="'block/temperature'.*Give it a rule in `overrides`"):
        amos.default_eta_fn()(("block", "temperature"), ())
    # An override gives such a variable its value.
    assert amos.default_eta_fn(overrides={"temperature": 0.1})(("block", "temperature"), ()) == 0.1


def table(tree, eta_fn, shape_fn):
    return {
        path_name(p): (eta_fn(p, x.shape), tuple(shape_fn(p, x.shape)))
        for p, x in named_leaves(tree)[0]
    }


def test_defaults_reproduce_the_bert_table():
    # The reference BERT table (H = 768, F = 3072); the MLP output kernel follows GELU,
    # which no shape shows, so it takes gain 2 by name.
    hidden, mlp, vocab = 768, 3072, 30522
    got = table(
        bert_param_shapes(),
        amos.default_eta_fn(gains={r"mlp/wo/kernel$": 2.0}),
        amos.default_shape_fn(),
    )
    expected_kernel = (math.sqrt(1 / hidden), None)
    for name, (eta, slot) in got.items():
        if name.endswith("scale"):
            assert (eta, slot) == (1.0, ()), name
        elif name.endswith("bias"):
            assert (eta, slot) == (0.5, ()), name
        elif name == "embeddings/token/embedding":
            assert eta == pytest.approx(math.sqrt(2 / hidden)) and slot == (vocab, 1)
        elif name.endswith("mlp/wo/kernel"):
            assert eta == pytest.approx(math.sqrt(2 / mlp)) and slot == (1, hidden)
        elif name.endswith("kernel"):
            assert eta == pytest.approx(expected_kernel[0]), name
            assert slot == (1, mlp if "mlp/wi" in name else hidden), name
    # Not in the table: position and segment embeddings get the embedding rule.
    assert got["embeddings/position/embedding"] == (pytest.approx(math.sqrt(2 / hidden)), (512, 1))


def test_where_the_defaults_differ_from_the_reference_tables():
    hidden = 768
    eta_fn, shape_fn = amos.default_eta_fn(), amos.default_shape_fn()
    # 1. Without a gain rule the MLP output kernel gets sqrt(1/F), not sqrt(2/F): the GELU
    #    before it is not visible in its name or shape.
    assert eta_fn(("mlp", "wo", "kernel"), (3072, hidden)) == pytest.approx(math.sqrt(1 / 3072))
    # 2. RPE's relative-position embedding is an additive logit bias (reference eta 0.5);
    #    by name it is an embedding, so it gets sqrt(2 / width). Same slot shape as the table.
    assert eta_fn(("relpos_embedding",), (32, 12)) == pytest.approx(math.sqrt(2 / 12))
    assert shape_fn(("relpos_embedding",), (32, 12)) == (32, 1)
    # 3. The LSTM table uses fourth roots, fan_in ** -0.25, set by hand for that model; the
    #    general rule gives fan_in ** -0.5. Slot shapes agree with the table.
    h, vocab = 650, 10000
    lstm = table(lstm_param_shapes(vocab=vocab, hidden=h), eta_fn, shape_fn)
    reference = {
        "lstm_0/core/kernel": ((2 * h) ** -0.25, (1, 4 * h)),
        "lstm_0/core/bias": (0.5, ()),
        "embed/embedding": (h**-0.25, (vocab, 1)),
        "output/bias": (0.5 * h**-0.25, ()),
    }
    differs = {
        name
        for name, (eta, slot) in reference.items()
        if not math.isclose(lstm[name][0], eta) or lstm[name][1] != slot
    }
    assert differs == {"lstm_0/core/kernel", "embed/embedding", "output/bias"}
    assert all(lstm[name][1] == slot for name, (_, slot) in reference.items())
    # An override reproduces the LSTM table exactly.
    lstm_eta = amos.default_eta_fn(
        overrides={
            r"core/kernel$": "prod(SHAPE[:-1]) ** -0.25",
            r"embed/embedding$": "SHAPE[-1] ** -0.25",
            r"output/bias$": f"0.5 * {h} ** -0.25",
        }
    )
    shapes = {path_name(p): x.shape for p, x in named_leaves(lstm_param_shapes(vocab, h))[0]}
    for name, (eta, _) in reference.items():
        assert lstm_eta(tuple(name.split("/")), shapes[name]) == pytest.approx(eta), name


def test_conv_kernels_use_the_receptive_field_as_fan_in():
    eta_fn = amos.default_eta_fn(gains={"conv_[1-9]": 2.0})
    assert eta_fn(("conv_0", "kernel"), (3, 3, 1, 32)) == pytest.approx(math.sqrt(1 / 9))
    assert eta_fn(("conv_1", "kernel"), (3, 3, 32, 64)) == pytest.approx(math.sqrt(2 / 288))
    assert amos.default_shape_fn()(("conv_1", "kernel"), (3, 3, 32, 64)) == (1, 1, 1, 64)


PARAMS = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}


@pytest.mark.parametrize(
    "shape_fn,message",
    [
        (
            lambda p, s: (4,) if p[-1] == "kernel" else (),
            r"Slot shape \(4,\) for variable 'dense/kernel' of shape \(4, 3\) is not allowed",
        ),
        (
            lambda p, s: (2, 3) if p[-1] == "kernel" else (),
            r"Slot shape \(2, 3\) for variable "
            "'dense/kernel'",
        ),
        (
            lambda p, s: (1, 3, 1) if p[-1] == "kernel" else (),
            r"\(1, 3, 1\) for variable 'dense/kernel'",
        ),
        (
            lambda p, s: 7 if p[-1] == "bias" else s,
            r"shape_fn returned 7 for variable 'dense/bias'",
        ),
    ],
)
def test_bad_slot_shapes_fail_at_init_naming_the_variable(shape_fn, message):
    tx = amos.amos(0.01, lambda p, s: 0.1, shape_fn)
    with pytest.raises(ValueError, match=message):
        tx.init(PARAMS)


@pytest.mark.parametrize(
    "eta,message",
    [
        (None, r"eta is missing for variable 'dense/bias'"),
        (-0.1, r"eta for variable 'dense/bias' of shape \(3,\) is -0.1; it must be finite and pos"),
        (0.0, r"eta for variable 'dense/bias' of shape \(3,\) is 0.0"),
        (float("nan"), r"eta for variable 'dense/bias' of shape \(3,\) is nan"),
        (float("inf"), r"eta for variable 'dense/bias' of shape \(3,\) is inf"),
        ("big", r"eta for variable 'dense/bias' is 'big', not a number"),
    ],
)
def test_bad_eta_fails_at_init_naming_the_variable(eta, message):
    tx = amos.amos(0.01, lambda p, s: eta if p[-1] == "bias" else 0.1, amos.default_shape_fn())
    with pytest.raises(ValueError, match=message):
        tx.init(PARAMS)


def test_configuration_errors():
    with pytest.raises(ValueError, match="eta_fn is required"):
        amos.amos(0.01, None)
    with pytest.raises(ValueError, match="beta must be in"):
        amos.amos(0.01, lambda p, s: 1.0, beta=1.5)
    with pytest.raises(ValueError, match="momentum must be in"):
        amos.amos(0.01, lambda p, s: 1.0, momentum=1.0)
    with pytest.raises(ValueError, match="clip_value must be positive"):
        amos.amos(0.01, lambda p, s: 1.0, clip_value=-1.0)
    tx = amos.amos(0.01, lambda p, s: 1.0)
    with pytest.raises(ValueError, match="Amos needs the parameters"):
        tx.update(PARAMS, tx.init(PARAMS))


@pytest.mark.parametrize("gain", [-2.0, 0.0, math.nan])
def test_a_bad_gain_names_the_variable(gain):
    eta_fn = amos.default_eta_fn(gains={"out/kernel$": gain})
    assert eta_fn(("hidden", "kernel"), (4, 3)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=f"gain for variable 'out/kernel' is {gain}"):
        eta_fn(("out", "kernel"), (4, 3))
