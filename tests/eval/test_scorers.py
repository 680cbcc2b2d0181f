"""eval/scorers.py on scenes built by hand: a rear-end by another car (not at fault), a lateral swipe and
a front hit (at fault), a standing ego hit from the front (not at fault), off-road, wrong lane, progress,
close encounters and the composite scores; and on generated world scenes against the numpy scorer."""

import jax
import numpy as np
import pytest

from ar1_jax.eval import scorers, scoring
from ar1_jax.world.arrays import SceneArrays
from ar1_jax.world.scene import EGO_FRONT, EGO_REAR, EGO_WIDTH

T, DT, V = 30, 0.1, 10.0
HALF = np.array([(EGO_FRONT + EGO_REAR) / 2, EGO_WIDTH / 2], np.float32)
CAR = np.array([2.25, 0.9], np.float32)  # an agent's half extents (m)
LANE_Y = -1.75  # the ego's lane (travel +x); the lane at +1.75 is travelled the other way


def _arrays(agents=(), logged=None):
    """A straight two-lane road along x (y in [-3.5, 3.5]), the ego at the origin of its lane at t0
    heading +x; `agents`: [T, 3] centre poses per agent."""
    a = max(1, len(agents))
    poses = np.zeros((a, T, 3), np.float32)
    half = np.zeros((a, 2), np.float32)
    for i, p in enumerate(agents):
        poses[i], half[i] = p, CAR
    scene = SceneArrays(ego0_pose=np.array([0.0, LANE_Y, 0.0], np.float32), ego_half=HALF,
                        ego_offset=np.float32(HALF[0] - EGO_REAR), agent_poses=poses, agent_half=half,
                        agent_valid=np.arange(a) < len(agents),
                        drivable_rects=np.array([[-100.0, 300.0, -3.5, 3.5], [0, 0, 0, 0]], np.float32),
                        rect_valid=np.array([True, False]))
    xs = np.linspace(-100.0, 300.0, 9)
    starts = np.concatenate([np.stack([xs[:-1], np.full(8, LANE_Y)], -1), np.stack([xs[1:], np.full(8, -LANE_Y)], -1)])
    ends = np.concatenate([np.stack([xs[1:], np.full(8, LANE_Y)], -1), np.stack([xs[:-1], np.full(8, -LANE_Y)], -1)])
    return scorers.ScoringArrays(
        scene=scene, seg_start=starts.astype(np.float32), seg_end=ends.astype(np.float32),
        seg_heading=np.repeat(np.array([0.0, np.pi], np.float32), 8), seg_half_width=np.full(16, 1.75, np.float32),
        seg_lane=np.repeat(np.array([0, 1], np.int32), 8),
        logged=_drive() if logged is None else logged)


def _drive(speed=V, y=LANE_Y, dy=0.0, x0=0.0):
    """[T, 3] rear-axle poses at constant speed along x from (x0, y), drifting dy per step."""
    i = np.arange(1, T + 1)
    return np.stack([x0 + speed * DT * i, y + dy * i, np.zeros(T)], -1).astype(np.float32)


def _agent(x0, speed, y=LANE_Y, yaw=0.0):
    i = np.arange(1, T + 1)
    return np.stack([x0 + speed * DT * i * np.cos(yaw), np.full(T, y), np.full(T, yaw)], -1).astype(np.float32)


def _score(ego, arrays, comfortable=1.0):
    return {k: float(v) for k, v in jax.jit(scorers.score_track)(ego, arrays, comfortable).items()}


def test_rear_end_by_another_car_is_not_at_fault():
    s = _score(_drive(), _arrays([_agent(-8.0, 15.0)]))  # catches up from behind at 5 m/s
    assert s["collision"] == 1 and s["rear"] == 1 and s["front"] == 0 and s["lateral"] == 0
    assert s["at_fault"] == 0 and s["offroad"] == 0
    assert s["alpasim_score"] == pytest.approx(1.0)  # the ego drove the logged route


def test_lateral_swipe_and_front_hit_are_at_fault():
    # A car alongside in the next lane (centred on the ego's box); the ego drifts left into it.
    along = _drive()[:, 0] + HALF[0] - EGO_REAR
    beside = np.stack([along, np.full(T, LANE_Y + 3.5), np.zeros(T)], -1).astype(np.float32)
    s = _score(_drive(dy=0.12), _arrays([beside]))
    assert s["collision"] == 1 and s["lateral"] == 1 and s["at_fault_lateral"] == 1 and s["at_fault"] == 1
    assert s["alpasim_score"] == 0 and s["pdm_score"] == 0
    s = _score(_drive(), _arrays([_agent(20.0, 0.0)]))  # a stopped car ahead, driven into
    assert s["front"] == 1 and s["at_fault_front"] == 1 and s["rear"] == 0


def test_standing_ego_hit_from_the_front_is_not_at_fault():
    standing = np.tile(np.array([0.0, LANE_Y, 0.0], np.float32), (T, 1))
    s = _score(standing, _arrays([_agent(12.0, -10.0)], logged=standing))  # drives into the ego's nose
    assert s["collision"] == 1 and s["front"] == 1 and s["at_fault"] == 0
    assert s["progress"] == 1.0  # the log stands still too


def test_offroad_wrong_lane_and_progress():
    s = _score(_drive(dy=-0.1), _arrays())  # drifts 3 m right: the box leaves the road (y >= -3.5)
    assert s["offroad"] == 1 and s["alpasim_score"] == 0 and s["collision"] == 0
    s = _score(_drive(y=-LANE_Y), _arrays())  # the whole drive in the oncoming lane
    assert s["wrong_lane"] == 1.0 and s["offroad"] == 0
    assert _score(_drive(), _arrays())["wrong_lane"] == 0.0
    half = _score(_drive(speed=V / 2), _arrays())  # half the logged distance
    np.testing.assert_allclose(half["progress"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(half["alpasim_score"], 0.5 / 0.8, rtol=1e-5)
    np.testing.assert_allclose(half["dist_to_log_max"], 15.0, rtol=1e-5)  # 30 m vs 15 m at the end
    np.testing.assert_allclose(half["dist_to_log_mean"], np.mean(0.5 * np.arange(1, T + 1)), rtol=1e-5)
    # PDM: no TTC violation, progress 0.5, comfortable -> (5 + 2.5 + 2) / 12; uncomfortable -> 7.5 / 12.
    np.testing.assert_allclose(half["pdm_score"], 9.5 / 12, rtol=1e-5)
    np.testing.assert_allclose(_score(_drive(speed=V / 2), _arrays(), 0.0)["pdm_score"], 7.5 / 12, rtol=1e-5)
    far = _score(_drive(speed=1.5 * V), _arrays())
    assert far["progress"] == pytest.approx(1.5, rel=1e-4) and far["alpasim_score"] == 1.0


def test_close_encounters_without_contact():
    # A car passing in the next lane 0.3 m from the ego's box: a close gap, no collision.
    centre_y = LANE_Y + HALF[1] + 0.3 + CAR[1]
    s = _score(_drive(), _arrays([_agent(40.0, 10.0, y=centre_y, yaw=np.pi)]))  # oncoming, meets at 2 s
    assert s["collision"] == 0 and s["close_gap"] == 1 and s["close_encounter"] == 1
    # A stopped car ahead that the ego reaches at 10 m/s and stops 0.4 m short of: within 1 s it would hit.
    x = np.minimum(V * DT * np.arange(1, T + 1), 20.0)
    ego = np.stack([x, np.full(T, LANE_Y), np.zeros(T)], -1).astype(np.float32)
    stop_x = 20.0 + EGO_FRONT + 0.4 + CAR[0]
    s = _score(ego, _arrays([_agent(stop_x, 0.0)], logged=ego))
    assert s["collision"] == 0 and s["ttc_violation"] == 1 and s["close_gap"] == 1
    s = _score(_drive(), _arrays([_agent(200.0, 0.0)]))  # far ahead all along
    assert s["close_encounter"] == 0 and s["pdm_score"] == pytest.approx(1.0)


def test_generated_scenes_agree_with_the_numpy_collision_scorer():
    from ar1_jax.config import get_config
    from ar1_jax.world.families import generate

    cfg = get_config("ar1_tiny")
    rng = np.random.default_rng()
    hits = {}
    for family in ("stalled_car_lane_change", "lead_follow", "cut_in", "jaywalker"):
        scene = generate(int(rng.integers(1_000_000)), cfg, family=family)
        arrays = scorers.scoring_arrays(scene, 16, 8, 512)
        shifted = np.array(arrays.logged)
        shifted[:, 1] += rng.uniform(-3, 3)  # the expert's track moved sideways: some of these hit agents
        x0, y0, yaw = scene.origin
        t = DT * np.arange(1, scene.horizon + 1)
        blind = np.stack([x0 + scene.v0 * t * np.cos(yaw), y0 + scene.v0 * t * np.sin(yaw), np.full_like(t, yaw)], -1)
        for name, ego in (("logged", arrays.logged), ("shifted", shifted), ("blind", blind)):
            want = bool(scoring.collisions(scene, ego))
            got = _score(np.asarray(ego, np.float32), arrays)
            assert got["collision"] == want, (scene.scene_id, name, got, want)
            hits[family, name] = want
        np.testing.assert_allclose(_score(arrays.logged, arrays)["progress"], 1.0, rtol=1e-5)  # the log itself
    assert not any(hits[f, "logged"] for f, _ in hits)  # the expert never collides
    assert hits["stalled_car_lane_change", "blind"]  # keeping straight at v0 runs into the stalled car
