"""ar1_jax/world/planner.py: the longitudinal laws by hand, and the expert on small hand-built worlds
(free road, a planned stop, a lead vehicle, a red light turning green, a lane change), plus replaying
a generated scene's own controls from its recorded states."""

import math

import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.world.families import generate
from ar1_jax.world.planner import (MAX_BRAKE, STOP_SPEED, Expert, Plan, PlannerParams, acc_model, free_accel,
                                   stop_accel)
from ar1_jax.world.scene import EGO_FRONT, Agent, Path, RoadMap, TrafficLight

P = PlannerParams(v_set=10.0)  # a_max 1.5, b_comf 2, headway 1.4 s, s0 2 m
STRAIGHT = Path(0.0, 0.0, 0.0, [(1000.0, 0.0)])


def _drive(plan, steps, v0, agents=(), lights=()):
    return Expert(plan, P, list(agents), list(lights), RoadMap(), 0.1).run((0.0, 0.0, 0.0, v0), steps)


def test_longitudinal_laws_by_hand():
    assert free_accel(5.0, 10.0, P) == pytest.approx(1.5 * (1 - 0.5**4))  # 1.40625: IDM's free term
    assert free_accel(12.0, 10.0, P) == -3.0  # above the desired speed: -min(3, 1.5 * 2)
    assert stop_accel(10.0, 5.0, 0.1) == pytest.approx(-25.0 / 20.0)  # v^2 / 2d
    assert stop_accel(0.0, 5.0, 0.1) == -MAX_BRAKE  # at the line: -min(9, v / dt)
    assert stop_accel(0.3, 0.2, 0.1) == pytest.approx(-2.0)  # nearly there and nearly stopped: hold
    # ACC, lead at the same speed 30 m ahead braking at 5 m/s^2: s* = 2 + 10 * 1.4 = 16 m, IDM gives
    # -1.5 (16 / 30)^2 = -0.4267 and the constant-acceleration heuristic -1.25; IDM is the larger.
    assert acc_model(10.0, 30.0, 10.0, -5.0, P) == pytest.approx(-1.5 * (16 / 30) ** 2)
    # Lead at the same speed 100 m ahead: IDM -0.0384 below CAH 0, blended by the tanh law.
    a_idm = -1.5 * 0.16**2
    assert acc_model(10.0, 100.0, 10.0, 0.0, P) == pytest.approx(0.01 * a_idm + 0.99 * 2.0 * math.tanh(a_idm / 2.0))


def test_free_road_reaches_the_set_speed_and_stays_straight():
    st, ctl = _drive(Plan(STRAIGHT), 600, 0.0)
    assert st.shape == (601, 4) and ctl.shape == (601, 2)
    assert 9.7 < st[100, 3] < 10.0 and st[-1, 3] == pytest.approx(10.0, abs=1e-9)
    assert st[:, 3].max() <= 10.0 + 1e-9 and np.all(np.diff(st[:, 0]) >= 0)
    assert np.all(st[:, 1] == 0.0) and np.all(ctl[:, 1] == 0.0)


def test_planned_stop_ends_with_the_front_bumper_at_the_mark():
    st, ctl = _drive(Plan(STRAIGHT, stops=((50.0, 0),)), 200, 10.0)
    assert st[-1, 3] < STOP_SPEED
    assert 49.5 < st[-1, 0] + EGO_FRONT <= 50.0
    assert ctl[:, 0].min() > -2.5  # a comfortable stop from 10 m/s over ~46 m (v^2 / 2d ~ 1.1 m/s^2)


def test_follows_a_slower_lead_at_the_time_headway():
    ts = np.arange(401) * 0.1
    lead = Agent(0, "vehicle", (4.5, 1.9, 1.5), np.stack([30.0 + 5.0 * ts, 0 * ts, 0 * ts], -1), (1, 1, 1))
    st, _ = _drive(Plan(STRAIGHT), 400, 10.0, agents=[lead])
    gap = lead.poses[-1, 0] - 4.5 / 2 - (st[-1, 0] + EGO_FRONT)
    assert st[-1, 3] == pytest.approx(5.0, abs=1e-3)
    assert 9.0 <= gap < 9.5  # s0 + v * headway = 2 + 5 * 1.4 = 9 m


def test_red_light_stops_then_green_releases():
    light = TrafficLight(0, (60.0, 0.0, 5.0), math.pi, "r" * 150 + "g" * 300, ((50.0, -2.0), (50.0, 2.0)))
    st, _ = _drive(Plan(STRAIGHT, lights=((0, 50.0),)), 300, 10.0, lights=[light])
    assert st[140, 3] < STOP_SPEED and 48.5 < st[140, 0] + EGO_FRONT <= 49.0  # 1 m before the line
    assert st[-1, 3] > 9.5 and st[-1, 0] > 100.0  # green at step 150: off again


def test_lane_change_follows_the_offset_ramp():
    st, ctl = _drive(Plan(STRAIGHT, ramps=((10.0, 40.0, 3.5),)), 100, 10.0)
    assert st[-1, 1] == pytest.approx(3.5, abs=1e-3) and abs(st[-1, 2]) < 1e-4
    assert 0.0 < np.abs(ctl[:, 1]).max() < 0.02


def test_expert_replays_a_generated_scene():
    cfg = get_config("ar1_tiny")
    sc = generate(1_000_011, cfg, family="cut_in")
    ex = sc.expert()
    for j in range(sc.t0_index + 10):
        x, y, h, v = sc.ego[j]
        prev = sc.ego_controls[j - 1, 0] if j else free_accel(v, sc.params.v_set, sc.params)
        a, kappa = ex.control(j, x, y, h, v, prev)
        np.testing.assert_allclose(max(0.0, v + a * sc.dt), sc.ego[j + 1, 3], atol=1e-9)
        np.testing.assert_allclose(kappa, sc.ego_controls[j, 1], atol=1e-12)
