"""The long-tail experiment's real runners (`Stages.runners()`), one per run kind of `longtail.plan`:

  data       `scenes` synthetic scenes of the size's config from data seed 0 as TFDS (`ar1 data synth`'s
             writer and split); the model's parameter count;
  sft        `ar1 train` of the size's config on them for `steps` steps with the run's seed, with or
             without the reasoning block (`data.reasoning`);
  rl         `ar1 rl` from the seed's SFT run for `rl_steps` steps (lr 1e-4, no warm-up, the release's
             clipping; the settings of docs/results.md's RL runs);
  eval       one variant (`longtail.VARIANTS`) on the held-out scenes, open and closed loop, with
             `eval.evaluate` (the same functions as `ar1 eval`);
  baselines  the rule planner and constant velocity on the same scenes.

Each returns the JSON-able result `longtail` records in the run's done marker; eval and baselines
also write eval.json into the run's directory. Compiled programs are shared within a process: one
engine per size (its parameters swapped per run), so a size compiles its stages once per invocation.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from ar1_jax.config import Config, apply_overrides
from ar1_jax.experiment.longtail import BASELINES, VARIANTS, ExperimentError, LongtailSettings, RunContext

__all__ = ["Stages", "param_count"]

#: Keys of an eval report that mean nothing for a model that writes no reasoning.
_REASONING_KEYS = ("consistency_rate", "consistency_first_rate", "cl/consistency_rate")


def param_count(cfg: Config) -> int:
    """Parameters of the AR1 model of `cfg` (shapes only, nothing allocated)."""
    import jax
    from flax import nnx

    from ar1_jax.model.vla import AR1

    abstract = nnx.eval_shape(lambda: AR1(cfg, rngs=nnx.Rngs(0)))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def _finished(result, what: str, workdir) -> None:
    """A driver run that did not complete stops the experiment (Ctrl-C as Ctrl-C)."""
    if result.reason == "interrupted":
        raise KeyboardInterrupt
    if result.reason != "done":
        raise ExperimentError(f"{what} in {workdir} ended '{result.reason}' at step {result.step}; rerun the same "
                              "command to continue")


class Stages:
    """The runners, with what they share within one process: each size's config, tokenizer, evaluation
    scenes and compiled engines."""

    def __init__(self, settings: LongtailSettings, say=print):
        self.settings, self.say = settings, say
        self._cfg: dict[str, Config] = {}
        self._cache: dict[tuple, Any] = {}

    def runners(self) -> dict[str, Any]:
        return {"data": self.data, "sft": self.sft, "rl": self.rl, "eval": self.eval, "baselines": self.baselines}

    # ---- shared per size -------------------------------------------------------------------------------
    def config(self, size: str) -> Config:
        """The size's named config with the settings' overrides (an AR1 config)."""
        if size not in self._cfg:
            from ar1_jax.config import get_config

            cfg = get_config(size, list(self.settings.overrides)).validate()
            if not cfg.is_vla:
                raise ExperimentError(f"longtail: {size!r} has no action expert; the sizes must be AR1 configs (ar1_*)")
            self._cfg[size] = cfg
        return self._cfg[size]

    def _shared(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def tokenizer(self, size: str, out):
        from ar1_jax.train import sft

        return self._shared(("tok", size), lambda: sft.default_tokenizer(self.config(size), out / size))

    def scenes(self, size: str):
        from ar1_jax.eval import evaluate
        from ar1_jax.eval.run import EVAL_FIRST_SEED

        return self._shared(("scenes", size), lambda: evaluate.synthetic_scenes(
            self.config(size), self.settings.eval_scenes, EVAL_FIRST_SEED))

    def model(self, size: str, drive: str, params: dict, seed: int, out):
        """The evaluated policy of one variant (`variants.VariantModel`) with `params`."""
        from ar1_jax.experiment import variants
        from ar1_jax.infer.engine import Engine

        cfg, tok, k = self.config(size), self.tokenizer(size, out), self.settings.samples
        engine = self._shared(("engine", size), lambda: Engine(cfg, None, tok))
        if drive == "expert":  # the engine's own layout for `run` where it has one (the stages take either)
            engine.params = engine.place_params(params) if hasattr(engine, "place_params") else params
            return variants.VariantModel(cfg, tok, engine, num_samples=k, seed=seed)
        if drive == "trajectory_only":
            return variants.VariantModel(cfg, tok, variants.TrajectoryOnlyEngine(cfg, params, tok, engine=engine),
                                         select="first", num_samples=k, seed=seed, reasons=False)
        if drive == "tokens":
            tokens = self._shared(("tokens", size), lambda: variants.TokenEngine(cfg, None, tok, num_samples=k))
            tokens.params = params
            return variants.VariantModel(cfg, tok, tokens, num_samples=k, seed=seed)
        raise ValueError(f"unknown drive {drive!r}; known: {variants.VARIANTS}")

    def evaluate(self, size: str, *, model=None, policy: str = "model") -> dict[str, Any]:
        """{"overall", "families", "seconds"} of `model` (or a baseline `policy`) on the size's held-out
        scenes, open loop and (with the settings' closed loop) closed loop."""
        from ar1_jax.eval import evaluate

        cfg, scenes = self.config(size), self.scenes(size)
        families = [s.family for s in scenes]
        t0 = time.perf_counter()
        report = evaluate.summarize(evaluate.open_loop(scenes, cfg, model=model, policy=policy), families)
        if self.settings.closed_loop:
            merged = evaluate.summarize(evaluate.closed_loop(scenes, cfg, model=model, policy=policy), families,
                                        prefix="cl/")
            for mine, theirs in [(report["overall"], merged["overall"])] + [
                    (report["families"][f], merged["families"][f]) for f in merged["families"]]:
                mine.update({k: v for k, v in theirs.items() if k != "num_scenes"})
        if model is not None and not model.reasons:
            for d in [report["overall"], *report["families"].values()]:
                d.update({k: None for k in _REASONING_KEYS if k in d})
        report["seconds"] = round(time.perf_counter() - t0, 1)
        return report

    # ---- runners ---------------------------------------------------------------------------------------
    def data(self, ctx: RunContext) -> dict[str, Any]:
        from ar1_jax.data import synthetic, tfds_builder

        cfg, n = self.config(ctx.run.size), self.settings.scenes
        records = list(synthetic.generate_records(n, 0, cfg))
        tfds_builder.write_dataset(ctx.workdir / "tfds", iter(records), n, overwrite=True, progress=False,
                                   test_fraction=0.1)
        train = sum(tfds_builder.split_of(str(r["scene_id"]), 0.1) == "train" for r in records)
        if train == 0:
            raise ExperimentError(f"longtail: all {n} scenes fell in the test split; use more --scenes")
        fams = [str(r["family"]) for r in records]
        params = param_count(cfg)
        ctx.say(f"      {n} scenes ({train} train), {len(set(fams))} families; {ctx.run.size}: {params:,} parameters")
        return {"train_scenes": int(train), "test_scenes": n - int(train), "params": params,
                "families": {f: fams.count(f) for f in sorted(set(fams))}}

    def sft(self, ctx: RunContext) -> dict[str, Any]:
        from ar1_jax.eval import viz
        from ar1_jax.train import sft

        run, steps = ctx.run, self.settings.steps
        data_name = run.deps[0]
        base = self.config(run.size)
        batch = min(base.data.batch_size, ctx.deps[data_name]["train_scenes"])
        cfg = apply_overrides(base, [
            f"data.dataset_dir={ctx.dep_dir(data_name) / 'tfds'}", f"data.batch_size={batch}",
            f"data.reasoning={str(run.variant != 'trajectory_only').lower()}", f"data.shuffle_seed={run.seed}",
            f"seed={run.seed}", f"train.steps={steps}", f"train.checkpoint_every={max(steps // 5, 1)}",
            f"train.log_every={min(base.train.log_every, steps)}", "train.tensorboard=false"]).validate()
        tok = self.tokenizer(run.size, ctx.out)
        tok.save(ctx.workdir / "tokenizer")  # the run directory is `ar1 eval --checkpoint`-able on its own
        result = sft.run(cfg, ctx.workdir, tokenizer=tok, progress=False)
        _finished(result, "SFT", ctx.workdir)
        rows = viz.read_metrics(ctx.workdir / "metrics.jsonl")
        if not rows or not all(np.isfinite(r["loss"]) for r in rows):
            raise ExperimentError(f"SFT in {ctx.workdir} logged no or non-finite losses")
        viz.plot_curves(ctx.workdir / "curves.png", rows, title=f"SFT of {run.size}, {run.variant}, seed {run.seed}")
        ctx.say(f"      loss {rows[0]['loss']:.2f} -> {rows[-1]['loss']:.2f} (batch {batch})")
        return {"steps": result.step, "batch": batch, "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"]}

    def rl(self, ctx: RunContext) -> dict[str, Any]:
        from ar1_jax.eval import viz
        from ar1_jax.rl import task as rl_task

        run, steps = ctx.run, self.settings.rl_steps
        cfg = rl_task.rl_config(apply_overrides(self.config(run.size), [
            f"train.init_from={ctx.dep_dir(run.deps[0])}", f"train.steps={steps}", "train.learning_rate=1e-4",
            "train.warmup_steps=0", f"train.checkpoint_every={max(steps // 5, 1)}", "train.tensorboard=false",
            "train.log_every=1", f"seed={run.seed}"]))
        tok = self.tokenizer(run.size, ctx.out)
        tok.save(ctx.workdir / "tokenizer")
        result = rl_task.run(cfg, ctx.workdir, tokenizer=tok, progress=False)
        _finished(result, "RL", ctx.workdir)
        rows = viz.read_metrics(ctx.workdir / "metrics.jsonl")
        half = max(len(rows) // 2, 1)
        early = float(np.mean([r["reward/total"] for r in rows[:half]]))
        late = float(np.mean([r["reward/total"] for r in rows[half:]] or [rows[-1]["reward/total"]]))
        ctx.say(f"      mean total reward {early:.3f} (first half) -> {late:.3f} (second half)")
        return {"steps": result.step, "reward_first_half": early, "reward_second_half": late}

    def eval(self, ctx: RunContext) -> dict[str, Any]:
        from ar1_jax.infer import run as infer_run

        run = ctx.run
        src = ctx.dep_dir(run.deps[0])
        run_cfg, params = infer_run.load_weights(None, src)
        cfg = self.config(run.size)
        if (run_cfg.model, run_cfg.expert) != (cfg.model, cfg.expert):
            raise ExperimentError(f"{src} holds a model other than {run.size!r}'s (another config or --set)")
        model = self.model(run.size, VARIANTS[run.variant].drive, params, run.seed, ctx.out)
        report = self.evaluate(run.size, model=model)
        (ctx.workdir / "eval.json").write_text(json.dumps({"checkpoint": str(src), "variant": run.variant,
                                                           **report}, indent=2, allow_nan=False))
        ctx.say("      " + _headline(report))
        return report

    def baselines(self, ctx: RunContext) -> dict[str, Any]:
        out = {}
        for name in BASELINES:
            out[name] = self.evaluate(ctx.run.size, policy=name)
            ctx.say(f"      {name}: " + _headline(out[name]))
        (ctx.workdir / "eval.json").write_text(json.dumps(out, indent=2, allow_nan=False))
        return out


def _headline(report: dict[str, Any]) -> str:
    o = report["overall"]
    keys = (("min_ade@3.0", "minADE@3"), ("collision_rate", "collision"), ("offroad_rate", "off-road"),
            ("consistency_rate", "consistency"), ("cl/score", "AlpaSim"), ("cl/at_fault_rate", "at-fault"))
    said = ", ".join(f"{label} {o[k]:.3f}" for k, label in keys if o.get(k) is not None)
    return f"{said} ({report['seconds']:.0f} s)"
