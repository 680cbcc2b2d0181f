"""The rule-based expert ego: IDM/ACC longitudinal control and pure pursuit on an offset path.

Units: m, s, rad, m/s, m/s^2, 1/m; world frame. Each 0.1 s step the `Expert` picks (acceleration,
curvature) from the ego state and the scene at that step; the state update is the unicycle of
`ar1_jax.action.unicycle.integrate`. The helpers `acc_model`, `free_accel` and `stop_accel` are the
longitudinal laws, usable on their own (e.g. for IDM agents in a simulator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ar1_jax.world.scene import EGO_FRONT, EGO_WIDTH, Agent, Path, RoadMap, TrafficLight, lateral_offset

__all__ = ["STOP_SPEED", "MAX_BRAKE", "MAX_CURVATURE", "PlannerParams", "Plan", "acc_model", "free_accel",
           "stop_accel", "Expert"]

#: Below this speed (m/s) the ego counts as stopped: the planner holds, the meta-action labeller
#: (`ar1_jax.eval.scoring`) says "stop".
STOP_SPEED = 0.3
#: The expert's hardest braking (m/s^2) and largest |curvature| (1/m).
MAX_BRAKE, MAX_CURVATURE = 9.0, 0.19


@dataclass(frozen=True)
class PlannerParams:
    """IDM/ACC parameters: set speed (m/s), max acceleration and comfortable deceleration (m/s^2), time
    headway (s), standstill gap (m), and the required deceleration at which braking for a red light
    starts (m/s^2)."""

    v_set: float
    a_max: float = 1.5
    b_comf: float = 2.0
    headway: float = 1.4
    s0: float = 2.0
    brake_onset: float = 2.0


@dataclass(frozen=True)
class Plan:
    """What the expert intends: a reference `path`, lateral-offset `ramps` along it, speed `zones`
    (s_start, s_end, v_max) in rear-axle arclength, planned `stops` (front-bumper arclength, first
    step index it applies from), and the `lights` it obeys as (light index, stop-line arclength)."""

    path: Path
    ramps: tuple[tuple[float, float, float], ...] = ()
    zones: tuple[tuple[float, float, float], ...] = ()
    stops: tuple[tuple[float, int], ...] = ()
    lights: tuple[tuple[int, float], ...] = ()


def acc_model(v, gap, v_lead, a_lead, p: PlannerParams) -> float:
    """Treiber & Kesting's ACC model: IDM blended with the constant-acceleration heuristic so that a
    cut-in or a braking lead does not cause over-braking. Speeds m/s, gap m (bumper to bumper),
    accelerations m/s^2; returns the acceleration."""
    gap = max(gap, 0.1)
    dv = v - v_lead
    s_star = p.s0 + max(0.0, v * p.headway + v * dv / (2.0 * math.sqrt(p.a_max * p.b_comf)))
    a_idm = p.a_max * (1.0 - (v / max(p.v_set, 0.1)) ** 4 - (s_star / gap) ** 2)
    a_le = min(a_lead, p.a_max)
    if v_lead * dv < -2.0 * gap * a_le:
        denom = v_lead * v_lead - 2.0 * gap * a_le
        a_cah = v * v * a_le / denom if denom > 1e-9 else a_le
    else:
        a_cah = a_le - (dv * dv if dv > 0 else 0.0) / (2.0 * gap)
    if a_idm >= a_cah:
        return a_idm
    return 0.01 * a_idm + 0.99 * (a_cah + p.b_comf * math.tanh((a_idm - a_cah) / p.b_comf))


def free_accel(v, v_des, p: PlannerParams) -> float:
    """The free-road law toward the desired speed `v_des` (m/s): IDM's free term below it, a bounded
    deceleration above it (m/s^2)."""
    if v <= v_des:
        return p.a_max * (1.0 - (v / max(v_des, 0.1)) ** 4)
    return -min(3.0, 1.5 * (v - v_des))


def stop_accel(d, v, dt) -> float:
    """The constant deceleration (m/s^2) that stops within `d` metres; hold once there (or past it)."""
    if d <= 0.0 or (d <= 0.5 and v < STOP_SPEED):
        return -min(MAX_BRAKE, v / dt)
    return -v * v / (2.0 * d)


class Expert:
    """The rule-based expert: each 0.1 s step picks (acceleration, curvature) from the scene state.

    Longitudinal: min of the free-road law toward min(set speed, speed zones), the ACC law behind the
    nearest agent in the planned corridor (the path shifted by the offset profile, agents predicted
    0.8 s ahead laterally), a stop before pedestrians on the road that are in or walking toward the
    corridor, a stop at red lights once the needed deceleration reaches `brake_onset` (latched), and
    planned stops; then jerk-limited and clipped. Lateral: pure pursuit on the offset path,
    |curvature| <= MAX_CURVATURE. The state update is the unicycle of `ar1_jax.action.unicycle.integrate`.
    Agents are log-replayed, so the expert can also be asked for controls from any ego state
    (`control`), e.g. by a closed-loop simulator.
    """

    def __init__(self, plan: Plan, params: PlannerParams, agents: list[Agent], lights: list[TrafficLight],
                 road: RoadMap, dt: float):
        self.plan, self.p, self.lights, self.dt = plan, params, lights, dt
        self.latched: set[int] = set()
        self._agents = self._precompute(agents, road)

    def _precompute(self, agents, road):
        """Per agent near the corridor, per step: its arclength, offset from the corridor centre, speeds
        along and across the path, acceleration, half extents along and across, on-road, oncoming."""
        out = []
        for ag in agents:
            xy = ag.poses[:, :2]
            s, l = self.plan.path.project(xy)
            c = lateral_offset(self.plan.ramps, s)
            if np.min(np.abs(l - c)) > 10.0:
                continue  # never near the corridor
            ph = self.plan.path.poses(s)[:, 2]
            vel = np.gradient(xy, self.dt, axis=0)
            vs = vel[:, 0] * np.cos(ph) + vel[:, 1] * np.sin(ph)
            vl = -vel[:, 0] * np.sin(ph) + vel[:, 1] * np.cos(ph)
            acc = np.gradient(vs, self.dt)
            rel = ag.poses[:, 2] - ph
            ln, wd = ag.size[0] / 2, ag.size[1] / 2
            lon_h = np.abs(ln * np.cos(rel)) + np.abs(wd * np.sin(rel))
            lat_h = np.abs(ln * np.sin(rel)) + np.abs(wd * np.cos(rel))
            onroad = road.on_road(xy)
            opposite = np.cos(rel) < -0.5
            out.append((ag.kind == "pedestrian", *(a.tolist() for a in (s, l - c, vs, vl, acc, lon_h, lat_h,
                                                                          onroad, opposite))))
        return out

    def control(self, k: int, x: float, y: float, h: float, v: float, a_prev: float) -> tuple[float, float]:
        """(acceleration m/s^2, curvature 1/m) to apply over step k -> k+1 from the ego state (world x, y,
        heading, speed) and the previous acceleration (for the jerk limit). Stateful: a red light it has
        started braking for stays latched until it turns green, so call it for consecutive steps."""
        p, dt, plan = self.p, self.dt, self.plan
        s = plan.path.project1(x, y)
        s_front = s + EGO_FRONT
        v_des = p.v_set
        for z0, z1, vz in plan.zones:
            if s < z1:
                v_des = min(v_des, vz if s >= z0 else math.sqrt(vz * vz + 2.0 * 1.5 * (z0 - s)))
        a = free_accel(v, v_des, p)
        lead = None
        for is_ped, sa, rel, vs, vl, acc, lon_h, lat_h, onroad, opposite in self._agents:
            gap = sa[k] - lon_h[k] - s_front
            if gap < -0.5 or gap > 150.0:
                continue
            r, half = rel[k], EGO_WIDTH / 2 + lat_h[k]
            if is_ped:
                toward = r * vl[k] < 0 and abs(vl[k]) > 0.2 and abs(r) < 15.0
                if onroad[k] and (abs(r) < half + 0.8 or toward):
                    a = min(a, stop_accel(gap - 2.0, v, dt))
                continue
            if opposite[k]:
                continue
            r_pred = r + vl[k] * 0.8 if r * vl[k] < 0 else r
            if min(abs(r), abs(r_pred)) < half + 0.3 and (lead is None or gap < lead[0]):
                lead = (gap, max(vs[k], 0.0), acc[k])
        if lead is not None:
            a = min(a, acc_model(v, lead[0], lead[1], lead[2], p))
            if lead[1] < 0.5 and lead[2] > -0.5:  # a standing lead: come to a full stop s0 + 1 m behind it
                a = min(a, stop_accel(lead[0] - p.s0 - 1.0, v, dt))
        for li, s_line in plan.lights:
            d = s_line - 1.0 - s_front
            if d < -1.0:
                continue
            if self.lights[li].states[k] == "g":
                self.latched.discard(li)
                continue
            if li in self.latched or v * v / (2.0 * max(d, 0.1)) >= p.brake_onset:
                self.latched.add(li)
                a = min(a, stop_accel(d, v, dt))
        for s_stop, k_from in plan.stops:
            if k >= k_from:
                a = min(a, stop_accel(s_stop - s_front, v, dt))
        jerk_down = 6.0 if a > -3.5 else 25.0
        a = min(max(a, a_prev - jerk_down * dt, -MAX_BRAKE), a_prev + 3.0 * dt, 4.0)
        # Pure pursuit on the offset path.
        look = min(max(2.5 + 0.5 * v, 4.0), 10.0)
        px, py, ph = plan.path.pose(s + look)
        d_off = float(lateral_offset(plan.ramps, s + look))
        dx, dy = px - d_off * math.sin(ph) - x, py + d_off * math.cos(ph) - y
        lx, ly = dx * math.cos(h) + dy * math.sin(h), -dx * math.sin(h) + dy * math.cos(h)
        kappa = 2.0 * ly / max(lx * lx + ly * ly, 1e-6)
        return a, min(max(kappa, -MAX_CURVATURE), MAX_CURVATURE)

    def run(self, state: tuple[float, float, float, float], num_steps: int, a0: float | None = None,
            first_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Drives `num_steps` steps from (x, y, heading, speed) at scene step `first_step`: states
        `[num_steps + 1, 4]` and the applied controls `[num_steps + 1, 2]` (the last row repeats the one
        before). `a0`: the acceleration applied over the step before (the jerk limit's start)."""
        x, y, h, v = state
        dt = self.dt
        a_prev = free_accel(v, self.p.v_set, self.p) if a0 is None else a0
        states = [(x, y, h, v)]
        controls = []
        for k in range(num_steps):
            a, kappa = self.control(first_step + k, x, y, h, v, a_prev)
            v1 = max(0.0, v + a * dt)
            a = (v1 - v) / dt
            h1 = h + kappa * v * dt + kappa * a * 0.5 * dt * dt
            x += 0.5 * dt * (v * math.cos(h) + v1 * math.cos(h1))
            y += 0.5 * dt * (v * math.sin(h) + v1 * math.sin(h1))
            h, v, a_prev = h1, v1, a
            states.append((x, y, h, v))
            controls.append((a, kappa))
        controls.append(controls[-1] if controls else (0.0, 0.0))
        return np.asarray(states), np.asarray(controls)
