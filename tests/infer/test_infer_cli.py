"""`ar1 infer` on the tiny config: deterministic for a seed, outputs written, scene errors named."""

import json
import subprocess
import sys

import numpy as np

from ar1_jax.config import get_config
from ar1_jax.infer import scene as scene_lib


def _infer(tmp_path, name, *args):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "ar1_jax.cli", "infer", "--config", "ar1_tiny", "--out", str(out),
                           "--samples", "2", *args], capture_output=True, text=True, timeout=600)
    return proc, out


def test_infer_is_deterministic_and_writes_outputs(tmp_path):
    cfg = get_config("ar1_tiny")
    scene = scene_lib.random_scene(cfg, seed=int(np.random.default_rng().integers(1000)))
    scene.future_xyz = np.zeros((64, 3), np.float32)
    path = tmp_path / "scene.npz"
    scene_lib.save_scene(path, scene)
    a, out_a = _infer(tmp_path, "a", "--scene", str(path), "--seed", "5")
    assert a.returncode == 0, a.stderr[-3000:]
    b, out_b = _infer(tmp_path, "b", "--scene", str(path), "--seed", "5")
    assert b.returncode == 0, b.stderr[-3000:]
    ja, jb = (json.loads((o / "trajectory.json").read_text()) for o in (out_a, out_b))
    assert ja["samples"] == jb["samples"]
    assert len(ja["samples"]) == 2 and np.asarray(ja["samples"][0]["trajectory_xy"]).shape == (64, 2)
    assert (out_a / "bev.png").stat().st_size > 10_000
    assert "sample 0:" in a.stdout and "timing:" in a.stdout


def test_bad_scene_is_named(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 4, 64, 96, 3), np.uint8))
    proc, _ = _infer(tmp_path, "c", "--scene", str(bad))
    assert proc.returncode == 2 and "history_xyz" in proc.stderr and "bad.npz" in proc.stderr
