"""launch/pretrained.py: the checkpoints INIT_FROM reads besides this repository's own runs,
a t5x checkpoint (msgpack with TensorStore arrays) and a Flax/Orbax PyTree checkpoint, and
the t5x T5 1.1 name map, on the tiny T5's parameter shapes."""

from __future__ import annotations

import json
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from experiments.errors import ConfigError
from experiments.t5.models import T5, T5Config
from launch import pretrained


@pytest.fixture(scope="module")
def t5_params() -> dict[tuple[str, ...], np.ndarray]:
    """The tiny T5's parameters under this repository's names, filled with distinct numbers."""
    model = T5(T5Config.from_size("tiny"))
    tokens = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))["params"]
    rng = np.random.default_rng(0)
    return {
        name: rng.standard_normal(leaf.shape).astype(np.float32)
        for name, leaf in flax.traverse_util.flatten_dict(shapes).items()
    }


def to_t5x(params: dict, num_heads: int) -> dict:
    """The same parameters as t5x's T5 1.1 holds them: 3-D attention projections, the
    relative-position table `rel_embedding` as (heads, buckets)."""
    out = {}
    for name, array in params.items():
        if name[-1] == "relpos_embedding":
            name, array = (*name[:-1], "rel_embedding"), array.T
        elif name[-2] in ("query", "key", "value"):
            array = array.reshape(array.shape[0], num_heads, -1)
        elif name[-2] == "out":
            array = array.reshape(num_heads, -1, array.shape[-1])
        out[name] = array
    return out


def write_t5x_checkpoint(directory: Path, params: dict, *, inline_below: int = 1000) -> None:
    """A checkpoint as t5x writes it: `checkpoint` (msgpack of the state dict), arrays of
    `inline_below` elements or more in zarr TensorStores named by a relative path."""
    directory.mkdir(parents=True)
    target = {}
    for name, array in params.items():
        leaf: object = array
        if array.size >= inline_below:
            relative = "target." + ".".join(name)
            metadata = {"shape": list(array.shape), "chunks": list(array.shape), "dtype": "<f4"}
            store = ts.open(
                {
                    "driver": "zarr",
                    "kvstore": {"driver": "file", "path": str(directory / relative)},
                    "metadata": metadata,
                },
                create=True,
            ).result()
            store.write(array).result()
            leaf = {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": relative},
                "metadata": metadata,
            }
        target[name] = leaf
    state = {
        "target": flax.traverse_util.unflatten_dict(target),
        "state": {"step": np.int32(1000), "param_states": {"unused": np.zeros(3, np.float32)}},
    }
    (directory / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(state))


def test_a_t5x_checkpoint_loads_under_this_repositorys_t5_names(tmp_path: Path, t5_params):
    heads = T5Config.from_size("tiny").num_heads
    t5x = to_t5x(t5_params, heads)
    assert any(a.ndim == 3 for a in t5x.values())  # The map has work to do.
    write_t5x_checkpoint(tmp_path / "t5x" / "checkpoint_500", t5x)
    write_t5x_checkpoint(tmp_path / "t5x" / "checkpoint_1000", t5x)

    checkpoint = pretrained.open_checkpoint(str(tmp_path / "t5x"), None)  # The newest.
    assert checkpoint.label == "t5x step 1000"
    assert checkpoint.shapes == {p: (a.shape, np.dtype("float32")) for p, a in t5_params.items()}
    cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    wanted = {p: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu) for p, a in t5_params.items()}
    loaded = checkpoint.load(wanted)
    for name, array in t5_params.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), array, err_msg="/".join(name))

    chosen = pretrained.open_checkpoint(str(tmp_path / "t5x"), 500)
    assert chosen.label == "t5x step 500"
    one = pretrained.open_checkpoint(str(tmp_path / "t5x" / "checkpoint_500"), None)
    assert one.shapes == checkpoint.shapes
    with pytest.raises(
        ConfigError, match=r"INIT_FROM_STEP\) = 7: .* t5x checkpoints \[500, 1000\]"
    ):
        pretrained.open_checkpoint(str(tmp_path / "t5x"), 7)
    with pytest.raises(ConfigError, match=r"INIT_FROM_STEP\) = 7: .* one t5x checkpoint"):
        pretrained.open_checkpoint(str(tmp_path / "t5x" / "checkpoint_500"), 7)


def test_a_t5x_checkpoint_without_parameters_is_named(tmp_path: Path):
    directory = tmp_path / "checkpoint_3"
    directory.mkdir()
    (directory / "checkpoint").write_bytes(
        flax.serialization.msgpack_serialize({"state": {"step": np.int32(3)}})
    )
    with pytest.raises(ConfigError, match=r"without parameters .* it has \['state'\]"):
        pretrained.open_checkpoint(str(directory), None)


@pytest.mark.parametrize("key", ["params", "target", None])
def test_a_flax_pytree_checkpoint_loads_its_parameter_tree(tmp_path: Path, t5_params, key):
    tree = flax.traverse_util.unflatten_dict(t5_params)
    saved = {key: tree, "step": np.int32(4)} if key else tree
    ocp.PyTreeCheckpointer().save(str(tmp_path / "flax"), saved)

    checkpoint = pretrained.open_checkpoint(str(tmp_path / "flax"), None)
    assert checkpoint.label == "Flax checkpoint"
    assert set(checkpoint.shapes) == set(t5_params)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    name = ("encoder", "layers_0", "attention", "query", "kernel")
    loaded = checkpoint.load(
        {name: jax.ShapeDtypeStruct(t5_params[name].shape, "f4", sharding=cpu)}
    )
    np.testing.assert_array_equal(np.asarray(loaded[name]), t5_params[name])
    with pytest.raises(ConfigError, match=r"INIT_FROM_STEP\) = 2: .* no steps"):
        pretrained.open_checkpoint(str(tmp_path / "flax"), 2)


def test_a_path_holding_no_checkpoint_names_the_binding(tmp_path: Path):
    (tmp_path / "notes.json").write_text(json.dumps({}))
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ConfigError, match=r"train.init_from \(INIT_FROM\) = .*no checkpoint"):
            pretrained.open_checkpoint(str(path), None)


def test_the_t5x_map_leaves_other_names_and_2d_kernels_alone():
    arrays = {
        ("encoder", "layers_0", "attention", "query", "kernel"): np.zeros((4, 8)),
        ("head", "kernel"): np.zeros((2, 3, 4)),
        ("wte", "embedding"): np.zeros((5, 4)),
    }
    assert {k: v.shape for k, v in pretrained.from_t5x(arrays).items()} == {
        k: v.shape for k, v in arrays.items()
    }
