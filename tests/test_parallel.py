"""Tests for ar1_jax.parallel: rule tables, mesh construction, sharded init.

Pure functions run in this process (an AbstractMesh needs no devices). Checks that need 8 devices run
once in a subprocess with `--xla_force_host_platform_device_count=8` (XLA_FLAGS must be set before jax
is imported) and report JSON facts that the tests below assert on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from ar1_jax.config import MeshConfig
from ar1_jax.parallel import mesh as mesh_lib
from ar1_jax.parallel import rules

# `--dist loadgroup` keeps this module on one worker, so the 8-device subprocess below runs once.
pytestmark = pytest.mark.xdist_group("test_parallel")


def amesh(data, fsdp, tensor):
    return AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


# ----------------------------------------------------------------------------------------------------
# Rules (pure).


def test_default_rules_map_params_and_activations():
    m = amesh(2, 2, 2)
    spec = rules.logical_to_spec
    assert spec(("vocab", "embed"), (64, 32), m) == P("tensor", "fsdp")
    assert spec(("layers", "embed", "mlp"), (3, 32, 64), m) == P(None, "fsdp", "tensor")
    assert spec(("layers", "embed", "heads", "head_dim"), (3, 32, 4, 8), m) == P(None, "fsdp", "tensor", None)
    assert spec(("norm",), (32,), m) == P(None)
    assert spec((None, "patch", "embed"), (1, 588, 32), m) == P(None, None, "fsdp")
    # Activations: batch takes data+fsdp, so embed (fsdp) cannot reuse fsdp and is replicated.
    assert rules.activation_spec(("batch", "seq", "embed"), m, shape=(8, 16, 32)) == P(("data", "fsdp"), None, None)
    assert rules.activation_spec(("batch", "seq", "heads", "head_dim"), m) == P(("data", "fsdp"), None, "tensor", None)
    assert rules.activation_spec(("batch", "cache_seq", "kv_heads", "head_dim"), m) == P(("data", "fsdp"), None,
                                                                                         "tensor", None)


def test_axis_reuse_gives_none():
    m = amesh(1, 4, 2)
    # Two dims both mapped to `tensor`: only the first gets it.
    assert rules.logical_to_spec(("heads", "mlp"), (4, 8), m) == P("tensor", None)
    assert rules.logical_to_spec(("embed", "embed"), (8, 8), m) == P("fsdp", None)


def test_divisibility_fallback_is_recorded():
    m = amesh(1, 2, 4)
    notes = []
    # kv_heads=2 cannot be split 4 ways: replicated, not an error.
    assert rules.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), m, notes=notes) == P("fsdp", None, None)
    assert notes == ["kv_heads=2 not divisible by tensor=4"]
    # batch=6 over data x fsdp = 4 does not divide either.
    assert rules.logical_to_spec(("batch", "seq"), (6, 5), amesh(2, 2, 2)) == P(None, None)
    # shape=None skips the check.
    assert rules.logical_to_spec(("embed", "kv_heads"), None, m) == P("fsdp", "tensor")


def test_size_one_axes_dropped_and_later_candidates_tried():
    m = amesh(8, 1, 1)
    assert rules.logical_to_spec(("vocab", "embed"), (64, 32), m) == P(None, None)
    assert rules.logical_to_spec(("batch", "seq"), (16, 4), m) == P("data", None)
    table = (("batch", ("data", "fsdp")), ("batch", "data"), ("seq", None))
    assert rules.logical_to_spec(("batch", "seq"), (6, 4), amesh(2, 2, 1), table) == P("data", None)


def test_other_strategies():
    m = amesh(2, 2, 2)
    dp, fo = "data_parallel", "fsdp_only"
    assert rules.logical_to_spec(("vocab", "embed"), (64, 32), m, dp) == P(None, None)
    assert rules.logical_to_spec(("batch", "seq"), (16, 4), m, dp) == P(("data", "fsdp", "tensor"), None)
    assert rules.logical_to_spec(("layers", "embed", "mlp"), (2, 32, 64), m, fo) == P(None, ("fsdp", "tensor"), None)
    assert rules.logical_to_spec(("batch", "seq"), (16, 4), m, fo) == P(("data", "fsdp", "tensor"), None)


def test_rule_tables_name_the_same_axes_and_unknown_names_fail():
    names = {name: {k for k, _ in table} for name, table in rules.RULE_TABLES.items()}
    assert all(n == names["default"] for n in names.values()), names
    assert {"layers", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "patch", "norm", "pos",
            "batch", "seq", "cache_seq"} <= names["default"]
    with pytest.raises(ValueError, match="'kv_head'"):
        rules.logical_to_spec(("kv_head",), (2,), amesh(1, 1, 2))
    with pytest.raises(ValueError, match="unknown sharding rules 'nope'"):
        rules.logical_to_spec(("embed",), (2,), amesh(1, 1, 2), "nope")


def test_constrain_is_noop_without_mesh():
    x = jnp.ones((4, 8))
    assert rules.constrain(x, ("batch", "embed"), None) is x


class Toy(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, kv_heads: int = 2):
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (64, 32)), logical_axes=("vocab", "embed"))
        self.mlp = nnx.Param(jax.random.normal(rngs.params(), (3, 32, 64)), logical_axes=("layers", "embed", "mlp"))
        self.kv = nnx.Param(jax.random.normal(rngs.params(), (32, kv_heads, 8)),
                            logical_axes=("embed", "kv_heads", "head_dim"))
        self.scale = nnx.Param(jnp.ones((3, 32)), logical_axes=("layers", "norm"))
        self.bias = nnx.Param(jnp.zeros((64,)))  # no logical_axes: replicated, with a warning
        self.drop = nnx.Dropout(0.1, rngs=rngs)  # RngKey/RngCount scalars: replicated, no warning


def test_logical_specs_reads_metadata_and_warns(caplog):
    state = nnx.state(nnx.eval_shape(lambda: Toy(nnx.Rngs(0))))
    with caplog.at_level(logging.WARNING, logger="ar1_jax.parallel.rules"):
        specs = rules.logical_specs(state)
    assert specs["embed"] == ("vocab", "embed")
    assert specs["mlp"] == ("layers", "embed", "mlp")
    assert specs["bias"] == (None,)
    assert specs["drop"]["rngs"]["key"] == ()
    assert "1 variables without logical_axes: bias Param(64,)" in caplog.text


def test_logical_axes_length_mismatch_names_the_param():
    class Bad(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((3, 4, 5)), logical_axes=("embed", "mlp"))

    with pytest.raises(ValueError, match=r"w: logical_axes \('embed', 'mlp'\) has 2 names .* \(3, 4, 5\)"):
        rules.logical_specs(nnx.state(Bad()))


# ----------------------------------------------------------------------------------------------------
# Mesh (pure parts).


def test_resolve_mesh_shape():
    r = mesh_lib.resolve_mesh_shape
    assert r(MeshConfig(), 8) == (8, 1, 1)
    assert r(MeshConfig(data=-1, fsdp=4, tensor=2), 8) == (1, 4, 2)
    assert r(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match=r"^mesh data=3 x fsdp=2 x tensor=1 = 6 devices, but 8 are available$"):
        r(MeshConfig(data=3, fsdp=2, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        r(MeshConfig(data=-1, fsdp=-1), 8)
    with pytest.raises(ValueError, match="not divisible by the fixed axes"):
        r(MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(ValueError, match="tensor=0"):
        r(MeshConfig(tensor=0), 8)


def test_distributed_args_from_env():
    d = mesh_lib.distributed_args
    assert d({}) == ("single", {})
    assert d({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == ("single", {})
    assert d({"AR1_COORDINATOR": "h0:1234", "AR1_NUM_PROCESSES": "2", "AR1_PROCESS_ID": "1"}) == (
        "env", dict(coordinator_address="h0:1234", num_processes=2, process_id=1))
    assert d({"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})[0] == "env"
    with pytest.raises(ValueError, match="AR1_PROCESS_ID"):
        d({"AR1_COORDINATOR": "h0:1234", "AR1_NUM_PROCESSES": "2"})
    mode, kw = d({"SLURM_NTASKS": "16", "SLURM_PROCID": "5", "SLURM_JOB_ID": "7",
                  "SLURM_STEP_NODELIST": "gpu[003-004,010],cpu1", "AR1_COORDINATOR_PORT": "9999"})
    assert (mode, kw) == ("slurm", dict(coordinator_address="gpu003:9999", num_processes=16, process_id=5))
    assert d({"AR1_DISTRIBUTED": "auto"}) == ("auto", {})
    assert d({"TPU_WORKER_HOSTNAMES": "t0,t1"}) == ("auto", {})
    assert mesh_lib.initialize_distributed({}) == "single"


@pytest.mark.parametrize("nodes,host", [("n1", "n1"), ("n1,n2", "n1"), ("n[001-015],h2", "n001"),
                                        ("n[007,009-015]", "n007"), ("gpu[7]", "gpu7")])
def test_slurm_first_host(nodes, host):
    assert mesh_lib.slurm_first_host(nodes) == host


# ----------------------------------------------------------------------------------------------------
# 8 fake devices, in a subprocess.

_SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from ar1_jax.config import MeshConfig
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.parallel.rules import constrain, param_shardings
    from ar1_jax.parallel.init import abstract_state, init_sharded, shard_state, sharded_init_fn
    from test_parallel import Toy

    out = {"devices": jax.device_count(), "partitionable": bool(jax.config.jax_threefry_partitionable)}

    def mesh_facts(m):
        return {"shape": dict(m.shape), "types": [str(t) for t in m.axis_types]}

    out["mesh_default"] = mesh_facts(make_mesh(MeshConfig()))
    out["mesh_fsdp_tensor"] = mesh_facts(make_mesh(MeshConfig(data=-1, fsdp=4, tensor=2)))
    out["mesh_subset"] = mesh_facts(make_mesh(MeshConfig(data=-1, tensor=2), devices=jax.devices()[:4]))
    try:
        make_mesh(MeshConfig(data=3, fsdp=2, tensor=1))
    except ValueError as e:
        out["mesh_error"] = str(e)

    def arrays(state):
        return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)}

    def facts(state):
        return {k: {"spec": [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec],
                    "shard": list(x.addressable_shards[0].data.shape),
                    "shards": sorted({tuple(s.data.shape) for s in x.addressable_shards}) == [x.addressable_shards[0].data.shape],
                    "ndev": len(x.addressable_shards)}
                for k, x in arrays(state).items()}

    def raw(x):
        return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    def same(a, b):
        a, b = arrays(a), arrays(b)
        return sorted(a) == sorted(b) and all(np.array_equal(raw(a[k]), raw(b[k])) for k in a)

    make = lambda: Toy(nnx.Rngs(0))
    reference = nnx.state(make())  # unsharded, one device
    for name, cfg in {"f4t2": MeshConfig(data=1, fsdp=4, tensor=2),
                      "f2t4": MeshConfig(data=1, fsdp=2, tensor=4)}.items():
        mesh = make_mesh(cfg)
        state = nnx.state(init_sharded(make, mesh))
        out[name] = {"init": facts(state), "equal": same(state, reference),
                     "shard_state": facts(shard_state(reference, mesh)),
                     "equal_shard_state": same(shard_state(reference, mesh), reference)}
        _, target = abstract_state(make, mesh)
        out[name]["abstract"] = {k: [list(a) if isinstance(a, tuple) else a for a in s.sharding.spec]
                                 for k, s in arrays(target).items()}

    # The shardings tree works as in_shardings and out_shardings of a jit over the state.
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    state = nnx.state(init_sharded(make, mesh))
    sh = param_shardings(state, mesh)
    step = jax.jit(lambda s: jax.tree.map(lambda x: x * 2 if x.dtype == jnp.float32 else x, s),
                   in_shardings=(sh,), out_shardings=sh)
    out["jit_roundtrip"] = facts(step(state))

    # The init program never holds the whole model on a device: per-device output is 1/8 of it.
    class Big(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jax.random.normal(rngs.params(), (8, 256, 256)), logical_axes=("layers", "embed", "mlp"))
    _, init = sharded_init_fn(lambda: Big(nnx.Rngs(0)), mesh)
    ma = init.lower().compile().memory_analysis()
    out["init_memory"] = {"full": 8 * 256 * 256 * 4, "output": ma.output_size_in_bytes, "temp": ma.temp_size_in_bytes}

    # constrain inside jit, on a (data=2, fsdp=2, tensor=2) mesh.
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    y = jax.jit(lambda x: constrain(x * 2, ("batch", "seq", "embed"), mesh))(jnp.ones((8, 4, 32)))
    z = jax.jit(lambda x: constrain(x + 1, ("batch", "seq", "heads", "head_dim"), mesh))(jnp.ones((4, 3, 6, 8)))
    spec = lambda a: [list(e) if isinstance(e, tuple) else e for e in a.sharding.spec]
    out["constrain"] = [spec(y), spec(z), float(y.sum())]
    print("RESULT" + json.dumps(out))
''')


@pytest.fixture(scope="module")
def eight():
    import ar1_fixtures as F  # here, not at the top: the subprocess imports this module for `Toy`

    env = F.fake_devices_env(8)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                          timeout=F.HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_fake_devices_and_rng(eight):
    assert eight["devices"] == 8
    assert eight["partitionable"]


def test_make_mesh(eight):
    assert eight["mesh_default"]["shape"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert eight["mesh_fsdp_tensor"]["shape"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert eight["mesh_subset"]["shape"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert all(t == "AxisType.Auto" for t in eight["mesh_fsdp_tensor"]["types"])
    assert eight["mesh_error"] == "mesh data=3 x fsdp=2 x tensor=1 = 6 devices, but 8 are available"


F4T2 = {  # fsdp=4, tensor=2
    "['embed'].value": (["tensor", "fsdp"], [32, 8]),
    "['mlp'].value": ([None, "fsdp", "tensor"], [3, 8, 32]),
    "['kv'].value": (["fsdp", "tensor", None], [8, 1, 8]),
    "['scale'].value": ([None, None], [3, 32]),
    "['bias'].value": ([None], [64]),
    "['drop']['rngs']['key'].value": ([], []),
    "['drop']['rngs']['count'].value": ([], []),
}
F2T4 = dict(F4T2, **{  # fsdp=2, tensor=4: kv_heads=2 falls back to replicated
    "['embed'].value": (["tensor", "fsdp"], [16, 16]),
    "['mlp'].value": ([None, "fsdp", "tensor"], [3, 16, 16]),
    "['kv'].value": (["fsdp", None, None], [16, 2, 8]),
})


@pytest.mark.parametrize("name,expected", [("f4t2", F4T2), ("f2t4", F2T4)])
def test_init_sharded(eight, name, expected):
    got = eight[name]
    for kind in ("init", "shard_state"):
        assert {k: (v["spec"], v["shard"]) for k, v in got[kind].items()} == {k: tuple(v) for k, v in expected.items()}
        assert all(v["ndev"] == 8 and v["shards"] for v in got[kind].values())
    assert got["abstract"] == {k: v[0] for k, v in expected.items()}
    assert got["equal"], "sharded init differs from unsharded init with the same seed"
    assert got["equal_shard_state"]


def test_shardings_work_as_jit_in_and_out_shardings(eight):
    assert {k: v["spec"] for k, v in eight["jit_roundtrip"].items()} == {k: v[0] for k, v in F4T2.items()}


def test_init_never_materialises_the_full_model(eight):
    mem = eight["init_memory"]
    assert mem["output"] == mem["full"] // 8
    assert mem["output"] + mem["temp"] < mem["full"], mem


def test_constrain_under_jit(eight):
    y_spec, z_spec, total = eight["constrain"]
    # jit reports output specs without trailing Nones.
    assert y_spec == [["data", "fsdp"]]
    assert z_spec == [["data", "fsdp"], None, "tensor"]
    assert total == 8 * 4 * 32 * 2
