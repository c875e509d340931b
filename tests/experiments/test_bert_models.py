"""BERT / RoPE / RPE encoders as the reference builds them (google-research/jestimator,
jestimator/models/{bert,rope,bert_rpe}/modeling.py): sizes, initialization, dropout,
Shaw-style relative positions, and the Amos rules of gin_configs/models/{bert,rope,rpe}_*.gin
against the reference table."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import amos
from amos.params import checked_eta, checked_slot_shape
from amos.tree import named_leaves
from experiments.bert.models import BertConfig, BertMlm, SelfAttention
from experiments.objectives import cross_entropy
from tests.experiments.model_gin import abstract_params, int_input, load_model_file

POSITION_TYPES = ("absolute", "rotary", "relative")
FILE_PREFIX = {"absolute": "bert", "rotary": "rope", "relative": "rpe"}
# The std of a standard normal truncated to (-2, 2): the reference's
# truncated_normal_initializer (jestimator/modeling.py) scales such a draw by 0.02.
TRUNCATED_STD = 0.8796256610342398


@functools.cache
def _abstract(size: str, position_type: str, vocab_size: int = 30522):
    config = BertConfig.from_size(size, vocab_size=vocab_size, position_type=position_type)
    return config, abstract_params(BertMlm(config), int_input(1, 8))


def _names(params) -> dict[str, tuple[int, ...]]:
    return {"/".join(p): tuple(x.shape) for p, x in named_leaves(params)[0]}


# ---------------------------------------------------------------------------------------
# Sizes.


def _expected_count(config: BertConfig) -> int:
    """Parameters of the encoder + MLM head, counted from the architecture by hand."""
    v, h, f = config.vocab_size, config.hidden_size, config.mlp_dim
    embeddings = v * h + config.type_vocab_size * h + 2 * h  # + embeddings layer norm
    if config.position_type == "absolute":
        embeddings += config.max_length * h
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h  # attention, MLP, 2 LNs
    if config.position_type == "relative":
        layer += (2 * config.relpos_max_distance - 1) * h  # each layer's own table
    head = (h * h + h) + 2 * h + v  # dense, layer norm, output bias (logits tied)
    return embeddings + config.num_layers * layer + head


# Measured with BERT's 30522-token vocabulary; the published BERT sizes (110M, 340M)
# include a pooler, hence the 2% tolerance against them.
EXPECTED_COUNTS = {
    ("base", "absolute"): 109_514_298,
    ("base", "rotary"): 109_121_082,  # No position table (512 x 768).
    # No position table; each of the 12 layers has its own (2 * 128 - 1) x 768 table.
    ("base", "relative"): 109_121_082 + 12 * 255 * 768,
    ("large", "absolute"): 335_174_458,
    ("large", "rotary"): 334_650_170,
    ("large", "relative"): 334_650_170 + 24 * 255 * 1024,
}


@pytest.mark.parametrize("size,position_type", sorted(EXPECTED_COUNTS))
def test_parameter_counts(size, position_type):
    config, params = _abstract(size, position_type)
    n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    assert n == EXPECTED_COUNTS[size, position_type] == _expected_count(config)
    published = {"base": 110e6, "large": 340e6}[size]
    assert abs(n / published - 1) < 0.02


def test_rpe_has_a_table_per_layer():
    """jestimator/models/bert_rpe/modeling.py: every AttentionLayer has its own
    relpos_embed of shape (2 * relative_attention_max_distance - 1, hidden_size), 128 at
    the paper's size; there is no position table and no T5-style scalar bias."""
    config, params = _abstract("base", "relative")
    names = _names(params)
    tables = {n: s for n, s in names.items() if "relpos" in n}
    assert tables == {
        f"layers_{i}/attention/relpos_embedding": (255, 768) for i in range(config.num_layers)
    }
    assert config.relpos_max_distance == 128
    assert "position_embedder/embedding" not in names
    assert {n.rsplit("/", 1)[1] for n in names} == {
        "kernel",
        "bias",
        "scale",
        "embedding",
        "relpos_embedding",
    }
    assert names["layers_0/attention/query/kernel"] == (768, 768)
    assert names["mlm_head/bias"] == (30522,)
    # Rotary and absolute encoders have no relative tables.
    assert not any("relpos" in n for n in _names(_abstract("base", "rotary")[1]))


# ---------------------------------------------------------------------------------------
# Initialization.

ZERO_INIT = ("attention/query/kernel", "attention/value/kernel", "mlp/wo/kernel")
NORMAL_INIT = ("attention/key/kernel", "attention/out/kernel", "mlp/wi/kernel")


@functools.cache
def _tiny_init(position_type: str):
    config = BertConfig.from_size("tiny", position_type=position_type)
    ids = jnp.ones((1, 8), jnp.int32)
    return config, BertMlm(config).init(jax.random.key(0), ids)["params"]


@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_initialization_as_the_reference(position_type):
    """jestimator/models/bert/modeling.py (and rope/, bert_rpe/): the query, value, MLP
    output (dense2) and MLM head dense kernels are initialized to ZERO; the key, attention
    output and MLP input kernels and the embeddings (and RPE's relpos_embed) are truncated
    normal with initializer_range 0.02; biases 0, layer-norm scales 1."""
    config, params = _tiny_init(position_type)
    flat = {"/".join(p): np.asarray(x) for p, x in named_leaves(params)[0]}
    normal = []
    for name, x in flat.items():
        if name.endswith(ZERO_INIT) or name == "mlm_head/dense/kernel":
            assert np.all(x == 0), name
        elif name.endswith(NORMAL_INIT) or name.endswith("embedding"):
            normal.append(name)
            # Truncated at 2 standard deviations of the untruncated 0.02.
            assert np.all(np.abs(x) <= 2 * 0.02) and np.all(x != 0), name
            # The standard deviation, to within the sampling error of its entries.
            tolerance = 4 / math.sqrt(2 * x.size)
            assert abs(x.std() / (0.02 * TRUNCATED_STD) - 1) < tolerance, (name, x.std())
            assert abs(x.mean()) < 4 * 0.02 / math.sqrt(x.size), name
        elif name.endswith("bias"):
            assert np.all(x == 0), name
        else:
            assert name.endswith("scale") and np.all(x == 1), name
    kinds = {n.split("/", 1)[-1] for n in normal}
    assert set(NORMAL_INIT) <= kinds
    assert {"token_embedder/embedding", "segment_embedder/embedding"} <= set(normal)
    assert ("position_embedder/embedding" in normal) == (position_type == "absolute")
    relpos = [n for n in normal if n.endswith("relpos_embedding")]
    assert len(relpos) == (config.num_layers if position_type == "relative" else 0)


def test_at_init_every_logit_is_zero():
    """Zero query, value, MLP output and head dense kernels (jestimator/models/bert/
    modeling.py): the head's LayerNorm sees zeros, so the first loss is exactly log(V)."""
    config, params = _tiny_init("absolute")
    ids = jax.random.randint(jax.random.key(1), (2, 8), 0, config.vocab_size)
    np.testing.assert_array_equal(BertMlm(config).apply({"params": params}, ids), 0.0)


# ---------------------------------------------------------------------------------------
# Behaviour (on params moved away from the degenerate zero init).


def _perturbed(params, scale: float = 0.1, seed: int = 7):
    rng = np.random.default_rng(seed)  # numpy: no compile per leaf shape.
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x + scale * rng.standard_normal(x.shape), jnp.float32), params
    )


@functools.cache
def _tiny_model(position_type: str, **overrides):
    config = BertConfig.from_size("tiny", position_type=position_type, **overrides)
    model = BertMlm(config)
    init = jax.jit(model.init)  # One compile costs less than op-by-op dispatch here.
    params = _perturbed(init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"])
    return config, model, params


@functools.partial(jax.jit, static_argnames=("model",))
def _apply(model, params, ids, mask=None, rng=None):
    """Logits in eval mode, or in training mode (dropout) with ``rng``."""
    if rng is None:
        return model.apply({"params": params}, ids, None, mask)
    return model.apply(
        {"params": params}, ids, None, mask, deterministic=False, rngs={"dropout": rng}
    )


def test_dropout_only_when_not_deterministic():
    """Hidden and attention dropout (0.1 each in the reference's ModelConfig) act only in
    training; each rate acts on its own (one layer: no different in kind, faster)."""
    ids = jax.random.randint(jax.random.key(2), (2, 12), 1, 128)
    for hidden, attention in [(0.5, 0.0), (0.0, 0.5)]:
        _, model, params = _tiny_model(
            "relative", dropout_rate=hidden, attention_dropout_rate=attention, num_layers=1
        )
        evaluated = _apply(model, params, ids)
        np.testing.assert_array_equal(evaluated, _apply(model, params, ids))
        trained = _apply(model, params, ids, rng=jax.random.key(3))
        assert not np.allclose(trained, evaluated, atol=1e-3), (hidden, attention)
        assert not np.allclose(trained, _apply(model, params, ids, rng=jax.random.key(4)))


@pytest.mark.parametrize("position_type", POSITION_TYPES)
def test_padding_and_shift_invariance(position_type):
    """RoPE and RPE see offsets only: the same 8 tokens placed at indices 0..7 (padding
    after) or at 4..11 (padding before) give the same outputs; absolute positions do not."""
    config, model, params = _tiny_model(position_type, dropout_rate=0.0)
    tokens = jax.random.randint(jax.random.key(5), (2, 8), 1, config.vocab_size)
    pad = jnp.zeros((2, 4), jnp.int32)
    first = _apply(
        model, params, jnp.concatenate([tokens, pad], 1), jnp.ones((2, 12)).at[:, 8:].set(0)
    )
    last = _apply(
        model, params, jnp.concatenate([pad, tokens], 1), jnp.ones((2, 12)).at[:, :4].set(0)
    )
    assert np.all(np.isfinite(first)) and first.shape == (2, 12, config.vocab_size)
    if position_type == "absolute":
        assert not np.allclose(first[:, :8], last[:, 4:], atol=1e-3)
    else:
        np.testing.assert_allclose(first[:, :8], last[:, 4:], atol=2e-4)
    # Padding keys are never attended to: what stands there changes nothing.
    mask = jnp.ones((2, 12)).at[:, 8:].set(0)
    other_pad = jnp.concatenate([tokens, pad + 3], 1)
    np.testing.assert_allclose(
        _apply(model, params, other_pad, mask)[:, :8], first[:, :8], atol=1e-5
    )


def _shaw_attention_by_hand(config: BertConfig, p, x: np.ndarray) -> np.ndarray:
    """jestimator/models/bert_rpe/modeling.py AttentionLayer + attention_out, one pair at
    a time: the clipped offset's relpos_embed row goes through the layer's key projection
    (kernel and bias; its dot product with the query joins the logit before the
    1/sqrt(head) scaling) and its value projection (kernel and bias; weighted by the same
    attention probability, added to the context)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    dense = lambda name, a: a @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    h, d, dist = config.num_heads, config.head_dim, config.relpos_max_distance
    t = x.shape[0]
    split = lambda a: a.reshape(a.shape[0], h, d)  # noqa: E731
    q, k, v = split(dense("query", x)), split(dense("key", x)), split(dense("value", x))
    table = p["relpos_embedding"]
    rel_k, rel_v = split(dense("key", table)), split(dense("value", table))
    context = np.zeros((t, h, d))
    for head in range(h):
        for i in range(t):
            rows = [min(max(j - i, -(dist - 1)), dist - 1) + dist - 1 for j in range(t)]
            logits = np.array(
                [q[i, head] @ (k[j, head] + rel_k[rows[j], head]) for j in range(t)]
            ) / math.sqrt(d)
            w = np.exp(logits - logits.max())
            w /= w.sum()
            for j in range(t):
                context[i, head] += w[j] * (v[j, head] + rel_v[rows[j], head])
    return dense("out", context.reshape(t, h * d))


def test_rpe_attention_equals_shaw_by_hand():
    """Offsets beyond max_distance - 1 clip to the edge rows (7 tokens, max_distance 3)."""
    config = BertConfig.from_size(
        "tiny", position_type="relative", relpos_max_distance=3, hidden_size=8, num_heads=2
    )
    x = jax.random.normal(jax.random.key(6), (1, 7, 8))
    module = SelfAttention(config)
    zero_bias, positions = jnp.zeros((1, 1, 1, 7)), jnp.arange(7)[None]
    init = jax.jit(module.init, static_argnums=4)
    params = _perturbed(init(jax.random.key(7), x, zero_bias, positions, True)["params"], 0.5)
    assert params["relpos_embedding"].shape == (5, 8)
    apply = jax.jit(module.apply, static_argnums=4)
    out = apply({"params": params}, x, zero_bias, positions, True)
    np.testing.assert_allclose(
        out[0], _shaw_attention_by_hand(config, params, np.asarray(x[0], np.float64)), atol=1e-5
    )


def _with(params, path: str, fn):
    """A copy of params with the leaf at 'a/b/c' replaced by fn(leaf)."""
    parts = path.split("/")

    def rebuild(node, depth):
        if depth == len(parts):
            return fn(node)
        return {**node, parts[depth]: rebuild(node[parts[depth]], depth + 1)}

    return rebuild(params, 0)


def test_relative_positions_reach_both_key_and_value():
    """jestimator/models/bert_rpe/modeling.py passes relpos_embed through the layer's KEY
    projection (into the logits) and its VALUE projection (into the context). Each path
    is isolated below; removing either one makes its half of the test fail."""
    config, model, params = _tiny_model("relative", dropout_rate=0.0, num_layers=1)
    ids = jax.random.randint(jax.random.key(8), (2, 10), 1, config.vocab_size)
    table = "layers_0/attention/relpos_embedding"
    h = config.hidden_size
    bump = jax.random.normal(jax.random.key(9), (2 * config.relpos_max_distance - 1, h))

    # Value path only: a zero query (kernel and bias) zeroes every logit, so the weights
    # are uniform whatever the keys; a changed table can then act only through values.
    no_query = _with(params, "layers_0/attention/query/kernel", jnp.zeros_like)
    no_query = _with(no_query, "layers_0/attention/query/bias", jnp.zeros_like)
    before = _apply(model, no_query, ids)
    after = _apply(model, _with(no_query, table, lambda t: t + bump), ids)
    assert not np.allclose(before, after, atol=1e-3)

    # Key path only: the value kernel ignores the first half of the hidden units, and the
    # table changes only there, so its value term is unchanged; the output still moves,
    # through the logits.
    blind = _with(params, "layers_0/attention/value/kernel", lambda k: k.at[: h // 2].set(0))
    half_bump = bump.at[:, h // 2 :].set(0)
    before = _apply(model, blind, ids)
    after = _apply(model, _with(blind, table, lambda t: t + half_bump), ids)
    assert not np.allclose(before, after, atol=1e-3)


# ---------------------------------------------------------------------------------------
# The gin model files: dropout, RPE distance, and the Amos rules against the reference.


def _reference_eta_and_slot(config: BertConfig, name: str, shape: tuple[int, ...]):
    """The reference BERT table (jestimator/models/bert/modeling.py
    get_eta_fn / get_shape_fn and bert_rpe's), written from the table, for every variable
    of these models: H hidden, F MLP size."""
    h, f = config.hidden_size, config.mlp_dim
    if name.endswith("layer_norm/scale"):
        return 1.0, ()
    if name.endswith("bias"):
        return 0.5, ()
    if name.endswith("relpos_embedding"):  # RPE's relpos_embed.
        return 0.5, (shape[0], 1)
    if name.endswith("embedding"):  # Token (and segment, position) embeddings.
        return math.sqrt(2 / h), (shape[0], 1)
    if name.endswith("mlp/wo/kernel"):  # The MLP output (dense2) kernel.
        return math.sqrt(2 / f), (1, h)
    assert name.endswith("kernel"), name
    return math.sqrt(1 / h), (1, shape[-1])  # Every other kernel.


MODEL_FILES = [
    (f"{FILE_PREFIX[position_type]}_{size}.gin", size, position_type)
    for position_type in POSITION_TYPES
    for size in ("tiny", "base", "large")
]


@pytest.mark.parametrize("file,size,position_type", MODEL_FILES)
def test_model_files(file, size, position_type):
    """Each file builds its size and position type, with the reference's dropout 0.1 at
    paper scale (tiny: 0.0, see bert_tiny.gin), RPE's max distance 128 at paper scale,
    and Amos rules that give the reference table for every variable."""
    vocab_size = 128 if size == "tiny" else 30522
    seq_length = 64 if size == "tiny" else 512
    loaded = load_model_file(file, vocab_size, (f"SEQ_LENGTH = {seq_length}",))
    config = loaded.model.config
    assert config == BertConfig.from_size(
        size,
        vocab_size=vocab_size,
        position_type=position_type,
        max_length=seq_length,
        dropout_rate=config.dropout_rate,
        attention_dropout_rate=config.attention_dropout_rate,
    )
    dropout = 0.0 if size == "tiny" else 0.1
    assert config.dropout_rate == config.attention_dropout_rate == dropout
    assert config.relpos_max_distance == (16 if size == "tiny" else 128)

    params = abstract_params(loaded.model, int_input(1, 8))
    for path, leaf in named_leaves(params)[0]:
        name, shape = "/".join(path), tuple(leaf.shape)
        eta = checked_eta(path, shape, loaded.eta_fn)
        slot = checked_slot_shape(path, shape, loaded.shape_fn)
        expected_eta, expected_slot = _reference_eta_and_slot(config, name, shape)
        assert math.isclose(eta, expected_eta, rel_tol=1e-12), (name, eta, expected_eta)
        assert slot == expected_slot, (name, slot, expected_slot)

    tx = amos.amos(0.005, loaded.eta_fn, loaded.shape_fn, momentum=0.9)
    # AdamW keeps 2 full slots; Amos a full momentum plus v and b, which cost 2/H of an
    # embedding (V, H) or a kernel (H, out): a ratio of about 0.5 + 1/H, under 51% from
    # H = 100 on (tiny has H = 128 for that reason).
    assert amos.compare_slot_memory(tx, params)["ratio"] <= 0.51


# The absolute variant in the fast suite; the other two (and RoPE / RPE training through
# run.py, tests/launch/test_families.py) in the slow one.
@pytest.mark.parametrize(
    "position_type",
    [p if p == "absolute" else pytest.param(p, marks=pytest.mark.slow) for p in POSITION_TYPES],
)
def test_amos_lowers_the_mlm_loss(position_type):
    # One layer keeps the compile of the training step short; two are no different in kind.
    loaded = load_model_file(f"{FILE_PREFIX[position_type]}_tiny.gin", 128, ("SEQ_LENGTH = 16",))
    config = BertConfig.from_size("tiny", position_type=position_type, num_layers=1)
    model = BertMlm(config)
    key_ids, key_mask, key_init = jax.random.split(jax.random.key(6), 3)
    targets = jax.random.randint(key_ids, (4, 16), 1, config.vocab_size)
    masked = jax.random.bernoulli(key_mask, 0.15, targets.shape).at[:, 0].set(True)
    inputs = jnp.where(masked, 1, targets)  # Token 1 plays [MASK].
    params = model.init(key_init, inputs)["params"]
    # The paper's BERT settings (beta 0.999, momentum 0.9, clip 1.0) at a large xi.
    tx = amos.amos(0.05, loaded.eta_fn, loaded.shape_fn, beta=0.999, momentum=0.9, clip_value=1.0)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        def loss_fn(p):
            return cross_entropy(model.apply({"params": p}, inputs), targets, masked)[0]

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(21):  # The 21st loss is the loss after 20 updates.
        params, state, loss = step(params, state)
        losses.append(float(loss))
    first, last = losses[0], losses[-1]
    assert math.isclose(first, math.log(config.vocab_size), rel_tol=1e-6)  # Zero logits.
    assert np.isfinite(last) and last < 0.5 * first, losses
