"""The scenario families: what each decides and why (`FAMILY_SPECS`), how often each occurs, the
builders that script each one, and `generate`, which turns a seed into a `Scene`.

Families occur with the long-tail frequencies of `cfg.synth` (`SynthConfig`); the family of a seed is
drawn by a Weyl (golden-ratio) sequence, so any run of consecutive seeds matches the frequencies
closely. Pixel-decided pairs (`PIXEL_PAIRS`) share road, ego speed and history for the same seed and
differ only in what the cameras see (light colour, a pedestrian stepping out). Units: m, s, rad, m/s,
m/s^2; world frame (see `ar1_jax.world`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ar1_jax.text import coc
from ar1_jax.world.builder import (STREAM_TEXT, SceneBuilder, add_ambient, agent_poses, build_map, integrate_speed,
                                   rng)
from ar1_jax.world.planner import Expert, Plan
from ar1_jax.world.scene import EGO_FRONT, EGO_REAR, EGO_WIDTH, MAX_AGENTS, Agent, Path, Scene, as_config, smoothstep

__all__ = ["FamilySpec", "FAMILY_SPECS", "FAMILIES", "PIXEL_PAIRS", "family_frequencies", "family_of", "generate"]

L, T_, C_ = coc.Longitudinal, coc.Lateral, coc.Component


@dataclass(frozen=True)
class FamilySpec:
    """A family's decisions (lateral None/direction None here when chosen per scene), the kinds of
    cause, cause phrases (each starts with a `coc.CAUSE_LINKS` word) and the cue that decides it."""

    longitudinal: coc.Longitudinal | None
    lateral: coc.Lateral | None
    components: tuple[coc.Component, ...]
    causes: tuple[str, ...]
    cue: str


FAMILY_SPECS: dict[str, FamilySpec] = {
    "lane_follow": FamilySpec(L.SET_SPEED, T_.LANE_KEEP, (C_.LANES,), (
        "as the lane ahead is clear", "since the road ahead is clear", "with no vehicle ahead in the lane"),
        "an empty lane"),
    "lead_follow": FamilySpec(L.LEAD_FOLLOW, T_.LANE_KEEP, (C_.OBJECTS,), (
        "behind the slower vehicle ahead", "to keep pace with the car in front", "due to the vehicle ahead in the lane"),
        "a vehicle ahead in the lane"),
    "red_light_stop": FamilySpec(L.STOP, T_.LANE_KEEP, (C_.TRAFFIC_LIGHTS,), (
        "at the red traffic light", "because the traffic light ahead is red", "for the red signal at the intersection"),
        "red bulbs on the signal heads"),
    "green_light_go": FamilySpec(L.SET_SPEED, T_.LANE_KEEP, (C_.TRAFFIC_LIGHTS,), (
        "as the traffic light ahead is green", "since the signal at the intersection is green",
        "given the green light at the intersection"), "green bulbs on the signal heads"),
    "yield_pedestrian": FamilySpec(L.YIELD, None, (C_.OBJECTS, C_.STOP_YIELD_CONTROLS), (
        "to the pedestrian on the crosswalk", "for the pedestrian crossing at the crosswalk",
        "as a pedestrian is using the crosswalk ahead"), "a pedestrian entering the crosswalk"),
    "jaywalker": FamilySpec(L.STOP, None, (C_.OBJECTS,), (
        "for the pedestrian stepping into the road", "because a pedestrian walked into the lane ahead",
        "due to the jaywalker standing in the lane"), "a pedestrian stepping off the curb mid-block"),
    "cut_in": FamilySpec(L.SPEED_ADAPTATION, T_.LANE_KEEP, (C_.OBJECTS,), (
        "as a vehicle cuts in from the {side} lane", "for the car merging into the lane ahead",
        "to open a gap to the vehicle cutting in"), "a slower car drifting over with its indicator on"),
    "construction_nudge": FamilySpec(L.SPEED_ADAPTATION, None, (C_.ROAD_EVENTS, C_.OBJECTS), (
        "to keep clear of the cones encroaching into the lane", "for the construction zone narrowing the lane",
        "because cones block part of the lane"), "cones on the lane edge"),
    "stalled_car_lane_change": FamilySpec(None, T_.LANE_CHANGE, (C_.OBJECTS,), (
        "to pass the stalled vehicle blocking the lane", "because a broken-down car is stopped in the lane ahead",
        "around the disabled vehicle with its hazard lights on"), "a stopped car with hazard lights"),
    "turn": FamilySpec(L.SPEED_ADAPTATION, T_.TURN, (C_.ROUTING,), (
        "to follow the planned route", "for the route at the upcoming intersection",
        "at the intersection as the route requires"), "turn arrows painted in the ego lane"),
    "emergency_stop": FamilySpec(L.STOP, None, (C_.OBJECTS,), (
        "because the vehicle ahead is braking hard", "for the sudden hard braking of the lead car",
        "as the car in front stops abruptly"), "brake lights of the lead vehicle"),
    "pull_over": FamilySpec(L.STOP, T_.PULL_OVER, (C_.OBJECTS, C_.ROAD_EVENTS), (
        "to let the approaching emergency vehicle pass", "for the ambulance approaching with flashing lights",
        "because an emergency vehicle is coming"), "an oncoming emergency vehicle with flashing lights"),
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)
#: (pixel-decided family, its look-alike): for the same seed the histories are identical and only the
#: images differ (light colour; a pedestrian stepping out).
PIXEL_PAIRS: tuple[tuple[str, str], ...] = (
    ("red_light_stop", "green_light_go"), ("jaywalker", "lane_follow"), ("yield_pedestrian", "lane_follow"))

_GOLDEN = 0.6180339887498949


def family_frequencies(cfg=None) -> dict[str, float]:
    """The families and frequencies of `cfg.synth`, normalised to sum 1, in config order."""
    s = as_config(cfg, "family_frequencies").synth
    if len(s.families) != len(s.frequencies) or not s.families:
        raise ValueError(f"SynthConfig: families ({len(s.families)}) and frequencies ({len(s.frequencies)}) "
                         "must be non-empty and of equal length")
    unknown = [f for f in s.families if f not in FAMILY_SPECS]
    if unknown:
        raise ValueError(f"SynthConfig.families: unknown {unknown}; known: {list(FAMILIES)}")
    if len(set(s.families)) != len(s.families):
        raise ValueError(f"SynthConfig.families: duplicates in {s.families}")
    w = np.asarray(s.frequencies, np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"SynthConfig.frequencies: expected non-negative weights with a positive sum, got "
                         f"{s.frequencies}")
    return dict(zip(s.families, (w / w.sum()).tolist()))


def family_of(seed: int, cfg=None) -> str:
    """The family of scene `seed`: the golden-ratio sequence frac(0.5 + seed * 0.618...) through the
    cumulative frequencies of `cfg.synth`, so consecutive seeds follow the configured frequencies closely."""
    freqs = family_frequencies(cfg)
    u = (0.5 + int(seed) * _GOLDEN) % 1.0
    acc = 0.0
    for name, f in freqs.items():
        acc += f
        if u < acc:
            return name
    return next(n for n, f in reversed(list(freqs.items())) if f > 0)


# ----------------------------------------------------------------------------------------------------
# The families' builders: each scripts its event on a `SceneBuilder`.


def _fam_lane_follow(b: SceneBuilder):
    b.history_run()


def _fam_lead_follow(b: SceneBuilder):
    r = b.re
    v_l = r.uniform(max(4.5, b.v_set - 6.0), b.v_set - 1.0)
    b.v_init = v_l + r.uniform(-1.0, 1.0)
    amp, period, phase = r.uniform(0.0, min(1.2, v_l - 4.0)), r.uniform(6.0, 12.0), r.uniform(0, 2 * math.pi)
    v = v_l + amp * np.sin(2 * math.pi * b.ts / period + phase)
    size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
    gap = (2.0 + b.v_init * b.params_kw["headway"]) * r.uniform(0.9, 1.4)
    dist, _ = b.history_run()
    x_start = -dist + EGO_FRONT + gap + size[0] / 2
    x = x_start + integrate_speed(v, b.ts, 0)
    b.add("vehicle", agent_poses(x, 0.0, b.ts, yaw=0.0), "lead", size=size)


def _fam_emergency_stop(b: SceneBuilder):
    r = b.re
    v_l = r.uniform(8.0, 14.0)
    b.v_init, b.v_set = v_l, v_l + r.uniform(0.5, 2.0)
    t_b, decel = r.uniform(-0.3, 0.0), r.uniform(5.0, 7.5)
    v = np.where(b.ts < t_b, v_l, np.maximum(0.0, v_l - decel * (b.ts - t_b)))
    size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
    gap = (2.0 + v_l * b.params_kw["headway"]) * r.uniform(1.0, 1.3)
    dist, _ = b.history_run()
    x = -dist + EGO_FRONT + gap + size[0] / 2 + integrate_speed(v, b.ts, 0)
    b.add("vehicle", agent_poses(x, 0.0, b.ts, yaw=0.0), "braking_lead", size=size)
    b.info["lead_decel"] = decel


def _intersection_ahead(b: SceneBuilder) -> float:
    """Places a signalised intersection so that a red light needs exactly `brake_onset` (x1.02) at t0."""
    b.v_init = b.v_set - 0.4 * (b.v_set - b.v_init)
    _, v0 = b.history_run()
    stop_x = EGO_FRONT + 1.0 + v0 * v0 / (2.0 * b.params_kw["brake_onset"] * 1.02)
    b.add_intersection(stop_x + 5.5)
    return stop_x


def _fam_red_light_stop(b: SceneBuilder):
    _intersection_ahead(b)
    b.add_lights("r")
    b.add_cross_traffic(moving=True)


def _fam_green_light_go(b: SceneBuilder):
    _intersection_ahead(b)
    b.add_lights("g")
    b.add_cross_traffic(moving=False)


def _pedestrian(b: SceneBuilder, x: float, y_from: float, y_to: float, speed: float, t_enter: float, role: str,
                stand: tuple[float, float] | None = None) -> Agent:
    """A pedestrian crossing at x from the road edge y_from (reached at t_enter) toward y_to; with
    `stand` = (y, until_t) it stops at y until until_t, then goes on."""
    sgn = 1.0 if y_to > y_from else -1.0
    y = y_from + sgn * speed * (b.ts - t_enter)
    if stand is not None:
        y_s, t_go = stand
        t_s = t_enter + abs(y_s - y_from) / speed
        y = np.where(b.ts < t_s, y, np.where(b.ts < t_go, y_s, y_s + sgn * speed * (b.ts - t_go)))
    y = np.clip(y, min(y_from, y_to) - 20, max(y_from, y_to)) if sgn > 0 else np.clip(y, y_to, y_from + 20)
    return b.add("pedestrian", agent_poses(x + 0.0 * y, y, b.ts, default_yaw=sgn * math.pi / 2), role)


def _fam_jaywalker(b: SceneBuilder):
    r = b.re
    _, v0 = b.history_run()
    decel = r.uniform(2.5, 4.0)
    x_p = EGO_FRONT + v0 * v0 / (2 * decel) + 2.0 + 0.3
    rd = b.road
    _pedestrian(b, x_p, rd.y_right, rd.y_left + rd.walk, r.uniform(1.3, 2.0), 0.0, "jaywalker",
                stand=(r.uniform(-0.6, 0.6), r.uniform(7.5, 9.0)))
    b.info["required_decel"] = decel


def _fam_yield_pedestrian(b: SceneBuilder):
    r = b.re
    _, v0 = b.history_run()
    decel = r.uniform(1.2, 2.5)
    x_c = EGO_FRONT + v0 * v0 / (2 * decel) + 2.0 + 1.75
    rd = b.road
    b.crosswalk_x = x_c
    from_right = r.uniform() < 0.65 or rd.n_opp == 0
    a, z = (rd.y_right, rd.y_left + rd.walk) if from_right else (rd.y_left, rd.y_right - rd.walk)
    _pedestrian(b, x_c + r.uniform(-0.8, 0.8), a, z, r.uniform(1.1, 1.6), 0.0, "crossing_pedestrian")


def _fam_cut_in(b: SceneBuilder):
    r, rd = b.re, b.road
    if rd.n_same == 1:
        rd.n_same, rd.i_ego = 2, int(b.spare[0] < 0.5)
    b.v_init = b.v_set
    left_ok, right_ok = rd.i_ego < rd.n_same - 1, rd.i_ego > 0
    side = "left" if left_ok and (not right_ok or b.spare[1] < 0.6) else "right"
    y_lane = rd.w if side == "left" else -rd.w
    _, v0 = b.history_run()
    dv = r.uniform(1.5, 4.0)
    v_c = max(4.0, v0 - dv)
    dv = v0 - v_c
    length = r.uniform(4.2, 5.0)
    gap = dv * 1.5 + dv * dv / 5.0 + r.uniform(3.0, 8.0)
    t_s, dur = r.uniform(-0.3, 0.2), r.uniform(2.5, 3.5)
    x = EGO_FRONT + gap + length / 2 + v_c * b.ts
    y = y_lane * (1.0 - smoothstep((b.ts - t_s) / dur))
    b.add("vehicle", agent_poses(x, y, b.ts), "cut_in", size=(length, 1.9, r.uniform(1.4, 1.8)),
          lamps="right" if side == "left" else "left")
    b.keep_out_lanes.add(round(y_lane, 3))
    b.cause_fmt["side"] = side


def _fam_construction_nudge(b: SceneBuilder):
    r, rd = b.re, b.road
    b.v_init = b.v_set
    _, v0 = b.history_run()
    cones_right = b.spare[0] < 0.7
    toward = 1.0 if cones_right else -1.0  # nudge direction: + left
    room = (rd.i_ego < rd.n_same - 1 or rd.n_opp > 0) if toward > 0 else (rd.i_ego > 0 or rd.sh_r >= 1.6)
    out_of_lane = room and r.uniform() < 0.5
    d = r.uniform(1.2, 1.9) if out_of_lane else r.uniform(0.4, 0.75)
    enc = d + 0.4 + EGO_WIDTH / 2 - rd.w / 2  # how far the cones reach into the lane
    ramp = float(np.clip(1.6 * v0, 12.0, 25.0))
    x_a = max(r.uniform(20.0, 38.0), EGO_FRONT + ramp + 8.0)
    n = int(r.integers(4, 9))
    edge = -rd.w / 2 if cones_right else rd.w / 2
    for i in range(n):
        e = enc * min(1.0, (i + 1) / 3.0)
        y = edge + toward * (e - 0.22)
        b.add("cone", agent_poses(x_a + 2.5 * i, y, b.ts, yaw=0.0), "cone")
    x_b = x_a + 2.5 * (n - 1)
    b.ramps += [(x_a - 2.0 - EGO_FRONT - ramp, x_a - 2.0 - EGO_FRONT, toward * d),
                (x_b + 2.0 + EGO_REAR, x_b + 2.0 + EGO_REAR + ramp, -toward * d)]
    b.zones.append((x_a - 3.0 - EGO_FRONT, x_b + 3.0 + EGO_REAR, max(5.0, v0 - r.uniform(2.0, 4.0))))
    b.lateral = coc.Lateral.OUT_OF_LANE_NUDGE if out_of_lane else coc.Lateral.IN_LANE_NUDGE
    b.direction = "left" if toward > 0 else "right"
    if out_of_lane:
        if toward > 0 and rd.i_ego == rd.n_same - 1:
            b.no_oncoming = True
        elif toward < 0 and rd.i_ego == 0:
            b.no_shoulder = True
        else:
            b.keep_out_lanes.add(round(toward * rd.w, 3))
    if not cones_right:
        b.keep_out_lanes.add(round(rd.w, 3))
    b.info.update(nudge=d, encroachment=enc)


def _fam_stalled_car_lane_change(b: SceneBuilder):
    r, rd = b.re, b.road
    if rd.n_same == 1:
        rd.n_same, rd.i_ego = 2, 0
    side = 1.0 if rd.i_ego < rd.n_same - 1 else -1.0
    _, v0 = b.history_run()
    s_lc = r.uniform(3.0, 12.0)
    length = float(np.clip(2.8 * v0, 25.0, 45.0))
    size = (r.uniform(4.2, 5.0), 1.9, r.uniform(1.4, 1.8))
    x_car = s_lc + length + EGO_FRONT + r.uniform(6.0, 14.0) + size[0] / 2
    b.add("stalled_vehicle", agent_poses(x_car, r.uniform(-0.2, 0.2), b.ts, yaw=r.uniform(-0.05, 0.05)), "stalled",
          size=size, lamps="hazard")
    b.ramps.append((s_lc, s_lc + length, side * rd.w))
    b.keep_out_lanes.add(round(side * rd.w, 3))
    b.direction = "left" if side > 0 else "right"


def _fam_turn(b: SceneBuilder):
    r, rd = b.re, b.road
    b.v_set = 6.0 + 3.0 * b.spare[0]
    b.v_init = b.v_set
    left = b.spare[1] < 0.5
    rd.i_ego = rd.n_same - 1 if left else 0
    if left:
        rd.n_opp = max(rd.n_opp, 1)
    b.no_oncoming = left
    b.history_run()
    x_a = r.uniform(12.0, 22.0)
    radius = r.uniform(8.0, 11.0) if left else r.uniform(6.5, 9.0)
    w, sh = rd.w, b.sh_c
    x_t = x_a + radius
    x_i = x_t - 2.5 * w - sh if left else x_t - sh - 1.5 * w  # left: first +y lane; right: second -y lane
    b.add_intersection(x_i, n=2)
    sgn = 1.0 if left else -1.0
    arc = radius * math.pi / 2
    b.path_pieces = [(x_a, 0.0), (arc, sgn / radius), (200.0, 0.0)]
    a_lat = r.uniform(1.6, 2.2)
    b.zones.append((x_a - 2.0, x_a + arc, math.sqrt(a_lat * radius)))
    if r.uniform() < 0.5:
        b.add_lights("g")
    b.add_cross_traffic(moving=False)
    x_arrow = min(b.inter.stop_x - 1.5, EGO_FRONT + 9.0)  # arrow tip, in the front cameras' view at t0
    if x_arrow > EGO_FRONT + 4.0:
        b.arrows.append((x_arrow, 0.0, 0.0, "left" if left else "right"))
    b.direction = "left" if left else "right"
    b.info.update(radius=radius)


def _fam_pull_over(b: SceneBuilder):
    r, rd = b.re, b.road
    rd.i_ego, rd.sh_r, rd.n_opp = 0, r.uniform(2.6, 3.4), max(rd.n_opp, 1)
    b.v_set = min(b.v_set, 11.0)
    b.v_init = b.v_set
    _, v0 = b.history_run()
    b.no_shoulder = True
    d = -(rd.w / 2 + rd.sh_r - EGO_WIDTH / 2 - 0.35)
    s1 = r.uniform(1.0, 3.0)
    length = float(np.clip(2.0 * v0, 14.0, 24.0))
    decel = r.uniform(2.0, 2.6)
    dist = max(v0 * v0 / (2 * decel), s1 + length + EGO_FRONT + 1.0)
    b.ramps.append((s1, s1 + length, d))
    b.stops.append((EGO_FRONT + dist, b.k0))  # decided at t0, on seeing the emergency vehicle
    x_e = r.uniform(45.0, 90.0)
    v_e = r.uniform(10.0, 15.0)
    b.add("emergency_vehicle", agent_poses(x_e - v_e * b.ts, rd.opp_y(0), b.ts, yaw=math.pi), "emergency",
          lamps="emergency")
    b.direction = "right"


_FAMILY_FNS = {
    "lane_follow": _fam_lane_follow, "lead_follow": _fam_lead_follow, "red_light_stop": _fam_red_light_stop,
    "green_light_go": _fam_green_light_go, "yield_pedestrian": _fam_yield_pedestrian, "jaywalker": _fam_jaywalker,
    "cut_in": _fam_cut_in, "construction_nudge": _fam_construction_nudge,
    "stalled_car_lane_change": _fam_stalled_car_lane_change, "turn": _fam_turn, "emergency_stop": _fam_emergency_stop,
    "pull_over": _fam_pull_over,
}


def generate(seed: int, cfg=None, *, family: str | None = None) -> Scene:
    """Builds scene `seed` (>= 0): its family (from `family_of` unless given), road, agents, lights,
    the expert's drive over the whole time grid, and its CoC trace. Reads `cfg.action` (dt, history,
    horizon) and `cfg.synth`; deterministic in (seed, family, those sections)."""
    cfg = as_config(cfg, "generate")
    if int(seed) < 0:
        raise ValueError(f"generate: seed must be >= 0, got {seed}")
    family = family_of(seed, cfg) if family is None else family
    if family not in FAMILY_SPECS:
        raise ValueError(f"generate: unknown family {family!r}; known: {list(FAMILIES)}")
    b = SceneBuilder(int(seed), family, cfg.action, cfg.synth, lateral=FAMILY_SPECS[family].lateral)
    _FAMILY_FNS[family](b)
    rd = b.road
    b.road_map = build_map(rd, b.inter)
    b.road_map.arrows += b.arrows
    if b.crosswalk_x is not None:
        x_c = b.crosswalk_x
        b.road_map.crosswalks.append(np.array([[x_c - 1.75, rd.y_right], [x_c + 1.75, rd.y_right],
                                               [x_c + 1.75, rd.y_left], [x_c - 1.75, rd.y_left]]))
    dist, _ = b.history_run()
    add_ambient(b)
    if len(b.agents) > MAX_AGENTS:  # the event agents alone: a family that places too many is a bug
        raise RuntimeError(f"generate: scene {seed} ({family}) has {len(b.agents)} event agents, more than "
                           f"MAX_AGENTS={MAX_AGENTS}")
    path = Path(0.0, 0.0, 0.0, b.path_pieces or [(400.0, 0.0)])  # arclength = world x before any turn
    lights = []
    for lt in b.lights:
        (x1, y1), (x2, y2) = lt.stop_line
        s_line = float(path.project(np.array([(x1 + x2) / 2, 0.0]))[0])
        lights.append((lt.id, s_line))
    plan = Plan(path, tuple(b.ramps), tuple(b.zones), tuple(b.stops), tuple(lights))
    params = b.params()
    expert = Expert(plan, params, b.agents, b.lights, b.road_map, b.dt)
    x0, y0, h0 = path.pose(-dist)
    ego, controls = expert.run((x0, y0, h0, b.v_init), len(b.ts) - 1)
    spec = FAMILY_SPECS[family]
    tr = rng(seed, STREAM_TEXT)
    cause = spec.causes[int(tr.integers(len(spec.causes)))].format(**b.cause_fmt)
    trace = coc.Trace(spec.longitudinal, b.lateral, spec.components, b.direction, cause=cause)
    cot = coc.format(trace, variant=int(tr.integers(coc.NUM_VARIANTS)))
    return Scene(seed=int(seed), family=family, scene_id=f"synth_{int(seed):09d}", dt=b.dt, times=b.ts,
                 t0_index=b.k0, horizon=b.F, road=b.road_map, agents=b.agents, lights=b.lights, plan=plan,
                 params=params, ego=ego, ego_controls=controls, trace=trace, cot=cot, info=b.info)

