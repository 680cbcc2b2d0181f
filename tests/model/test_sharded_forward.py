"""The same forward on 8 fake CPU devices (fsdp=4 x tensor=2) as on one device, with params sharded;
and a real-size sharded init that never materialises the model on one device. One worker process
runs every check (a fresh process re-imports jax and recompiles), once per module."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import ar1_fixtures as F

HERE = pathlib.Path(__file__).parent
NAMES = ("tiny", "tiny_qwen3")
INIT_MEMORY_CONFIG = "qwen2_5_vl_7b"
# `--dist loadgroup` keeps this module on one worker, so the 8-device run below happens once.
pytestmark = pytest.mark.xdist_group("sharded_forward")


@pytest.fixture(scope="module")
def report():
    env = F.fake_devices_env(8, JAX_PLATFORMS="cpu")
    seed = int(np.random.default_rng().integers(1000))
    proc = subprocess.run([sys.executable, str(HERE / "sharded_forward_check.py"), str(seed), INIT_MEMORY_CONFIG,
                           *NAMES], capture_output=True, text=True, env=env, timeout=F.HANG_GUARD_S)
    assert proc.returncode == 0, f"seed {seed}\n" + proc.stderr[-4000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_fsdp4_tensor2_matches_one_device(report, name):
    r = dict(report["forward"][name], seed=report["seed"])
    assert r["rel"] <= 1e-5, r
    assert r["loaded_rel"] <= 1e-5, r
    assert r["gen_equal"], r
    # Parameters are sharded as the default rules say: embed -> fsdp, heads/kv_heads/mlp/vocab -> tensor.
    assert r["specs"]["embed"] == ["tensor", "fsdp"]
    assert r["specs"]["q_kernel"] == [None, "fsdp", "tensor", None]
    assert r["specs"]["k_kernel"] == [None, "fsdp", "tensor", None]
    assert r["specs"]["down_kernel"] == [None, "tensor", "fsdp"]
    assert r["specs"]["vision_fc1"] == [None, "fsdp", "tensor"]
    assert r["loaded_spec"] == [None, "tensor", "fsdp"]
    v, e = r["full_shapes"]["embed"]
    assert r["shard_shapes"]["embed"] == [v // 2, e // 4]
    layers, e, h, d = r["full_shapes"]["q_kernel"]
    assert r["shard_shapes"]["q_kernel"] == [layers, e // 4, h // 2, d]
    assert "fsdp" in r["logits_sharding"]  # the batch of 4 is split over fsdp


def test_7b_init_is_never_materialised_on_one_device(report):
    """Compiling (not running) the init of Qwen2.5-VL-7B on fsdp=8: each device outputs ~1/8 of the
    33 GB of f32 parameters, and its peak (output + temporaries) is ~1/8 of the one-device init's."""
    r = report["init_memory"]
    assert r["total_bytes"] > 30e9
    sharded, single = r["sharded"], r["one_device"]
    assert single["output_bytes"] >= r["total_bytes"]
    assert sharded["output_bytes"] < 0.13 * r["total_bytes"], r  # 1/8 plus replicated norms and biases
    peak = lambda m: m["output_bytes"] + m["temp_bytes"]
    assert peak(sharded) < 0.15 * peak(single), r
