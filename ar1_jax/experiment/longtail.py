"""`ar1 experiment longtail`: does reasoning help on the long tail, at the same budget? Trains and evaluates,
open and closed loop, on the synthetic world's common and long-tail families:

  (a) trajectory-only: SFT without reasoning (`data.reasoning=False`), driven by the expert;
  (b) AR1 after SFT (reasoning, then the flow expert);
  (c) AR1 after SFT + RL (`ar1 rl` from (b)'s checkpoint);
  (d) AR1 driving from its discrete trajectory tokens instead of the flow expert ((b)'s checkpoint);

beside the rule planner and constant velocity as bounds, for each of `seeds` seeds and each model size
in `sizes` (the small-scale version of the paper's 0.5B / 3B / 7B table).

    summary = run_experiment(LongtailSettings(seeds=3, steps=300), "out/longtail")

The budget is the same for every variant: one synthetic dataset per size (`scenes` scenes from data
seed 0, ~10% held out by `ar1 data synth`'s split), `steps` SFT steps at the config's batch and
learning rate; (c) adds `rl_steps` RL steps, (d) reuses (b)'s weights. A seed sets the model's
initialisation, the data order, RL's sampling and the evaluation's sampling; the data and the
`eval_scenes` evaluation scenes (seeds from `eval.run.EVAL_FIRST_SEED`, never trained on) are the
same for every seed and variant, so the intervals are over training and sampling randomness.

Plan and resume: the experiment is a list of runs (`plan`), each with its own directory under OUT;
a finished run leaves `done.json` with its result and wall time. A rerun skips finished runs and
starts at the one it was in (SFT and RL then resume from their own checkpoints); OUT/experiment.json
holds the settings the finished runs depend on, and a rerun with other settings is refused (more
seeds or sizes only add runs). At the end `aggregate` writes OUT/results.md (a table per family, mean
and 95% t-interval over seeds), OUT/summary.json and the plots; `results_md` also puts the tables
into that file (e.g. docs/results.md), replacing this OUT's earlier section.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable, Mapping

__all__ = ["LongtailSettings", "Run", "RunContext", "Variant", "VARIANTS", "ExperimentError", "plan",
           "run_experiment", "DONE"]

Say = Callable[[str], None]
_say = functools.partial(print, flush=True)
#: A finished run's marker file (its result, wall time and settings).
DONE = "done.json"


class ExperimentError(RuntimeError):
    """The experiment cannot go on: settings that differ from OUT's, or a run that produced nothing usable."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """label: the table's row name; train: the training run whose weights it drives ("sft_traj",
    "sft" or "rl"); drive: how it drives (`experiment.variants.VARIANTS`)."""

    label: str
    train: str
    drive: str


#: The compared models, in table order.
VARIANTS: dict[str, Variant] = {
    "trajectory_only": Variant("trajectory-only (no reasoning)", "sft_traj", "trajectory_only"),
    "ar1_sft": Variant("AR1 SFT", "sft", "expert"),
    "ar1_rl": Variant("AR1 SFT + RL", "rl", "expert"),
    "ar1_tokens": Variant("AR1 SFT, trajectory tokens", "sft", "tokens"),
}
#: The bounds, evaluated once per size (they neither train nor sample).
BASELINES = {"planner": "rule planner", "constant_velocity": "constant velocity"}


@dataclasses.dataclass(frozen=True)
class LongtailSettings:
    """seeds: seeds 0 .. seeds - 1; sizes: named AR1 configs (`ar1 configs`); scenes: synthetic scenes
    written per size; steps: SFT steps of every variant; rl_steps: RL steps of (c) (0: no (c));
    eval_scenes: held-out world scenes evaluated; samples: K per scene (None: the config's
    `infer.num_samples`); closed_loop: also drive every scene in the simulator (6.4 s, replan every
    0.5 s, log-replayed agents); overrides: `--set` items applied to every size's config."""

    seeds: int = 3
    sizes: tuple[str, ...] = ("ar1_tiny",)
    scenes: int = 128
    steps: int = 300
    rl_steps: int = 50
    eval_scenes: int = 64
    samples: int | None = None
    closed_loop: bool = True
    overrides: tuple[str, ...] = ()

    def validate(self) -> "LongtailSettings":
        for name, low in (("seeds", 1), ("scenes", 8), ("steps", 1), ("rl_steps", 0), ("eval_scenes", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ExperimentError(f"longtail: {name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if self.samples is not None and self.samples < 1:
            raise ExperimentError(f"longtail: samples must be >= 1, got {self.samples}")
        if not self.sizes or len(set(self.sizes)) != len(self.sizes):
            raise ExperimentError(f"longtail: sizes must be distinct config names, got {self.sizes}")
        return self

    def key(self) -> dict[str, Any]:
        """What finished runs depend on: everything but the number of seeds and the sizes."""
        d = dataclasses.asdict(self)
        del d["seeds"], d["sizes"]
        d["overrides"] = list(self.overrides)
        return d

    def variants(self) -> list[str]:
        return [v for v in VARIANTS if self.rl_steps > 0 or v != "ar1_rl"]


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the plan. name: its directory under OUT (`<size>/data`, `<size>/baselines`,
    `<size>/seed<s>/<stage>`); kind: which runner ("data", "baselines", "sft", "rl", "eval"); variant:
    for "sft" "trajectory_only" or "ar1", for "eval" a `VARIANTS` key; deps: the runs it reads."""

    name: str
    kind: str
    size: str
    seed: int | None = None
    variant: str | None = None
    deps: tuple[str, ...] = ()


def plan(settings: LongtailSettings) -> list[Run]:
    """Every run of the experiment in execution order: per size its data and baselines, then seed by
    seed (so an interrupted experiment has whole seeds) the training runs and the evaluations."""
    runs = []
    for size in settings.sizes:
        data = f"{size}/data"
        runs += [Run(data, "data", size), Run(f"{size}/baselines", "baselines", size)]
        for seed in range(settings.seeds):
            base = f"{size}/seed{seed}"
            runs.append(Run(f"{base}/sft_traj", "sft", size, seed, "trajectory_only", (data,)))
            runs.append(Run(f"{base}/sft", "sft", size, seed, "ar1", (data,)))
            if settings.rl_steps > 0:
                runs.append(Run(f"{base}/rl", "rl", size, seed, "ar1", (f"{base}/sft",)))
            for key in settings.variants():
                runs.append(Run(f"{base}/eval_{key}", "eval", size, seed, key, (f"{base}/{VARIANTS[key].train}",)))
    return runs


@dataclasses.dataclass
class RunContext:
    """What a runner gets: the run, its directory, OUT, the settings, its dependencies' results by run
    name, and where to say progress."""

    run: Run
    workdir: pathlib.Path
    out: pathlib.Path
    settings: LongtailSettings
    deps: dict[str, dict]
    say: Say = _say

    def dep_dir(self, name: str) -> pathlib.Path:
        return self.out / name


Runner = Callable[[RunContext], dict]


def _check_settings(out: pathlib.Path, settings: LongtailSettings) -> None:
    path = out / "experiment.json"
    key = settings.key()
    if path.exists():
        old = json.loads(path.read_text())
        if old != key:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {key.get(k)!r}" for k in sorted(set(old) | set(key))
                             if old.get(k) != key.get(k))
            raise ExperimentError(f"{out} holds an experiment with other settings ({diff}); use another --out")
    else:
        path.write_text(json.dumps(key, indent=2))


def _write_json(path: pathlib.Path, obj: Any) -> None:
    """Writes atomically (a killed run never leaves half a marker)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False))
    os.replace(tmp, path)


def run_experiment(settings: LongtailSettings, out: str | pathlib.Path, *, runners: Mapping[str, Runner] | None = None,
                   results_md: str | pathlib.Path | None = None, say: Say = _say) -> dict[str, Any]:
    """Runs (or resumes) the experiment in `out` and aggregates it (module docstring). `runners`: a runner
    per run kind (default: the real ones, `experiment.stages`). Returns the summary (`aggregate.summarize`)."""
    from ar1_jax.experiment import aggregate

    settings.validate()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    if runners is None:
        from ar1_jax.experiment.stages import Stages

        runners = Stages(settings, say).runners()
    runs = plan(settings)
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    for i, run in enumerate(runs, 1):
        workdir = out / run.name
        marker = workdir / DONE
        head = f"[{i}/{len(runs)}] {run.name}"
        if marker.exists():
            done = json.loads(marker.read_text())
            results[run.name], seconds[run.name] = done["result"], done["seconds"]
            say(f"{head}: done earlier ({done['seconds']:.0f} s)")
            continue
        say(f"{head}: {run.kind}" + (f" {run.variant}" if run.variant else "") +
            f"  (elapsed {time.perf_counter() - t_start:.0f} s)")
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = runners[run.kind](RunContext(run, workdir, out, settings, {d: results[d] for d in run.deps}, say))
        seconds[run.name] = round(time.perf_counter() - t0, 1)
        results[run.name] = result
        _write_json(marker, {"run": dataclasses.asdict(run), "result": result, "seconds": seconds[run.name]})
        say(f"{head}: done in {seconds[run.name]:.0f} s")
    summary = aggregate.summarize(runs, results, seconds, settings)
    summary["elapsed_this_invocation_s"] = round(time.perf_counter() - t_start, 1)
    _write_json(out / "summary.json", summary)
    plots = aggregate.plot(summary, out)
    text = aggregate.markdown(summary, plots, out)
    (out / "results.md").write_text(text)
    say(aggregate.console_table(summary))
    say(f"wrote {out / 'results.md'}, {out / 'summary.json'} and {len(plots)} plot(s)")
    if results_md:
        aggregate.put_section(results_md, str(out), aggregate.markdown(summary, plots, out, heading_level=2,
                                                                       relative_to=pathlib.Path(results_md).parent))
        say(f"updated {results_md}")
    return summary
