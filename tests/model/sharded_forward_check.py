"""Run under 8 fake CPU devices by test_sharded_forward.py, every check in this one process (each
fresh process re-imports jax and recompiles): per backbone config, the forward, generation and a
streamed checkpoint load on one device vs fsdp=4 x tensor=2; then the compiled (never run) sharded
init of a real-size config (sharded_init_memory_check.py). Prints one JSON line.

    python sharded_forward_check.py SEED INIT_MEMORY_CONFIG NAME [NAME ...]
"""

import json
import sys
import tempfile

import jax
import numpy as np

from ar1_jax.config import MeshConfig, get_config
from ar1_jax.convert import hf
from ar1_jax.model.vlm import build_model
from ar1_jax.parallel.mesh import make_mesh

import sharded_init_memory_check  # beside this file


def _normalise(spec, ndim):
    parts = list(spec) + [None] * (ndim - len(spec))
    return tuple(p if not (isinstance(p, tuple) and len(p) == 1) else p[0] for p in parts)


def forward_report(name: str, seed: int) -> dict:
    assert jax.device_count() == 8, jax.device_count()
    cfg = get_config(name).model
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    rng = np.random.default_rng(seed)
    grid = np.array([[1, 4, 6], [1, 8, 4]])
    pv = rng.standard_normal((int(grid.prod(-1).sum()), cfg.vision.patch_dim)).astype(np.float32)
    rows = []
    for b in range(4):  # batch 4 so the batch dim really splits over fsdp
        ids = rng.integers(4, 400, 3).tolist()
        if b < 2:
            g = grid[b]
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * int(g.prod() // 4) + [cfg.vision_end_token_id]
        rows.append(ids + rng.integers(4, 400, 4).tolist())
    t = max(map(len, rows))
    ids = np.zeros((4, t), np.int64)
    mask = np.zeros((4, t), np.int64)
    for b, r in enumerate(rows):  # left padding
        ids[b, t - len(r):] = r
        mask[b, t - len(r):] = 1

    single = build_model(cfg, seed=seed)
    sharded = build_model(cfg, seed=seed, mesh=mesh)
    ref = np.asarray(single(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
    out = sharded(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)
    got = np.asarray(out)
    valid = mask.astype(bool)
    rel = float(np.abs(got - ref)[valid].max() / np.abs(ref[valid]).max())

    params = sharded.pure_params
    text = params["text"]
    specs = {
        "embed": _normalise(text["embed"].sharding.spec, 2),
        "q_kernel": _normalise(text["layers"]["attn"]["q_kernel"].sharding.spec, 4),
        "k_kernel": _normalise(text["layers"]["attn"]["k_kernel"].sharding.spec, 4),
        "down_kernel": _normalise(text["layers"]["mlp"]["down_kernel"].sharding.spec, 3),
        "vision_fc1": _normalise(params["vision"]["blocks"]["mlp"][
            "fc1_kernel" if cfg.family == "qwen3_vl" else "gate_kernel"].sharding.spec, 3),
    }
    shard_shapes = {
        "embed": text["embed"].addressable_shards[0].data.shape,
        "q_kernel": text["layers"]["attn"]["q_kernel"].addressable_shards[0].data.shape,
    }
    full_shapes = {"embed": text["embed"].shape, "q_kernel": text["layers"]["attn"]["q_kernel"].shape}
    gen_single = single.generate(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask, max_new_tokens=4)
    gen_sharded = sharded.generate(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask, max_new_tokens=4)

    # Streamed load of an exported checkpoint straight into the mesh.
    with tempfile.TemporaryDirectory() as d:
        hf.export(single, d)
        loaded = hf.load(d, mesh=mesh)
        loaded_logits = np.asarray(loaded(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
        loaded_spec = _normalise(loaded.pure_params["text"]["layers"]["mlp"]["down_kernel"].sharding.spec, 3)
    return dict(
        rel=rel, specs={k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in specs.items()},
        shard_shapes=shard_shapes, full_shapes=full_shapes, logits_sharding=str(out.sharding.spec),
        gen_equal=bool((gen_single == gen_sharded).all()),
        loaded_rel=float(np.abs(loaded_logits - ref)[valid].max() / np.abs(ref[valid]).max()),
        loaded_spec=[list(x) if isinstance(x, tuple) else x for x in loaded_spec],
    )


def main(seed: int, init_memory_config: str, names: list[str]):
    print(json.dumps(dict(forward={name: forward_report(name, seed) for name in names},
                          init_memory=sharded_init_memory_check.report(init_memory_config))))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
