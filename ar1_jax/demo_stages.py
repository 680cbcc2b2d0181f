"""The stages of `ar1 demo` (`ar1_jax.demo.run` orders them, times them and reuses finished ones). Each
takes its inputs' directories, writes into its own, and returns a JSON-able summary."""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

from ar1_jax.config import Config, apply_overrides

Say = Callable[[str], None]
_say = functools.partial(print, flush=True)

#: The table the demo prints and reports: (label, eval.json key, whether lower is better).
TABLE_KEYS = (("minADE_K @ 3 s (m)", "min_ade@3.0", True), ("open loop: collision", "collision_rate", True),
              ("open loop: off-road", "offroad_rate", True), ("reasoning-action consistency", "consistency_rate", False),
              ("open loop: PDM-style score", "score", False), ("closed loop: AlpaSim score", "cl/score", False),
              ("closed loop: at-fault collision", "cl/at_fault_rate", True),
              ("closed loop: off-road", "cl/offroad_rate", True),
              ("closed loop: close encounter", "cl/close_encounter_rate", True))
LONG_TAIL_KEYS = (("long tail: minADE_K @ 3 s (m)", "min_ade@3.0"), ("long tail: AlpaSim score", "cl/score"),
                  ("long tail: at-fault collision", "cl/at_fault_rate"))
COLUMNS = ("AR1 SFT", "AR1 SFT + RL", "rule planner", "constant velocity")


class DemoFailed(RuntimeError):
    """A stage ran and produced something wrong (no training scenes, a non-finite loss)."""


def _bars() -> bool:
    return sys.stderr.isatty()


def _rows(workdir: pathlib.Path) -> list[dict]:
    from ar1_jax.eval.viz import read_metrics

    return read_metrics(workdir / "metrics.jsonl")


def data_stage(cfg: Config, out: pathlib.Path, seed: int, scenes: int, *, say: Say = _say) -> dict[str, Any]:
    """`scenes` synthetic scenes of `cfg` (seeds `seed` ..) written to `out` as TFDS, with the split counts."""
    from ar1_jax.data import synthetic, tfds_builder

    t0 = time.perf_counter()
    records = list(synthetic.generate_records(scenes, seed, cfg))
    test_fraction = 0.1
    tfds_builder.write_dataset(out, iter(records), len(records), overwrite=True, progress=False,
                               test_fraction=test_fraction)
    train = sum(tfds_builder.split_of(str(r["scene_id"]), test_fraction) == "train" for r in records)
    if train == 0:
        raise DemoFailed(f"demo: all {scenes} synthetic scenes fell in the test split; use more scenes")
    families = sorted({str(r["family"]) for r in records})
    say(f"      wrote {out} in {time.perf_counter() - t0:.1f} s: {train} train / {scenes - train} test scenes, "
        f"{len(families)} families")
    return {"num_scenes": scenes, "train_scenes": int(train), "families": families}


def sft_stage(cfg: Config, data: pathlib.Path, workdir: pathlib.Path, steps: int, train_scenes: int, *,
              say: Say = _say) -> dict[str, Any]:
    """SFT of `cfg` for `steps` steps on `data` (batches of at most the training scenes); its loss curves."""
    from ar1_jax.eval import viz
    from ar1_jax.train import sft

    batch = min(cfg.data.batch_size, train_scenes)
    run_cfg = apply_overrides(cfg, [f"data.dataset_dir={data}", f"train.steps={steps}", f"data.batch_size={batch}",
                                    f"train.checkpoint_every={max(steps // 3, 1)}", "train.tensorboard=false"]).validate()
    t0 = time.perf_counter()
    result = sft.run(run_cfg, workdir, progress=_bars())
    rows = _rows(workdir)
    if not rows or not all(np.isfinite(r["loss"]) for r in rows):
        raise DemoFailed(f"demo: SFT logged no or non-finite losses ({workdir / 'metrics.jsonl'})")
    viz.plot_curves(workdir / "curves.png", rows, title=f"SFT of {cfg.name}")
    first, last = rows[0], rows[-1]
    say(f"      loss {first['loss']:.2f} -> {last['loss']:.2f} (reasoning CE {first['ce_reasoning']:.2f} -> "
        f"{last['ce_reasoning']:.2f}, trajectory-token CE {first['ce_trajectory']:.2f} -> {last['ce_trajectory']:.2f}, "
        f"flow {first['flow']:.2f} -> {last['flow']:.2f}) in {time.perf_counter() - t0:.0f} s")
    return {"steps": result.step, "batch": batch, "first_loss": first["loss"], "last_loss": last["loss"],
            "seconds": round(time.perf_counter() - t0, 1), "curves": str(workdir / "curves.png")}


def rl_stage(cfg: Config, sft_dir: pathlib.Path, workdir: pathlib.Path, steps: int, *, say: Say = _say) -> dict[str, Any]:
    """`ar1 rl` of `cfg` from the SFT run for `steps` steps (lr 1e-4, the release's clipping); its curves."""
    from ar1_jax.eval import viz
    from ar1_jax.rl import task as rl_task

    run_cfg = rl_task.rl_config(apply_overrides(cfg, [
        f"train.init_from={sft_dir}", f"train.steps={steps}", "train.learning_rate=1e-4", "train.warmup_steps=0",
        f"train.checkpoint_every={max(steps // 2, 1)}", "train.tensorboard=false", "train.log_every=1"]))
    rl = run_cfg.rl
    say(f"      {rl.scenes_per_step} scenes x {rl.group_size} rollouts per step; tokens {rl.token_loss}, expert "
        f"{rl.expert_loss}")
    t0 = time.perf_counter()
    result = rl_task.run(run_cfg, workdir, progress=_bars())
    rows = _rows(workdir)
    viz.plot_curves(workdir / "curves.png", rows, title=f"RL of {cfg.name} from SFT")
    half = max(len(rows) // 2, 1)
    early = float(np.mean([r["reward/total"] for r in rows[:half]]))
    late = float(np.mean([r["reward/total"] for r in rows[half:]] or [rows[-1]["reward/total"]]))
    say(f"      mean total reward {early:.3f} (first half) -> {late:.3f} (second half) in {time.perf_counter() - t0:.0f} s")
    return {"steps": result.step, "reward_first_half": early, "reward_second_half": late,
            "seconds": round(time.perf_counter() - t0, 1), "curves": str(workdir / "curves.png")}


def _quiet(say: Say) -> Say:
    """`say` without the per-chunk and per-replan progress lines of `ar1 eval`."""
    return lambda s: None if s.startswith(("open loop:", "closed loop [")) else say("      " + s)


def eval_stage(sft_dir: pathlib.Path, rl_dir: pathlib.Path, out: pathlib.Path, scenes: int, *,
               say: Say = _say) -> dict[str, Any]:
    """`ar1 eval --closed-loop` of the RL run (with the baselines) and of the SFT run on the same held-out
    scenes; the table's columns (overall and long tail)."""
    from ar1_jax.eval.run import EvalSettings, long_tail_mean, run_eval

    t0 = time.perf_counter()
    rl = run_eval(None, EvalSettings(checkpoint=str(rl_dir), synthetic=scenes, closed_loop=True), out / "rl", _quiet(say))
    sft = run_eval(None, EvalSettings(checkpoint=str(sft_dir), synthetic=scenes, closed_loop=True, baselines=False,
                                      save_tracks=False), out / "sft", _quiet(say))
    reports = dict(zip(COLUMNS, (sft, rl, rl["baselines"]["planner"], rl["baselines"]["constant_velocity"])))
    columns = {}
    for name, rep in reports.items():
        col = {key: rep["overall"].get(key) for _, key, _ in TABLE_KEYS}
        col.update({f"long_tail/{key}": long_tail_mean(rep, key) for _, key in LONG_TAIL_KEYS})
        columns[name] = col
    return {"scenes": scenes, "columns": columns, "seconds": round(time.perf_counter() - t0, 1),
            "eval_md": str(out / "rl" / "eval.md")}


def drive_stage(eval_dir: pathlib.Path, out: pathlib.Path, show: int, *, say: Say = _say) -> dict[str, Any]:
    """Bird's-eye plots of the RL model's K samples on `show` long-tail held-out scenes (distinct families
    first) with its reasoning as the caption, and a GIF of its closed-loop drive of the first."""
    from ar1_jax.config import Config, from_dict
    from ar1_jax.eval import animate, viz
    from ar1_jax.eval.run import LONG_TAIL_EXCLUDED
    from ar1_jax.world.families import generate

    src = eval_dir / "rl"
    cfg = from_dict(Config, json.loads((src / "config.json").read_text()))
    with np.load(src / "open_loop.npz") as z:
        ids, fams, traj, chosen, texts = (z[k] for k in ("scene_id", "family", "trajectories", "chosen", "texts"))
    texts = ["".join(c if c.isprintable() else "?" for c in str(t)) for t in texts]  # an untrained model emits bytes
    tail = [i for i in range(len(ids)) if str(fams[i]) not in LONG_TAIL_EXCLUDED]
    picked: list[int] = []
    for i in tail:  # one per family first, then any
        if str(fams[i]) not in {str(fams[j]) for j in picked}:
            picked.append(i)
    picked = (picked + [i for i in tail if i not in picked])[:show] or list(range(min(show, len(ids))))
    out.mkdir(parents=True, exist_ok=True)
    shown = []
    for i in picked:
        scene = generate(int(str(ids[i])[6:]), cfg, family=str(fams[i]))
        path = out / f"{ids[i]}_bev.png"
        labels = [f"sample {k}" + (" (driven)" if k == int(chosen[i]) else "") for k in range(traj.shape[1])]
        viz.plot_scene_bev(path, scene, predictions=traj[i], labels=labels, caption=f"AR1: {texts[i]}",
                           title=f"{ids[i]} ({fams[i]})")
        say(f"      {ids[i]} ({fams[i]}): \"{texts[i]}\"  [ground truth: \"{scene.cot}\"]")
        shown.append({"scene_id": str(ids[i]), "family": str(fams[i]), "reasoning": str(texts[i]),
                      "ground_truth": scene.cot, "plot": str(path)})
    first = shown[0]["scene_id"]
    track = animate.load_track(src / "closed_loop" / f"{first}.npz")
    gif = out / f"{first}_closed_loop.gif"
    frames = animate.animate_closed_loop(gif, generate(int(first[6:]), cfg, family=shown[0]["family"]), track, every=2)
    say(f"      closed-loop drive of {first}: {gif} ({frames} frames)")
    return {"scenes": shown, "gif": str(gif)}


def bench_stage(rl_dir: pathlib.Path, out: pathlib.Path, *, say: Say = _say, runs: int = 3) -> dict[str, Any]:
    """The trained model's compiled inference (`infer.engine.Engine`) on held-out scenes at batch 1 and 8
    (K samples each): median over `runs` runs after a warm-up, per stage and per scene; JSON in `out`."""
    from ar1_jax.eval.evaluate import synthetic_scenes
    from ar1_jax.eval.run import EVAL_FIRST_SEED
    from ar1_jax.infer import run as infer_run
    from ar1_jax.infer import scene as scene_lib
    from ar1_jax.infer.engine import Engine

    cfg, params = infer_run.load_weights(None, rl_dir)
    tok = infer_run.load_tokenizer(cfg, infer_run.run_tokenizer_dir(rl_dir), out / "tokenizer_cache")
    engine = Engine(cfg, params, tok)
    scenes = synthetic_scenes(cfg, 8, EVAL_FIRST_SEED)
    inputs = [scene_lib.scene_inputs(cfg, tok, scene_lib.Scene(images=s.images, history_xyz=s.history_xyz)) for s in scenes]
    rows = []
    for b in (1, 8):
        ids = np.stack([x[0] for x in inputs[:b]])
        pv, grid = np.concatenate([x[1] for x in inputs[:b]]), np.concatenate([x[2] for x in inputs[:b]])
        v0 = np.asarray([x[3] for x in inputs[:b]], np.float32)
        t0 = time.perf_counter()
        engine.run(ids, pv, grid, v0=v0, seed=0)
        warm = time.perf_counter() - t0
        timings = [engine.run(ids, pv, grid, v0=v0, seed=r + 1).timing for r in range(runs)]
        med = {k: float(np.median([t[k] for t in timings])) for k in ("vision", "prefill", "decode_per_token",
                                                                        "denoise", "total")}
        row = {"batch": b, "samples": cfg.infer.num_samples, "first_call_s": round(warm, 2),
               **{f"{k}_ms": round(v * 1e3, 2) for k, v in med.items()}, "scenes_per_s": round(b / med["total"], 2)}
        rows.append(row)
        say(f"      batch {b} x {cfg.infer.num_samples} samples: {row['total_ms']:.0f} ms per call (vision "
            f"{row['vision_ms']:.0f}, prefill {row['prefill_ms']:.0f}, decode {row['decode_per_token_ms']:.1f} per "
            f"token, denoise {row['denoise_ms']:.0f}), {row['scenes_per_s']} scenes/s; first call {warm:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "infer_bench.json").write_text(json.dumps({"config": cfg.name, "rows": rows}, indent=2))
    return {"rows": rows, "json": str(out / "infer_bench.json")}


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else (f"{v:.3f}" if isinstance(v, float) else str(v))


def table_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The summary table: one row per metric, one column per policy (`COLUMNS`)."""
    cols = metrics["eval"]["columns"]
    rows = [[label] + [_fmt(cols[c].get(key)) for c in COLUMNS] for label, key, _ in TABLE_KEYS]
    rows += [[label] + [_fmt(cols[c].get(f"long_tail/{key}")) for c in COLUMNS] for label, key in LONG_TAIL_KEYS]
    return rows


def print_summary(metrics: dict[str, Any], *, say: Say = _say) -> None:
    rows = [["metric", *COLUMNS]] + table_rows(metrics)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    say(f"\nHeld-out scenes: {metrics['eval']['scenes']} (eval seeds from 3000000), "
        f"{metrics['sizes']['sft_steps']} SFT + {metrics['sizes']['rl_steps']} RL steps of {metrics['config']}")
    for r in rows:
        say("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def report_stage(out: pathlib.Path, metrics: dict[str, Any], *, say: Say = _say) -> dict[str, Any]:
    """OUT/report.html: the table, the driven scenes with their reasoning, the closed-loop GIF, the curves."""
    from ar1_jax.eval.report import Figure, Section, Table, write_report

    sz, ev = metrics["sizes"], metrics["eval"]
    bench = metrics["bench"]["rows"]
    sections = [
        Section("Results on held-out scenes", text=[
            f"{ev['scenes']} synthetic scenes never trained on (seeds from 3,000,000), after {sz['sft_steps']} SFT "
            f"steps on {metrics['data']['train_scenes']} scenes and {sz['rl_steps']} RL steps of {metrics['config']}. "
            "Open loop: K samples from the scene's cameras and history, the driven sample chosen by "
            "consistency with its own reasoning; closed loop: the model replans every 0.5 s from re-rendered "
            "cameras for 6.4 s. Rates are shares of scenes. The long-tail rows leave out lane and lead following.",
            "At this size and budget the model is not expected to drive well; the rule planner and constant "
            "velocity bound what the simulator and scores can tell apart."],
            tables=[Table(["metric", *COLUMNS], table_rows(metrics))]),
        Section("The RL model on long-tail scenes", text=[
            "Each plot: the map, agents (with their future paths), the ego's history, the expert's future "
            "(ground truth) and the model's K samples; the caption is the driven sample's reasoning."],
            figures=[Figure(s["plot"], f"{s['scene_id']} ({s['family']}): \"{s['reasoning']}\"; ground truth: "
                                       f"\"{s['ground_truth']}\"") for s in metrics["drive"]["scenes"]]),
        Section("A closed-loop drive", figures=[Figure(metrics["drive"]["gif"], "The RL model driving closed loop "
                                                       "(plan in blue, logged expert faint)")]),
        Section("Training and RL curves", figures=[Figure(metrics["sft"]["curves"], "SFT"),
                                                   Figure(metrics["rl"]["curves"], "RL")]),
        Section("Inference", tables=[Table(["batch", "samples", "total ms", "vision ms", "prefill ms",
                                           "decode ms/token", "denoise ms", "scenes/s"],
                                          [[r["batch"], r["samples"], r["total_ms"], r["vision_ms"], r["prefill_ms"],
                                            r["decode_per_token_ms"], r["denoise_ms"], r["scenes_per_s"]] for r in bench])],
                text=["Median of 3 calls after a warm-up, on this machine's CPU."]),
    ]
    path = write_report(out / "report.html", f"ar1_jax demo: {metrics['config']}", sections,
                        subtitle=time.strftime("%Y-%m-%d %H:%M") + f", seed {metrics['seed']}")
    say(f"      {path} ({path.stat().st_size / 1e6:.1f} MB, images embedded)")
    return {"path": str(path)}
