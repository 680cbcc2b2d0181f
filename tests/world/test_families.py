"""ar1_jax/world/families.py: long-tail family counts, cfg.synth plumbing, every family's scene and CoC,
decisions vs the trajectory's meta-actions, kinematics and safety over 200 scenes, pixel-decided pairs."""

import dataclasses

import numpy as np
import pytest

from ar1_jax.config import ConfigError, SynthConfig, apply_overrides, get_config
from ar1_jax.eval import scoring
from ar1_jax.text import coc
from ar1_jax.text.coc_parse import parse
from ar1_jax.world import families as F
from ar1_jax.world.planner import MAX_BRAKE, MAX_CURVATURE

CFG = get_config("ar1_tiny")  # 16 history / 64 future steps at 0.1 s
TEST_SEED = 1_000_000  # the test split's first seed
N_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [F.generate(s, CFG) for s in range(TEST_SEED, TEST_SEED + N_SCENES)]


def test_family_counts_follow_long_tail():
    freqs = F.family_frequencies(CFG)
    assert list(freqs) == list(F.FAMILIES) and abs(sum(freqs.values()) - 1) < 1e-12
    assert freqs["lane_follow"] == pytest.approx(0.35) and freqs["pull_over"] == pytest.approx(0.02)
    n = 400
    for start in (0, TEST_SEED):
        fams = [F.family_of(s, CFG) for s in range(start, start + n)]
        counts = np.array([fams.count(f) for f in freqs])
        expected = n * np.array(list(freqs.values()))
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        print(f"\nfamily counts over seeds {start}..{start + n - 1}: "
              + ", ".join(f"{f}={c} ({e:.0f})" for f, c, e in zip(freqs, counts, expected)) + f"; chi2={chi2:.2f}")
        assert chi2 < 24.72  # the 1% critical value of chi-square with 11 degrees of freedom
        assert np.all(np.abs(counts - expected) <= np.maximum(3, 0.15 * expected))
    # The golden-ratio sequence frac(0.5 + seed * 0.618...) through the cumulative frequencies.
    assert [F.family_of(s, CFG) for s in range(6)] == [
        "lead_follow", "lane_follow", "yield_pedestrian", "lead_follow", "emergency_stop", "red_light_stop"]
    assert F.generate(5, CFG).family == F.family_of(5, CFG) == "red_light_stop"


def test_frequencies_come_from_cfg_synth():
    custom = apply_overrides(CFG, ["synth.families=jaywalker,turn", "synth.frequencies=3,1"]).validate()
    assert F.family_frequencies(custom) == {"jaywalker": 0.75, "turn": 0.25}  # 3:1, exact in binary
    fams = [F.family_of(s, custom) for s in range(200)]
    assert abs(fams.count("jaywalker") - 150) <= 3
    assert F.family_frequencies(None) == F.family_frequencies(CFG)  # None: the defaults

    def with_synth(**kw):
        return dataclasses.replace(CFG, synth=SynthConfig(**kw))

    with pytest.raises(ValueError, match="unknown"):
        F.family_frequencies(with_synth(families=("lane_follow", "flying"), frequencies=(1.0, 1.0)))
    with pytest.raises(ValueError, match="equal length"):
        F.family_frequencies(with_synth(families=("lane_follow",), frequencies=(1.0, 1.0)))
    with pytest.raises(ValueError, match="duplicates"):
        F.family_frequencies(with_synth(families=("turn", "turn"), frequencies=(1.0, 1.0)))
    with pytest.raises(ValueError, match="non-negative"):
        F.family_frequencies(with_synth(families=("turn",), frequencies=(-1.0,)))
    with pytest.raises(ConfigError, match="synth.frequencies"):  # caught when the config loads
        get_config("ar1_tiny", ["synth.frequencies=1,2"])
    with pytest.raises(TypeError, match="Config"):
        F.family_of(0, SynthConfig())


def test_every_family_generates_and_its_cot_parses_back():
    for fam in F.FAMILIES:
        sc = F.generate(TEST_SEED, CFG, family=fam)
        assert sc.family == fam and sc.scene_id == "synth_001000000"
        assert sc.times.shape == (16 + 64 + 36,) and sc.t0_index == 15 and sc.horizon == 64
        assert sc.ego.shape == (len(sc.times), 4) and sc.ego_controls.shape == (len(sc.times), 2)
        np.testing.assert_allclose(sc.times[sc.t0_index], 0.0, atol=1e-12)
        got = parse(sc.cot)
        assert got.ok and not got.ambiguous, sc.cot
        t = sc.trace
        assert (got.longitudinal, got.lateral, got.direction) == (t.longitudinal, t.lateral, t.direction), sc.cot
        spec = F.FAMILY_SPECS[fam]
        assert t.longitudinal == spec.longitudinal and (spec.lateral is None or t.lateral == spec.lateral)
    # Every cause phrase in every sentence variant parses to the family's decisions.
    for fam, spec in F.FAMILY_SPECS.items():
        lat = spec.lateral or coc.Lateral.IN_LANE_NUDGE
        direction = "left" if lat in coc.DIRECTIONAL_LATERAL else None
        for cause in spec.causes:
            trace = coc.Trace(spec.longitudinal, lat, spec.components, direction, cause=cause.format(side="left"))
            for v in range(coc.NUM_VARIANTS):
                text = coc.format(trace, variant=v)
                assert parse(text).matches(trace), (fam, text)
    with pytest.raises(ValueError, match="family"):
        F.generate(0, CFG, family="flying")
    with pytest.raises(ValueError, match="seed"):
        F.generate(-1, CFG)


def test_decisions_agree_with_trajectory_meta_actions(scenes):
    ok, by_family = [], {}
    for sc in scenes:
        fx, fy = sc.future()
        meta = scoring.meta_actions_from_trajectory(fx, fy, sc.v0, sc.dt)
        good = scoring.is_consistent(sc.trace.longitudinal, sc.trace.lateral, sc.trace.direction, meta)
        ok.append(good)
        by_family.setdefault(sc.family, []).append(good)
    rate = float(np.mean(ok))
    print(f"\nCoC decisions vs trajectory meta-actions over {len(scenes)} scenes: {rate:.1%} consistent; "
          + ", ".join(f"{f} {np.mean(v):.0%}" for f, v in sorted(by_family.items())))
    assert rate >= 0.95
    assert len(by_family) >= 10  # the long tail is present in 200 scenes


def test_kinematics_and_safety(scenes):
    for sc in scenes:
        fx, fy = sc.future()
        assert np.all(np.isfinite(fx)) and np.all(np.isfinite(fy))
        applied = sc.ego_controls[sc.t0_index: sc.t0_index + sc.horizon]
        assert np.all(np.abs(applied[:, 0]) <= MAX_BRAKE + 1e-6), sc.scene_id
        assert np.all(np.abs(applied[:, 1]) <= MAX_CURVATURE + 1e-12), sc.scene_id
        assert np.all(sc.ego[:, 3] >= 0)
        hx, _ = sc.history()
        assert np.all(np.abs(np.diff(hx[:, :2], axis=0)) <= 4.0)  # inside the history token clip
    hits = [(sc.scene_id, sc.family, scoring.collisions(sc)[:1]) for sc in scenes if scoring.collisions(sc)]
    assert not hits, hits


def test_constant_velocity_baseline_separates_families(scenes):
    ade = np.array([scoring.constant_velocity_ade(sc.future()[0], sc.v0, sc.dt) for sc in scenes])
    fams = np.array([sc.family for sc in scenes])
    assert np.all(np.isfinite(ade)) and ade.mean() > 0
    per = {f: float(ade[fams == f].mean()) for f in sorted(set(fams))}
    print(f"\nconstant-velocity baseline ADE (64 steps) on {len(scenes)} test scenes: {ade.mean():.2f} m; "
          + ", ".join(f"{f} {v:.2f}" for f, v in per.items()))
    assert per["lane_follow"] < 2.0 < 8.0 < per["red_light_stop"]  # decisions change where the car goes


@pytest.mark.parametrize("pair", F.PIXEL_PAIRS, ids=lambda p: f"{p[0]}-vs-{p[1]}")
def test_pixel_decided_pairs_share_history_and_differ_in_decisions(pair):
    cue, look_alike = pair
    for seed in (TEST_SEED, TEST_SEED + 1):
        a, b = F.generate(seed, CFG, family=cue), F.generate(seed, CFG, family=look_alike)
        for x, y in zip(a.history(), b.history()):
            assert x.tobytes() == y.tobytes()  # without the cameras the inputs coincide ...
        assert a.v0 == b.v0
        ta, tb = a.trace, b.trace
        assert (ta.longitudinal, ta.lateral) != (tb.longitudinal, tb.lateral)  # ... yet the decisions differ


def test_a_dense_scene_is_capped_at_max_agents_and_keeps_its_event_agents(monkeypatch):
    from ar1_jax.world import builder
    from ar1_jax.world.arrays import scene_arrays
    from ar1_jax.world.scene import MAX_AGENTS, MAX_RECTS
    scene = F.generate(306_563, CFG)  # eight cones plus ten ambient candidates that pass every other check
    assert scene.family == "construction_nudge" and len(scene.agents) == MAX_AGENTS == 16
    assert [a.role for a in scene.agents[:8]] == ["cone"] * 8 and {a.role for a in scene.agents[8:]} == {"ambient"}
    assert scene_arrays(scene, MAX_AGENTS, MAX_RECTS).agent_valid.all()  # what RL, eval and the simulator pack
    monkeypatch.setattr(builder, "MAX_AGENTS", 11)
    monkeypatch.setattr(F, "MAX_AGENTS", 11)
    small = F.generate(306_563, CFG)
    assert [a.id for a in small.agents] == list(range(11))
    np.testing.assert_array_equal(small.agents[10].poses, scene.agents[10].poses)  # the first ambient ones stay
    monkeypatch.setattr(builder, "MAX_AGENTS", 5)
    monkeypatch.setattr(F, "MAX_AGENTS", 5)
    with pytest.raises(RuntimeError, match="8 event agents, more than MAX_AGENTS=5"):
        F.generate(306_563, CFG)
