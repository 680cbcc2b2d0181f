"""eval/sim.py and eval/policies.py: log replay and the rule planner retrace the log; scripted policies
that leave the road or drive into an agent are flagged; the rule planner drives 200 scenes with
reactive agents without leaving the road and (nearly) without at-fault collisions while constant
velocity does clearly worse on the long-tail families; the same inputs give the same numbers; the
model policy sees at t0 exactly what inference on the scene's record sees; track files round-trip."""

import numpy as np
import pytest

import ar1_fixtures as F
from ar1_jax.config import get_config
from ar1_jax.eval import policies, sim
from ar1_jax.eval.run import LONG_TAIL_EXCLUDED
from ar1_jax.world.families import generate

CHECK_SCENES = 200


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny")


@pytest.fixture(scope="module")
def many(cfg):
    first = int(np.random.default_rng().integers(10_000, 1_000_000))
    return [generate(first + i, cfg) for i in range(CHECK_SCENES)]


def _logged(scenes, n):
    return np.stack([s.ego[s.t0_index: s.t0_index + n + 1] for s in scenes])


@pytest.mark.parametrize("make", [policies.LogReplay, lambda: policies.RulePlanner(5)], ids=["log", "planner"])
def test_log_replay_and_the_planner_retrace_the_log(cfg, many, make):
    scenes = many[:8]
    r = sim.simulate(scenes, make(), cfg, sim.SimConfig(seconds=6.4, replan_s=0.5))
    assert r.ego.shape == (8, 65, 4) and r.plans.shape == (8, 13, 64, 2)
    np.testing.assert_allclose(r.ego[..., :2], _logged(scenes, 64)[..., :2], atol=2e-2)
    assert not r.collision.any() and not r.offroad.any()
    np.testing.assert_allclose(r.scores["progress"], 1.0, atol=1e-2)
    assert r.scores["dist_to_log_mean"].max() < 2e-2
    # the plan made at t0 is the logged future, in the world frame
    np.testing.assert_allclose(r.plans[:, 0, :20], _logged(scenes, 20)[:, 1:, :2], atol=2e-2)


class _Scripted:
    """Constant controls (acceleration, curvature) whatever it sees."""

    name = "scripted"

    def __init__(self, accel, curvature):
        self.control = np.array([accel, curvature])

    def reset(self, scenes):
        pass

    def plan(self, obs, num_steps):
        b = len(obs.scenes)
        controls = np.broadcast_to(self.control, (b, num_steps, 2)).copy()
        return policies.PolicyPlan(controls, policies.controls_to_xy(controls, obs.ego[:, 3], 0.1), [""] * b)


def test_a_policy_that_leaves_the_road_is_flagged(cfg):
    scene = generate(int(np.random.default_rng().integers(10_000)), cfg, family="lane_follow")
    r = sim.simulate([scene], _Scripted(0.0, -0.02), cfg)  # a steady right turn (radius 50 m) off a straight road
    first = int(np.argmax(r.offroad[0]))
    assert r.offroad[0].any() and r.offroad[0, first:].all()  # once off, it stays off
    assert r.scores["offroad"][0] == 1 and r.scores["alpasim_score"][0] == 0 and r.scores["pdm_score"][0] == 0
    straight = sim.simulate([scene], _Scripted(0.0, 0.0), cfg)
    assert not straight.offroad.any() and straight.scores["offroad"][0] == 0


def test_a_policy_that_drives_into_an_agent_is_flagged_at_fault(cfg):
    scene = generate(int(np.random.default_rng().integers(10_000)), cfg, family="stalled_car_lane_change")
    r = sim.simulate([scene], policies.ConstantVelocity(), cfg)  # straight on into the stalled car
    assert r.collision[0].any()
    s = {k: float(v[0]) for k, v in r.scores.items()}
    assert s["collision"] == s["front"] == s["at_fault"] == 1 and s["rear"] == 0
    assert s["alpasim_score"] == 0 and s["close_encounter"] == 1


def test_planner_drives_200_scenes_reactive_and_constant_velocity_does_worse_on_the_long_tail(cfg, many):
    settings = sim.SimConfig(agents="reactive")
    planner = sim.simulate(many, policies.RulePlanner(5), cfg, settings)
    cv = sim.simulate(many, policies.ConstantVelocity(), cfg, settings)
    assert planner.scores["offroad"].sum() == 0
    assert planner.scores["at_fault"].mean() <= 0.01
    tail = np.array([s.family not in LONG_TAIL_EXCLUDED for s in many])
    assert tail.sum() >= 40
    cv_tail, planner_tail = cv.scores["at_fault"][tail].mean(), planner.scores["at_fault"][tail].mean()
    assert cv_tail >= planner_tail + 0.15, (cv_tail, planner_tail)
    assert cv.scores["alpasim_score"][tail].mean() <= planner.scores["alpasim_score"][tail].mean() - 0.15
    again = sim.simulate(many, policies.ConstantVelocity(), cfg, settings)
    for k, v in cv.scores.items():
        np.testing.assert_array_equal(again.scores[k], v, err_msg=k)
    np.testing.assert_array_equal(again.ego, cv.ego)


def test_bad_settings_fail_clearly(cfg, many):
    with pytest.raises(ValueError, match="multiple of dt"):
        sim.SimConfig(replan_s=0.25).steps(0.1)
    with pytest.raises(ValueError, match="agents"):
        sim.SimConfig(agents="smart").steps(0.1)
    with pytest.raises(ValueError, match="shorten"):
        sim.simulate(many[:1], policies.ConstantVelocity(), cfg, sim.SimConfig(seconds=30.0))


def test_model_policy_sees_the_records_inputs_at_t0_and_drives(cfg, tmp_path):
    from ar1_jax.data import synthetic
    from ar1_jax.infer import scene as scene_lib
    from ar1_jax.infer.engine import Engine

    tok = F.tiny_tokenizer()
    _, params = F.tiny_ar1(0)
    seeds = np.random.default_rng().integers(10_000, size=2)
    scenes = [generate(int(s), cfg) for s in seeds]
    policy = policies.ModelPolicy(Engine(cfg, params, tok), cfg, tok, num_samples=2, seed=3)
    obs = policies.Observation(scenes=scenes, step=0, ego=np.stack([s.ego[s.t0_index] for s in scenes]),
                               history=np.stack([s.ego[: s.t0_index + 1] for s in scenes]))
    ids, pv, grid, v0 = policy.inputs(obs)
    rec = synthetic.to_record(scenes[1], cfg)
    want = scene_lib.scene_inputs(cfg, tok, scene_lib.Scene(images=rec["images"], history_xyz=rec["history_xyz"]))
    np.testing.assert_array_equal(ids[1], want[0])
    np.testing.assert_allclose(pv[len(pv) // 2:], want[1], atol=1e-6)
    np.testing.assert_allclose(v0[1], want[3], atol=1e-4)

    settings = sim.SimConfig(seconds=1.0, replan_s=0.5)
    r = sim.simulate(scenes, policy, cfg, settings)
    assert r.ego.shape == (2, 11, 4) and r.consistent.shape == (2, 2) and len(r.reasoning[0]) == 2
    assert np.all(np.isfinite(r.ego)) and np.all(np.isfinite(r.plans))
    again = sim.simulate(scenes, policy, cfg, settings)  # reset restarts the sampling seeds
    np.testing.assert_array_equal(again.ego, r.ego)
    assert again.reasoning == r.reasoning

    paths = sim.save_tracks(tmp_path, r, cfg)
    with np.load(paths[1]) as z:
        assert str(z["scene_id"]) == scenes[1].scene_id and int(z["seed"]) == scenes[1].seed
        np.testing.assert_array_equal(z["ego"], r.ego[1].astype(np.float32))
        assert z["agents"].shape == (len(scenes[1].agents), 11, 3)
        assert list(z["reasoning"]) == r.reasoning[1] and z["replan_steps"].tolist() == [0, 5]
    assert (tmp_path / "config.json").is_file()
