"""`ar1 eval` as a library call: load a policy, evaluate it and the baselines open (and closed) loop,
write `OUT/eval.json` and `OUT/eval.md`.

    summary = run_eval(EvalSettings(checkpoint="runs/sft", synthetic=64, closed_loop=True), "out/eval")

`eval.json`: {"policy", "checkpoint", "settings", "overall": {...}, "families": {family: {...}},
"baselines": {name: {"overall", "families"}}}; each dict holds `num_scenes` and the keys of
`evaluate.OPEN_LOOP_KEYS` (and `CLOSED_LOOP_KEYS` with --closed-loop), None where nothing counts.
`eval.md` holds the same as tables, the evaluated policy and the baselines side by side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable

import numpy as np

from ar1_jax.config import Config
from ar1_jax.eval import evaluate, policies, sim

__all__ = ["EvalSettings", "run_eval", "markdown", "long_tail_mean", "LONG_TAIL_EXCLUDED", "EVAL_FIRST_SEED"]

#: The first synthetic evaluation scene: clear of SFT data (`ar1 data synth` from seed 0), RL's training
#: scenes (`rl.scene_seed`, 1,000,000) and its held-out scenes (`rl.eval_seed`, 2,000,000).
EVAL_FIRST_SEED = 3_000_000

#: Families that are not long-tail (the common driving the long-tail table leaves out).
LONG_TAIL_EXCLUDED = ("lane_follow", "lead_follow")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What to evaluate. checkpoint: an `ar1 train` / `ar1 rl` run or step directory, or a release-layout
    checkpoint (None with `policy` one of `policies.POLICIES`); data + split: a TFDS directory, else
    `synthetic` world scenes from `first_seed`; limit: at most this many dataset scenes; samples: K
    (default the config's); select: which sample to drive; baselines: also run the rule planner and
    constant velocity; closed_loop + sim: the simulator; batch: scenes per compiled call; seed: sampling."""

    checkpoint: str | None = None
    policy: str = "model"
    data: str | None = None
    split: str = "test"
    limit: int | None = None
    synthetic: int = 32
    first_seed: int = EVAL_FIRST_SEED
    samples: int | None = None
    select: str = "consistent"
    baselines: bool = True
    closed_loop: bool = False
    sim: sim.SimConfig = sim.SimConfig()
    batch: int = 8
    seed: int = 0
    save_tracks: bool = True


def _load_model(cfg: Config, settings: EvalSettings, out: pathlib.Path) -> tuple[Config, evaluate.Model]:
    from ar1_jax.infer import run as infer_run

    cfg, params = infer_run.load_weights(cfg, settings.checkpoint)
    tok = infer_run.load_tokenizer(cfg, infer_run.run_tokenizer_dir(settings.checkpoint), out / "tokenizer_cache")
    return cfg, evaluate.Model(cfg, params, tok, select=settings.select, num_samples=settings.samples,
                               seed=settings.seed)


def run_eval(cfg: Config, settings: EvalSettings, out: str | pathlib.Path,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates and writes OUT/eval.json, OUT/eval.md, OUT/open_loop.npz (the evaluated policy per
    scene: scene_id, family, trajectories [N, K, T, 2] ego0 m, chosen [N], texts [N]) and, with
    --closed-loop, OUT/closed_loop/*.npz track files. `cfg` is used without a checkpoint; a checkpoint
    brings its own config. Returns the eval.json object."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = None
    if settings.policy == "model":
        if not settings.checkpoint:
            raise ValueError("evaluating the model needs --checkpoint (or --policy planner|constant_velocity|log)")
        cfg, model = _load_model(cfg, settings, out)
        say(f"loaded {settings.checkpoint} (config {cfg.name}, {settings.samples or cfg.infer.num_samples} samples, "
            f"drive the {settings.select} one)")
    elif settings.policy not in policies.POLICIES:
        raise ValueError(f"--policy must be model or one of {policies.POLICIES}, got {settings.policy!r}")
    if settings.data:
        scenes = evaluate.dataset_scenes(cfg, settings.data, settings.split, settings.limit)
        where = f"{settings.data} split {settings.split}"
    else:
        scenes = evaluate.synthetic_scenes(cfg, settings.synthetic, settings.first_seed)
        where = f"synthetic scenes {settings.first_seed}..{settings.first_seed + settings.synthetic - 1}"
    if not scenes:
        raise ValueError(f"no scenes in {where}")
    families = [s.family for s in scenes]
    say(f"{len(scenes)} scenes ({where}); families: " + ", ".join(f"{f} {families.count(f)}" for f in sorted(set(families))))

    def evaluate_policy(name: str, closed: bool, tracks: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        ol = evaluate.open_loop(scenes, cfg, model=model, policy=name, batch=settings.batch, say=say)
        report = evaluate.summarize(ol, families)
        if name == settings.policy:
            np.savez_compressed(out / "open_loop.npz", scene_id=np.asarray([s.scene_id for s in scenes]),
                                family=np.asarray(families), trajectories=ol["trajectories"], chosen=ol["chosen"],
                                texts=np.asarray([str(t) for t in ol["texts"]]))
        if closed:
            cl = evaluate.closed_loop(scenes, cfg, model=model, policy=name, sim_cfg=settings.sim, batch=settings.batch,
                                      tracks_dir=out if tracks else None, say=say)
            merged = evaluate.summarize(cl, families, prefix="cl/")
            report["overall"].update({k: v for k, v in merged["overall"].items() if k != "num_scenes"})
            for f, d in merged["families"].items():
                report["families"][f].update({k: v for k, v in d.items() if k != "num_scenes"})
        report["overall"]["seconds"] = round(time.perf_counter() - t0, 2)
        say(f"{name}: " + ", ".join(f"{k} {_fmt(report['overall'].get(k))}" for k in _headline(closed)))
        return report

    main = evaluate_policy(settings.policy, settings.closed_loop, settings.save_tracks)
    baselines = {}
    if settings.baselines:
        for name in ("planner", "constant_velocity"):
            if name != settings.policy:
                baselines[name] = evaluate_policy(name, settings.closed_loop, False)
    summary = {"policy": settings.policy, "checkpoint": settings.checkpoint, "config": cfg.name,
               "scenes": where, "settings": _settings_json(settings), **main, "baselines": baselines,
               "wall_seconds": round(time.perf_counter() - t_start, 2)}
    (out / "eval.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    (out / "eval.md").write_text(markdown(summary))
    say(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return summary


def _settings_json(s: EvalSettings) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d["sim"] = dataclasses.asdict(s.sim)
    return d


def _headline(closed: bool) -> tuple[str, ...]:
    keys = ("min_ade@3.0", "collision_rate", "offroad_rate", "consistency_rate", "score")
    return keys + (("cl/score", "cl/at_fault_rate", "cl/offroad_rate", "cl/close_encounter_rate") if closed else ())


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}"


def markdown(summary: dict[str, Any]) -> str:
    """eval.json as Markdown: the overall table (policy and baselines side by side), then per family."""
    cols = {summary["policy"]: summary} | {f"{k} (baseline)": v for k, v in summary.get("baselines", {}).items()}
    closed = any(k.startswith("cl/") for k in summary["overall"])
    keys = ["num_scenes", *evaluate.OPEN_LOOP_KEYS]
    keys += list(evaluate.CLOSED_LOOP_KEYS) if closed else []
    lines = [f"# Evaluation of {summary['policy']}" + (f" ({summary['checkpoint']})" if summary.get("checkpoint") else ""),
             "", f"Config `{summary['config']}`; {summary['scenes']}; wall time {summary['wall_seconds']} s.",
             "Open loop: minADE/minFDE over K samples (m), the driven sample's ADE, world scores of the driven "
             "sample; `score` is the PDM-style score. Closed loop (`cl/`): `cl/score` is AlpaSim's.", "",
             "## Overall", "", "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k in keys:
        vals = [c["overall"].get(k) for c in cols.values()]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {k} | " + " | ".join(_fmt(v) for v in vals) + " |")
    fam_keys = ["num_scenes", "min_ade@3.0", "collision_rate", "offroad_rate", "score"]
    fam_keys += ["cl/score", "cl/at_fault_rate", "cl/offroad_rate"] if closed else []
    lines += ["", "## Per family", "", "| family | policy | " + " | ".join(fam_keys) + " |",
              "|---|---|" + "---|" * len(fam_keys)]
    for fam in summary["families"]:
        tail = "" if fam in LONG_TAIL_EXCLUDED else " (long tail)"
        for name, c in cols.items():
            d = c["families"].get(fam, {})
            lines.append(f"| {fam}{tail} | {name} | " + " | ".join(_fmt(d.get(k)) for k in fam_keys) + " |")
    return "\n".join(lines) + "\n"


def long_tail_mean(report: dict[str, Any], key: str) -> float:
    """Scene-weighted mean of `key` over the long-tail families of a report (NaN when none)."""
    num, den = 0.0, 0
    for fam, d in report["families"].items():
        if fam in LONG_TAIL_EXCLUDED or d.get(key) is None:
            continue
        num += d[key] * d["num_scenes"]
        den += d["num_scenes"]
    return num / den if den else float("nan")

