"""The whole pipeline at tiny size on CPU (`ar1 demo`, `make demo`), stage by stage, callable from Python.

    metrics = demo.run(get_config("ar1_tiny"), "out/demo")

Stages: synthetic long-tail scenes -> SFT of the AR1 config on them -> RL from the SFT checkpoint ->
open- and closed-loop evaluation of both checkpoints on held-out scenes beside the rule planner and
constant velocity -> the RL model driving a few long-tail scenes (bird's-eye plots with its reasoning, a
closed-loop animation) -> an inference benchmark of the trained model -> `report.html`, one
self-contained page with the table, the plots, the animation and the training and RL curves.

Each stage records its result in `OUT/stages/<stage>.json` with the settings it ran with; a second run
with the same settings reuses every finished stage (SFT and RL also resume from their own checkpoints
when interrupted), and rerunning a stage reruns everything after it. Progress: a header per stage with
the time spent and an estimate of the time left.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable

from ar1_jax.config import Config, ConfigError, apply_overrides
from ar1_jax.demo_stages import DemoFailed

__all__ = ["DemoSizes", "DemoFailed", "STAGES", "run"]

Say = Callable[[str], None]
_say = functools.partial(print, flush=True)
#: The stages in order, with a rough share of the wall time (seconds on 2 CPU cores at the default sizes)
#: used for the time-left estimate before any stage has been timed.
STAGES = {"data": 15, "sft": 230, "rl": 150, "eval": 200, "drive": 20, "bench": 40, "report": 10}
#: The sizes each stage depends on (with those of the stages before it): a stage is reused only when they match.
_KEY_FIELDS = {"data": ("scenes",), "sft": ("sft_steps",), "rl": ("rl_steps",), "eval": ("eval_scenes",),
               "drive": ("show",)}
_TITLES = {"data": "synthetic data", "sft": "SFT", "rl": "RL", "eval": "evaluation, open and closed loop",
           "drive": "the RL model driving long-tail scenes", "bench": "inference benchmark", "report": "report"}


@dataclasses.dataclass(frozen=True)
class DemoSizes:
    """scenes: synthetic scenes written (about 10% fall in the test split); sft_steps, rl_steps: training
    steps; eval_scenes: held-out synthetic scenes evaluated (seeds from `eval.run.EVAL_FIRST_SEED`);
    show: long-tail scenes plotted with the model's reasoning."""

    scenes: int = 128
    sft_steps: int = 300
    rl_steps: int = 16
    eval_scenes: int = 24
    show: int = 3

    def validate(self) -> None:
        for name, low in (("scenes", 8), ("sft_steps", 1), ("rl_steps", 1), ("eval_scenes", 2), ("show", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"demo: {name} must be >= {low}, got {getattr(self, name)}")


class _Progress:
    """Stage headers with the elapsed time and an estimate of the time left: the static estimates of the
    stages still to run, scaled by how the finished stages compared with theirs."""

    def __init__(self, say: Say):
        self.say, self.t0 = say, time.perf_counter()
        self.spent: dict[str, float | None] = {}  # None: reused from an earlier run

    #: Seconds of static estimate the measured ratio is blended with: one short stage (data takes
    #: seconds) must not rescale the whole rest of the run.
    PRIOR_S = 120.0

    def start(self, i: int, name: str, detail: str) -> float:
        timed = {s: t for s, t in self.spent.items() if t is not None}  # reused stages say nothing
        done_est = sum(STAGES[s] for s in timed)
        scale = min(max((sum(timed.values()) + self.PRIOR_S) / (done_est + self.PRIOR_S), 0.3), 3.0)
        left = scale * sum(v for s, v in STAGES.items() if s not in self.spent)
        elapsed = time.perf_counter() - self.t0
        self.say(f"[{i}/{len(STAGES)}] {_TITLES[name]}: {detail}  (elapsed {_mmss(elapsed)}, about {_mmss(left)} left)")
        return time.perf_counter()

    def done(self, name: str, t_start: float, reused: bool = False) -> None:
        self.spent[name] = None if reused else time.perf_counter() - t_start


def _mmss(s: float) -> str:
    return f"{int(s) // 60}:{int(s) % 60:02d}"


def run(cfg: Config, out: str | pathlib.Path, seed: int | None = None, sizes: DemoSizes = DemoSizes(), *,
        fresh: bool = False, say: Say = _say) -> dict[str, Any]:
    """Runs (or reuses) every stage into `out`; writes `out/demo_metrics.json` and `out/report.html`.
    `cfg` must be an AR1 config (e.g. ar1_tiny); `seed` defaults to its own; `fresh` ignores finished
    stages. Returns the metrics: each stage's result under its name."""
    from ar1_jax import demo_stages as st

    if not cfg.is_vla:
        raise ConfigError(f"demo: config {cfg.name!r} has no action expert; the demo trains an AR1 config (ar1_tiny)")
    sizes.validate()
    out = pathlib.Path(out)
    seed = cfg.seed if seed is None else int(seed)
    cfg = apply_overrides(cfg, [f"seed={seed}"]).validate()
    progress = _Progress(say)
    markers = out / "stages"
    metrics: dict[str, Any] = {"config": cfg.name, "seed": seed, "sizes": dataclasses.asdict(sizes)}
    rerun = fresh
    plan: list[tuple[str, str, Callable[[], dict]]] = [
        ("data", f"{sizes.scenes} long-tail scenes -> TFDS (array_record)",
         lambda: st.data_stage(cfg, out / "data", seed, sizes.scenes, say=say)),
        ("sft", f"{cfg.name}, {sizes.sft_steps} steps on the training split (`ar1 train`)",
         lambda: st.sft_stage(cfg, out / "data", out / "sft", sizes.sft_steps, metrics["data"]["train_scenes"], say=say)),
        ("rl", f"{sizes.rl_steps} steps from the SFT checkpoint, rewards on world scenes (`ar1 rl`)",
         lambda: st.rl_stage(cfg, out / "sft", out / "rl", sizes.rl_steps, say=say)),
        ("eval", f"SFT and RL checkpoints on {sizes.eval_scenes} held-out scenes, with the rule planner and "
                 "constant velocity (`ar1 eval --closed-loop`)",
         lambda: st.eval_stage(out / "sft", out / "rl", out / "eval", sizes.eval_scenes, say=say)),
        ("drive", f"{sizes.show} long-tail scenes: K samples and the reasoning; one closed-loop drive as a GIF",
         lambda: st.drive_stage(out / "eval", out / "drive", sizes.show, say=say)),
        ("bench", "the RL model's compiled inference at batch 1 and 8, after warm-up",
         lambda: st.bench_stage(out / "rl", out / "bench", say=say)),
        ("report", "one self-contained page",
         lambda: st.report_stage(out, metrics, say=say)),
    ]
    fields: tuple[str, ...] = ()
    for i, (name, detail, fn) in enumerate(plan, start=1):
        marker = markers / f"{name}.json"
        fields += _KEY_FIELDS.get(name, ())
        key = {"config": cfg.name, "seed": seed, **{f: getattr(sizes, f) for f in fields}}
        t0 = progress.start(i, name, detail)
        if not rerun and name != "report" and marker.is_file():
            saved = json.loads(marker.read_text())
            if saved.get("key") == key:
                metrics[name] = saved["result"]
                say(f"      reused (finished in an earlier run: {marker}; --fresh to redo)")
                progress.done(name, t0, reused=True)
                continue
        rerun = True  # from here on every stage runs: its inputs may have changed
        metrics[name] = fn()
        markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"key": key, "result": metrics[name]}, indent=2, default=str))
        progress.done(name, t0)
    metrics["wall_seconds"] = round(time.perf_counter() - progress.t0, 1)
    path = out / "demo_metrics.json"
    path.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    st.print_summary(metrics, say=say)
    say(f"wrote {path} and {out / 'report.html'} in {_mmss(metrics['wall_seconds'])}")
    return metrics
