"""ar1_jax/world/scene.py: the reference path on a hand-computed quarter circle, offset ramps, the map's
array views, the ego footprint, and a generated scene's frames, agents and lights."""

import math

import numpy as np
import pytest

from ar1_jax.config import Config, SynthConfig, get_config
from ar1_jax.world.families import generate
from ar1_jax.world.scene import (EGO_FRONT, EGO_REAR, EGO_WIDTH, Path, RoadMap, as_config, ego_footprint,
                                 lateral_offset, smoothstep, wrap_angle)

CFG = get_config("ar1_tiny")
# 10 m straight, a left quarter circle of radius 10 m (centre (10, 10)), then 10 m straight up +y.
ARC = Path(0.0, 0.0, 0.0, [(10.0, 0.0), (5 * math.pi, 0.1), (10.0, 0.0)])


def test_path_poses_on_a_quarter_circle():
    assert ARC.length == pytest.approx(20 + 5 * math.pi)
    np.testing.assert_allclose(ARC.pose(10.0), (10.0, 0.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(ARC.pose(10 + 2.5 * math.pi), (10 + 10 / math.sqrt(2), 10 - 10 / math.sqrt(2),
                                                                math.pi / 4), atol=1e-12)
    np.testing.assert_allclose(ARC.pose(10 + 5 * math.pi + 5), (20.0, 15.0, math.pi / 2), atol=1e-12)
    np.testing.assert_allclose(ARC.pose(-5.0), (-5.0, 0.0, 0.0), atol=1e-12)  # the first line extends back
    s = np.array([-5.0, 10.0, 10 + 5 * math.pi + 5])
    np.testing.assert_allclose(ARC.poses(s), [ARC.pose(v) for v in s], atol=1e-12)
    assert ARC.polyline(2.0, 0.0, 10.0).tolist() == [[0, 0], [2, 0], [4, 0], [6, 0], [8, 0], [10, 0]]


def test_path_projection_gives_frenet_coordinates():
    r = 8 / math.sqrt(2)  # 2 m inside the arc's midpoint, toward the centre: to the left
    s, lat = ARC.project(np.array([[20.0, 12.0], [18.0, 15.0], [10 + r, 10 - r], [3.0, -1.5]]))
    np.testing.assert_allclose(s, [10 + 5 * math.pi + 2, 10 + 5 * math.pi + 5, 10 + 2.5 * math.pi, 3.0], atol=1e-9)
    np.testing.assert_allclose(lat, [0.0, 2.0, 2.0, -1.5], atol=1e-9)
    assert ARC.project1(20.0, 12.0) == pytest.approx(10 + 5 * math.pi + 2)
    assert Path(0.0, 1.0, 0.0, [(50.0, 0.0)]).project1(7.0, 3.0) == 7.0  # the straight fast path


def test_smoothstep_and_offset_ramps():
    np.testing.assert_allclose(smoothstep(np.array([-1.0, 0.0, 0.5, 1.0, 2.0])), [0, 0, 0.5, 1, 1])
    ramps = ((0.0, 10.0, 2.0), (20.0, 30.0, -2.0))  # out by 2 m, back again
    np.testing.assert_allclose(lateral_offset(ramps, np.array([-5.0, 5.0, 15.0, 25.0, 40.0])), [0, 1, 2, 1, 0])


def test_road_map_array_views():
    m = RoadMap(drivable=[(0.0, 100.0, -2.0, 5.0), (40.0, 50.0, -60.0, 60.0)])
    m.lanes.append(dict(id="same_0", kind="same", width=3.5, heading=0.0, centerline=np.array([[0, 0], [5, 0],
                                                                                              [10, 0.0]])))
    m.lanes.append(dict(id="cross_n0", kind="cross", width=3.0, heading=math.pi / 2,
                        centerline=np.array([[45.0, -60.0], [45.0, 60.0]])))
    assert m.drivable_rects().shape == (2, 4) and m.drivable_rects().dtype == np.float64
    assert m.on_road(np.array([[0.0, -2.0], [50.0, 5.0], [45.0, -50.0], [60.0, -3.0], [-0.1, 0.0]])).tolist() == [
        True, True, True, False, False]  # edges count as road
    assert RoadMap().on_road(np.zeros((3, 2))).tolist() == [False] * 3
    a, b, lane, half = m.lane_segments()
    assert a.tolist() == [[0, 0], [5, 0], [45, -60]] and b.tolist() == [[5, 0], [10, 0], [45, 60]]
    assert lane.tolist() == [0, 0, 1] and lane.dtype == np.int32 and half.tolist() == [1.75, 1.75, 1.5]
    assert all(x.shape[0] == 0 for x in RoadMap().lane_segments())


def test_ego_footprint_and_angles():
    c, yaw, half = ego_footprint(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, math.pi / 2]]))
    assert half == ((EGO_FRONT + EGO_REAR) / 2, EGO_WIDTH / 2) == (2.4, 0.975)
    np.testing.assert_allclose(c, [[1.4, 0.0], [1.0, 3.4]], atol=1e-12)  # the body centre, 1.4 m ahead
    np.testing.assert_allclose(yaw, [0.0, math.pi / 2])
    np.testing.assert_allclose(wrap_angle(np.array([1.5 * math.pi, -1.5 * math.pi, math.pi, 0.3])),
                               [-0.5 * math.pi, 0.5 * math.pi, -math.pi, 0.3])


def test_as_config():
    assert as_config(None, "x") == Config() and as_config(CFG, "x") is CFG
    with pytest.raises(TypeError, match="render: cfg must be an ar1_jax.config.Config"):
        as_config(SynthConfig(), "render")


def test_scene_frames_agents_and_lights():
    sc = generate(1_000_000, CFG, family="red_light_stop")
    x0, y0, h0 = sc.origin
    assert (x0, y0, h0, sc.v0) == tuple(float(v) for v in sc.ego[sc.t0_index])
    hx, hy = sc.history()
    fx, fy = sc.future()
    assert hx.shape == (16, 3) and hy.shape == (16,) and fx.shape == (64, 3) and fy.shape == (64,)
    assert hx.dtype == fx.dtype == np.float32 and np.all(hx[:, 2] == 0) and np.all(hx[-1] == 0) and hy[-1] == 0
    # ego0 = the world translated to the t0 rear axle and turned by -yaw0.
    xy = np.array([[x0 + 3.0 * math.cos(h0) - 1.0 * math.sin(h0), y0 + 3.0 * math.sin(h0) + 1.0 * math.cos(h0)]])
    np.testing.assert_allclose(sc.to_ego0(xy), [[3.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(fx[:, :2], sc.to_ego0(sc.ego[16:80, :2]).astype(np.float32))
    k = sc.t0_index + 5
    np.testing.assert_allclose(sc.agents_at(float(sc.times[k])), np.stack([a.poses[k] for a in sc.agents]),
                               atol=1e-9)
    past = sc.agents_at(float(sc.times[-1]) + 2.0)  # held velocity past the end of the grid
    for a, p in zip(sc.agents, past):
        vel = (a.poses[-1, :2] - a.poses[-2, :2]) / sc.dt
        np.testing.assert_allclose(p[:2], a.poses[-1, :2] + 2.0 * vel, atol=1e-6)
    assert sc.lights and sc.light_states_at(0.0) == ["r"] * len(sc.lights)
    assert sc.light_states_at(-99.0) == sc.light_states_at(99.0) == ["r"] * len(sc.lights)  # clamped
    assert sc.expert().plan is sc.plan
