"""Runs the SFT pipeline in a fresh process for tests/data/test_pipeline.py; writes a JSON report.

    python pipeline_worker.py sharded DATA_DIR TOKENIZER_DIR OUT_JSON
        (XLA_FLAGS=--xla_force_host_platform_device_count=8 set by the caller) mesh data=4 x fsdp=2,
        global batch 8: two batches, their shapes and sharding specs.
    python pipeline_worker.py distributed DATA_DIR TOKENIZER_DIR OUT_JSON PORT PROCESS_ID NUM_PROCESSES
        one CPU device per process, gloo collectives, global batch 2 * NUM_PROCESSES, one epoch:
        this process's scene ids per batch, and the global shapes / specs.
"""

import json
import sys


def describe(batch):
    import jax

    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        key = "/".join(str(getattr(p, "key", p)) for p in path)
        out[key] = {"shape": list(x.shape), "spec": [s if s is None or isinstance(s, str) else list(s)
                                                      for s in x.sharding.spec],
                    "addressable": len(x.addressable_shards), "fully_addressable": x.is_fully_addressable}
    return out


def main(argv):
    mode, data_dir, tok_dir, out_json = argv[:4]
    import jax

    if mode == "distributed":
        port, pid, nproc = int(argv[4]), int(argv[5]), int(argv[6])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # A hang guard only (the peer may still be importing on a busy machine), as long as the test's.
        jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid,
                                   initialization_timeout=1800)
    import numpy as np

    from ar1_jax.config import get_config
    from ar1_jax.data import pipeline
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.text.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "device_count": jax.device_count()}
    if mode == "sharded":
        cfg = get_config("ar1_tiny", ["mesh.data=4", "mesh.fsdp=2", "data.batch_size=8",
                                      f"data.dataset_dir={data_dir}"])
        mesh = make_mesh(cfg.mesh)
        it = pipeline.make_pipeline(cfg, tok, mesh)
        batches = [next(it) for _ in range(2)]
        report["batches"] = [describe(b) for b in batches]
        want = pipeline.batch_shardings(cfg, mesh)
        report["shardings_match"] = all(
            jax.tree.structure(b) == jax.tree.structure(want)
            and all(x.sharding == s for x, s in zip(jax.tree.leaves(b), jax.tree.leaves(want))) for b in batches)
        # Every device holds whole examples: its input_ids rows and its pixel_values rows agree.
        b = batches[0]
        rows = {}
        for shard in b["input_ids"].addressable_shards:
            rows[shard.device.id] = [shard.index[0].start, shard.index[0].stop]
        prow = {}
        for shard in b["media"]["image"]["pixel_values"].addressable_shards:  # [scenes, patches, D]
            prow[shard.device.id] = [shard.index[0].start, shard.index[0].stop]
        report["rows_match"] = rows == prow
        report["scene_ids"] = it.last_scene_ids
        it.close()
    else:
        # Tight buckets: the reasoning traces (about 16-48 tokens) land in either, so the processes'
        # local batches often want different lengths and must agree on one.
        fixed = pipeline.default_buckets(get_config("ar1_tiny"), tok, reasoning_allowance=(0,), multiple=1)[0]
        buckets = (fixed + 30, fixed + 64)
        cfg = get_config("ar1_tiny", [f"data.batch_size={2 * jax.process_count()}", "data.num_epochs=1",
                                      f"data.dataset_dir={data_dir}",
                                      f"data.bucket_lengths={buckets[0]},{buckets[1]}"])
        it = pipeline.make_pipeline(cfg, tok, make_mesh(cfg.mesh))
        report["batches"], report["scene_ids"], report["lengths"] = [], [], []
        for batch in it:
            report["scene_ids"].append(it.last_scene_ids)
            if len(report["batches"]) < 1:
                report["batches"].append(describe(batch))
            # The process-local rows are this process's examples; the length they need vs the batch's.
            valid = np.concatenate([np.asarray(s.data) for s in batch["kv_valid"].addressable_shards])
            assert valid.shape[0] == 2, valid.shape
            need = next(b for b in buckets if b >= valid.sum(1).max())
            report["lengths"].append([int(need), int(batch["input_ids"].shape[1])])
        it.close()
        report["state"] = it.get_state()
    with open(out_json, "w") as f:
        json.dump(report, f)
    if mode == "distributed":
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
