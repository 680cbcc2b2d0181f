"""Batch 8 on 8 fake CPU devices (scenes over `data`) equals 8 single-scene runs on one device, sample for
sample: the same sampled reasoning tokens (temperature 0.6, top-p 0.98, K = 2) and log-probs, and the same
trajectories up to float rounding. One subprocess (the device count is fixed at start-up)."""

import json
import pathlib
import subprocess
import sys

import numpy as np

import ar1_fixtures as F

CHILD = r'''
import json, sys
import numpy as np
import ar1_fixtures as F
from ar1_jax.config import MeshConfig
from ar1_jax.infer.engine import Engine
from ar1_jax.parallel.mesh import make_mesh
import jax

seed = int(sys.argv[1])
tok = F.tiny_tokenizer()
cfg, params = F.tiny_ar1(seed % 7)
rng = np.random.default_rng(seed)
scenes = [F.scene_inputs(cfg, tok, rng) for _ in range(8)]
ids = np.stack([s[0] for s in scenes])
pv, grid = np.concatenate([s[2] for s in scenes]), np.concatenate([s[3] for s in scenes])
v0 = rng.uniform(2.0, 14.0, 8).astype(np.float32)
mesh = make_mesh(MeshConfig(data=8), jax.devices())
batch = Engine(cfg, params, tok, mesh=mesh).run(ids, pv, grid, v0=v0, seed=seed, num_samples=2)
one = Engine(cfg, params, tok)
alone = [one.run(s[0], s[2], s[3], v0=float(v0[b]), seed=seed + b, num_samples=2) for b, s in enumerate(scenes)]
out = dict(devices=jax.device_count(), data=int(mesh.shape["data"]),
           batch_ids=batch.reasoning_ids.tolist(), alone_ids=[a.reasoning_ids[0].tolist() for a in alone],
           batch_logp=batch.token_logp.tolist(), alone_logp=[a.token_logp[0].tolist() for a in alone],
           batch_xy=batch.trajectory.tolist(), alone_xy=[a.trajectory[0].tolist() for a in alone],
           n_reason=batch.num_reasoning_tokens.tolist())
print("RESULT " + json.dumps(out))
'''


def test_batch_of_8_on_8_devices_equals_8_single_scene_runs():
    seed = int(np.random.default_rng().integers(1000))
    tests_dir = pathlib.Path(__file__).resolve().parents[1]
    env = F.fake_devices_env(8, PYTHONPATH=str(tests_dir))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(seed)], capture_output=True, text=True, env=env,
                          timeout=F.HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
    assert r["devices"] == 8 and r["data"] == 8
    batch_ids, alone_ids = np.asarray(r["batch_ids"]), np.asarray(r["alone_ids"])
    assert batch_ids.shape[:2] == (8, 2)
    np.testing.assert_array_equal(batch_ids, alone_ids, err_msg=f"seed {seed}")
    # the two samples of a scene differ somewhere (they are draws, not copies), so equality above is not trivial
    assert any((batch_ids[b, 0] != batch_ids[b, 1]).any() for b in range(8)), f"seed {seed}"
    np.testing.assert_allclose(r["batch_logp"], r["alone_logp"], atol=2e-4, err_msg=f"seed {seed}")
    np.testing.assert_allclose(r["batch_xy"], r["alone_xy"], atol=2e-3, err_msg=f"seed {seed}")  # metres
    assert np.abs(np.asarray(r["batch_xy"])).max() > 0.1
