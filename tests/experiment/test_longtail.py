"""ar1_jax/experiment: the long-tail experiment's plan, its resume after a kill (stand-in runners), the
aggregation against hand-computed means and t-intervals, the trajectory-only training sequence, and the
two new ways of driving (trajectory-only, trajectory tokens) on a tiny random-weight model. The real
runners are the library's own SFT / RL / eval calls, each tested with its module; the whole experiment
at its smallest is the smoke command in `ar1 experiment longtail --help`."""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

import ar1_fixtures as F
from ar1_jax.config import get_config
from ar1_jax.experiment import aggregate, longtail
from ar1_jax.experiment.longtail import DONE, LongtailSettings, plan, run_experiment

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (from a table)


def _report(values: dict[str, tuple[int, float]]) -> dict:
    """An eval report whose families have (scenes, value) of every metric; overall the scene-weighted mean."""
    fams = {f: {"num_scenes": n, **{k: v for k, _, _ in aggregate.METRICS}} for f, (n, v) in values.items()}
    total = sum(n for n, _ in values.values())
    mean = sum(n * v for n, v in values.values()) / total
    return {"overall": {"num_scenes": total, **{k: mean for k, _, _ in aggregate.METRICS}}, "families": fams}


def _seed_value(run) -> float:
    return {"trajectory_only": 3.0, "ar1_sft": 2.0, "ar1_rl": 1.5, "ar1_tokens": 2.5}[run.variant] + run.seed


def _stand_ins(calls: list, kill_at: str | None = None) -> dict:
    """Runners that record their calls; the one named `kill_at` dies like a killed process."""
    def runner(kind):
        def run(ctx):
            calls.append(ctx.run.name)
            if ctx.run.name == kill_at:
                raise KeyboardInterrupt
            assert all(d in ctx.deps for d in ctx.run.deps)
            if kind == "data":
                return {"train_scenes": 14, "test_scenes": 2, "params": 835138, "families": {}}
            if kind == "eval":
                v = _seed_value(ctx.run)
                return _report({"lane_follow": (2, v), "jaywalker": (1, 2 * v)})
            if kind == "baselines":
                return {"planner": _report({"lane_follow": (2, 0.0), "jaywalker": (1, 0.0)}),
                        "constant_velocity": _report({"lane_follow": (2, 1.0), "jaywalker": (1, 4.0)})}
            return {"steps": 3}
        return run

    return {k: runner(k) for k in ("data", "baselines", "sft", "rl", "eval")}


def test_plan_orders_runs_after_what_they_read():
    runs = plan(LongtailSettings(seeds=2, sizes=("ar1_tiny", "ar1_tiny_wide")))
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 * (2 + 2 * (3 + 4))
    for i, r in enumerate(runs):
        assert all(d in names[:i] for d in r.deps), r
    seed0 = [r.name for r in runs if r.size == "ar1_tiny" and r.seed == 0]
    assert seed0 == [f"ar1_tiny/seed0/{s}" for s in ("sft_traj", "sft", "rl", "eval_trajectory_only", "eval_ar1_sft",
                                                     "eval_ar1_rl", "eval_ar1_tokens")]
    evals = {r.variant: r.deps[0] for r in runs if r.kind == "eval" and r.seed == 1 and r.size == "ar1_tiny"}
    assert evals == {"trajectory_only": "ar1_tiny/seed1/sft_traj", "ar1_sft": "ar1_tiny/seed1/sft",
                     "ar1_rl": "ar1_tiny/seed1/rl", "ar1_tokens": "ar1_tiny/seed1/sft"}
    no_rl = plan(LongtailSettings(seeds=1, rl_steps=0))
    assert not [r for r in no_rl if r.kind == "rl" or r.variant == "ar1_rl"] and len(no_rl) == 2 + 2 + 3


def test_a_killed_experiment_resumes_at_the_run_it_was_in(tmp_path):
    settings = LongtailSettings(seeds=3, scenes=16, steps=3, rl_steps=1, eval_scenes=3)
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        run_experiment(settings, tmp_path, runners=_stand_ins(calls, kill_at="ar1_tiny/seed1/rl"), say=lambda s: None)
    names = [r.name for r in plan(settings)]
    killed = names.index("ar1_tiny/seed1/rl")
    assert calls == names[:killed + 1]
    assert all((tmp_path / n / DONE).exists() for n in names[:killed])
    assert not (tmp_path / names[killed] / DONE).exists()

    calls.clear()
    md = tmp_path / "results_doc.md"
    md.write_text("# Results\n\nearlier text\n")
    summary = run_experiment(settings, tmp_path, runners=_stand_ins(calls), results_md=md, say=lambda s: None)
    assert calls == names[killed:]  # nothing finished is redone
    rl_row = summary["groups"]["overall"]["rows"]["ar1_tiny/ar1_rl"]["min_ade@3.0"]
    assert rl_row["values"] == pytest.approx([4 * (1.5 + s) / 3 for s in range(3)])
    text = (tmp_path / "results.md").read_text()
    assert "## long tail (every other family): 1 scenes" in text and "| AR1 SFT + RL | 3 |" in text
    assert (tmp_path / "longtail_ar1_tiny.png").stat().st_size > 10_000
    doc = md.read_text()
    assert doc.startswith("# Results\n\nearlier text\n") and doc.count("### jaywalker") == 1
    aggregate.put_section(md, str(tmp_path), "## rerun\n")  # a rerun replaces its section
    assert md.read_text() == doc[:doc.index("<!--")] + doc[doc.index("<!--"):].split("\n")[0] + "\n## rerun\n" + \
        doc.rstrip("\n").split("\n")[-1] + "\n"

    with pytest.raises(longtail.ExperimentError, match="steps: 3 -> 4"):
        run_experiment(LongtailSettings(seeds=3, scenes=16, steps=4, rl_steps=1, eval_scenes=3), tmp_path,
                       runners=_stand_ins(calls), say=lambda s: None)


def test_aggregation_means_and_95_intervals_by_hand():
    settings = LongtailSettings(seeds=3, rl_steps=0)
    runs = plan(settings)
    results = {r.name: _stand_ins([])[r.kind](longtail.RunContext(r, None, None, settings, {d: {} for d in r.deps}))
               for r in runs}
    s = aggregate.summarize(runs, results, {r.name: 2.0 for r in runs}, settings)
    # AR1 SFT: lane_follow (2 scenes) 2 + seed, jaywalker (1 scene) 2 (2 + seed): seeds 0, 1, 2.
    tail = s["groups"]["long tail"]["rows"]["ar1_tiny/ar1_sft"]["cl/score"]
    assert tail["values"] == [4.0, 6.0, 8.0]
    assert tail["mean"] == pytest.approx(6.0) and tail["ci95"] == pytest.approx(T_975_DF2 * 2.0 / math.sqrt(3))
    common = s["groups"]["common"]["rows"]["ar1_tiny/trajectory_only"]["collision_rate"]
    assert common["mean"] == pytest.approx(4.0) and common["ci95"] == pytest.approx(T_975_DF2 / math.sqrt(3))
    overall = s["groups"]["overall"]["rows"]["ar1_tiny/ar1_tokens"]["min_ade@3.0"]
    assert overall["mean"] == pytest.approx((2 * 3.5 + 7.0) / 3)  # seeds' mean of (2 v + 2 v) / 3, v = 2.5 + seed
    planner = s["groups"]["overall"]["rows"]["ar1_tiny/constant_velocity"]["offroad_rate"]
    assert planner == {"mean": pytest.approx(2.0), "ci95": None, "values": [2.0]}  # one deterministic value
    assert s["groups"]["jaywalker"]["scenes"] == 1 and s["seconds"]["total"] == 2.0 * len(runs)
    assert aggregate.mean_ci([1.0, None, float("nan")]) == (1.0, None) and aggregate.mean_ci([]) == (None, None)
    row = [line for line in aggregate.group_table(s, "long tail") if line.startswith("| AR1 SFT |")][0]
    assert f"6.000 ± {T_975_DF2 * 2 / math.sqrt(3):.3f}" in row


def test_trajectory_only_batch_has_no_reasoning():
    from ar1_jax.data import scene_decode, sft_batch, tfds_builder
    from ar1_jax.text import prompt as prompt_lib

    tok = F.tiny_tokenizer()
    record = next(iter(tfds_builder.random_records(1, 0, get_config("ar1_tiny"))))
    frames = record["images"].reshape(-1, *record["images"].shape[-3:])
    pngs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    ex = {**record, "images": pngs}
    examples = {}
    for reasoning in (True, False):
        cfg = get_config("ar1_tiny", [f"data.reasoning={str(reasoning).lower()}"])
        examples[reasoning] = scene_decode.DecodeScene(cfg, tok, 4096)(ex)
        assert scene_decode.BAD not in examples[reasoning], examples[reasoning]
    with_cot, without = examples[True], examples[False]
    ids, seg = without["input_ids"], without["segments"]
    assert not (seg == prompt_lib.SEG_REASONING).any() and (with_cot["segments"] == prompt_lib.SEG_REASONING).sum() > 5
    for name in ("<|cot_start|>", "<|cot_end|>"):
        assert tok.id_of(name) not in ids and tok.id_of(name) in with_cot["input_ids"]
    future = lambda e: e["input_ids"][e["segments"] == prompt_lib.SEG_FUTURE]
    assert np.array_equal(future(without), future(with_cot)) and len(future(without)) == 128
    batch = sft_batch.build_sft_batch(cfg, [without])
    # The only "reasoning" target left is <|traj_future_start|> straight after the prompt.
    assert batch["reasoning_mask"].sum() == 1
    assert batch["targets"][batch["reasoning_mask"]][0] == cfg.tokens.traj_future_start_id


@pytest.fixture(scope="module")
def tiny_model():
    from ar1_jax.experiment import variants

    cfg, params = F.tiny_ar1(0)
    tok = F.tiny_tokenizer()
    tokens = variants.TokenEngine(cfg, params, tok)
    return cfg, params, tok, tokens


def test_trajectory_only_prompt_is_the_one_training_sees(tiny_model):
    from ar1_jax.data import images as image_lib
    from ar1_jax.experiment.variants import trajectory_only_prompt
    from ar1_jax.text import prompt as prompt_lib

    cfg, _, tok, _ = tiny_model
    ids, seg, _, grid = F.scene_inputs(cfg, tok, np.random.default_rng(0))
    merge = cfg.model.vision.spatial_merge_size
    hist = (ids[seg.history_mask] - tok.traj_token_offset - cfg.action.future_bins).tolist()
    want, _ = prompt_lib.build_prompt(tok, num_images=len(grid), history_token_ids=hist, cot=None,
                                      image_token_counts=[image_lib.image_token_count(g, merge) for g in grid],
                                      include_future_start=True, reasoning=False)
    assert np.array_equal(trajectory_only_prompt(np.stack([ids, ids]), tok), np.stack([want, want]))
    with pytest.raises(ValueError, match="generation prompt"):
        trajectory_only_prompt(want[None], tok)


def test_trajectory_only_and_token_policies_plan_finite_controls(tiny_model):
    from ar1_jax.eval import policies
    from ar1_jax.experiment import variants
    from ar1_jax.world.families import generate

    cfg, params, tok, tokens = tiny_model
    traj = variants.TrajectoryOnlyEngine(cfg, params, tok, engine=tokens.roller.engine)  # shares the vision program
    scene = generate(3_000_000, cfg)
    k = scene.t0_index
    obs = policies.Observation(scenes=[scene], step=0, ego=scene.ego[k][None].astype(np.float64),
                               history=scene.ego[None, :k + 1].astype(np.float64))
    for engine, reasons in ((traj, False), (tokens, True)):
        model = variants.VariantModel(cfg, tok, engine, reasons=reasons)
        plan_ = model.policy().plan(obs, 64)
        assert plan_.controls.shape == (1, 64, 2) and np.isfinite(plan_.controls).all()
        assert plan_.xy.shape == (1, 64, 2) and np.isfinite(plan_.xy).all()
        assert (plan_.reasoning[0] != "") == reasons
    res = tokens.run(*policies.ModelPolicy(tokens, cfg, tok).inputs(obs)[:3], v0=[5.0], seed=1)
    # The driven trajectory is the tokens' own: integrating their controls from v0 gives it back.
    xy = policies.controls_to_xy(res.controls[0], np.full(cfg.infer.num_samples, 5.0), cfg.action.dt)
    assert res.trajectory.shape == (1, cfg.infer.num_samples, 64, 2)
    np.testing.assert_allclose(res.trajectory[0], xy, atol=0.05)
    assert json.dumps(res.timing)
