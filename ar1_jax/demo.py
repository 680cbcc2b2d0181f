"""The tiny end-to-end pipeline on CPU (`ar1 demo`), stage by stage, callable from Python.

    metrics = demo.run(get_config("tiny"), "out/demo")

Stages: the VLM backbone (one forward on random text + one image), AR1 inference on a random scene,
32 synthetic long-tail scenes written as a TFDS directory, a short SFT of ar1_tiny on them (metrics and
a loss plot), the later stages (RL, eval) reported as not yet available, and a quick smoke run of the
kernels benchmark. Each stage is its own function returning what it records; `run` says the stage
headers, runs them all and writes `out/demo_metrics.json`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable

from ar1_jax.config import Config, ConfigError, get_config
from ar1_jax.optional import ARRIVES_WITH, NotAvailable, import_optional

DEMO_SFT_STEPS = 40
DEMO_SCENES = 32
STAGES = 7
Say = Callable[[str], None]
_say = functools.partial(print, flush=True)


class DemoFailed(RuntimeError):
    """A stage ran and produced something wrong (a shape, a non-finite value)."""


def run(cfg: Config, out: str | pathlib.Path, seed: int | None = None, *, scenes: int = DEMO_SCENES,
        sft_steps: int = DEMO_SFT_STEPS, say: Say = _say) -> dict[str, Any]:
    """Runs every stage into `out` and writes `out/demo_metrics.json`; returns those metrics, whose
    `stages` maps each stage to "ok" or "not yet available". `seed` defaults to the config's;
    `scenes` synthetic scenes are written and ar1_tiny trains on them for `sft_steps` steps."""
    if scenes < 4 or sft_steps < 1:
        raise ConfigError(f"demo: expected at least 4 scenes (one batch) and 1 SFT step, got {scenes} and {sft_steps}")
    out = pathlib.Path(out)
    seed = cfg.seed if seed is None else seed
    metrics: dict[str, Any] = {"stages": {}}

    say(f"[1/{STAGES}] VLM backbone: build the model and run one forward on random text + one image")
    say(f"      config {cfg.name} ({cfg.model.family}): decoder {cfg.model.text.num_layers} layers x "
        f"{cfg.model.text.hidden_size}, vision {cfg.model.vision.depth} blocks x {cfg.model.vision.hidden_size}")
    try:
        metrics.update(backbone_stage(cfg, seed, say=say))
    except NotAvailable as e:
        say(f"      {e}")
        metrics["stages"]["backbone"] = "not yet available"
    else:
        metrics["stages"]["backbone"] = "ok"

    say(f"[2/{STAGES}] AR1 inference (ar1_tiny, random weights, random scene): reasoning decode, "
        "flow denoise, trajectory")
    metrics["infer"] = infer_stage(out / "infer", seed, say=say)
    metrics["stages"]["infer"] = "ok"

    say(f"[3/{STAGES}] synthetic data: {scenes} long-tail scenes -> TFDS (array_record)")
    metrics["data"] = data_stage(out / "data", seed, scenes, say=say)
    metrics["stages"]["data"] = "ok"

    say(f"[4/{STAGES}] SFT: ar1_tiny on those scenes, {sft_steps} steps (`ar1 train`), metrics and a loss plot")
    metrics["sft"] = sft_stage(out / "data", out / "sft", seed, sft_steps, say=say,
                               batch_size=min(get_config("ar1_tiny").data.batch_size, metrics["data"]["train_scenes"]))
    metrics["stages"]["sft"] = "ok"

    for i, (key, title) in enumerate((("rl", "RL"), ("eval", "eval")), start=5):
        say(f"[{i}/{STAGES}] {title}: not yet available (arrives with {ARRIVES_WITH[key]})")
        metrics["stages"][key] = "not yet available"

    say(f"[{STAGES}/{STAGES}] kernels benchmark: quick forward-only smoke run (Pallas vs XLA); meaningful numbers "
        "need a GPU or TPU: `ar1 bench kernels --out DIR`")
    try:
        metrics["bench"] = kernels_stage(out / "bench", say=say)
    except NotAvailable as e:
        say(f"      {e}")
        metrics["stages"]["bench"] = "not yet available"
    else:
        metrics["stages"]["bench"] = "ok"

    path = out / "demo_metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=False, default=str) + "\n")
    say(f"wrote {path}")
    return metrics


def infer_stage(out: pathlib.Path, seed: int, *, say: Say = _say) -> dict[str, Any]:
    """`ar1 infer` of ar1_tiny (random weights) on a random scene, 2 samples, twice (the second
    timed without compilation)."""
    from ar1_jax.infer.run import run_scene

    record = run_scene(get_config("ar1_tiny"), "random", out, samples=2, seed=seed, repeat=2, say=say)
    return {"timing": record["timing"], "num_samples": len(record["samples"])}


def data_stage(out: pathlib.Path, seed: int, scenes: int = DEMO_SCENES, *, say: Say = _say) -> dict[str, Any]:
    """`scenes` synthetic scenes of ar1_tiny written to `out`, with the constant-velocity ADE."""
    import numpy as np

    from ar1_jax.data import synthetic, tfds_builder
    from ar1_jax.eval.scoring import constant_velocity_ade

    t0 = time.perf_counter()
    records = list(synthetic.generate_records(scenes, seed, get_config("ar1_tiny")))
    test_fraction = 0.1
    tfds_builder.write_dataset(out, iter(records), len(records), overwrite=True, progress=False,
                               test_fraction=test_fraction)
    train = sum(tfds_builder.split_of(str(r["scene_id"]), test_fraction) == "train" for r in records)
    if train == 0:
        raise DemoFailed(f"demo: all {scenes} synthetic scenes fell in the test split; use more scenes")
    families = sorted({str(r["family"]) for r in records})
    cv_ade = float(np.mean([constant_velocity_ade(r["future_xyz"], float(r["v0"])) for r in records]))
    say(f"      wrote {out} in {time.perf_counter() - t0:.1f} s: {len(families)} families "
        f"({', '.join(families)}); constant-velocity baseline ADE {cv_ade:.2f} m")
    return {"num_scenes": scenes, "train_scenes": int(train), "families": families, "cv_ade_m": round(cv_ade, 3)}


def sft_stage(dataset_dir: pathlib.Path, workdir: pathlib.Path, seed: int, steps: int = DEMO_SFT_STEPS, *,
              batch_size: int | None = None, say: Say = _say) -> dict[str, Any]:
    """Trains ar1_tiny for `steps` steps of `batch_size` scenes (default: the config's) on `dataset_dir`
    in `workdir`, plots the loss; returns the loss summary."""
    from ar1_jax.eval import viz
    from ar1_jax.train import sft

    default_batch = get_config("ar1_tiny").data.batch_size
    batch_size = batch_size or default_batch
    cfg = get_config("ar1_tiny", [f"data.dataset_dir={dataset_dir}", f"train.steps={steps}",
                                  f"data.batch_size={batch_size}", "train.checkpoint_every=1000", f"seed={seed}"])
    if batch_size != default_batch:
        say(f"      {batch_size} training scenes: batches of {batch_size} (ar1_tiny's is {default_batch})")
    t0 = time.perf_counter()
    result = sft.run(cfg, workdir, progress=sys.stderr.isatty())
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    viz.plot_curves(workdir / "loss.png", rows, title=f"SFT of {cfg.name} on synthetic scenes")
    first, last = rows[0], rows[-1]
    say(f"      loss {first['loss']:.2f} -> {last['loss']:.2f} (reasoning CE {first['ce_reasoning']:.2f} -> "
        f"{last['ce_reasoning']:.2f}, trajectory-token CE {first['ce_trajectory']:.2f} -> "
        f"{last['ce_trajectory']:.2f}, flow {first['flow']:.2f} -> {last['flow']:.2f}) in "
        f"{time.perf_counter() - t0:.0f} s; {workdir / 'loss.png'}, checkpoint step {result.checkpoint_step}")
    return {"steps": result.step, "first_loss": first["loss"], "last_loss": last["loss"],
            "checkpoint_step": result.checkpoint_step, "seconds": round(time.perf_counter() - t0, 1),
            "plot": str(workdir / "loss.png")}


def kernels_stage(out: pathlib.Path, *, say: Say = _say) -> dict[str, Any]:
    """The kernels benchmark, quick and forward only, in float32 (NotAvailable without it)."""
    kernels = import_optional("ar1_jax.bench.kernels", "bench kernels", ARRIVES_WITH["kernels_bench"])
    t0 = time.perf_counter()
    say(f"kernels: Pallas vs XLA (and cuDNN on a GPU), dtype float32, quick -> {out}")
    kernels.run(out, dtype="float32", quick=True, passes=("fwd",))
    return {"kernels_json": str(out / "kernels.json"), "seconds": round(time.perf_counter() - t0, 2)}


def backbone_stage(cfg: Config, seed: int, *, say: Say = _say) -> dict[str, Any]:
    """Builds the backbone (on a mesh when there are several devices), runs one forward on random
    text + one image and returns the metrics to record. ConfigError for a mesh that does not fit the
    devices; DemoFailed if the logits are mis-shaped or not finite."""
    vlm = import_optional("ar1_jax.model.vlm", "demo", ARRIVES_WITH["vlm"])
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ar1_jax.model.summary import count_params, human_count

    m = cfg.model
    mesh = None
    if jax.device_count() > 1:  # e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8
        from ar1_jax.parallel.mesh import make_mesh

        try:
            mesh = make_mesh(cfg.mesh)
        except ValueError as e:
            raise ConfigError(f"config field `mesh`: {e}") from None
        say(f"      mesh {dict(mesh.shape)} over {jax.device_count()} devices, rules {cfg.mesh.rules!r}")
    t0 = time.perf_counter()
    if mesh is None:
        model = vlm.build_model(m, seed)
    else:
        model = vlm.build_model(m, seed, mesh=mesh, rules=cfg.mesh.rules)
    build_s = time.perf_counter() - t0
    total, _, _ = count_params(model)
    say(f"      built in {build_s:.2f} s: {total:,} parameters ({human_count(total)})")

    # One image of 2 x 2 merged tokens: grid [1, 2*merge, 2*merge] patches (56 x 56 pixels at patch 14).
    merge = m.vision.spatial_merge_size
    grid = (1, 2 * merge, 2 * merge)
    side = grid[1] * m.vision.patch_size
    num_patches = grid[0] * grid[1] * grid[2]
    num_image_tokens = num_patches // merge**2
    rng = np.random.default_rng(seed)
    text_high = min(400, m.text.vocab_size)
    before = rng.integers(0, text_high, size=6)
    after = rng.integers(0, text_high, size=10)
    ids = np.concatenate([before, [m.vision_start_token_id], [m.image_token_id] * num_image_tokens,
                          [m.vision_end_token_id], after])
    input_ids = jnp.asarray(ids[None, :], dtype=jnp.int32)
    pixel_values = jnp.asarray(rng.standard_normal((num_patches, m.vision.patch_dim)), dtype=jnp.float32)
    image_grid_thw = np.asarray([grid], dtype=np.int32)
    say(f"      inputs: {input_ids.shape[1]} tokens, one {side}x{side} image -> grid {list(grid)} -> "
        f"{num_image_tokens} image tokens, pixel_values {tuple(pixel_values.shape)}")

    def forward():
        t0 = time.perf_counter()
        out = jax.block_until_ready(model(input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw))
        return out, time.perf_counter() - t0

    logits, first_s = forward()  # includes tracing and compilation
    logits, forward_s = forward()
    expected = (1, input_ids.shape[1], m.text.vocab_size)
    if tuple(logits.shape) != expected:
        raise DemoFailed(f"demo: logits shape {tuple(logits.shape)}, expected {expected}")
    finite = bool(jnp.all(jnp.isfinite(logits)))
    if not finite:
        raise DemoFailed("demo: the forward produced non-finite logits")
    say(f"      logits {tuple(logits.shape)} {logits.dtype}: first call {first_s:.2f} s (includes compile), "
        f"second call {forward_s * 1e3:.1f} ms")
    return {
        "config": cfg.name,
        "family": m.family,
        "seed": seed,
        "num_params": total,
        "input_ids_shape": list(input_ids.shape),
        "pixel_values_shape": list(pixel_values.shape),
        "image_grid_thw": [list(grid)],
        "logits_shape": list(logits.shape),
        "logits_dtype": str(logits.dtype),
        "logits_finite": finite,
        "build_seconds": round(build_s, 4),
        "first_forward_seconds": round(first_s, 4),
        "forward_seconds": round(forward_s, 4),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "mesh": dict(mesh.shape) if mesh is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
