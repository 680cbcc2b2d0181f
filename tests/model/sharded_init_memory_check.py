"""Run under 8 fake CPU devices: compile (never run) the sharded init of a real-size config and
report XLA's per-device memory figures as JSON (`report`; sharded_forward_check.py calls it in its
process, or run this file alone: `python sharded_init_memory_check.py qwen2_5_vl_7b`)."""

import json
import sys

import jax
import numpy as np
from flax import nnx

from ar1_jax.config import MeshConfig, get_config
from ar1_jax.model.vlm import VLM
from ar1_jax.parallel.init import sharded_init_fn
from ar1_jax.parallel.mesh import make_mesh


def report(name: str) -> dict:
    cfg = get_config(name).model
    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    make = lambda: VLM(cfg, rngs=nnx.Rngs(0))
    abstract = nnx.state(nnx.eval_shape(make), nnx.Param)
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    out = dict(total_bytes=total)
    for label, m in (("sharded", mesh), ("one_device", make_mesh(MeshConfig(data=1), jax.devices()[:1]))):
        _, init = sharded_init_fn(make, m)
        mem = init.lower().compile().memory_analysis()
        out[label] = dict(output_bytes=int(mem.output_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes))
    return out


if __name__ == "__main__":
    print(json.dumps(report(sys.argv[1])))
