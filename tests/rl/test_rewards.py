"""ar1_jax/rl/rewards.py and ar1_jax/world/arrays.py: consistency for every decision class, the rule and
model critics, the ADE-gated and comfort terms by hand, collisions and off-road against hand cases and
against `scoring.collisions` on generated scenes (eager and jitted), format, and the weighted total."""

import dataclasses

import jax
import numpy as np
import pytest

from ar1_jax.action import unicycle
from ar1_jax.config import get_config
from ar1_jax.eval import scoring
from ar1_jax.rl import rewards as R
from ar1_jax.text import coc
from ar1_jax.world.arrays import SceneArrays, ego0_to_world, scene_arrays, stack_scene_arrays
from ar1_jax.world.families import generate

T = np.arange(1, 65) * 0.1  # the 64 future times (s)
M, Lm = coc.LongitudinalMeta, coc.LateralMeta
CFG = get_config("ar1_tiny")


def _drive(v0, accel=0.0, curvature=0.0):
    """`[64, 2]` ego0 positions of the unicycle from speed v0 under (accel m/s^2, curvature 1/m) per step."""
    ctrl = np.stack(np.broadcast_arrays(np.asarray(accel, np.float32), np.asarray(curvature, np.float32),
                                        np.zeros(64, np.float32))[:2], -1)
    return np.asarray(unicycle.integrate(ctrl, v0).xy, np.float32)


def _lon(meta):
    """A straight trajectory from 10 m/s with the given longitudinal meta-action."""
    x = {M.KEEP: 10 * T, M.ACCELERATE: 10 * T + T * T, M.DECELERATE: 10 * T - 0.5 * T * T,
         M.STOP: 10 * np.minimum(T, 10 / 3) - 1.5 * np.minimum(T, 10 / 3) ** 2}[meta]  # stops at 3.3 s
    return np.stack([x, 0 * x], -1).astype(np.float32)


def _lat(meta, turn):
    """10 m/s with the given lateral meta-action: a turn (curvature 0.02 1/m) or a 3.5 m lane change."""
    if meta is Lm.STRAIGHT:
        return _lon(M.KEEP)
    side = 1.0 if meta is Lm.LEFT else -1.0
    if turn:
        return _drive(10.0, 0.0, 0.02 * side)
    return np.stack([10 * T, side * 3.5 * np.clip(T / 4, 0, 1)], -1).astype(np.float32)


def _consistency(text, xy, v0=10.0):
    return float(R.consistency_reward([text], xy[None], np.array([v0]))[0])


# ----------------------------------------------------------------------------------------------------
# Consistency.


@pytest.mark.parametrize("lon", list(coc.Longitudinal))
def test_consistency_for_every_longitudinal_decision(lon):
    text = coc.format(coc.Trace(lon, None))
    lon_set, _ = coc.compatible_meta_actions(lon)
    primary = coc.meta_action(lon).longitudinal
    assert _consistency(text, _lon(primary)) == 1.0
    for meta in M:
        assert _consistency(text, _lon(meta)) == float(meta in lon_set), (lon, meta)
    assert set(M) - lon_set, f"{lon} contradicts no meta-action"


@pytest.mark.parametrize("lat,direction", [(coc.Lateral.LANE_KEEP, None)]
                         + [(lat, d) for lat in coc.LATERAL if lat in coc.DIRECTIONAL_LATERAL
                                                      for d in coc.DIRECTIONS])
def test_consistency_for_every_lateral_decision(lat, direction):
    text = coc.format(coc.Trace(None, lat, direction=direction))
    match = Lm.STRAIGHT if direction is None else Lm(direction)
    contradict = Lm.LEFT if direction is None else ({Lm.LEFT, Lm.RIGHT} - {match}).pop()
    for turn in (False, True):
        assert _consistency(text, _lat(match, turn)) == 1.0, (lat, direction, turn)
        assert _consistency(text, _lat(contradict, turn)) == 0.0, (lat, direction, turn)


def test_consistency_needs_both_axes():
    text = coc.format(coc.Trace(coc.Longitudinal.STOP, coc.Lateral.LANE_KEEP))
    stop_left = _lon(M.STOP) + np.stack([0 * T, 3.5 * np.clip(T / 3, 0, 1)], -1)
    got = R.consistency_reward([text] * 3, np.stack([_lon(M.STOP), stop_left, _lon(M.KEEP)]), np.full(3, 10.0))
    assert got.dtype == np.float32 and got.tolist() == [1.0, 0.0, 0.0]


def test_consistency_of_junk_is_zero():
    rng = np.random.default_rng(0)
    junk = ["", None, rng.bytes(300), "x" * 1_000_000, "x " * 5000 + "Stop.", "The weather is nice today.", 42,
            b"\xff\xfe\x00", object(), "   \n\t ,.;"]
    xy = np.repeat(_lon(M.STOP)[None], len(junk), 0)
    assert R.consistency_reward(junk, xy, np.full(len(junk), 10.0)).tolist() == [0.0] * len(junk)
    # A good text with a non-finite trajectory is 0 too.
    bad = _lon(M.STOP).copy()
    bad[5] = np.nan
    assert _consistency("Stop.", bad) == 0.0 and _consistency("Stop.", _lon(M.STOP)) == 1.0


def test_consistency_on_generated_records():
    for fam in ("red_light_stop", "turn", "construction_nudge"):
        sc = generate(1_000_000, CFG, family=fam)
        xyz, _ = sc.future()
        assert _consistency(sc.cot, xyz[:, :2], sc.v0) == 1.0, fam


# ----------------------------------------------------------------------------------------------------
# Critics and format.


def test_rule_critic():
    ref = coc.Trace(coc.Longitudinal.STOP, None, (coc.Component.TRAFFIC_LIGHTS,))
    same = coc.format(ref)
    other_cause = coc.format(coc.Trace(coc.Longitudinal.STOP, None, (coc.Component.OBJECTS,)))
    wrong = coc.format(coc.Trace(coc.Longitudinal.ACCELERATE_TO_PASS, None, (coc.Component.TRAFFIC_LIGHTS,)))
    got = R.RuleCritic().score([same, other_cause, wrong, "", None, "no decision here"], [ref] * 6)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [1.0, 0.7, 0.65, 0.0, 0.0, 0.0], atol=1e-6)
    assert R.RuleCritic().score([same], [same])[0] == pytest.approx(1.0)  # a text reference
    lc = coc.Trace(None, coc.Lateral.LANE_CHANGE, (coc.Component.OBJECTS,), "left")
    lc_right = coc.format(dataclasses.replace(lc, direction="right"))
    assert R.RuleCritic().score([lc_right], [lc])[0] == pytest.approx(0.65)  # wrong side
    with pytest.raises(ValueError, match="2 traces but 1 references"):
        R.RuleCritic().score([same, same], [ref])


def test_model_critic_with_a_fake_generate():
    prompts = []

    def fake(answer):
        def generate(prompt):
            prompts.append(prompt)
            return answer
        return generate

    ref = coc.Trace(coc.Longitudinal.YIELD, None, (coc.Component.OBJECTS,))
    trace = "Yield to the pedestrian crossing ahead."
    for answer, want in [("Score: 4", 0.8), ("score = 5\nbecause", 1.0), ("3", 0.6), ("I'd say 2 out of 5", 0.4),
                         ("Score: 9", 0.0), ("no idea", 0.0), ("Score: 3.5", 0.0), ("", 0.0), (None, 0.0)]:
        got = R.ModelCritic(fake(answer)).score([trace], [ref])
        assert got.dtype == np.float32 and got[0] == pytest.approx(want), answer
    assert trace in prompts[0] and coc.format(ref) in prompts[0] and "0 to 5" in prompts[0]
    n = len(prompts)
    assert R.ModelCritic(fake("Score: 5")).score([None, "", b"Stop."], ["Stop."] * 3).tolist() == [0.0, 0.0, 1.0]
    assert len(prompts) == n + 1  # no call for a missing trace


def test_format_reward():
    texts = ["Stop for the red light.", "Stop for the red light.", "nothing to see", None]
    assert R.format_reward(texts, np.array([10, 200, 10, 10]), 128).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert R.format_reward(["Stop."], np.array([128]), 128).tolist() == [1.0]  # the cap itself is allowed


# ----------------------------------------------------------------------------------------------------
# Trajectory and comfort.


def test_ade_gated_reward_by_hand():
    gt = np.repeat(_lon(M.KEEP)[None], 4, 0)
    pred = gt + np.array([[[0, 0]], [[0, 1.5]], [[0, 1.5]], [[4.0, 0]]], np.float32)  # ADE 0, 1.5, 1.5, 4
    got = R.ade_gated_reward(pred, gt, np.array([1.0, 1.0, 0.5, 1.0]))
    np.testing.assert_allclose(got, [0.0, -0.2, -0.25, -1.0], atol=1e-6)  # -0.4 * 1.5/3 + 0.1 * (c - 1)
    assert float(R.ade_gated_reward(pred[1:2], gt[1:2], np.ones(1), gate_m=1.0)[0]) == -1.0
    nan = pred[:1].copy()
    nan[0, 3] = np.nan
    assert float(R.ade_gated_reward(nan, gt[:1], np.ones(1))[0]) == -1.0


# Hand-built drives that break exactly one comfort bound (v0 m/s, accel m/s^2, curvature 1/m).
_T0 = np.arange(64) * 0.1
COMFORT_CASES = {
    "lon_accel": [(10.0, 3.0, 0.0), (35.0, -5.0, 0.0)],  # +3 and -5 m/s^2
    "lat_accel": [(10.0, 0.0, 0.06)],  # 6 m/s^2 on a 16.7 m radius, yaw rate 0.6
    "yaw_rate": [(3.0, 0.0, 0.4)],  # 1.2 rad/s, lateral 3.6 m/s^2
    "yaw_accel": [(2.0, 0.0, 0.55 * np.sin(3.5 * _T0))],  # yaw rate 1.1 sin(3.5 t) (smoothed to < 0.95)
    "jerk": [(15.0, 0.0, 0.02 * np.sin(3 * _T0))],  # lateral 4.5 sin(3 t) m/s^2
    "lon_jerk": [(15.0, 2.0 * np.sin(3 * _T0), 0.0)],  # 6 m/s^3 peak
}


def test_comfort_of_gentle_and_violent_drives():
    assert set(COMFORT_CASES) == set(R.COMFORT_BOUNDS)
    gentle = np.stack([_drive(10.0, 0.5, 0.005), _drive(5.0, -0.5, -0.01), _lon(M.KEEP)])
    np.testing.assert_allclose(R.comfort(gentle, np.array([10.0, 5.0, 10.0])), 1.0)
    np.testing.assert_allclose(jax.jit(R.comfort)(gentle, np.array([10.0, 5.0, 10.0])), 1.0)
    kin = R.kinematics(_drive(10.0, 1.5, 0.0)[None], np.array([10.0]))
    np.testing.assert_allclose(kin["lon_accel"], 1.5, atol=1e-3)  # constant acceleration is exact
    np.testing.assert_allclose(kin["lon_jerk"], 0.0, atol=1e-2)
    kin = R.kinematics(_drive(10.0, 0.0, 0.03)[None], np.array([10.0]))
    np.testing.assert_allclose(kin["yaw_rate"], 0.3, atol=1e-3)  # v k
    np.testing.assert_allclose(kin["lat_accel"], 3.0, atol=1e-2)  # v^2 k
    for name, cases in COMFORT_CASES.items():
        for v0, a, k in cases:
            checks = R.comfort_checks(_drive(v0, a, k)[None], np.array([v0]))
            assert [n for n, ok in checks.items() if not bool(ok[0])] == [name], (name, v0)
            assert float(R.comfort(_drive(v0, a, k)[None], np.array([v0]))[0]) == pytest.approx(5 / 6)
    # Everything at once: a hard brake into a tight weave.
    violent = _drive(20.0, -6 * np.sin(3 * _T0) ** 2, 0.08 * np.sin(3 * _T0))
    assert float(R.comfort(violent[None], np.array([20.0]))[0]) <= 0.5
    # A start that disagrees with v0 (a standing start from 10 m/s) is a lurch.
    assert float(R.comfort(_lon(M.KEEP)[None], np.array([0.0]))[0]) < 1.0
    assert float(R.comfort(np.full((1, 64, 2), np.nan, np.float32), np.array([10.0]))[0]) == 0.0


def test_headings_follow_travel_and_hold_when_stopped():
    h = np.asarray(R.trajectory_headings(_drive(10.0, 0.0, 0.02)[None]))[0]
    np.testing.assert_allclose(h, 0.02 * 10 * T, atol=2e-3)  # heading = k s
    stop = np.stack([np.minimum(T, 1.0), np.minimum(T, 1.0)], -1)[None].astype(np.float32)  # 45 deg, then parked
    h = np.asarray(R.trajectory_headings(stop))[0]
    np.testing.assert_allclose(h, np.pi / 4, atol=1e-5)  # held after stopping at t = 1 s
    assert np.all(np.asarray(R.trajectory_headings(np.zeros((1, 64, 2))))[0] == 0.0)  # never moved: t0's heading


# ----------------------------------------------------------------------------------------------------
# Collision and off-road.


def _hand_arrays(agent_xy=None, agent_size=(4.5, 1.9), rects=((-50.0, 200.0, -2.0, 5.5),), ego0=(0.0, 0.0, 0.0)):
    """SceneArrays with stationary agents (x, y, yaw) and drivable rects, padded to 4 agents and 3 rects."""
    poses = np.zeros((4, 64, 3), np.float32)
    half = np.zeros((4, 2), np.float32)
    for i, p in enumerate(agent_xy or []):
        poses[i] = p
        half[i] = (agent_size[0] / 2, agent_size[1] / 2)
    drivable = np.zeros((3, 4), np.float32)
    drivable[: len(rects)] = rects
    return SceneArrays(np.asarray(ego0, np.float32), np.array([2.4, 0.975], np.float32), np.float32(1.4), poses, half,
                       np.arange(4) < len(agent_xy or []), drivable, np.arange(3) < len(rects))


def test_collision_and_offroad_by_hand():
    straight = _lon(M.KEEP)[None]  # 10 m/s along y = 0
    sa = _hand_arrays([(20.0, 0.0, 0.0), (20.0, 3.5, 0.0)])  # ahead in lane; beside, in the next lane
    hit, off = R.collision_and_offroad(straight, sa, per_step=True)
    # The ego front (rear axle + 3.8 m) reaches the car's rear (20 - 2.25 m) at t = 1.395 s.
    assert np.flatnonzero(np.asarray(hit[0]))[0] == 13 and not np.asarray(off).any()
    hit, off = R.collision_and_offroad(straight, _hand_arrays([(20.0, 3.5, 0.0)]))
    assert hit.tolist() == [False] and off.tolist() == [False]
    # Off-road: the body spans y in [-0.975, 0.975]; a kerb at y = -0.9 puts its right corners off the
    # road while its centre line stays on it.
    for y_min, want in [(-1.0, False), (-0.9, True), (0.5, True), (-0.975, False)]:
        hit, off = R.collision_and_offroad(straight, _hand_arrays(rects=((-50.0, 200.0, y_min, 5.5),)))
        assert off.tolist() == [want] and hit.tolist() == [False], y_min
    # Two rects that join (a cross road) keep a turn on the road; the world pose at t0 is applied.
    turn_road = ((-50.0, 200.0, -2.0, 5.5), (10.0, 30.0, -100.0, 100.0))
    moved = _hand_arrays(rects=tuple((x0 + 100, x1 + 100, y0 - 50, y1 - 50) for x0, x1, y0, y1 in turn_road),
                         ego0=(100.0, -50.0, 0.0))
    early = np.stack([np.minimum(10 * T, 5.0), np.maximum(10 * T - 5.0, 0.0)], -1)[None].astype(np.float32)
    assert R.collision_and_offroad(early, moved)[1].tolist() == [True]  # turns left before the cross road
    smooth = _drive(6.0, 0.0, np.where((_T0 >= 1.5) & (_T0 < 1.5 + np.pi / 1.44), 0.12, 0.0))  # 90 deg left
    hit, off = R.collision_and_offroad(smooth[None], moved)
    assert off.tolist() == [False] and hit.tolist() == [False]
    assert abs(float(R.trajectory_headings(smooth[None])[0, -1]) - np.pi / 2) < 0.1


def test_collisions_match_scoring_on_generated_scenes():
    sc = generate(1_000_000, CFG, family="stalled_car_lane_change")
    other = generate(1_000_001, CFG, family="lane_follow")
    arrays = [scene_arrays(s, max_agents=16, max_rects=4) for s in (sc, other)]
    steps = np.arange(sc.t0_index + 1, sc.t0_index + 65)
    expert = np.stack([s.future()[0][:, :2] for s in (sc, other)])
    assert scoring.collisions(sc) == [] and scoring.collisions(other) == []
    batch = stack_scene_arrays(arrays)
    hit, off = R.collision_and_offroad(expert, batch)
    assert hit.tolist() == [False, False] and off.tolist() == [False, False]
    # Keep going straight at v0 into the stalled car: the same steps as the numpy scorer on the same poses.
    blind = (sc.v0 * T)[:, None] * np.array([1.0, 0.0], np.float32)
    hits = np.asarray(R.collision_and_offroad(blind[None], arrays[0], per_step=True)[0])[0]
    world = np.asarray(ego0_to_world(blind, R.trajectory_headings(blind[None])[0], arrays[0].ego0_pose), np.float64)
    want = scoring.collisions(sc, world, steps)
    assert want and sorted({t for _, t in want}) == pytest.approx(list(sc.times[steps[hits]]))
    assert [ag.role for ag in sc.agents if ag.id == want[0][0]] != ["ambient"]
    # jit over a stacked batch gives the same as eager.
    both = np.stack([blind, expert[1]])
    eager = R.collision_and_offroad(both, batch, per_step=True)
    jitted = jax.jit(R.collision_and_offroad, static_argnames="per_step")(both, batch, per_step=True)
    for a, b in zip(eager, jitted):
        np.testing.assert_array_equal(a, b)
    assert np.asarray(eager[0]).any(axis=1).tolist() == [True, False]


def test_scene_arrays_shapes_and_limits():
    sc = generate(1_000_000, CFG, family="turn")
    sa = scene_arrays(sc, max_agents=12, max_rects=3)
    assert sa.agent_poses.shape == (12, 64, 3) and sa.agent_poses.dtype == np.float32
    assert sa.drivable_rects.shape == (3, 4) and sa.agent_valid.sum() == len(sc.agents)
    assert sa.rect_valid.sum() == len(sc.road.drivable) and sa.ego0_pose.tolist() == pytest.approx(sc.origin, abs=1e-4)
    np.testing.assert_allclose(sa.agent_poses[0], sc.agents[0].poses[sc.t0_index + 1: sc.t0_index + 65], atol=1e-4)
    assert stack_scene_arrays([sa, sa]).agent_half.shape == (2, 12, 2)
    with pytest.raises(ValueError, match="max_agents=1"):
        scene_arrays(sc, max_agents=1, max_rects=3)
    with pytest.raises(ValueError, match="max_rects=1"):
        scene_arrays(sc, max_agents=12, max_rects=1)


# ----------------------------------------------------------------------------------------------------
# Totals.


def test_total_and_score_rollouts():
    cfg = R.RewardConfig()
    terms = {name: np.ones(2, np.float32) for name in R.TERMS}
    want = cfg.consistency + cfg.reasoning + cfg.trajectory + cfg.comfort - cfg.collision - cfg.offroad + cfg.format
    np.testing.assert_allclose(R.total_reward(terms, cfg), [want, want])
    np.testing.assert_allclose(R.total_reward({"collision": np.array([1.0, 0.0])}, cfg), [-1.0, 0.0])
    with pytest.raises(ValueError, match="unknown terms"):
        R.total_reward({"consistancy": np.ones(2)}, cfg)

    sc = generate(1_000_000, CFG, family="stalled_car_lane_change")
    gt = sc.future()[0][:, :2]
    blind = ((sc.v0 * T)[:, None] * np.array([1.0, 0.0])).astype(np.float32)
    texts = [sc.cot, sc.cot, "gibberish"]
    out = R.score_rollouts(texts, np.stack([gt, blind, gt]), np.full(3, sc.v0), np.stack([gt] * 3),
                           references=[sc.trace] * 3, scenes=scene_arrays(sc, 16, 4), num_tokens=np.array([30, 30, 3]))
    assert set(out) == set(R.TERMS) | {"total"} and all(v.dtype == np.float32 and v.shape == (3,) for v in out.values())
    assert out["consistency"].tolist() == [1.0, 0.0, 0.0] and out["format"].tolist() == [1.0, 1.0, 0.0]
    assert out["reasoning"].tolist() == [1.0, pytest.approx(1.0), 0.0]
    assert out["collision"].tolist() == [0.0, 1.0, 0.0] and out["offroad"].tolist() == [0.0, 0.0, 0.0]
    assert out["trajectory"][0] == pytest.approx(0.1 * (out["comfort"][0] - 1)) and out["trajectory"][0] > -0.1
    np.testing.assert_allclose(out["total"], R.total_reward({k: v for k, v in out.items() if k != "total"}, cfg))
    assert out["total"][0] > out["total"][1] and out["total"][0] > out["total"][2]
    bare = R.score_rollouts(texts, np.stack([gt, blind, gt]), np.full(3, sc.v0), np.stack([gt] * 3))
    assert bare["reasoning"].tolist() == bare["collision"].tolist() == [0.0] * 3 and bare["format"][0] == 1.0
