"""Procedural driving scenes with Chain-of-Causation labels, for training and closed-loop tests.

Units: metres, seconds, radians, m/s, m/s^2, 1/m. Two frames:
  world   the road frame a scene is built in: the ego's lane runs along +x with its centre on
          y = 0, left is +y, the ego's rear axle is near x = 0 at t0.
  ego0    the ego frame at t0 (x forward, y left, origin at the rear axle at t0): what records,
          `map_json` and `agents_json` use, as in AR1's data.
Time: a scene holds states on a 10 Hz grid `times` (s, t0 = 0) from -(history-1) dt to
horizon dt + `SynthConfig.extra_seconds`; the first `history` poses are the ego history, the next
`horizon` its future.

A scene is: a `RoadMap` (lanes, markings, crosswalks, stop lines, intersection, drivable area),
scripted `Agent`s (vehicles, pedestrians, cyclists, cones, stalled and emergency vehicles; log
replay, non-reactive), `TrafficLight`s with a state per step, and the expert ego driven by
`Expert`: IDM/ACC longitudinal control toward a set speed under constraints (lead vehicles, red
lights with a braking-onset rule, pedestrians on the road, speed zones, planned stops) and pure
pursuit on a reference `Path` shifted by a smooth lateral-offset profile (nudge, lane change,
pull over; turns are arcs of the path). The CoC trace states the family's decision and its cause;
`meta_actions_from_trajectory` measures the coarse meta-action on the future so the two can be
checked against each other.

Families (`FAMILY_SPECS`) occur with the long-tail frequencies of `SynthConfig`; the family of a
seed is drawn by a Weyl (golden-ratio) sequence, so any run of consecutive seeds matches the
frequencies closely. Pixel-decided pairs (`PIXEL_PAIRS`) share road, ego speed and history for
the same seed and differ only in what the cameras see (light colour, a pedestrian stepping out).

Rendering: 4 cameras (cross-left, front-wide, cross-right, front-tele, as in the release) x F
frames (t0 - (F-1) dt .. t0): each pixel's ray meets the ground plane and looks up a bird's-eye
raster of the map; agents and lights are depth-sorted boxes drawn with Pillow; everything at
`supersample` x resolution, then box-filtered. numpy + Pillow only.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from ar1_jax.config import ActionConfig, Config, SceneConfig, SynthConfig
from ar1_jax.text import coc

__all__ = [
    "FAMILIES", "FAMILY_SPECS", "PIXEL_PAIRS", "CAMERAS", "Camera", "Path", "RoadMap", "Agent", "TrafficLight",
    "PlannerParams", "Plan", "Expert", "Scene", "CLASSES", "CUE_ROLES", "RECORD_KEYS", "family_frequencies",
    "family_of", "generate", "camera_set", "render", "scene_controls", "to_record", "generate_records",
    "meta_actions_from_trajectory", "is_consistent", "record_consistent", "constant_velocity_ade", "collisions",
]

# Ego geometry: the pose is the rear axle; the body spans [-EGO_REAR, EGO_FRONT] x [-W/2, W/2].
EGO_FRONT, EGO_REAR, EGO_WIDTH = 3.8, 1.0, 1.95
# Meta-action thresholds (AR1 auto-labels): stopped below 0.3 m/s; |mean acceleration| below 0.1 m/s^2
# over the first META_WINDOW_S is "keep"; a lateral move is > 0.5 m or a heading change > 0.5 rad.
STOP_SPEED, KEEP_ACCEL, META_WINDOW_S, LATERAL_M, TURN_RAD = 0.3, 0.1, 3.0, 0.5, 0.5
MAX_BRAKE, MAX_CURVATURE = 9.0, 0.19

RECORD_KEYS = ("scene_id", "family", "images", "camera_ids", "history_xyz", "history_yaw", "future_xyz",
               "future_yaw", "controls", "v0", "cot", "longitudinal", "lateral", "direction", "map_json",
               "agents_json")

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

# RNG streams: every family draws the road from the same stream with the same calls, so paired
# families share it; events, ambient traffic and text have their own streams.
_ROAD, _EVENT, _AMBIENT, _TEXT = 1, 2, 3, 4
_GOLDEN = 0.6180339887498949


# ----------------------------------------------------------------------------------------------------
# Families and config.


def _resolve(cfg, synth: SynthConfig | None) -> tuple[SceneConfig, ActionConfig, SynthConfig]:
    """(scene, action, synth) configs from a root `Config`, a `SynthConfig` or None (defaults)."""
    if isinstance(cfg, SynthConfig):
        return SceneConfig(), ActionConfig(), synth or cfg
    if cfg is None:
        cfg = Config()
    if not isinstance(cfg, Config):
        raise TypeError(f"synthetic: cfg must be an ar1_jax.config.Config or SynthConfig, got {type(cfg).__name__}")
    synth = synth or getattr(cfg, "synth", None) or SynthConfig()
    return cfg.scene, cfg.action, synth


def family_frequencies(cfg=None, *, synth: SynthConfig | None = None) -> dict[str, float]:
    """The configured family frequencies, normalised to sum 1, in config order."""
    _, _, s = _resolve(cfg, synth)
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


def family_of(seed: int, cfg=None, *, synth: SynthConfig | None = None) -> str:
    """The family of scene `seed`: the golden-ratio sequence frac(0.5 + seed * 0.618...) through the
    cumulative frequencies, so consecutive seeds follow the configured frequencies closely."""
    freqs = family_frequencies(cfg, synth=synth)
    u = (0.5 + int(seed) * _GOLDEN) % 1.0
    acc = 0.0
    for name, f in freqs.items():
        acc += f
        if u < acc:
            return name
    return next(n for n, f in reversed(list(freqs.items())) if f > 0)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


# ----------------------------------------------------------------------------------------------------
# Reference paths.


def _advance(x, y, h, k, u):
    """Pose after arclength `u` on a piece of constant curvature `k` from (x, y, h); numpy-friendly."""
    if abs(k) < 1e-12:
        return x + u * np.cos(h), y + u * np.sin(h), h + 0.0 * u
    return x + (np.sin(h + k * u) - np.sin(h)) / k, y - (np.cos(h + k * u) - np.cos(h)) / k, h + k * u


class Path:
    """A planar path of constant-curvature pieces (lines and arcs) parametrised by arclength s (m).

    It must start and end with a line; s < 0 and s > length extend those lines.
    """

    def __init__(self, x0: float, y0: float, h0: float, pieces: list[tuple[float, float]]):
        assert pieces and abs(pieces[0][1]) < 1e-12 and abs(pieces[-1][1]) < 1e-12, "Path must start/end with lines"
        self.pieces = []  # (s0, x, y, h, length, curvature)
        s, x, y, h = 0.0, x0, y0, h0
        for length, k in pieces:
            self.pieces.append((s, x, y, h, float(length), float(k)))
            x, y, h = (float(v) for v in _advance(x, y, h, k, length))
            s += length
        self.length = s
        self.straight = len(self.pieces) == 1

    def pose(self, s: float) -> tuple[float, float, float]:
        """(x, y, heading) at arclength s (scalar)."""
        for i in range(len(self.pieces) - 1, -1, -1):
            if s >= self.pieces[i][0] or i == 0:
                s0, x, y, h, _, k = self.pieces[i]
                return tuple(float(v) for v in _advance(x, y, h, k, s - s0))
        raise AssertionError

    def poses(self, s: np.ndarray) -> np.ndarray:
        """[..., 3] (x, y, heading) at arclengths `s`."""
        s = np.asarray(s, np.float64)
        out = np.zeros(s.shape + (3,))
        for i, (s0, x, y, h, length, k) in enumerate(self.pieces):
            lo = -np.inf if i == 0 else s0
            hi = np.inf if i == len(self.pieces) - 1 else s0 + length
            m = (s >= lo) & (s < hi)
            if np.any(m):
                out[m] = np.stack(np.broadcast_arrays(*_advance(x, y, h, k, s[m] - s0)), -1)
        return out

    def project(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frenet coordinates of points `[..., 2]`: arclength s and signed lateral offset l (left +)."""
        p = np.asarray(xy, np.float64)
        best_d = np.full(p.shape[:-1], np.inf)
        best_s = np.zeros(p.shape[:-1])
        best_l = np.zeros(p.shape[:-1])
        n = len(self.pieces)
        for i, (s0, x, y, h, length, k) in enumerate(self.pieces):
            lo = -np.inf if i == 0 else 0.0
            hi = np.inf if i == n - 1 else length
            if abs(k) < 1e-12:
                u = (p[..., 0] - x) * math.cos(h) + (p[..., 1] - y) * math.sin(h)
            else:
                cx, cy = x - math.sin(h) / k, y + math.cos(h) / k
                ax, ay = x - cx, y - cy
                qx, qy = p[..., 0] - cx, p[..., 1] - cy
                u = np.arctan2(ax * qy - ay * qx, ax * qx + ay * qy) / k
            u = np.clip(u, lo, hi)
            px, py, ph = _advance(x, y, h, k, u)
            dx, dy = p[..., 0] - px, p[..., 1] - py
            d = dx * dx + dy * dy
            better = d < best_d
            best_d = np.where(better, d, best_d)
            best_s = np.where(better, s0 + u, best_s)
            best_l = np.where(better, -dx * np.sin(ph) + dy * np.cos(ph), best_l)
        return best_s, best_l

    def project1(self, x: float, y: float) -> float:
        """Arclength of one point (fast path for a straight path)."""
        if self.straight:
            _, x0, y0, h, _, _ = self.pieces[0]
            return (x - x0) * math.cos(h) + (y - y0) * math.sin(h)
        return float(self.project(np.array([x, y]))[0])

    def polyline(self, step: float = 2.0, s_from: float = 0.0, s_to: float | None = None) -> np.ndarray:
        s_to = self.length if s_to is None else s_to
        return self.poses(np.arange(s_from, s_to + 1e-9, step))[:, :2]


def _smooth(u):
    """Quintic smoothstep on [0, 1] (zero first and second derivative at both ends)."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


def _offset(ramps: tuple[tuple[float, float, float], ...], s):
    """Lateral offset (m, left +) of the planned path at arclength(s) `s`: a sum of smooth ramps
    (s_start, s_end, delta)."""
    out = 0.0 * np.asarray(s, np.float64)
    for a, b, delta in ramps:
        out = out + delta * _smooth((np.asarray(s, np.float64) - a) / (b - a))
    return out


# ----------------------------------------------------------------------------------------------------
# Map, agents, lights.

Rect = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max


@dataclass
class RoadMap:
    """The static scene in the world frame. Roads are axis-aligned: the main road along x, an optional
    cross road along y.

    lanes: dicts with id, kind ("same" | "opposing" | "cross"), width (m), heading (rad),
      centerline `[N, 2]`. lines: (kind, polyline `[N, 2]`), kind in solid_white, dashed_white,
      solid_yellow, stop_line. crosswalks: `[4, 2]` polygons. drivable, sidewalks, intersections:
      rects (x_min, x_max, y_min, y_max). arrows: (x, y, heading, "left" | "right") road paint.
    """

    lanes: list[dict] = field(default_factory=list)
    lines: list[tuple[str, np.ndarray]] = field(default_factory=list)
    crosswalks: list[np.ndarray] = field(default_factory=list)
    drivable: list[Rect] = field(default_factory=list)
    sidewalks: list[Rect] = field(default_factory=list)
    intersections: list[Rect] = field(default_factory=list)
    arrows: list[tuple[float, float, float, str]] = field(default_factory=list)

    def on_road(self, xy: np.ndarray) -> np.ndarray:
        """Whether points `[..., 2]` lie on the drivable area."""
        xy = np.asarray(xy)
        out = np.zeros(xy.shape[:-1], bool)
        for x0, x1, y0, y1 in self.drivable:
            out |= (xy[..., 0] >= x0) & (xy[..., 0] <= x1) & (xy[..., 1] >= y0) & (xy[..., 1] <= y1)
        return out


CLASSES = ("vehicle", "pedestrian", "cyclist", "cone", "stalled_vehicle", "emergency_vehicle")


@dataclass
class Agent:
    """A scripted road user or object, replayed from `poses` (world x, y, yaw per `Scene.times` step).

    size: (length, width, height) m, the box centred on the pose. lamps: "" | "hazard" | "emergency" |
    "left" | "right" (turn indicator). role: "ambient" or the family's event role.
    """

    id: int
    kind: str
    size: tuple[float, float, float]
    poses: np.ndarray
    color: tuple[int, int, int]
    lamps: str = ""
    role: str = "ambient"


@dataclass
class TrafficLight:
    """A signal head: `position` (x, y, z) of its centre, `yaw` the direction its bulbs face, one state
    per step ('r', 'y', 'g'), the stop line it controls (two points), and a pole base (x, y)."""

    id: int
    position: tuple[float, float, float]
    yaw: float
    states: str
    stop_line: tuple[tuple[float, float], tuple[float, float]]
    pole: tuple[float, float] | None = None


# ----------------------------------------------------------------------------------------------------
# The expert planner.


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


def _acc_model(v, gap, v_lead, a_lead, p: PlannerParams) -> float:
    """Treiber & Kesting's ACC model: IDM blended with the constant-acceleration heuristic so that a
    cut-in or a braking lead does not cause over-braking."""
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


def _free_accel(v, v_des, p: PlannerParams) -> float:
    if v <= v_des:
        return p.a_max * (1.0 - (v / max(v_des, 0.1)) ** 4)
    return -min(3.0, 1.5 * (v - v_des))


def _stop_accel(d, v, dt) -> float:
    """The constant deceleration that stops within `d` metres; hold once there (or past it)."""
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
    |curvature| <= 0.19. The state update is the unicycle of `ar1_jax.action.unicycle.integrate`.
    Agents are log-replayed, so the expert can also be asked for controls from any ego state
    (`control`), e.g. by a closed-loop simulator.
    """

    def __init__(self, plan: Plan, params: PlannerParams, agents: list[Agent], lights: list[TrafficLight],
                 road: RoadMap, dt: float):
        self.plan, self.p, self.lights, self.dt = plan, params, lights, dt
        self.latched: set[int] = set()
        self._agents = self._precompute(agents, road)

    def _precompute(self, agents, road):
        out = []
        for ag in agents:
            xy = ag.poses[:, :2]
            s, l = self.plan.path.project(xy)
            c = _offset(self.plan.ramps, s)
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
        a = _free_accel(v, v_des, p)
        lead = None
        for is_ped, sa, rel, vs, vl, acc, lon_h, lat_h, onroad, opposite in self._agents:
            gap = sa[k] - lon_h[k] - s_front
            if gap < -0.5 or gap > 150.0:
                continue
            r, half = rel[k], EGO_WIDTH / 2 + lat_h[k]
            if is_ped:
                toward = r * vl[k] < 0 and abs(vl[k]) > 0.2 and abs(r) < 15.0
                if onroad[k] and (abs(r) < half + 0.8 or toward):
                    a = min(a, _stop_accel(gap - 2.0, v, dt))
                continue
            if opposite[k]:
                continue
            r_pred = r + vl[k] * 0.8 if r * vl[k] < 0 else r
            if min(abs(r), abs(r_pred)) < half + 0.3 and (lead is None or gap < lead[0]):
                lead = (gap, max(vs[k], 0.0), acc[k])
        if lead is not None:
            a = min(a, _acc_model(v, lead[0], lead[1], lead[2], p))
            if lead[1] < 0.5 and lead[2] > -0.5:  # a standing lead: come to a full stop s0 + 1 m behind it
                a = min(a, _stop_accel(lead[0] - p.s0 - 1.0, v, dt))
        for li, s_line in plan.lights:
            d = s_line - 1.0 - s_front
            if d < -1.0:
                continue
            if self.lights[li].states[k] == "g":
                self.latched.discard(li)
                continue
            if li in self.latched or v * v / (2.0 * max(d, 0.1)) >= p.brake_onset:
                self.latched.add(li)
                a = min(a, _stop_accel(d, v, dt))
        for s_stop, k_from in plan.stops:
            if k >= k_from:
                a = min(a, _stop_accel(s_stop - s_front, v, dt))
        jerk_down = 6.0 if a > -3.5 else 25.0
        a = min(max(a, a_prev - jerk_down * dt, -MAX_BRAKE), a_prev + 3.0 * dt, 4.0)
        # Pure pursuit on the offset path.
        look = min(max(2.5 + 0.5 * v, 4.0), 10.0)
        px, py, ph = plan.path.pose(s + look)
        d_off = float(_offset(plan.ramps, s + look))
        dx, dy = px - d_off * math.sin(ph) - x, py + d_off * math.cos(ph) - y
        lx, ly = dx * math.cos(h) + dy * math.sin(h), -dx * math.sin(h) + dy * math.cos(h)
        kappa = 2.0 * ly / max(lx * lx + ly * ly, 1e-6)
        return a, min(max(kappa, -MAX_CURVATURE), MAX_CURVATURE)

    def run(self, state: tuple[float, float, float, float], num_steps: int, a0: float | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Drives `num_steps` steps from (x, y, heading, speed) at step 0: states `[num_steps + 1, 4]`
        and the applied controls `[num_steps + 1, 2]` (the last row repeats the one before)."""
        x, y, h, v = state
        dt = self.dt
        a_prev = _free_accel(v, self.p.v_set, self.p) if a0 is None else a0
        states = [(x, y, h, v)]
        controls = []
        for k in range(num_steps):
            a, kappa = self.control(k, x, y, h, v, a_prev)
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


# ----------------------------------------------------------------------------------------------------
# Scene.


@dataclass
class Scene:
    """One generated scene, in the world frame (see the module docstring).

    ego: `[T, 4]` (x, y, yaw, speed) of the expert at `times`; ego_controls `[T, 2]` the (a, k) it
    applied from each step. origin: the ego pose (x, y, yaw) at t0, which defines the ego0 frame.
    """

    seed: int
    family: str
    scene_id: str
    dt: float
    times: np.ndarray
    t0_index: int
    horizon: int
    road: RoadMap
    agents: list[Agent]
    lights: list[TrafficLight]
    plan: Plan
    params: PlannerParams
    ego: np.ndarray
    ego_controls: np.ndarray
    trace: coc.Trace
    cot: str
    info: dict = field(default_factory=dict)
    _bev: tuple | None = field(default=None, repr=False)

    @property
    def origin(self) -> tuple[float, float, float]:
        x, y, h, _ = self.ego[self.t0_index]
        return float(x), float(y), float(h)

    @property
    def v0(self) -> float:
        return float(self.ego[self.t0_index, 3])

    def to_ego0(self, xy: np.ndarray) -> np.ndarray:
        """World points `[..., 2]` -> the ego frame at t0."""
        x0, y0, h0 = self.origin
        d = np.asarray(xy, np.float64) - np.array([x0, y0])
        c, s = math.cos(h0), math.sin(h0)
        return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)

    def _ego0_poses(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        xy = self.to_ego0(self.ego[rows, :2])
        yaw = _wrap(self.ego[rows, 2] - self.origin[2])
        xyz = np.concatenate([xy, np.zeros_like(xy[:, :1])], -1)
        return xyz.astype(np.float32), yaw.astype(np.float32)

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Ego history in ego0: xyz `[H, 3]` (oldest first, the last at the origin) and yaw `[H]`."""
        return self._ego0_poses(slice(0, self.t0_index + 1))

    def future(self) -> tuple[np.ndarray, np.ndarray]:
        """Expert future in ego0: xyz `[horizon, 3]` (t0 + dt ..) and yaw `[horizon]`."""
        return self._ego0_poses(slice(self.t0_index + 1, self.t0_index + 1 + self.horizon))

    def agents_at(self, t: float) -> np.ndarray:
        """World poses `[A, 3]` of all agents at time t (s; interpolated, held velocity outside)."""
        out = np.zeros((len(self.agents), 3))
        for i, ag in enumerate(self.agents):
            out[i] = _interp_pose(self.times, ag.poses, t)
        return out

    def light_states_at(self, t: float) -> list[str]:
        k = int(np.clip(round((t - self.times[0]) / self.dt), 0, len(self.times) - 1))
        return [lt.states[k] for lt in self.lights]

    def expert(self) -> Expert:
        """A fresh expert on this scene (for closed-loop comparisons)."""
        return Expert(self.plan, self.params, self.agents, self.lights, self.road, self.dt)


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _interp_pose(times, poses, t):
    if t <= times[0] or t >= times[-1]:
        i = 0 if t <= times[0] else len(times) - 1
        j = 1 if i == 0 else i - 1
        vel = (poses[i, :2] - poses[j, :2]) / (times[i] - times[j])
        return np.array([*(poses[i, :2] + vel * (t - times[i])), poses[i, 2]])
    x = np.interp(t, times, poses[:, 0])
    y = np.interp(t, times, poses[:, 1])
    yaw = np.interp(t, times, np.unwrap(poses[:, 2]))
    return np.array([x, y, yaw])


# ----------------------------------------------------------------------------------------------------
# Agent trajectories.

_PALETTE = ((40, 70, 160), (150, 150, 155), (225, 225, 225), (30, 30, 35), (90, 100, 110), (20, 90, 110),
            (110, 70, 40), (60, 50, 120))
_CLASS_COLOR = {"pedestrian": (225, 40, 175), "cyclist": (40, 200, 225), "cone": (255, 110, 0),
                "emergency_vehicle": (235, 235, 235)}
_SIZES = {"pedestrian": (0.5, 0.55, 1.75), "cyclist": (1.8, 0.6, 1.7), "cone": (0.45, 0.45, 0.75),
          "emergency_vehicle": (6.2, 2.2, 2.6)}


def _yaw_from_motion(xy: np.ndarray, default: float) -> np.ndarray:
    d = np.gradient(xy, axis=0)
    moving = np.hypot(d[:, 0], d[:, 1]) > 1e-4
    yaw = np.where(moving, np.arctan2(d[:, 1], d[:, 0]), np.nan)
    last = default
    for i in range(len(yaw)):  # hold the heading while standing
        if np.isnan(yaw[i]):
            yaw[i] = last
        last = yaw[i]
    return yaw


def _poses(x, y, ts, yaw=None, default_yaw=0.0) -> np.ndarray:
    x = np.broadcast_to(np.asarray(x, np.float64), ts.shape)
    y = np.broadcast_to(np.asarray(y, np.float64), ts.shape)
    xy = np.stack([x, y], -1)
    yaw = _yaw_from_motion(xy, default_yaw) if yaw is None else np.broadcast_to(yaw, ts.shape)
    return np.concatenate([xy, yaw[:, None]], -1)


def _integrate_speed(v: np.ndarray, ts: np.ndarray, k0: int) -> np.ndarray:
    """Distance travelled since ts[k0] for speeds v at ts (trapezoid)."""
    d = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(ts))])
    return d - d[k0]


def _brake_profile(p_start, v, p_stop, b, ts) -> np.ndarray | None:
    """1D positions from `p_start` at ts[0] at speed v, braking at b to stand at `p_stop` (None when
    that needs more than 3.5 m/s^2); constant speed when p_stop is behind the start."""
    if p_stop <= p_start:
        return p_start + v * (ts - ts[0])
    if v < 0.1:
        return np.full_like(ts, p_start)
    b = max(b, v * v / (2.0 * (p_stop - p_start)))
    if b > 3.5:
        return None
    t_b = ts[0] + (p_stop - v * v / (2 * b) - p_start) / v
    tau = np.clip(ts - t_b, 0.0, v / b)
    return np.where(ts < t_b, p_start + v * (ts - ts[0]), p_stop - v * v / (2 * b) + v * tau - 0.5 * b * tau * tau)


# ----------------------------------------------------------------------------------------------------
# Scene building.


@dataclass
class _Road:
    """Road layout parameters (world frame; the ego lane centre is y = 0)."""

    w: float
    n_same: int
    i_ego: int
    n_opp: int
    sh_r: float
    sh_l: float
    walk: float

    def lane_y(self, j: int) -> float:
        """Centre of same-direction lane j (0 = rightmost)."""
        return (j - self.i_ego) * self.w

    def opp_y(self, j: int) -> float:
        """Centre of opposing lane j (0 = next to the centre line)."""
        return self.y_mid + (j + 0.5) * self.w

    @property
    def y_mid(self) -> float:
        return (self.n_same - self.i_ego - 0.5) * self.w

    @property
    def y_right(self) -> float:
        return -(self.i_ego + 0.5) * self.w - self.sh_r

    @property
    def y_left(self) -> float:
        return self.y_mid + self.n_opp * self.w + self.sh_l


@dataclass
class _Inter:
    """A cross road along y: box x in [x_i, x_i + width]; n lanes per direction of width w."""

    x_i: float
    n: int
    w: float
    sh: float

    @property
    def width(self) -> float:
        return 2 * (self.n * self.w + self.sh)

    @property
    def x_c(self) -> float:
        return self.x_i + self.width / 2

    @property
    def stop_x(self) -> float:  # the ego direction's stop line
        return self.x_i - 5.5

    @property
    def far_stop_x(self) -> float:  # the oncoming direction's stop line
        return self.x_i + self.width + 5.5


_X_LO, _X_HI, _Y_SPAN = -150.0, 350.0, 120.0


def _build_map(rd: _Road, it: _Inter | None) -> RoadMap:
    m = RoadMap()
    x_lo, x_hi = _X_LO, _X_HI
    gaps = [] if it is None else [(it.stop_x, it.far_stop_x)]

    def hline(kind, y, x0=x_lo, x1=x_hi):
        xs = [x0]
        for g0, g1 in gaps:
            xs += [g0, g1]
        xs.append(x1)
        for a, b in zip(xs[0::2], xs[1::2]):
            if b > a:
                m.lines.append((kind, np.array([[a, y], [b, y]])))

    for j in range(rd.n_same):
        pts = np.stack([np.arange(x_lo, x_hi + 1, 5.0), np.full(int((x_hi - x_lo) / 5) + 1, rd.lane_y(j))], -1)
        m.lanes.append(dict(id=f"same_{j}", kind="same", width=rd.w, heading=0.0, centerline=pts))
    for j in range(rd.n_opp):
        pts = np.stack([np.arange(x_hi, x_lo - 1, -5.0), np.full(int((x_hi - x_lo) / 5) + 1, rd.opp_y(j))], -1)
        m.lanes.append(dict(id=f"opp_{j}", kind="opposing", width=rd.w, heading=math.pi, centerline=pts))
    y_r_lane = -(rd.i_ego + 0.5) * rd.w
    hline("solid_white", y_r_lane)
    for j in range(rd.n_same - 1):
        hline("dashed_white", y_r_lane + (j + 1) * rd.w)
    if rd.n_opp:
        hline("solid_yellow", rd.y_mid - 0.12)
        hline("solid_yellow", rd.y_mid + 0.12)
        for j in range(rd.n_opp - 1):
            hline("dashed_white", rd.y_mid + (j + 1) * rd.w)
        hline("solid_white", rd.y_mid + rd.n_opp * rd.w)
    else:
        hline("solid_yellow", rd.y_mid)
    m.drivable.append((x_lo, x_hi, rd.y_right, rd.y_left))
    m.sidewalks.append((x_lo, x_hi, rd.y_right - rd.walk, rd.y_right))
    m.sidewalks.append((x_lo, x_hi, rd.y_left, rd.y_left + rd.walk))
    if it is not None:
        x0, x1 = it.x_i, it.x_i + it.width
        m.drivable.append((x0, x1, -_Y_SPAN, _Y_SPAN))
        m.intersections.append((x0, x1, rd.y_right, rd.y_left))
        m.sidewalks.append((x0 - rd.walk, x0, -_Y_SPAN, _Y_SPAN))
        m.sidewalks.append((x1, x1 + rd.walk, -_Y_SPAN, _Y_SPAN))
        m.lines.append(("stop_line", np.array([[it.stop_x, y_r_lane], [it.stop_x, rd.y_mid]])))
        if rd.n_opp:
            m.lines.append(("stop_line", np.array([[it.far_stop_x, rd.y_mid], [it.far_stop_x, rd.y_left - rd.sh_l]])))
        for cx0 in (it.x_i - 4.5, x1 + 1.0):  # crosswalks across the main road
            m.crosswalks.append(np.array([[cx0, rd.y_right], [cx0 + 3.5, rd.y_right], [cx0 + 3.5, rd.y_left],
                                          [cx0, rd.y_left]]))
        for j in range(it.n):  # cross lanes: -y traffic at x < x_c, +y traffic at x > x_c
            for sgn, kind in ((-1, "cross"), (1, "cross")):
                xc = it.x_c + sgn * (j + 0.5) * it.w
                ys = np.arange(-_Y_SPAN, _Y_SPAN + 1, 5.0) * (1 if sgn > 0 else -1)
                m.lanes.append(dict(id=f"cross_{'n' if sgn > 0 else 's'}{j}", kind=kind, width=it.w,
                                    heading=math.pi / 2 * sgn, centerline=np.stack([np.full_like(ys, xc), ys], -1)))
        for y0, y1 in ((-_Y_SPAN, rd.y_right - 5.5), (rd.y_left + 5.5, _Y_SPAN)):
            m.lines.append(("solid_yellow", np.array([[it.x_c, y0], [it.x_c, y1]])))
            m.lines.append(("solid_white", np.array([[x0 + it.sh, y0], [x0 + it.sh, y1]])))
            m.lines.append(("solid_white", np.array([[x1 - it.sh, y0], [x1 - it.sh, y1]])))
        m.lines.append(("stop_line", np.array([[it.x_c, rd.y_right - 5.5], [x1 - it.sh, rd.y_right - 5.5]])))
        m.lines.append(("stop_line", np.array([[x0 + it.sh, rd.y_left + 5.5], [it.x_c, rd.y_left + 5.5]])))
        for y0 in (rd.y_right - 4.5, rd.y_left + 1.0):  # crosswalks across the cross road
            m.crosswalks.append(np.array([[x0, y0], [x1, y0], [x1, y0 + 3.5], [x0, y0 + 3.5]]))
    return m


class _Builder:
    """Collects one scene's parts. Each family function fills road, events, plan and decision."""

    def __init__(self, seed: int, family: str, action: ActionConfig, synth: SynthConfig):
        self.seed, self.family = seed, family
        self.dt = float(action.dt)
        self.H, self.F = int(action.history), int(action.horizon)
        extra = int(round(synth.extra_seconds / self.dt))
        self.ts = (np.arange(self.H + self.F + extra) - (self.H - 1)) * self.dt
        self.k0 = self.H - 1
        self.rr, self.re, self.ra = _rng(seed, _ROAD), _rng(seed, _EVENT), _rng(seed, _AMBIENT)
        r = self.rr  # the shared road stream: identical calls for every family
        self.road = _Road(w=r.uniform(3.2, 3.8), n_same=int(r.choice([1, 2, 3], p=[0.3, 0.5, 0.2])), i_ego=0,
                          n_opp=int(r.choice([0, 1, 2], p=[0.15, 0.6, 0.25])), sh_r=r.uniform(0.3, 2.5),
                          sh_l=r.uniform(0.2, 0.8), walk=r.uniform(2.0, 4.0))
        self.road.i_ego = int(r.integers(self.road.n_same))
        self.v_set = r.uniform(8.0, 15.0)
        self.v_init = self.v_set - r.uniform(0.0, 2.5)
        self.params_kw = dict(a_max=r.uniform(1.0, 1.8), headway=r.uniform(1.0, 1.8), brake_onset=r.uniform(1.6, 2.6))
        self.spare = r.uniform(size=4)
        self.inter: _Inter | None = None
        self.n_cross = int(r.choice([1, 2]))
        self.sh_c = r.uniform(0.3, 1.5)
        self.agents: list[Agent] = []
        self.lights: list[TrafficLight] = []
        self.ramps: list = []
        self.zones: list = []
        self.stops: list = []
        self.path_pieces: list | None = None
        self.keep_out_lanes: set[float] = set()  # lane centre y values with no ambient vehicles
        self.no_oncoming = False
        self.no_shoulder = False
        self.signal: str | None = None  # ego-direction light state for ambient traffic
        self.lateral: coc.Lateral | None = FAMILY_SPECS[family].lateral
        self.direction: str | None = None
        self.cause_fmt: dict = {}
        self.info: dict = {}
        self.arrows: list = []  # road paint (x, y, heading, kind)
        self.crosswalk_x: float | None = None  # a mid-block crosswalk across the main road
        self.road_map: RoadMap | None = None
        self.v0_est = self.v_init  # the ego's speed at t0 under free driving (set by history_run)

    # -- helpers
    def params(self) -> PlannerParams:
        return PlannerParams(v_set=self.v_set, **self.params_kw)

    def history_run(self) -> tuple[float, float]:
        """Free driving over the history on a straight road: (distance to t0, speed at t0)."""
        path = Path(-400.0, 0.0, 0.0, [(800.0, 0.0)])
        ex = Expert(Plan(path), self.params(), [], [], RoadMap(), self.dt)
        st, _ = ex.run((0.0, 0.0, 0.0, self.v_init), self.k0)
        self.v0_est = float(st[-1, 3])
        return float(st[-1, 0]), float(st[-1, 3])

    def add(self, kind, poses, role, size=None, color=None, lamps="") -> Agent:
        size = size or _SIZES.get(kind) or (self.re.uniform(4.2, 5.2), self.re.uniform(1.8, 2.0),
                                            self.re.uniform(1.4, 1.9))
        color = color or _CLASS_COLOR.get(kind) or _PALETTE[int(self.re.integers(len(_PALETTE)))]
        ag = Agent(len(self.agents), kind, tuple(float(v) for v in size), poses, color, lamps, role)
        self.agents.append(ag)
        return ag

    def add_intersection(self, x_i: float, n: int | None = None):
        self.inter = _Inter(x_i=x_i, n=n or self.n_cross, w=self.road.w, sh=self.sh_c)

    def add_lights(self, state: str):
        """Signal heads for the ego direction: one over each same-direction lane at the far side of the
        box and one on a pole at the near right corner."""
        it, rd = self.inter, self.road
        line = ((it.stop_x, rd.y_right), (it.stop_x, rd.y_mid))
        xf = it.x_i + it.width + 1.5
        for j in range(rd.n_same):
            self.lights.append(TrafficLight(len(self.lights), (xf, rd.lane_y(j), 5.6), math.pi, state * len(self.ts),
                                            line, pole=(xf, rd.y_right - 0.6) if j == 0 else None))
        self.lights.append(TrafficLight(len(self.lights), (it.x_i - 1.0, rd.y_right - 0.8, 3.4), math.pi,
                                        state * len(self.ts), line, pole=(it.x_i - 1.0, rd.y_right - 0.8)))
        self.signal = state

    def add_cross_traffic(self, moving: bool):
        """Cross-road vehicles: moving through the box when the ego has red (entering the main road only
        after t0 + 1.2 s), else queued at their stop lines."""
        it, rd, r = self.inter, self.road, self.re
        for j in range(it.n):
            for sgn in (-1, 1):  # -1: lanes at x < x_c heading -y, +1: x > x_c heading +y
                xc = it.x_c + sgn * (j + 0.5) * it.w
                if r.uniform() > 0.6:
                    continue
                if moving:  # enters the main road after t0 + 1.2 s: the expert's 0.8 s lateral prediction
                    t_e = r.uniform(1.2, 3.5)  # must not see it before t0 (red and green share history)
                    for _ in range(int(r.integers(1, 3))):
                        v, length = r.uniform(8.0, 12.0), r.uniform(4.2, 5.0)
                        edge = rd.y_right if sgn > 0 else rd.y_left
                        y = edge + sgn * (v * (self.ts - t_e) - length / 2)
                        self.add("vehicle", _poses(xc, y, self.ts, yaw=sgn * math.pi / 2), "cross_traffic",
                                 size=(length, 1.9, r.uniform(1.4, 1.8)))
                        t_e += length / v + r.uniform(1.5, 3.0)
                else:
                    y = (rd.y_right - 6.5 if sgn > 0 else rd.y_left + 6.5) - sgn * 2.6
                    for _ in range(int(r.integers(1, 3))):
                        self.add("vehicle", _poses(xc, y, self.ts, yaw=sgn * math.pi / 2), "cross_traffic")
                        y -= sgn * r.uniform(6.0, 8.0)


def _fam_lane_follow(b: _Builder):
    b.history_run()


def _fam_lead_follow(b: _Builder):
    r = b.re
    v_l = r.uniform(max(4.5, b.v_set - 6.0), b.v_set - 1.0)
    b.v_init = v_l + r.uniform(-1.0, 1.0)
    amp, period, phase = r.uniform(0.0, min(1.2, v_l - 4.0)), r.uniform(6.0, 12.0), r.uniform(0, 2 * math.pi)
    v = v_l + amp * np.sin(2 * math.pi * b.ts / period + phase)
    size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
    gap = (2.0 + b.v_init * b.params_kw["headway"]) * r.uniform(0.9, 1.4)
    dist, _ = b.history_run()
    x_start = -dist + EGO_FRONT + gap + size[0] / 2
    x = x_start + _integrate_speed(v, b.ts, 0)
    b.add("vehicle", _poses(x, 0.0, b.ts, yaw=0.0), "lead", size=size)


def _fam_emergency_stop(b: _Builder):
    r = b.re
    v_l = r.uniform(8.0, 14.0)
    b.v_init, b.v_set = v_l, v_l + r.uniform(0.5, 2.0)
    t_b, decel = r.uniform(-0.3, 0.0), r.uniform(5.0, 7.5)
    v = np.where(b.ts < t_b, v_l, np.maximum(0.0, v_l - decel * (b.ts - t_b)))
    size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
    gap = (2.0 + v_l * b.params_kw["headway"]) * r.uniform(1.0, 1.3)
    dist, _ = b.history_run()
    x = -dist + EGO_FRONT + gap + size[0] / 2 + _integrate_speed(v, b.ts, 0)
    b.add("vehicle", _poses(x, 0.0, b.ts, yaw=0.0), "braking_lead", size=size)
    b.info["lead_decel"] = decel


def _intersection_ahead(b: _Builder) -> float:
    """Places a signalised intersection so that a red light needs exactly `brake_onset` (x1.02) at t0."""
    b.v_init = b.v_set - 0.4 * (b.v_set - b.v_init)
    _, v0 = b.history_run()
    stop_x = EGO_FRONT + 1.0 + v0 * v0 / (2.0 * b.params_kw["brake_onset"] * 1.02)
    b.add_intersection(stop_x + 5.5)
    return stop_x


def _fam_red_light_stop(b: _Builder):
    _intersection_ahead(b)
    b.add_lights("r")
    b.add_cross_traffic(moving=True)


def _fam_green_light_go(b: _Builder):
    _intersection_ahead(b)
    b.add_lights("g")
    b.add_cross_traffic(moving=False)


def _pedestrian(b: _Builder, x: float, y_from: float, y_to: float, speed: float, t_enter: float, role: str,
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
    return b.add("pedestrian", _poses(x + 0.0 * y, y, b.ts, default_yaw=sgn * math.pi / 2), role)


def _fam_jaywalker(b: _Builder):
    r = b.re
    _, v0 = b.history_run()
    decel = r.uniform(2.5, 4.0)
    x_p = EGO_FRONT + v0 * v0 / (2 * decel) + 2.0 + 0.3
    rd = b.road
    _pedestrian(b, x_p, rd.y_right, rd.y_left + rd.walk, r.uniform(1.3, 2.0), 0.0, "jaywalker",
                stand=(r.uniform(-0.6, 0.6), r.uniform(7.5, 9.0)))
    b.info["required_decel"] = decel


def _fam_yield_pedestrian(b: _Builder):
    r = b.re
    _, v0 = b.history_run()
    decel = r.uniform(1.2, 2.5)
    x_c = EGO_FRONT + v0 * v0 / (2 * decel) + 2.0 + 1.75
    rd = b.road
    b.crosswalk_x = x_c
    from_right = r.uniform() < 0.65 or rd.n_opp == 0
    a, z = (rd.y_right, rd.y_left + rd.walk) if from_right else (rd.y_left, rd.y_right - rd.walk)
    _pedestrian(b, x_c + r.uniform(-0.8, 0.8), a, z, r.uniform(1.1, 1.6), 0.0, "crossing_pedestrian")


def _fam_cut_in(b: _Builder):
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
    y = y_lane * (1.0 - _smooth((b.ts - t_s) / dur))
    b.add("vehicle", _poses(x, y, b.ts), "cut_in", size=(length, 1.9, r.uniform(1.4, 1.8)),
          lamps="right" if side == "left" else "left")
    b.keep_out_lanes.add(round(y_lane, 3))
    b.cause_fmt["side"] = side


def _fam_construction_nudge(b: _Builder):
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
        b.add("cone", _poses(x_a + 2.5 * i, y, b.ts, yaw=0.0), "cone")
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


def _fam_stalled_car_lane_change(b: _Builder):
    r, rd = b.re, b.road
    if rd.n_same == 1:
        rd.n_same, rd.i_ego = 2, 0
    side = 1.0 if rd.i_ego < rd.n_same - 1 else -1.0
    _, v0 = b.history_run()
    s_lc = r.uniform(3.0, 12.0)
    length = float(np.clip(2.8 * v0, 25.0, 45.0))
    size = (r.uniform(4.2, 5.0), 1.9, r.uniform(1.4, 1.8))
    x_car = s_lc + length + EGO_FRONT + r.uniform(6.0, 14.0) + size[0] / 2
    b.add("stalled_vehicle", _poses(x_car, r.uniform(-0.2, 0.2), b.ts, yaw=r.uniform(-0.05, 0.05)), "stalled",
          size=size, lamps="hazard")
    b.ramps.append((s_lc, s_lc + length, side * rd.w))
    b.keep_out_lanes.add(round(side * rd.w, 3))
    b.direction = "left" if side > 0 else "right"


def _fam_turn(b: _Builder):
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


def _fam_pull_over(b: _Builder):
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
    b.add("emergency_vehicle", _poses(x_e - v_e * b.ts, rd.opp_y(0), b.ts, yaw=math.pi), "emergency",
          lamps="emergency")
    b.direction = "right"


_FAMILY_FNS = {
    "lane_follow": _fam_lane_follow, "lead_follow": _fam_lead_follow, "red_light_stop": _fam_red_light_stop,
    "green_light_go": _fam_green_light_go, "yield_pedestrian": _fam_yield_pedestrian, "jaywalker": _fam_jaywalker,
    "cut_in": _fam_cut_in, "construction_nudge": _fam_construction_nudge,
    "stalled_car_lane_change": _fam_stalled_car_lane_change, "turn": _fam_turn, "emergency_stop": _fam_emergency_stop,
    "pull_over": _fam_pull_over,
}


def _overlap(c1, h1, half1, c2, h2, half2, margin: float = 0.0) -> np.ndarray:
    """Per step, whether two oriented rectangles overlap (separating-axis test): centres `[N, 2]`,
    headings `[N]`, half extents (along, across) in metres, each grown by `margin`."""
    d = np.asarray(c2) - np.asarray(c1)
    u1, v1 = np.stack([np.cos(h1), np.sin(h1)], -1), np.stack([-np.sin(h1), np.cos(h1)], -1)
    u2, v2 = np.stack([np.cos(h2), np.sin(h2)], -1), np.stack([-np.sin(h2), np.cos(h2)], -1)
    (a1, b1), (a2, b2) = ((x + margin for x in half) for half in (half1, half2))
    separated = np.zeros(len(d), bool)
    for n in (u1, v1, u2, v2):
        r1 = a1 * np.abs(np.sum(u1 * n, -1)) + b1 * np.abs(np.sum(v1 * n, -1))
        r2 = a2 * np.abs(np.sum(u2 * n, -1)) + b2 * np.abs(np.sum(v2 * n, -1))
        separated |= np.abs(np.sum(d * n, -1)) > r1 + r2
    return ~separated


#: Event roles whose visibility decides the scene: ambient agents may not hide them from the front camera.
CUE_ROLES = frozenset({"lead", "braking_lead", "jaywalker", "crossing_pedestrian", "cut_in", "stalled", "emergency",
                       "cone"})


def _blocks(eye, target, pose, size, margin=0.2) -> bool:
    """Whether the segment eye -> target (2D) crosses the footprint of a box at `pose` (x, y, yaw)."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    (ax, ay), (bx, by) = ((c * (p[0] - pose[0]) + s * (p[1] - pose[1]), -s * (p[0] - pose[0]) + c * (p[1] - pose[1]))
                          for p in (eye, target))
    t0, t1 = 0.0, 1.0
    for p0, d, half in ((ax, bx - ax, size[0] / 2 + margin), (ay, by - ay, size[1] / 2 + margin)):
        if abs(d) < 1e-12:
            if abs(p0) > half:
                return False
            continue
        ta, tb = sorted(((-half - p0) / d, (half - p0) / d))
        t0, t1 = max(t0, ta), min(t1, tb)
        if t0 > t1:
            return False
    return True


def _hides_cue(b: "_Builder", poses: np.ndarray, size) -> bool:
    """Whether an agent would block the front camera's view of a cue agent in the last 4 history frames
    (the ego approximated as driving straight along y = 0 at its t0 speed)."""
    cues = [a for a in b.agents if a.role in CUE_ROLES]
    cues = [a for i, a in enumerate(cues) if a.role != "cone" or i == 0 or cues[i - 1].role != "cone"]
    for k in range(b.k0 - 3, b.k0 + 1):
        eye = (1.9 + b.v0_est * b.ts[k], 0.0)
        for cue in cues:
            if _blocks(eye, cue.poses[k, :2], poses[k], size):
                return True
    return False


def _add_ambient(b: _Builder):
    """Ambient traffic that never enters the ego lane: vehicles in the other same-direction lanes
    (stopping for a red light), oncoming vehicles, sidewalk pedestrians, parked cars and a cyclist on a
    wide shoulder. Candidates that come near an event agent or an earlier ambient agent are dropped."""
    r, rd, ts, it = b.ra, b.road, b.ts, b.inter
    cands: list[tuple] = []  # (kind, poses, size, lamps)
    stop_x = it.stop_x - 1.0 if it is not None else None
    for j in range(rd.n_same):
        v_lane = max(4.0, b.v_set + r.uniform(-3.0, 2.0))
        n = int(r.choice([0, 1, 2], p=[0.4, 0.4, 0.2]))
        xs = r.uniform(-25.0, 90.0, size=n)
        if j == rd.i_ego or round(rd.lane_y(j), 3) in b.keep_out_lanes:
            continue
        for x0 in xs:
            x_start = x0 - v_lane * (0 - ts[0])
            size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
            if b.signal == "r" and stop_x is not None:
                xt = _brake_profile(x_start, v_lane, stop_x - size[0] / 2, r.uniform(1.5, 2.5), ts)
                if xt is None:
                    continue
            else:
                xt = x_start + v_lane * (ts - ts[0])
            cands.append(("vehicle", _poses(xt, rd.lane_y(j), ts, yaw=0.0), size, ""))
    for j in range(rd.n_opp):
        n = int(r.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))
        for _ in range(n):
            v, x0 = r.uniform(8.0, 14.0), r.uniform(0.0, 150.0)
            size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
            if b.no_oncoming:
                continue
            x_start = x0 + v * (0 - ts[0])
            if it is not None and b.signal == "r" and x_start > it.far_stop_x:
                p = _brake_profile(-x_start, v, -(it.far_stop_x + 1.0 + size[0] / 2), r.uniform(1.5, 2.5), ts)
                if p is None:
                    continue
                xt = -p
            else:
                xt = x_start - v * (ts - ts[0])
            cands.append(("vehicle", _poses(xt, rd.opp_y(j), ts, yaw=math.pi), size, ""))
    for _ in range(int(r.integers(0, 5))):
        right = r.uniform() < 0.5
        y = (rd.y_right - rd.walk / 2 if right else rd.y_left + rd.walk / 2) + r.uniform(-0.5, 0.5)
        x0, v = r.uniform(-10.0, 80.0), r.uniform(0.8, 1.5) * (1 if r.uniform() < 0.5 else -1)
        cands.append(("pedestrian", _poses(x0 + v * ts, y, ts), _SIZES["pedestrian"], ""))
    n_parked = int(r.integers(0, 4))
    xs_parked = r.uniform(-10.0, 100.0, size=n_parked)
    cyc = r.uniform(), r.uniform(-10.0, 60.0), r.uniform(4.0, 6.0)
    if not b.no_shoulder:
        if rd.sh_r >= 2.0:
            for x0 in xs_parked:
                size = (r.uniform(4.2, 5.0), 1.85, r.uniform(1.4, 1.8))
                cands.append(("vehicle", _poses(x0, rd.y_right + 1.0, ts, yaw=0.0), size, ""))
        if rd.sh_r >= 1.3 and cyc[0] < 0.3:
            cands.append(("cyclist", _poses(cyc[1] + cyc[2] * ts, rd.y_right + 0.6, ts), _SIZES["cyclist"], ""))
    for kind, poses, size, lamps in cands:
        if kind == "pedestrian" and b.road_map.on_road(poses[:, :2]).any():
            continue
        near_box = (poses[:, 0] > it.x_i - 8) & (poses[:, 0] < it.x_i + it.width + 8) if it is not None else None
        if it is not None and (kind != "vehicle" or np.ptp(poses[:, 0]) < 0.1) and np.any(near_box):
            continue  # no pedestrians, cyclists or parked cars in or next to the intersection
        if _hides_cue(b, poses, size):
            continue
        half = (size[0] / 2, size[1] / 2)
        if not any(_overlap(poses[:, :2], poses[:, 2], half, o.poses[:, :2], o.poses[:, 2],
                            (o.size[0] / 2, o.size[1] / 2), margin=0.6).any() for o in b.agents):
            b.add(kind, poses, "ambient", size=size, color=_CLASS_COLOR.get(kind) or
                  _PALETTE[int(r.integers(len(_PALETTE)))], lamps=lamps)


def generate(seed: int, cfg=None, *, family: str | None = None, synth: SynthConfig | None = None) -> Scene:
    """Builds scene `seed` (>= 0): its family (from `family_of` unless given), road, agents, lights,
    the expert's drive over the whole time grid, and its CoC trace. Deterministic in (seed, family,
    configs)."""
    _, action, synth_cfg = _resolve(cfg, synth)
    if int(seed) < 0:
        raise ValueError(f"generate: seed must be >= 0, got {seed}")
    family = family_of(seed, synth=synth_cfg) if family is None else family
    if family not in FAMILY_SPECS:
        raise ValueError(f"generate: unknown family {family!r}; known: {list(FAMILIES)}")
    b = _Builder(int(seed), family, action, synth_cfg)
    _FAMILY_FNS[family](b)
    rd = b.road
    b.road_map = _build_map(rd, b.inter)
    b.road_map.arrows += b.arrows
    if b.crosswalk_x is not None:
        x_c = b.crosswalk_x
        b.road_map.crosswalks.append(np.array([[x_c - 1.75, rd.y_right], [x_c + 1.75, rd.y_right],
                                               [x_c + 1.75, rd.y_left], [x_c - 1.75, rd.y_left]]))
    dist, _ = b.history_run()
    _add_ambient(b)
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
    tr = _rng(seed, _TEXT)
    cause = spec.causes[int(tr.integers(len(spec.causes)))].format(**b.cause_fmt)
    trace = coc.Trace(spec.longitudinal, b.lateral, spec.components, b.direction, cause=cause)
    cot = coc.format(trace, variant=int(tr.integers(coc.NUM_VARIANTS)))
    return Scene(seed=int(seed), family=family, scene_id=f"synth_{int(seed):09d}", dt=b.dt, times=b.ts,
                 t0_index=b.k0, horizon=b.F, road=b.road_map, agents=b.agents, lights=b.lights, plan=plan,
                 params=params, ego=ego, ego_controls=controls, trace=trace, cot=cot, info=b.info)


# ----------------------------------------------------------------------------------------------------
# Rendering.


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on the ego: yaw (deg, left +) and horizontal field of view (deg); mount (x, y, z)
    in metres from the rear axle on the ground. Square pixels, no pitch."""

    name: str
    release_id: int
    yaw_deg: float
    hfov_deg: float
    mount: tuple[float, float, float]


#: The release's four cameras in feed order, with their release camera indices.
CAMERAS: tuple[Camera, ...] = (
    Camera("camera_cross_left_120fov", 0, 60.0, 120.0, (1.9, 0.6, 1.55)),
    Camera("camera_front_wide_120fov", 1, 0.0, 120.0, (1.9, 0.0, 1.55)),
    Camera("camera_cross_right_120fov", 2, -60.0, 120.0, (1.9, -0.6, 1.55)),
    Camera("camera_front_tele_30fov", 6, 0.0, 30.0, (1.9, 0.0, 1.55)),
)
_CAMERA_SETS = {1: (1,), 2: (1, 3), 3: (0, 1, 2), 4: (0, 1, 2, 3)}  # paper: front wide + tele

_GRASS, _SIDEWALK, _ASPHALT = (78, 102, 58), (160, 158, 152), (70, 70, 74)
_WHITE, _YELLOW = (235, 235, 235), (225, 180, 40)
_SKY_TOP, _SKY_HORIZON, _HAZE = np.array([70, 120, 200.0]), np.array([175, 200, 230.0]), np.array([165, 180, 195.0])
_BULB = {"r": (0, (255, 40, 30)), "y": (1, (255, 190, 0)), "g": (2, (40, 255, 90))}
_BEV_RES, _BEV_X, _BEV_Y = 0.25, (-60.0, 180.0), (-90.0, 90.0)
_NEAR = 0.25


def camera_set(num_cameras: int) -> tuple[Camera, ...]:
    """The cameras used for `num_cameras` (1: front wide; 2: front wide + tele, as in the paper;
    3: cross-left, front wide, cross-right; 4: the release's four)."""
    if num_cameras not in _CAMERA_SETS:
        raise ValueError(f"scene.num_cameras: the synthetic renderer has 1-4 cameras, got {num_cameras}")
    return tuple(CAMERAS[i] for i in _CAMERA_SETS[num_cameras])


@functools.lru_cache(maxsize=64)
def _rays(cam: Camera, height: int, width: int):
    """Per-pixel constants of a camera at render resolution: focal length (px), flat indices and
    ego-frame ground points of the rays that hit the ground, their fog weights, and the sky image."""
    f = (width / 2) / math.tan(math.radians(cam.hfov_deg) / 2)
    u = (np.arange(width) + 0.5 - width / 2) / f
    v = (np.arange(height) + 0.5 - height / 2) / f
    uu, vv = np.meshgrid(u, v)
    yaw = math.radians(cam.yaw_deg)
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([math.sin(yaw), -math.cos(yaw)])
    dx = fwd[0] + uu * right[0]
    dy = fwd[1] + uu * right[1]
    dz = -vv
    ground = dz < -1e-3
    t = cam.mount[2] / np.where(ground, -dz, 1.0)
    gx, gy = cam.mount[0] + t * dx, cam.mount[1] + t * dy
    dist = t * np.sqrt(dx * dx + dy * dy)
    idx = np.flatnonzero(ground)
    fog = np.clip((dist.reshape(-1)[idx] - 35.0) / 110.0, 0.0, 0.9)[:, None]
    elev = np.clip(dz / np.sqrt(dx * dx + dy * dy + dz * dz) / 0.6, 0.0, 1.0)[..., None]
    sky = (_SKY_HORIZON * (1 - elev) + _SKY_TOP * elev).astype(np.float32)
    return f, idx, gx.reshape(-1)[idx], gy.reshape(-1)[idx], fog.astype(np.float32), sky


def _bev(scene: Scene):
    """Bird's-eye raster of the map (world frame), [rows = y, cols = x, 3] uint8, cached on the scene."""
    if scene._bev is not None:
        return scene._bev
    (x_lo, x_hi), (y_lo, y_hi), res = _BEV_X, _BEV_Y, _BEV_RES
    img = Image.new("RGB", (int((x_hi - x_lo) / res), int((y_hi - y_lo) / res)), _GRASS)
    dr = ImageDraw.Draw(img)

    def px(x, y):
        return ((x - x_lo) / res, (y - y_lo) / res)

    def rect(x0, x1, y0, y1, col):
        dr.rectangle([px(x0, y0), px(x1, y1)], fill=col)

    m = scene.road
    for r in m.sidewalks:
        rect(*r, _SIDEWALK)
    for r in m.drivable:
        rect(*r, _ASPHALT)
    for cw in m.crosswalks:
        x0, y0 = cw.min(0)
        x1, y1 = cw.max(0)
        if y1 - y0 > x1 - x0:  # across the main road: stripes along x, repeated along y
            for y in np.arange(y0 + 0.25, y1 - 0.4, 1.0):
                rect(x0, x1, y, y + 0.5, _WHITE)
        else:
            for x in np.arange(x0 + 0.25, x1 - 0.4, 1.0):
                rect(x, x + 0.5, y0, y1, _WHITE)
    for kind, pts in m.lines:
        col = _YELLOW if kind == "solid_yellow" else _WHITE
        width = max(1, round((0.45 if kind == "stop_line" else 0.15) / res))
        (xa, ya), (xb, yb) = pts[0], pts[-1]
        if kind == "dashed_white":
            length = math.hypot(xb - xa, yb - ya)
            ux, uy = (xb - xa) / length, (yb - ya) / length
            for s in np.arange(0.0, length, 9.0):
                e = min(s + 3.0, length)
                dr.line([px(xa + ux * s, ya + uy * s), px(xa + ux * e, ya + uy * e)], fill=col, width=width)
        else:
            dr.line([px(xa, ya), px(xb, yb)], fill=col, width=width)
    for x, y, h, kind in m.arrows:  # turn arrow: shaft along heading, head to the side
        sgn = 1.0 if kind == "left" else -1.0
        shapes = [[(-2.5, -0.15), (0.3, -0.15), (0.3, 0.15), (-2.5, 0.15)],
                  [(0.0, 0.0), (0.3, 0.0), (0.3, 0.9 * sgn), (0.0, 0.9 * sgn)],
                  [(-0.35, 0.9 * sgn), (0.65, 0.9 * sgn), (0.15, 1.7 * sgn)]]
        c, s = math.cos(h), math.sin(h)
        for shp in shapes:
            dr.polygon([px(x + c * a - s * b_, y + s * a + c * b_) for a, b_ in shp], fill=_WHITE)
    scene._bev = (np.asarray(img), x_lo, y_lo, res)
    return scene._bev


def _agent_kinematics(scene: Scene):
    """Per agent: speed and longitudinal acceleration at every step (for brake lamps)."""
    out = []
    for ag in scene.agents:
        vel = np.gradient(ag.poses[:, :2], scene.dt, axis=0)
        spd = np.hypot(vel[:, 0], vel[:, 1])
        out.append((spd, np.gradient(spd, scene.dt), bool(spd.max() > 0.5)))
    return out


def _boxes_at(scene: Scene, k: int, kin) -> list[dict]:
    """World boxes (and their lamps / bulbs) to draw at step k."""
    boxes = []
    blink = (k // 2) % 2 == 0
    for ag, (spd, acc, moves) in zip(scene.agents, kin):
        x, y, yaw = ag.poses[k]
        ln, wd, ht = ag.size
        lamps = []
        if ag.kind in ("vehicle", "stalled_vehicle", "emergency_vehicle"):
            braking = moves and (acc[k] < -1.0 or spd[k] < 0.2)
            tail = (255, 30, 30) if braking else (95, 15, 15)
            for side in (1, -1):
                lamps.append(("rear", side, 0.55, 0.72, tail))
            amber = (255, 170, 0)
            if (ag.lamps == "hazard" and blink) or (ag.lamps in ("left", "right") and blink):
                sides = (1, -1) if ag.lamps == "hazard" else ((1,) if ag.lamps == "left" else (-1,))
                for side in sides:
                    lamps += [("rear", side, 0.4, 0.53, amber), ("front", side, 0.45, 0.6, amber)]
        boxes.append(dict(x=x, y=y, z=0.0, yaw=yaw, size=(ln, wd, ht), color=ag.color, lamps=lamps))
        if ag.kind == "emergency_vehicle":
            col = (255, 30, 30) if k % 2 == 0 else (30, 60, 255)
            boxes.append(dict(x=x, y=y, z=ht, yaw=yaw, size=(0.5, 1.6, 0.3), color=col, lamps=[], glow=True))
    heads_by_x: dict[float, list[float]] = {}
    for lt in scene.lights:
        heads_by_x.setdefault(round(lt.position[0], 2), []).append(lt.position[1])
    for lt in scene.lights:
        x, y, z = lt.position
        boxes.append(dict(x=x, y=y, z=z - 0.65, yaw=lt.yaw, size=(0.35, 0.45, 1.3), color=(25, 25, 25), lamps=[],
                          bulbs=lt.states[k]))
        if lt.pole is not None:
            px_, py_ = lt.pole
            boxes.append(dict(x=px_, y=py_, z=0.0, yaw=0.0, size=(0.25, 0.25, z + 0.7), color=(115, 115, 115),
                              lamps=[]))
            ys = heads_by_x[round(x, 2)] + [py_]
            if max(ys) - min(ys) > 0.5:
                boxes.append(dict(x=px_, y=(max(ys) + min(ys)) / 2, z=z + 0.6, yaw=0.0,
                                  size=(0.2, max(ys) - min(ys), 0.2), color=(115, 115, 115), lamps=[]))
    return boxes


# Box corners in local units (x, y, z in [-0.5, 0.5] x [-0.5, 0.5] x [0, 1]) and faces with outward normals.
_UNIT = np.array([[0.5, 0.5, 0], [0.5, -0.5, 0], [-0.5, -0.5, 0], [-0.5, 0.5, 0],
                  [0.5, 0.5, 1], [0.5, -0.5, 1], [-0.5, -0.5, 1], [-0.5, 0.5, 1]], np.float64)
_FACES = {"front": ((0, 1, 5, 4), (1, 0)), "rear": ((2, 3, 7, 6), (-1, 0)), "left": ((3, 0, 4, 7), (0, 1)),
          "right": ((1, 2, 6, 5), (0, -1)), "top": ((4, 5, 6, 7), None)}
_SUN = (0.6, 0.8)


def _local_to_world(bx: dict, pts: np.ndarray) -> np.ndarray:
    c, s = math.cos(bx["yaw"]), math.sin(bx["yaw"])
    return np.stack([bx["x"] + c * pts[:, 0] - s * pts[:, 1], bx["y"] + s * pts[:, 0] + c * pts[:, 1],
                     bx["z"] + pts[:, 2]], -1)


class _View:
    """World -> camera pixels for one camera at one ego pose (render resolution)."""

    def __init__(self, cam: Camera, pose, f: float, height: int, width: int):
        x, y, h = pose
        yaw = h + math.radians(cam.yaw_deg)
        c, s = math.cos(h), math.sin(h)
        self.pos = np.array([x + c * cam.mount[0] - s * cam.mount[1], y + s * cam.mount[0] + c * cam.mount[1],
                             cam.mount[2]])
        fwd = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        self.rot = np.stack([right, np.array([0.0, 0.0, -1.0]), fwd])  # rows: camera x, y, z axes
        self.f, self.cx, self.cy, self.w, self.h = f, width / 2, height / 2, width, height

    def cam(self, pts: np.ndarray) -> np.ndarray:
        return (pts - self.pos) @ self.rot.T

    def pixels(self, pc: np.ndarray) -> list[tuple[float, float]] | None:
        """Pixel polygon of a camera-frame polygon, clipped to the near plane (None if behind)."""
        if pc[:, 2].min() < _NEAR:
            out = []
            n = len(pc)
            for i in range(n):
                a, b = pc[i], pc[(i + 1) % n]
                if a[2] >= _NEAR:
                    out.append(a)
                if (a[2] >= _NEAR) != (b[2] >= _NEAR):
                    out.append(a + (_NEAR - a[2]) / (b[2] - a[2]) * (b - a))
            if len(out) < 3:
                return None
            pc = np.asarray(out)
        u = self.cx + self.f * pc[:, 0] / pc[:, 2]
        v = self.cy + self.f * pc[:, 1] / pc[:, 2]
        return list(zip(u.tolist(), v.tolist()))


def _draw_box(dr: ImageDraw.ImageDraw, view: _View, bx: dict, ss: int):
    ln, wd, ht = bx["size"]
    corners = _local_to_world(bx, _UNIT * np.array([ln, wd, ht]))
    pc = view.cam(corners)
    if pc[:, 2].max() < _NEAR:
        return
    if pc[:, 2].min() > _NEAR:
        u = pc[:, 0] / pc[:, 2] * view.f + view.cx
        v = pc[:, 1] / pc[:, 2] * view.f + view.cy
        if u.max() < 0 or u.min() > view.w or v.max() < 0 or v.min() > view.h:
            return
    c, s = math.cos(bx["yaw"]), math.sin(bx["yaw"])
    rx, ry, rz = view.pos[0] - bx["x"], view.pos[1] - bx["y"], view.pos[2] - bx["z"]
    visible = set()
    for name, (idx, n) in _FACES.items():
        if n is None:  # top: visible from above
            if rz <= ht:
                continue
            shade = 1.08
        else:  # a side faces the camera when the camera is beyond its plane
            nx, ny = c * n[0] - s * n[1], s * n[0] + c * n[1]
            if nx * rx + ny * ry <= (ln if n[0] else wd) / 2:
                continue
            shade = 0.62 + 0.3 * abs(nx * _SUN[0] + ny * _SUN[1])
        visible.add(name)
        poly = view.pixels(pc[list(idx)])
        if poly:
            col = bx["color"] if bx.get("glow") else tuple(int(min(255, ch * shade)) for ch in bx["color"])
            dr.polygon(poly, fill=col)
    for face, side, z0, z1, col in bx["lamps"]:
        if face not in visible:
            continue
        x = (0.5 if face == "front" else -0.5) * ln * 1.01
        ya, yb = side * (wd / 2 - 0.05), side * (wd / 2 - 0.5)
        pts = np.array([[x, ya, z0 * ht], [x, yb, z0 * ht], [x, yb, z1 * ht], [x, ya, z1 * ht]])
        poly = view.pixels(view.cam(_local_to_world(bx, pts)))
        if poly:
            dr.polygon(poly, fill=col)
    if "bulbs" in bx and "front" in visible:
        lit = bx["bulbs"]
        for state, (slot, col) in _BULB.items():
            centre = _local_to_world(bx, np.array([[0.5 * ln * 1.05, 0.0, ht * (0.82 - 0.32 * slot)]]))
            q = view.cam(centre)[0]
            if q[2] < _NEAR:
                continue
            u, v = view.cx + view.f * q[0] / q[2], view.cy + view.f * q[1] / q[2]
            r = view.f * 0.17 / q[2]
            r = max(r, 1.7 * ss) if state == lit else max(r, 0.7 * ss)
            dr.ellipse([u - r, v - r, u + r, v + r], fill=col if state == lit else (45, 45, 45))


def render(scene: Scene, cfg=None, *, synth: SynthConfig | None = None, ego_poses: np.ndarray | None = None,
           steps: np.ndarray | None = None) -> np.ndarray:
    """Camera images `uint8 [C, F, H, W, 3]` (camera-major, oldest frame first).

    By default the frames are the last F history steps (t0 - (F-1) dt .. t0) seen from the expert's
    poses; a closed-loop simulator passes its own world `ego_poses [F, 3]` and time `steps [F]`
    (indices into `scene.times`).
    """
    scene_cfg, _, synth_cfg = _resolve(cfg, synth)
    cams = camera_set(scene_cfg.num_cameras)
    nf, h, w, ss = scene_cfg.num_frames, scene_cfg.image_height, scene_cfg.image_width, int(synth_cfg.supersample)
    if steps is None:
        if nf > scene.t0_index + 1:
            raise ValueError(f"scene.num_frames={nf} exceeds the {scene.t0_index + 1} history steps")
        steps = np.arange(scene.t0_index - nf + 1, scene.t0_index + 1)
    if ego_poses is None:
        ego_poses = scene.ego[steps, :3]
    bev, x_lo, y_lo, res = _bev(scene)
    bh, bw = bev.shape[:2]
    flat_bev = bev.reshape(-1, 3).astype(np.float32)
    kin = _agent_kinematics(scene)
    out = np.zeros((len(cams), nf, h, w, 3), np.uint8)
    H2, W2 = h * ss, w * ss
    for fi, (k, pose) in enumerate(zip(steps, ego_poses)):
        boxes = _boxes_at(scene, int(k), kin)
        ex, ey, eh = (float(v) for v in pose)
        c, s = math.cos(eh), math.sin(eh)
        for ci, cam in enumerate(cams):
            f, idx, gx, gy, fog, sky = _rays(cam, H2, W2)
            wx, wy = ex + c * gx - s * gy, ey + s * gx + c * gy
            col = ((wx - x_lo) / res).astype(np.int32)
            row = ((wy - y_lo) / res).astype(np.int32)
            inside = (col >= 0) & (col < bw) & (row >= 0) & (row < bh)
            ground = flat_bev[np.where(inside, row * bw + col, 0)]
            ground[~inside] = _GRASS
            img = sky.copy().reshape(-1, 3)
            img[idx] = ground + (_HAZE - ground) * fog
            pil = Image.fromarray(img.reshape(H2, W2, 3).astype(np.uint8))
            dr = ImageDraw.Draw(pil)
            view = _View(cam, (ex, ey, eh), f, H2, W2)
            order = sorted(boxes, key=lambda bx: -math.hypot(bx["x"] - view.pos[0], bx["y"] - view.pos[1]))
            for bx in order:
                _draw_box(dr, view, bx, ss)
            arr = np.asarray(pil).astype(np.uint16)
            acc = sum(arr[i::ss, j::ss] for i in range(ss) for j in range(ss))  # box filter
            out[ci, fi] = ((acc + ss * ss // 2) // (ss * ss)).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------------
# Records.


@functools.lru_cache(maxsize=8)
def _fit_fn(dt: float, smoothness: float):
    import jax

    from ar1_jax.action import unicycle

    return jax.jit(lambda xy, v0, heading: unicycle.fit_controls(xy, v0, dt, smoothness, heading=heading))


def scene_controls(scene: Scene, cfg=None) -> np.ndarray:
    """`float32 [horizon, 2]` (a m/s^2, k 1/m): `unicycle.fit_controls` on the expert's future, with
    the future headings and the expert's t0 speed."""
    _, action, _ = _resolve(cfg, None)
    fx, fy = scene.future()
    return np.asarray(_fit_fn(float(scene.dt), float(action.smoothness_lambda))(fx[:, :2], np.float32(scene.v0), fy),
                      np.float32)


def _r(a, nd=3):
    return np.round(np.asarray(a, np.float64), nd).tolist()


def _map_json(scene: Scene) -> str:
    m, tf = scene.road, scene.to_ego0
    x0, y0, h0 = scene.origin

    def rect_poly(r):
        return _r(tf(np.array([[r[0], r[2]], [r[1], r[2]], [r[1], r[3]], [r[0], r[3]]])), 2)

    s_now = float(scene.plan.path.project1(x0, y0))
    obj = dict(
        frame="ego_t0", units="m",
        lanes=[dict(id=ln["id"], kind=ln["kind"], width=round(ln["width"], 3),
                    centerline=_r(tf(ln["centerline"]), 2)) for ln in m.lanes],
        lines=[dict(kind=k, points=_r(tf(p), 2)) for k, p in m.lines],
        crosswalks=[_r(tf(c), 2) for c in m.crosswalks],
        drivable_area=[rect_poly(r) for r in m.drivable],
        sidewalks=[rect_poly(r) for r in m.sidewalks],
        intersections=[rect_poly(r) for r in m.intersections],
        arrows=[dict(position=_r(tf(np.array([x, y])), 2), heading=round(float(_wrap(h - h0)), 3), kind=k)
                for x, y, h, k in m.arrows],
        route=_r(tf(scene.plan.path.polyline(2.0, s_now - 20.0, s_now + 200.0)), 2),
        set_speed=round(scene.params.v_set, 3),
    )
    return json.dumps(obj, separators=(",", ":"))


def _agents_json(scene: Scene) -> str:
    tf, h0 = scene.to_ego0, scene.origin[2]
    agents = []
    for ag in scene.agents:
        xy = tf(ag.poses[:, :2])
        poses = np.concatenate([xy, _wrap(ag.poses[:, 2:] - h0)], -1)
        agents.append(dict(id=ag.id, kind=ag.kind, role=ag.role, size=_r(ag.size), lamps=ag.lamps, poses=_r(poses)))
    lights = []
    for lt in scene.lights:
        lights.append(dict(id=lt.id, position=_r([*tf(np.array(lt.position[:2])), lt.position[2]]),
                           facing=round(float(_wrap(lt.yaw - h0)), 3),
                           stop_line=_r(tf(np.array(lt.stop_line)), 2), states=lt.states))
    obj = dict(frame="ego_t0", dt=scene.dt, t_start=round(float(scene.times[0]), 3), num_steps=len(scene.times),
               t0_index=scene.t0_index, agents=agents, traffic_lights=lights, info=scene.info)
    return json.dumps(obj, separators=(",", ":"))


def to_record(scene: Scene, cfg=None, *, synth: SynthConfig | None = None) -> dict:
    """The scene as the arrays and strings the dataset stores (keys `RECORD_KEYS`); poses in ego0.

    images uint8 [C, F, H, W, 3]; camera_ids int32 [C] (release indices); history_xyz float32 [H, 3],
    history_yaw [H]; future_xyz [T, 3], future_yaw [T]; controls float32 [T, 2] (a m/s^2, k 1/m);
    v0 float32 (m/s); cot (CoC sentence); longitudinal / lateral int32 indices into
    coc.LONGITUDINAL / coc.LATERAL (-1: none); direction int32 (-1 none, 0 left, 1 right);
    map_json, agents_json (ego0 frame).
    """
    scene_cfg, action, _ = _resolve(cfg, synth)
    if scene.horizon != action.horizon or scene.t0_index + 1 != action.history:
        raise ValueError(f"to_record: scene {scene.scene_id} has history {scene.t0_index + 1} / horizon "
                         f"{scene.horizon}, config wants {action.history} / {action.horizon}")
    hx, hy = scene.history()
    fx, fy = scene.future()
    tr = scene.trace
    return dict(
        scene_id=scene.scene_id,
        family=scene.family,
        images=render(scene, cfg, synth=synth),
        camera_ids=np.array([c.release_id for c in camera_set(scene_cfg.num_cameras)], np.int32),
        history_xyz=hx, history_yaw=hy, future_xyz=fx, future_yaw=fy,
        controls=scene_controls(scene, cfg),
        v0=np.float32(scene.v0),
        cot=scene.cot,
        longitudinal=np.int32(-1 if tr.longitudinal is None else coc.LONGITUDINAL.index(tr.longitudinal)),
        lateral=np.int32(-1 if tr.lateral is None else coc.LATERAL.index(tr.lateral)),
        direction=np.int32(-1 if tr.direction is None else coc.DIRECTIONS.index(tr.direction)),
        map_json=_map_json(scene),
        agents_json=_agents_json(scene),
    )


def generate_records(num: int, seed: int = 0, cfg=None, *, synth: SynthConfig | None = None) -> Iterator[dict]:
    """`to_record(generate(s))` for the seeds seed, seed + 1, ..., seed + num - 1."""
    for i in range(int(num)):
        yield to_record(generate(seed + i, cfg, synth=synth), cfg, synth=synth)


# ----------------------------------------------------------------------------------------------------
# Checks: meta-actions, consistency, baseline, collisions.


def meta_actions_from_trajectory(future_xyz: np.ndarray, future_yaw: np.ndarray | None, v0: float,
                                 dt: float = 0.1, window_s: float = META_WINDOW_S) -> coc.MetaAction:
    """The coarse meta-action of a future trajectory (ego0 frame, t0 excluded).

    Longitudinal: stop when the speed drops below STOP_SPEED (0.3 m/s) during the horizon (or stays
    below it throughout); otherwise the mean acceleration over the first `window_s` seconds:
    > KEEP_ACCEL (0.1 m/s^2) accelerate, < -KEEP_ACCEL decelerate, else keep. Lateral: a heading
    change > TURN_RAD (0.5 rad) at the end is a turn to its side; else a lateral displacement whose
    largest magnitude exceeds LATERAL_M (0.5 m) is a move to its side; else straight.
    """
    xy = np.asarray(future_xyz, np.float64)[:, :2]
    full = np.concatenate([np.zeros((1, 2)), xy])
    v_mid = np.hypot(*np.diff(full, axis=0).T) / dt
    if (v0 >= STOP_SPEED and v_mid.min() < STOP_SPEED) or (v0 < STOP_SPEED and v_mid.max() < STOP_SPEED):
        lon = coc.LongitudinalMeta.STOP
    else:
        n = int(round(window_s / dt))
        v_w = np.hypot(*(full[n] - full[n - 2])) / (2 * dt)  # speed at t = (n - 1) dt
        a_mean = (v_w - v0) / ((n - 1) * dt)
        lon = (coc.LongitudinalMeta.ACCELERATE if a_mean > KEEP_ACCEL else
               coc.LongitudinalMeta.DECELERATE if a_mean < -KEEP_ACCEL else coc.LongitudinalMeta.KEEP)
    if future_yaw is not None:
        yaw_end = float(np.unwrap(np.concatenate([[0.0], np.asarray(future_yaw, np.float64)]))[-1])
    else:
        d = full[-1] - full[-2]
        yaw_end = math.atan2(d[1], d[0]) if np.hypot(*d) > 1e-3 else 0.0
    if abs(yaw_end) > TURN_RAD:
        lat = coc.LateralMeta.LEFT if yaw_end > 0 else coc.LateralMeta.RIGHT
    else:
        y = xy[np.argmax(np.abs(xy[:, 1])), 1]
        lat = (coc.LateralMeta.STRAIGHT if abs(y) <= LATERAL_M else
               coc.LateralMeta.LEFT if y > 0 else coc.LateralMeta.RIGHT)
    return coc.MetaAction(lon, lat)


def is_consistent(longitudinal, lateral, direction, meta: coc.MetaAction) -> bool:
    """Whether a measured meta-action is compatible with the decisions (`coc.compatible_meta_actions`)."""
    lon_set, lat_set = coc.compatible_meta_actions(longitudinal, lateral, direction)
    return meta.longitudinal in lon_set and meta.lateral in lat_set


def record_consistent(rec: dict, dt: float = 0.1) -> bool:
    """The rule-based check on a record: its decisions vs the meta-action of its future."""
    lon = None if rec["longitudinal"] < 0 else coc.LONGITUDINAL[int(rec["longitudinal"])]
    lat = None if rec["lateral"] < 0 else coc.LATERAL[int(rec["lateral"])]
    d = None if rec["direction"] < 0 else coc.DIRECTIONS[int(rec["direction"])]
    meta = meta_actions_from_trajectory(rec["future_xyz"], rec["future_yaw"], float(rec["v0"]), dt)
    return is_consistent(lon, lat, d, meta)


def constant_velocity_ade(future_xyz: np.ndarray, v0: float, dt: float = 0.1) -> float:
    """ADE (m, x-y) of the constant-velocity baseline: straight ahead at v0 from t0."""
    fut = np.asarray(future_xyz, np.float64)[:, :2]
    t = np.arange(1, len(fut) + 1) * dt
    pred = np.stack([v0 * t, np.zeros_like(t)], -1)
    return float(np.mean(np.hypot(*(pred - fut).T)))


def collisions(scene: Scene, ego: np.ndarray | None = None, steps: np.ndarray | None = None
               ) -> list[tuple[int, float]]:
    """(agent id, time) of every overlap of the ego footprint with an agent box (separating axes).

    Default: the expert over the future horizon; a simulator passes its own world `ego [N, >=3]` at
    `steps` (indices into `scene.times`).
    """
    if steps is None:
        steps = np.arange(scene.t0_index + 1, scene.t0_index + 1 + scene.horizon)
    ego = scene.ego[steps] if ego is None else np.asarray(ego)
    eh = ego[:, 2]
    half_len = (EGO_FRONT + EGO_REAR) / 2
    ec = ego[:, :2] + (half_len - EGO_REAR) * np.stack([np.cos(eh), np.sin(eh)], -1)
    hits = []
    for ag in scene.agents:
        p = ag.poses[steps]
        hit = _overlap(ec, eh, (half_len, EGO_WIDTH / 2), p[:, :2], p[:, 2], (ag.size[0] / 2, ag.size[1] / 2))
        hits += [(ag.id, float(scene.times[k])) for k in np.asarray(steps)[hit]]
    return hits
