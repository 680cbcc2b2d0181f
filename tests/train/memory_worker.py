"""Run under fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax is
imported); prints one JSON line.

    memory_worker.py state CONFIG MESH [MESH ...] [-- KEY=VALUE ...]
        per mesh: initialises the real train state and sums each leaf's real per-device shard bytes
        (`addressable_shards[0]`), next to `memory.state_estimate`; {mesh: {real, analytic}}.
    memory_worker.py compiled CONFIG MESH BATCH SEQ_LEN [KEY=VALUE ...]
        `memory.compiled_estimate` of the train step, `memory.analytic_estimate` (bf16 activations as
        configured) and the analytic estimate with f32 activations (what the CPU backend keeps).
"""

import json
import sys

import jax

from ar1_jax.config import get_config
from ar1_jax.train import memory


def real_state_bytes(cfg, mesh) -> dict:
    from ar1_jax.train.trainer import Trainer

    state = Trainer(cfg, mesh).init_state()

    def per_device(tree):
        return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))

    return dict(params=per_device(state["params"]), opt_state=per_device(state["opt_state"]),
                ema=per_device(state.get("ema", {})))


def main(argv):
    mode, name, mesh_text = argv[:3]
    if mode == "state":
        meshes, _, overrides = " ".join(argv[2:]).partition(" -- ")
        cfg = get_config(name, overrides.split())
        out = {}
        for text in meshes.split():
            shape = memory.parse_mesh(text)
            out[text] = dict(real=real_state_bytes(cfg, memory.check_devices(shape)),
                             analytic=memory.state_estimate(cfg, shape))
    elif mode == "compiled":
        shape = memory.parse_mesh(mesh_text)
        batch, seq = int(argv[3]), int(argv[4])
        cfg = get_config(name, argv[5:])
        mesh = memory.check_devices(shape)
        out = dict(compiled=memory.compiled_estimate(cfg, mesh, batch, seq),
                   analytic=memory.analytic_estimate(cfg, shape, batch, seq),
                   analytic_f32_activations=memory.analytic_estimate(cfg, shape, batch, seq, act_bytes=4))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
