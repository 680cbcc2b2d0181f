"""AR1 inference throughput and latency: `ar1 bench infer --config C --batch 1,8,32 [--int8] [--out DIR]`.

For each batch size B (scenes; K samples each), on random weights of the config (its dtype) and
random scenes of its scene settings:
  * compile seconds per stage (XLA backend compile time of the first call, from jax's compile events);
  * after `warmup` runs, `runs` timed runs: p50 / p95 of vision, prefill, reasoning decode per token,
    denoise per Euler step and the whole scene (every stage waited on), and the B-scene call without
    per-stage waits (`Engine.run(timed=False)`), whose p50 gives the throughput in scenes/s;
  * peak memory: the device's peak bytes in use where the backend reports it (GPU, TPU), else the
    host process's peak RSS (labelled);
  * decode against the weight-bandwidth roofline where the peak bandwidth is known (`peak_gbs`):
    the decoder's weight bytes per step / the bandwidth.
The prompt is synthetic (the release's layout: a short system text, each frame as vision_start +
image tokens + vision_end, 48 history tokens, the instruction, `<|cot_start|>`), so no tokenizer is
needed; the reasoning runs `max_reasoning_tokens` steps unless a random sample stops earlier
(reported as `decode_steps`). Results go to DIR/infer.json and DIR/infer.md.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import pathlib
import platform
import resource
import time

import jax
import numpy as np

from ar1_jax.config import Config

STAGES = ("vision", "prefill", "decode_per_token", "denoise_per_step", "total")


def synthetic_prompt(cfg: Config, grid: np.ndarray, seed: int = 0) -> np.ndarray:
    """Prompt ids `[T]` in the release's layout with random text ids (see module docstring)."""
    rng = np.random.default_rng(seed)
    m, tk = cfg.model, cfg.tokens
    merge = m.vision.spatial_merge_size ** 2
    low = max(16, tk.traj_token_offset - 2000) if tk.traj_token_offset > 2000 else 16
    text = lambda n: rng.integers(low, low + 1000 if tk.traj_token_offset > 2000 else 200, n).tolist()
    ids = text(24)
    for g in grid:
        ids += [m.vision_start_token_id] + [m.image_token_id] * int(np.prod(g) // merge) + [m.vision_end_token_id]
    history = (tk.traj_token_offset + cfg.action.future_bins + rng.integers(0, cfg.action.history_bins, 48)).tolist()
    ids += [tk.traj_history_start_id] + history + [tk.traj_history_end_id] + text(16) + [tk.cot_start_id]
    return np.asarray(ids, np.int32)


def scene_batch(cfg: Config, batch: int, seed: int = 0):
    """(prompt ids `[B, T]`, pixel values `[B * patches, D]`, grids `[B * images, 3]`, v0 `[B]`) of B
    random scenes of the config's scene settings."""
    from ar1_jax.data import images as image_lib
    from ar1_jax.infer import scene as scene_lib

    ids, pvs, grids = [], [], []
    for b in range(batch):
        scene = scene_lib.random_scene(cfg, seed + b)
        pv, grid = image_lib.preprocess_scene_frames(scene.images.reshape(-1, *scene.images.shape[2:]), cfg)
        ids.append(synthetic_prompt(cfg, grid, seed + b))
        pvs.append(pv)
        grids.append(grid)
    return np.stack(ids), np.concatenate(pvs), np.concatenate(grids), np.full((batch,), 8.0, np.float32)


@contextlib.contextmanager
def compile_seconds():
    """Yields a list that collects XLA backend compile durations (s) while the context is open."""
    from jax import monitoring

    got: list[float] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            got.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield got
    finally:
        monitoring.unregister_event_duration_listener(listener)


def peak_memory() -> dict:
    """Peak bytes: the first device's (when it reports memory stats), else the host's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"kind": "device", "peak_bytes": int(stats["peak_bytes_in_use"])}
    return {"kind": "host_rss", "peak_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def weight_bytes(params: dict, tree: str) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params[tree]))


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs, np.float64), q))


def bench_batch(engine, cfg: Config, batch: int, samples: int, runs: int, warmup: int) -> dict:
    ids, pv, grid, v0 = scene_batch(cfg, batch)
    with compile_seconds() as compiles:  # the first call compiles every stage for this batch shape
        first = engine.run(ids, pv, grid, v0=v0, seed=0, num_samples=samples)
    first_call = {k: round(first.timing[k], 4) for k in ("vision", "prefill", "decode", "denoise", "trajectory")}
    for i in range(max(0, warmup - 1)):
        engine.run(ids, pv, grid, v0=v0, seed=i + 1, num_samples=samples)
    timed = {k: [] for k in STAGES}
    steps = []
    whole = []
    for i in range(runs):
        r = engine.run(ids, pv, grid, v0=v0, seed=100 + i, num_samples=samples)
        for k in STAGES:
            timed[k].append(r.timing[k])
        steps.append(r.timing["decode_steps"])
        t = time.perf_counter()
        engine.run(ids, pv, grid, v0=v0, seed=200 + i, num_samples=samples, timed=False)
        whole.append(time.perf_counter() - t)
    row = dict(batch=batch, samples=samples, prompt_tokens=int(ids.shape[1]), images_per_scene=int(len(grid) // batch),
               decode_steps=int(np.median(steps)), runs=runs,
               compile_s=dict(total=round(float(sum(compiles)), 3), first_call_stage_s=first_call))
    for k in STAGES:
        row[k] = {"p50_ms": _pct(timed[k], 50) * 1e3, "p95_ms": _pct(timed[k], 95) * 1e3}
    row["scene_untimed"] = {"p50_ms": _pct(whole, 50) * 1e3, "p95_ms": _pct(whole, 95) * 1e3}
    row["scenes_per_s"] = batch / _pct(whole, 50)
    row["peak_memory"] = peak_memory()
    return row


def run(cfg: Config, batches, out_dir=None, *, int8: bool = False, samples: int = 1, runs: int = 5, warmup: int = 1,
        peak_gbs: float | None = None, mesh=None, say=print) -> dict:
    """Benchmarks the engine at each batch size (module docstring); writes infer.json / infer.md."""
    from ar1_jax.infer.engine import Engine
    from ar1_jax.infer.run import load_weights

    t = time.perf_counter()
    cfg, params = load_weights(cfg, None)
    init_s = time.perf_counter() - t
    say(f"infer bench: {cfg.name} ({cfg.model.dtype}{', int8 weights' if int8 else ''}), batches "
        f"{','.join(map(str, batches))}, K={samples}, {cfg.infer.max_reasoning_tokens} reasoning tokens, "
        f"{cfg.infer.flow_steps} flow steps, {runs} runs on {jax.devices()[0].device_kind} x{jax.device_count()}")
    engine = Engine(cfg, params, None, int8=int8, mesh=mesh)
    error = int8_error(cfg, params, batches[0], quantized=engine, mesh=mesh) if int8 else None
    del params
    if error is not None:
        say("  " + format_int8_error(error))
    decoder_bytes = weight_bytes(engine.params, "text")
    rows = []
    result = {}
    for b in batches:
        row = bench_batch(engine, cfg, b, samples, runs, warmup)
        if peak_gbs:
            floor = decoder_bytes / (peak_gbs * 1e9)
            row["decode_roofline_ms"] = floor * 1e3
            row["decode_roofline_fraction"] = floor * 1e3 / row["decode_per_token"]["p50_ms"]
        rows.append(row)
        say(format_row(row))
        result = dict(bench="infer", config=cfg.name, dtype=cfg.model.dtype, int8=int8,
                      date=datetime.datetime.now().isoformat(timespec="seconds"),
                      device=f"{jax.devices()[0].device_kind} x{jax.device_count()}",
                      host=platform.processor() or platform.machine(), jax=jax.__version__, init_s=round(init_s, 2),
                      reasoning_tokens=cfg.infer.max_reasoning_tokens, flow_steps=cfg.infer.flow_steps,
                      decoder_weight_bytes=decoder_bytes, peak_gbs=peak_gbs, load_average=_loadavg(),
                      complete=len(rows) == len(batches), rows=rows, int8_error=error)
        if out_dir is not None:  # after every batch size: a run stopped by a time limit keeps its rows
            out = pathlib.Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "infer.json").write_text(json.dumps(result, indent=2))
            (out / "infer.md").write_text(markdown(result) + "\n")
    if out_dir is not None and rows:
        say(f"wrote {pathlib.Path(out_dir) / 'infer.json'} and {pathlib.Path(out_dir) / 'infer.md'}")
    return result


def int8_error(cfg: Config, params: dict, batch: int, *, quantized=None, mesh=None) -> dict:
    """Weight-only int8 against the same weights in the config's dtype, on `batch` random scenes, greedy,
    one sample: the prefill's last-position logits (max |difference| over max |logit|, and whether the
    arg-max agrees), the greedy reasoning tokens (rows whose whole reasoning is the same), and the
    trajectories ([B, 64, 2] metres: max and mean point distance, over all rows and over the rows whose
    reasoning agrees, since a different reasoning conditions a different trajectory). `quantized`: the
    int8 `Engine` of these params, reused when it decodes greedily (else a greedy one is built)."""
    import dataclasses

    from ar1_jax.infer.engine import Engine

    greedy = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, temperature=0.0))
    ref = Engine(greedy, params, None, mesh=mesh)
    q = quantized if quantized is not None and quantized.cfg.infer.temperature == 0.0 \
        else Engine(greedy, params, None, int8=True, mesh=mesh)
    ids, pv, grid, v0 = scene_batch(cfg, batch, seed=1)
    x = ref.place_inputs(ref.prepare(ids, pv, grid))  # the same inputs for both
    logits = [np.asarray(eng.prefill(eng.params, x["input_ids"], x["positions"], x["kv_valid"],
                                     eng.vision(eng.params, x["media"]), x["next_position"])[0], np.float32)
              for eng in (ref, q)]
    rf = ref.run(ids, pv, grid, v0=v0, seed=0, num_samples=1, timed=False)
    rq = q.run(ids, pv, grid, v0=v0, seed=0, num_samples=1, timed=False)
    same = (rf.reasoning_ids == rq.reasoning_ids).all(-1)[:, 0]
    dist = np.linalg.norm(rf.trajectory[:, 0] - rq.trajectory[:, 0], axis=-1)  # [B, 64] metres
    pick = lambda m, f: float(f(dist[m])) if m.any() else None
    every = np.ones_like(same)
    return dict(scenes=batch, logits_max_abs_over_scale=float(np.abs(logits[1] - logits[0]).max()
                                                              / np.abs(logits[0]).max()),
                argmax_agree=float((logits[0].argmax(-1) == logits[1].argmax(-1)).mean()),
                reasoning_agree=float(same.mean()),
                trajectory_max_m=pick(every, np.max), trajectory_mean_m=pick(every, np.mean),
                trajectory_max_m_same_reasoning=pick(same, np.max),
                trajectory_mean_m_same_reasoning=pick(same, np.mean))


def format_int8_error(e: dict) -> str:
    """One line: "int8 against float on N scene(s): prefill logits max |diff| ..."."""
    f = lambda v: "-" if v is None else f"{v:.3f}"
    return (f"int8 against float on {e['scenes']} scene(s): prefill logits max |diff| "
            f"{100 * e['logits_max_abs_over_scale']:.2f}% of their scale, arg-max agree {100 * e['argmax_agree']:.0f}%, "
            f"greedy reasoning agree {100 * e['reasoning_agree']:.0f}%; trajectory max / mean "
            f"{f(e['trajectory_max_m'])} / {f(e['trajectory_mean_m'])} m (same reasoning: "
            f"{f(e['trajectory_max_m_same_reasoning'])} / {f(e['trajectory_mean_m_same_reasoning'])} m)")


def _loadavg():
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def format_row(r: dict) -> str:
    s = lambda k: f"{r[k]['p50_ms']:.2f}/{r[k]['p95_ms']:.2f}"
    mem = r["peak_memory"]
    return (f"  B={r['batch']:>3} K={r['samples']}: vision {s('vision')} ms, prefill {s('prefill')} ms, decode "
            f"{s('decode_per_token')} ms/token ({r['decode_steps']} steps), denoise {s('denoise_per_step')} ms/step, "
            f"scene {s('total')} ms (p50/p95); {r['scenes_per_s']:.2f} scenes/s; compile "
            f"{r['compile_s']['total']:.1f} s; peak {mem['peak_bytes'] / 2**30:.2f} GiB ({mem['kind']})")


def markdown(result: dict) -> str:
    """The result as a Markdown table (one row per batch size, p50 / p95 in ms; decode against the weight-
    bandwidth floor where the peak bandwidth was given)."""
    head = (f"{result['date']}, {result['device']} ({result['host']}), jax {result['jax']}, {result['config']} "
            f"{result['dtype']}{' int8' if result['int8'] else ''}, {result['reasoning_tokens']} reasoning tokens, "
            f"{result['flow_steps']} flow steps, load average {result['load_average']}"
            f"{'' if result.get('complete', True) else ' (stopped early: the batch sizes after these did not run)'}:")
    roof = bool(result.get("peak_gbs"))
    lines = [head, "",
             "| B x K | vision | prefill | decode / token | " + ("decode floor (fraction) | " if roof else "")
             + "denoise / step | scene | scenes/s | compile s | peak GiB |",
             "|---|---|---|---|" + ("---|" if roof else "") + "---|---|---|---|---|"]
    for r in result["rows"]:
        c = lambda k: f"{r[k]['p50_ms']:.1f} / {r[k]['p95_ms']:.1f}"
        floor = f"{r['decode_roofline_ms']:.2f} ({100 * r['decode_roofline_fraction']:.0f}%) | " if roof else ""
        lines.append(f"| {r['batch']} x {r['samples']} | {c('vision')} | {c('prefill')} | "
                     f"{r['decode_per_token']['p50_ms']:.2f} / {r['decode_per_token']['p95_ms']:.2f} | {floor}"
                     f"{c('denoise_per_step')} | {c('total')} | {r['scenes_per_s']:.2f} | "
                     f"{r['compile_s']['total']:.1f} | {r['peak_memory']['peak_bytes'] / 2**30:.2f} "
                     f"({r['peak_memory']['kind']}) |")
    if result.get("int8_error"):
        lines += ["", "Weight-only " + format_int8_error(result["int8_error"]) + "."]
    return "\n".join(lines)


# The paper's latency breakdown of one scene (AR1_FACTS: RTX 6000 Pro Blackwell; 40 reasoning tokens, 5 flow
# steps), in ms.
PAPER_MS = dict(vision=3.4, prefill=16.5, decode=70.0, denoise=8.8, total=99.0)


def paper_row(result: dict) -> dict | None:
    """The row comparable with the paper's one-scene latency: B = 1, K = 1 (None if the run has none)."""
    return next((r for r in result["rows"] if r["batch"] == 1 and r["samples"] == 1), None)


def paper_markdown(results: list[dict]) -> str:
    """One row per config at B = 1 (p50 ms): vision, prefill, the reasoning decode (per token x the
    paper's 40), denoise (per step x 5) and the whole scene, beside the paper's 99 ms."""
    lines = ["| one scene (B = 1, p50 ms) | vision | prefill | 40 tokens | 5 flow steps | scene |",
             "|---|---|---|---|---|---|",
             "| paper (RTX 6000 Pro Blackwell) | " + " | ".join(f"{PAPER_MS[k]:.1f}" for k in
                                                           ("vision", "prefill", "decode", "denoise", "total")) + " |"]
    for res in results:
        row = paper_row(res)
        if row is None:
            continue
        p = lambda k: row[k]["p50_ms"]
        lines.append(f"| {res['config']} {res['dtype']}{' int8' if res['int8'] else ''} ({res['device']}) | "
                     f"{p('vision'):.1f} | {p('prefill'):.1f} | {40 * p('decode_per_token'):.1f} | "
                     f"{5 * p('denoise_per_step'):.1f} | {p('total'):.1f} |")
    return "\n".join(lines)
