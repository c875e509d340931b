"""Slot shardings: specs from parameter specs, and a sharded update on 8 CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import amos

REPO = Path(__file__).resolve().parents[2]


def test_specs_follow_the_parameters_with_reduced_axes_unsharded():
    params = {
        "dense": {"kernel": jnp.zeros((16, 32)), "bias": jnp.zeros(32)},
        "emb": {"embedding": jnp.zeros((64, 16))},
    }
    specs = {"dense": {"kernel": P("x", "y"), "bias": None}, "emb": {"embedding": P("x")}}
    tx = amos.amos(0.01, amos.default_eta_fn(), amos.default_shape_fn(), momentum=0.9)
    got = amos.slot_partition_specs(jax.eval_shape(tx.init, params), params, specs)
    assert got.count == P()
    assert got.v["dense"]["kernel"] == P(None, "y")
    assert got.b["emb"]["embedding"] == P("x", None)
    assert got.v["dense"]["bias"] == P()
    assert got.m["dense"]["kernel"] == P("x", "y")
    assert got.m["emb"]["embedding"] == P("x", None)
    # Works for any optax state, e.g. AdamW's moments.
    adam = amos.slot_partition_specs(
        jax.eval_shape(__import__("optax").adamw(1e-3).init, params), params, specs
    )
    assert adam[0].mu["dense"]["kernel"] == P("x", "y")


def test_specs_on_several_mesh_axes_keep_each_full_axis_and_free_each_reduced_one():
    """Tensor parallelism and FSDP together (launch/sharding.py): specs that name several
    mesh axes, one per dimension or several on one, on 2-D and 4-D parameters."""
    params = {
        "wi": {"kernel": jnp.zeros((16, 64))},
        "wo": {"kernel": jnp.zeros((64, 16))},
        "emb": {"embedding": jnp.zeros((128, 16))},
        "conv": {"kernel": jnp.zeros((3, 3, 8, 16))},
    }
    specs = {
        "wi": {"kernel": P("fsdp", "model")},
        "wo": {"kernel": P("model", "fsdp")},
        "emb": {"embedding": P(("fsdp", "model"), None)},
        "conv": {"kernel": P(None, None, "fsdp", "model")},
    }
    tx = amos.amos(0.01, amos.default_eta_fn(), amos.default_shape_fn(), momentum=0.9)
    state = jax.eval_shape(tx.init, params)
    got = amos.slot_partition_specs(state, params, specs)
    # Kernels reduce their fan-in axes (v, b of shape (1, out) or (1, 1, 1, out)), the
    # embedding its width ((vocab, 1)); the momentum is full-size.
    assert state.v["conv"]["kernel"].shape == (1, 1, 1, 16)
    for slot in (got.v, got.b):
        assert slot["wi"]["kernel"] == P(None, "model")
        assert slot["wo"]["kernel"] == P(None, "fsdp")
        assert slot["emb"]["embedding"] == P(("fsdp", "model"), None)
        assert slot["conv"]["kernel"] == P(None, None, None, "model")
    for name, spec in (("wi", P("fsdp", "model")), ("wo", P("model", "fsdp"))):
        assert got.m[name]["kernel"] == spec
    assert got.m["conv"]["kernel"] == P(None, None, "fsdp", "model")
    assert got.count == P()


SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import amos

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    shapes = {"dense": {"kernel": (16, 32), "bias": (32,)}, "emb": {"embedding": (64, 16)},
              "ln": {"scale": (16,)}}
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes, is_leaf=is_shape)
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape),
             jnp.float32), params) for _ in range(5)]
    specs = {"dense": {"kernel": P("x", "y"), "bias": P("y")}, "emb": {"embedding": P("x")},
             "ln": {"scale": None}}
    tx = amos.amos(0.02, amos.default_eta_fn(), amos.default_shape_fn(), momentum=0.9,
                   clip_value=1.0)

    def run(step, params, state, grads):
        for g in grads:
            updates, state = step(g, state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    single_params, single_state = run(jax.jit(tx.update), params, tx.init(params), grads)

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("x", "y"))
    param_sharding = jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s if s is not None else P()), specs,
        is_leaf=lambda x: x is None or isinstance(x, P))
    state_sharding = amos.slot_shardings(jax.eval_shape(tx.init, params), params, specs, mesh)
    sharded_step = jax.jit(tx.update, in_shardings=(param_sharding, state_sharding, param_sharding),
                           out_shardings=(param_sharding, state_sharding), donate_argnums=(1,))
    init = jax.jit(tx.init, out_shardings=state_sharding)
    put = lambda tree: jax.device_put(tree, param_sharding)
    sharded_params, sharded_state = run(sharded_step, put(params), init(put(params)),
                                        [put(g) for g in grads])
    error = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
        jax.tree_util.tree_leaves((single_params, single_state)),
        jax.tree_util.tree_leaves((sharded_params, sharded_state))))
    print(json.dumps({
        "error": error,
        "m_kernel": str(sharded_state.m["dense"]["kernel"].sharding.spec),
        "v_kernel": str(sharded_state.v["dense"]["kernel"].sharding.spec),
        "v_embedding": str(sharded_state.v["emb"]["embedding"].sharding.spec),
        "kernel_shards": len(sharded_state.m["dense"]["kernel"].addressable_shards),
        "m_shard_shape": list(sharded_state.m["dense"]["kernel"].addressable_shards[0].data.shape),
    }))
""")


def test_sharded_update_on_8_cpu_devices_equals_single_device():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["error"] < 1e-6
    assert out["m_kernel"] == str(P("x", "y"))
    assert out["v_kernel"] == str(P(None, "y"))
    assert out["v_embedding"] == str(P("x", None))
    assert out["kernel_shards"] == 8 and out["m_shard_shape"] == [4, 16]
