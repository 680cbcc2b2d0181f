"""RL on 8 fake CPU devices (data 2 x fsdp 2 x tensor 2) equals RL on one device: `ar1 rl` on the mesh
(a subprocess) against the one-device run of conftest.py, step 1: the same rollouts (every reward),
the same update (loss, gradient norm, KL) and the same parameters after it."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import ar1_fixtures as F
from rl_fixtures import CLI_ARGS, SETS

pytestmark = pytest.mark.xdist_group("rl_run")  # shares `rl_cli_run` with test_rl_run.py


def _flat_params(run=None):
    """The parameters after step 1 of `run` (its checkpoint 1), or the initial ones (run None), on one
    device, flattened {path: array}."""
    from ar1_jax.config import get_config
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.rl import task as rl_task
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train.trainer import Trainer

    cfg = rl_task.rl_config(get_config("ar1_tiny", SETS + ("mesh.data=1",)))
    abstract = Trainer(cfg, make_mesh(cfg.mesh, jax.devices()[:1])).abstract_state["params"]
    params = (rl_task.starting_params(cfg, abstract) if run is None
              # relative on purpose: `--init-from out/demo/sft` once failed in orbax ("should be absolute")
              else ckpt_lib.load_params(os.path.relpath(run / "checkpoints" / "1"), cfg, abstract))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


def test_one_rl_step_on_a_2x2x2_mesh_equals_one_device(rl_cli_run, tmp_path):
    code, _, one = rl_cli_run
    assert code == 0
    mesh = tmp_path / "mesh"
    args = [*CLI_ARGS, "--workdir", str(mesh), "--stop-after", "1",
            "--set", "mesh.data=2", "--set", "mesh.fsdp=2", "--set", "mesh.tensor=2"]
    # Compiled fresh, never from the persistent cache: jaxlib 0.10.2's CPU runtime deadlocks in this
    # step's collectives (rendezvous "termination timeout", devices waiting in different all-gathers and
    # all-reduces) when the executable is loaded from the cache; compiled in-process it runs. Measured:
    # the second run against one cache directory aborts every time, the first passes.
    out = subprocess.run([sys.executable, "-m", "ar1_jax.cli", *args], capture_output=True, text=True,
                         env=F.fake_devices_env(8, JAX_COMPILATION_CACHE_DIR=""), timeout=F.HANG_GUARD_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    assert "8 cpu device(s), mesh data=2 fsdp=2 tensor=2" in out.stdout
    want = json.loads((one / "metrics.jsonl").read_text().splitlines()[0])
    got = json.loads((mesh / "metrics.jsonl").read_text().splitlines()[0])
    assert got["step"] == want["step"] == 1
    # Rollouts are sampled from the same keys: with the same logits they draw the same tokens, so the
    # discrete rewards are equal; the expert's trajectory differs in float rounding (its ADE by ~1e-5).
    for key in ("reward/consistency", "reward/format", "reward/collision", "reward/offroad", "consistency_rate",
                "groups_kept"):
        assert got[key] == want[key], key
    for key in [k for k in want if k.startswith("reward/")]:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # The update: gradient norm to 1e-3 (the Flow-GRPO per-step Gaussian log-probs, sharp in the SDE
    # states, amplify the rounding: 4.6e-4 measured); losses are ~0 on policy, so absolute.
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-3)
    for key in ("loss", "expert_loss", "kl", "entropy"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # Adam's first step is about lr * sign(g) and blind to a gradient's scale (grad_norm checks that):
    # the two updates must point the same way. Measured: relative difference 1.1%, cosine 0.99994.
    start, a, b = _flat_params(), _flat_params(one), _flat_params(mesh)
    assert sorted(a) == sorted(b) == sorted(start) and len(a) > 10
    da = np.concatenate([(a[k] - start[k]).ravel() for k in sorted(a)])
    db = np.concatenate([(b[k] - start[k]).ravel() for k in sorted(a)])
    assert np.linalg.norm(da) > 0.01  # it moved (0.081 measured)
    assert np.linalg.norm(da - db) < 0.03 * np.linalg.norm(da), np.linalg.norm(da - db) / np.linalg.norm(da)
    assert da @ db > 0.999 * np.linalg.norm(da) * np.linalg.norm(db)
