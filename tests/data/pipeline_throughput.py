"""Throughput of the SFT input pipeline (ar1_jax.data.pipeline) on this machine; prints JSON.

    python tests/data/pipeline_throughput.py [--config ar1_tiny] [--num-scenes 64] [--batch-size 8]
        [--batches 24] [--worker-count 0] [--threads 2] [--data-dir DIR]

Writes `--num-scenes` random_records scenes to a temporary TFDS directory (unless --data-dir), then
times `--batches` batches after two warm-up batches: host batches only (`host_dataset`: read, PNG
decode, preprocess, tokenize, pack), and full global batches on one device (`make_pipeline`, with
`block_until_ready`). Not a test: a measurement for docs/benchmarks.md.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="ar1_tiny")
    ap.add_argument("--num-scenes", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--worker-count", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. scene.image_height=320 (repeatable)")
    args = ap.parse_args()

    import jax

    from ar1_jax.config import get_config
    from ar1_jax.data import pipeline, tfds_builder
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.text import corpus
    from ar1_jax.text.tokenizer import SPECIAL_TOKENS

    tmp = tempfile.mkdtemp(prefix="ar1_pipeline_bench.")
    cfg = get_config(args.config, args.overrides)
    t0 = time.perf_counter()
    data_dir = args.data_dir or str(tfds_builder.write_dataset(
        os.path.join(tmp, "ds"), tfds_builder.random_records(args.num_scenes, 0, cfg), args.num_scenes,
        test_fraction=0.0, progress=False))
    write_s = time.perf_counter() - t0
    cfg = get_config(args.config, args.overrides + [
        f"data.dataset_dir={data_dir}", f"data.batch_size={args.batch_size}",
        f"data.worker_count={args.worker_count}", f"data.num_threads={args.threads}"])
    tok = corpus.default_tokenizer(cfg.tokens.traj_token_offset - len(SPECIAL_TOKENS), os.path.join(tmp, "tok"))

    def timed(it, block):
        for _ in range(2):
            x = next(it)
        if block:
            jax.block_until_ready(x)
        t = time.perf_counter()
        for _ in range(args.batches):
            x = next(it)
            if block:
                jax.block_until_ready(x)
        return args.batches * args.batch_size / (time.perf_counter() - t)

    host_it = iter(pipeline.host_dataset(cfg, tok))
    host = timed(host_it, False)
    host_it.close()
    del host_it  # grain's iterators trip in __del__ if they live until interpreter exit
    it = pipeline.make_pipeline(cfg, tok, make_mesh(cfg.mesh, jax.devices()[:1]))
    full = timed(it, True)
    it.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "config": cfg.name, "batch_size": args.batch_size, "batches": args.batches, "worker_count": args.worker_count,
        "num_threads": args.threads, "scenes": args.num_scenes,
        "images_per_scene": cfg.scene.num_cameras * cfg.scene.num_frames,
        "image_size": [cfg.scene.image_height, cfg.scene.image_width], "overrides": args.overrides,
        "write_seconds": None if args.data_dir else round(write_s, 2),
        "host_samples_per_s": round(host, 1), "global_samples_per_s": round(full, 1),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__, "backend": jax.default_backend(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2))


if __name__ == "__main__":
    main()
