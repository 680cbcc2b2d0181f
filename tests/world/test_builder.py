"""ar1_jax/world/builder.py: scripted trajectories by hand, road layouts and their maps, RNG streams, and
ambient traffic that keeps clear of the event agents."""

import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.world.builder import (STREAM_EVENT, STREAM_ROAD, Intersection, Road, agent_poses, brake_profile,
                                   build_map, integrate_speed, rng)
from ar1_jax.world.families import generate
from ar1_jax.world.geometry import boxes_overlap_np


def test_agent_poses_take_the_heading_from_motion():
    ts = np.arange(5.0)
    p = agent_poses(np.array([0.0, 1.0, 2.0, 2.0, 2.0]), 0.0, ts, default_yaw=0.5)
    assert p.shape == (5, 3) and p[:, 2].tolist() == [0.0] * 5  # heading held after stopping
    p = agent_poses(0.0, np.array([0.0, 0.0, 1.0, 2.0, 3.0]), ts, default_yaw=0.5)
    np.testing.assert_allclose(p[:, 2], [0.5] + [np.pi / 2] * 4)  # standing at first: the default
    assert agent_poses(1.0, 2.0, ts, yaw=0.3).tolist() == [[1.0, 2.0, 0.3]] * 5


def test_speed_integration_and_braking_profile():
    ts = np.arange(5.0)
    np.testing.assert_allclose(integrate_speed(np.array([0.0, 2.0, 2.0, 4.0, 4.0]), ts, 1), [-1, 0, 2, 5, 9])
    # 10 m/s, stand at 30 m braking at 2 m/s^2: brakes from t = 0.5 s (at 5 m), stands from t = 5.5 s.
    x = brake_profile(0.0, 10.0, 30.0, 2.0, np.arange(8.0))
    np.testing.assert_allclose(x, [0.0, 9.75, 17.75, 23.75, 27.75, 29.75, 30.0, 30.0])
    assert brake_profile(0.0, 10.0, 10.0, 2.0, np.arange(8.0)) is None  # needs 5 m/s^2
    np.testing.assert_allclose(brake_profile(5.0, 2.0, 1.0, 2.0, np.arange(3.0)), [5.0, 7.0, 9.0])  # behind: cruise


def test_road_layout_and_map():
    rd = Road(w=3.5, n_same=2, i_ego=0, n_opp=1, sh_r=1.0, sh_l=0.5, walk=2.0)
    assert (rd.lane_y(1), rd.opp_y(0), rd.y_mid, rd.y_right, rd.y_left) == (3.5, 7.0, 5.25, -2.75, 9.25)
    m = build_map(rd, None)
    assert [ln["id"] for ln in m.lanes] == ["same_0", "same_1", "opp_0"]
    assert m.drivable == [(-150.0, 350.0, -2.75, 9.25)]
    assert [k for k, _ in m.lines] == ["solid_white", "dashed_white", "solid_yellow", "solid_yellow", "solid_white"]
    np.testing.assert_allclose(m.lanes[2]["centerline"][:2], [[350.0, 7.0], [345.0, 7.0]])  # opposing: -x
    it = Intersection(x_i=30.0, n=1, w=3.5, sh=0.5)
    assert (it.width, it.x_c, it.stop_x, it.far_stop_x) == (8.0, 34.0, 24.5, 43.5)
    m = build_map(rd, it)
    assert [ln["id"] for ln in m.lanes] == ["same_0", "same_1", "opp_0", "cross_s0", "cross_n0"]
    assert m.drivable[1] == (30.0, 38.0, -120.0, 120.0) and len(m.crosswalks) == 4
    assert [k for k, _ in m.lines].count("stop_line") == 4
    lane_lines = [p for k, p in m.lines if k == "solid_white" and p[0, 1] == p[1, 1] == -1.75]
    assert [p[:, 0].tolist() for p in lane_lines] == [[-150.0, 24.5], [43.5, 350.0]]  # gap across the box


def test_rng_streams_are_per_seed_and_independent():
    a, b = rng(3, STREAM_ROAD).uniform(size=4), rng(3, STREAM_ROAD).uniform(size=4)
    assert a.tolist() == b.tolist()
    assert a[0] != rng(3, STREAM_EVENT).uniform() and a[0] != rng(4, STREAM_ROAD).uniform()


@pytest.mark.parametrize("family", ["red_light_stop", "construction_nudge"])
def test_ambient_traffic_keeps_clear_of_event_agents(family):
    cfg = get_config("ar1_tiny")
    counts = np.zeros(2, int)
    for seed in range(1_000_000, 1_000_004):
        sc = generate(seed, cfg, family=family)
        ambient = [a for a in sc.agents if a.role == "ambient"]
        counts += len(ambient), len(sc.agents) - len(ambient)
        for a in ambient:
            if a.kind == "pedestrian":
                assert not sc.road.on_road(a.poses[:, :2]).any()  # sidewalk pedestrians stay off the road
            for o in sc.agents:
                if o is not a:
                    assert not boxes_overlap_np(a.poses[:, :2], a.poses[:, 2], np.array(a.size[:2]) / 2,
                                                o.poses[:, :2], o.poses[:, 2], np.array(o.size[:2]) / 2).any()
    assert counts.min() > 0  # both kinds present over the four scenes
