"""Training in a fresh process for tests/train/test_sharded_training.py; writes a JSON report.

    python train_worker.py meshes DATA_DIR TOKENIZER_DIR OUT_JSON CKPT_DIR
        (XLA_FLAGS=--xla_force_host_platform_device_count=8 set by the caller) trains STEPS steps of
        ar1_tiny from the same init and batches on 1 device and on the mesh (data=2, fsdp=2, tensor=2);
        reports losses, parameter shardings (also those of the meshes data=8 and fsdp=8, read from
        the abstract state), and a checkpoint saved on the 2x2x2 mesh restored onto 1 and 4 devices.
    python train_worker.py reference DATA_DIR TOKENIZER_DIR OUT_JSON TOTAL_STEPS OTHER_RUN
        (2 fake devices) one process trains on the global batches that two processes would build
        (each process's shard of the data, concatenated), as many steps as OTHER_RUN (an `ar1 train`
        run by two gloo processes) took, and compares the parameters with its last checkpoint.
"""

import json
import sys

STEPS = 3


def _cfg(data_dir, *overrides):
    from ar1_jax.config import get_config

    return get_config("ar1_tiny", [f"data.dataset_dir={data_dir}", "data.batch_size=8", "data.shuffle=false",
                                   "train.warmup_steps=1", *overrides])


def _spec(x):
    return [s if s is None or isinstance(s, str) else list(s) for s in x.sharding.spec]


def _train(cfg, mesh, tok, batches=None, steps=STEPS):
    import numpy as np

    from ar1_jax.data import pipeline as pl
    from ar1_jax.train.trainer import Trainer

    trainer = Trainer(cfg, mesh)
    state = trainer.init_state()
    step = trainer.compile_step(pl.batch_shardings(cfg, mesh))
    it = batches if batches is not None else pl.make_pipeline(cfg, tok, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, next(it))
        losses.append(float(np.asarray(metrics["loss"])))
    if batches is None:
        it.close()
    return trainer, state, losses


def _named_leaves(p):
    """The large parameters whose layouts the test checks (a params-like tree's leaves)."""
    return {"text.layers.mlp.up_kernel": p["text"]["layers"]["mlp"]["up_kernel"],
            "text.layers.attn.q_kernel": p["text"]["layers"]["attn"]["q_kernel"],
            "text.embed": p["text"]["embed"], "expert.layers.mlp.down_kernel": p["expert"]["layers"]["mlp"]["down_kernel"],
            "vision.blocks.mlp.fc1_kernel": p["vision"]["blocks"]["mlp"]["fc1_kernel"]}


def meshes(data_dir, tok_dir, out_json, ckpt_dir):
    import jax
    import numpy as np

    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.text.tokenizer import Tokenizer
    from ar1_jax.train.checkpoint import Checkpointer
    from ar1_jax.train.trainer import Trainer

    tok = Tokenizer.load(tok_dir)
    report = {"device_count": jax.device_count(), "runs": {}}
    ref_params = None
    # Pure data parallelism and pure FSDP are not trained here (the 2x2x2 mesh trains over data, fsdp
    # and tensor axes at once): only their parameter layouts are read, which needs no compile.
    for name, sets in [("data8", ("mesh.data=8",)), ("fsdp8", ("mesh.data=1", "mesh.fsdp=8"))]:
        cfg = _cfg(data_dir, *sets)
        abstract = _named_leaves(Trainer(cfg, make_mesh(cfg.mesh)).abstract_state["params"])
        report["runs"][name] = {
            "specs": {k: [s if s is None or isinstance(s, str) else list(s) for s in a.sharding.spec]
                      for k, a in abstract.items()},
            "shard_shapes": {k: list(a.sharding.shard_shape(a.shape)) for k, a in abstract.items()}}
    for name, sets in [("one", ("mesh.data=1",)), ("2x2x2", ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))]:
        cfg = _cfg(data_dir, *sets)
        mesh = make_mesh(cfg.mesh, jax.devices()[:1] if name == "one" else None)
        trainer, state, losses = _train(cfg, mesh, tok)
        p = state["params"]
        run = {"losses": losses, "mesh": dict(mesh.shape)}
        leaves = _named_leaves(p)
        run["specs"] = {k: _spec(v) for k, v in leaves.items()}
        run["shard_shapes"] = {k: list(v.addressable_shards[0].data.shape) for k, v in leaves.items()}
        # Adam's moments live where their parameter lives.
        mu = [x for x in jax.tree.leaves(state["opt_state"]) if getattr(x, "shape", ()) == leaves["text.embed"].shape]
        run["embed_moment_specs"] = [_spec(x) for x in mu]
        host = jax.tree.map(np.asarray, p)
        if ref_params is None:
            ref_params = host
        run["max_param_diff_vs_one"] = max(float(np.abs(a - b).max()) for a, b in
                                           zip(jax.tree.leaves(host), jax.tree.leaves(ref_params)))
        report["runs"][name] = run
        if name == "2x2x2":
            ckpt = Checkpointer(ckpt_dir, cfg, async_save=True)
            ckpt.save(STEPS, state, {"note": "test"}, metrics={"loss": losses[-1]})
            ckpt.close()
            restored = {}
            for n in (1, 4):
                cfg_n = _cfg(data_dir, f"mesh.data={n}")
                mesh_n = make_mesh(cfg_n.mesh, jax.devices()[:n])
                target = Trainer(cfg_n, mesh_n).abstract_state
                reader = Checkpointer(ckpt_dir, cfg_n, read_only=True)
                got, data_state = reader.restore(STEPS, target)
                reader.close()
                same = all(np.array_equal(np.asarray(a), b) for a, b in
                           zip(jax.tree.leaves(got["params"]), jax.tree.leaves(host)))
                devices = {d.id for x in jax.tree.leaves(got) for d in x.sharding.device_set}
                restored[str(n)] = {"params_equal": same, "devices": len(devices), "data_state": data_state,
                                    "step": int(got["step"])}
            report["restored"] = restored
    pathlib_write(out_json, report)


def reference(data_dir, tok_dir, out_json, total_steps, other_run):
    """The global batches of a 2-process run, built in one process: process i's shard, concatenated,
    trained under a `total_steps` schedule for as many steps as `other_run` (the 2-process run's
    workdir) took; compares the parameters with its final checkpoint's."""
    import grain
    import jax
    import numpy as np

    from ar1_jax.data import pipeline as pl
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.text.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    from ar1_jax.train.checkpoint import Checkpointer
    from ar1_jax.train.trainer import Trainer

    cfg = _cfg(data_dir, "data.prefetch=0", f"train.steps={total_steps}")  # the schedule of the CLI run
    mesh = make_mesh(cfg.mesh)
    buckets = pl.default_buckets(cfg, tok)
    hosts = [iter(pl.host_dataset(cfg, tok, local_batch=4, buckets=buckets,
                                  shard_options=grain.sharding.ShardOptions(i, 2, drop_remainder=True)))
             for i in range(2)]

    def merged():
        while True:
            parts = [next(h) for h in hosts]
            bucket = max(p["bucket"] for p in parts)
            batches = [pl.pad_batch(p["batch"], bucket, cfg.tokens.pad_id) for p in parts]
            yield dict(batch={k: np.concatenate([b[k] for b in batches], 1 if k == "positions" else 0)
                              for k in batches[0]},
                       pixel_values=np.concatenate([p["pixel_values"] for p in parts]),
                       image_grid_thw=parts[0]["image_grid_thw"], bucket=bucket,
                       scene_ids=[s for p in parts for s in p["scene_ids"]], skipped=[])

    ckpt = Checkpointer(f"{other_run}/checkpoints", cfg, read_only=True)
    other_step = ckpt.latest_step()
    batches = pl.SFTBatchIterator(merged(), cfg, mesh, buckets)
    _, state, losses = _train(cfg, mesh, tok, batches=batches, steps=other_step)
    report = {"losses": losses, "device_count": jax.device_count(), "other_step": other_step}
    got, _ = ckpt.restore(other_step, Trainer(cfg, mesh).abstract_state)
    ckpt.close()
    diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                            zip(jax.tree.leaves(got["params"]), jax.tree.leaves(state["params"]))])
    report["max_param_diff"] = float(diffs.max())
    report["frac_param_diff_over_1e-5"] = float((diffs > 1e-5).mean())
    report["num_params"] = int(diffs.size)
    pathlib_write(out_json, report)


def pathlib_write(path, report):
    with open(path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"meshes": meshes, "reference": reference}[mode](*args)
