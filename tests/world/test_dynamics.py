"""world/dynamics.py: the ego step is the expert's update, log replay retraces the log, and a reactive
agent brakes for an ego standing in its path (where a log-replayed one drives into it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.world import dynamics
from ar1_jax.world.families import generate
from ar1_jax.world.scene import Agent


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny")


def test_ego_step_retraces_the_experts_drive(cfg):
    scene = generate(int(np.random.default_rng().integers(10_000)), cfg)
    step = jax.jit(dynamics.ego_step, static_argnums=2)
    state = jnp.asarray(scene.ego[0], jnp.float32)
    for k in range(len(scene.times) - 1):
        state = step(state, jnp.asarray(scene.ego_controls[k], jnp.float32), scene.dt)
    np.testing.assert_allclose(np.asarray(state[:2]), scene.ego[-1, :2], atol=2e-3)
    np.testing.assert_allclose(float(state[3]), scene.ego[-1, 3], atol=1e-3)


def test_ego_speed_never_goes_negative():
    s = dynamics.ego_step(jnp.asarray([0.0, 0.0, 0.0, 0.5]), jnp.asarray([-9.0, 0.1]), 0.1)
    assert float(s[3]) == 0.0
    # it stops within the step: the trapezoid moves it by (0.5 + 0) / 2 * 0.1 m
    np.testing.assert_allclose(float(s[0]), 0.025, atol=1e-6)


def _car_behind(speed: float, steps: int, dt: float = 0.1) -> Agent:
    """A car 30 m behind the origin on y = 0, driving +x at `speed`."""
    t = np.arange(steps) * dt
    poses = np.stack([-30.0 + speed * t, np.zeros(steps), np.zeros(steps)], -1)
    return Agent(id=0, kind="vehicle", size=(4.5, 1.9, 1.5), poses=poses, color=(0, 0, 0))


@pytest.mark.parametrize("reactive", [False, True])
def test_reactive_agent_stops_behind_a_standing_ego_log_replay_does_not(reactive):
    dt, steps = 0.1, 60
    tracks = dynamics.agent_tracks([_car_behind(10.0, steps)], first=0, steps=steps, max_agents=3)
    assert tracks.valid.tolist() == [True, False, False] and tracks.reactive.tolist() == [True, False, False]
    ego = jnp.asarray([0.0, 0.0, 0.0, 0.0])  # standing at the origin, rear axle; box [-1.0, 3.8] along x
    half, offset = jnp.asarray([2.4, 0.975]), 1.4
    state = dynamics.initial_agent_state(tracks, dt)
    np.testing.assert_allclose(np.asarray(state.v)[0], 10.0, atol=2e-3)  # + the 1e-4 m per step arclength tie-breaker
    step = jax.jit(dynamics.agents_step, static_argnums=(6, 7))
    fronts = []
    for k in range(steps - 1):
        state = step(tracks, state, k, ego, half, offset, dt, reactive)
        fronts.append(float(dynamics.agent_poses_at(tracks, state.s)[0, 0]) + 2.25)  # the car's front bumper x
    if reactive:
        gap = -1.0 - max(fronts)  # to the ego's rear bumper at x = -1.0
        assert 1.0 < gap < dynamics.IDM_S0 + 1.0, gap  # IDM settles near its standstill gap
        assert float(state.v[0]) < 0.3  # creeping in, as IDM does near the standstill gap
    else:
        assert max(fronts) > 0.0  # replayed through the ego
        np.testing.assert_allclose(fronts[-1], -30.0 + 10.0 * dt * (steps - 1) + 2.25, atol=1e-3)


def test_unobstructed_reactive_agents_follow_their_logs(cfg):
    scene = generate(int(np.random.default_rng().integers(10_000)), cfg)
    n = scene.horizon
    tracks = dynamics.agent_tracks(scene.agents, scene.t0_index, n + 1, max_agents=16)
    far_ego = jnp.asarray([1e4, 1e4, 0.0, 0.0])  # nowhere near anyone's path
    state = dynamics.initial_agent_state(tracks, scene.dt)
    for k in range(n):
        state = dynamics.agents_step(tracks, state, k, far_ego, jnp.asarray([2.4, 0.975]), 1.4, scene.dt, True)
    poses = np.asarray(dynamics.agent_poses_at(tracks, state.s))[: len(scene.agents)]
    logged = np.stack([a.poses[scene.t0_index + n, :2] for a in scene.agents])
    np.testing.assert_allclose(poses[:, :2], logged, atol=5e-3)


def test_agent_tracks_rejects_too_many_agents():
    with pytest.raises(ValueError, match="max_agents=1"):
        dynamics.agent_tracks([_car_behind(1.0, 5), _car_behind(2.0, 5)], 0, 5, max_agents=1)
