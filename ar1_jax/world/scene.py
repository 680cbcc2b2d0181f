"""The world state: the map, agents, traffic lights, the reference path, the ego's footprint, and
`Scene`, which ties them to one time grid with the expert ego's drive. numpy, float64.

Frames, units and the time grid are described in `ar1_jax.world`. A `RoadMap` is static; agents are
log-replayed (non-reactive) boxes with one pose per step; a light has one state per step. The ego pose
is its rear axle; its body spans [-EGO_REAR, EGO_FRONT] along the heading and EGO_WIDTH across.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ar1_jax.config import Config
from ar1_jax.text import coc
from ar1_jax.world.geometry import inside_rects_np

if TYPE_CHECKING:
    from ar1_jax.world.planner import Expert, Plan, PlannerParams

__all__ = ["EGO_FRONT", "EGO_REAR", "EGO_WIDTH", "MAX_AGENTS", "MAX_RECTS", "MAX_SEGMENTS", "CLASSES", "as_config", "Path", "smoothstep", "lateral_offset",
           "RoadMap", "Agent", "TrafficLight", "Scene", "ego_footprint", "wrap_angle"]

# Ego geometry (m): the pose is the rear axle; the body spans [-EGO_REAR, EGO_FRONT] x [-W/2, W/2].
EGO_FRONT, EGO_REAR, EGO_WIDTH = 3.8, 1.0, 1.95
#: What every generated scene fits in, and so the padded sizes of the arrays that RL rewards, evaluation and
#: the simulator pack a scene into: agents (ambient traffic stops at this count), drivable rectangles and
#: lane-centreline segments (the road layouts have far fewer of those).
MAX_AGENTS, MAX_RECTS, MAX_SEGMENTS = 16, 16, 64
#: Agent kinds.
CLASSES = ("vehicle", "pedestrian", "cyclist", "cone", "stalled_vehicle", "emergency_vehicle")


def as_config(cfg, where: str) -> Config:
    """The root config a world function reads (`cfg.scene`, `cfg.action`, `cfg.synth`): `cfg`, or the
    defaults for None; a TypeError naming `where` for anything else."""
    if cfg is None:
        return Config()
    if not isinstance(cfg, Config):
        raise TypeError(f"{where}: cfg must be an ar1_jax.config.Config (its synth, scene and action sections "
                        f"are read), got {type(cfg).__name__}")
    return cfg


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
        """Points `[N, 2]` every `step` m of arclength from `s_from` to `s_to` (default: the end)."""
        s_to = self.length if s_to is None else s_to
        return self.poses(np.arange(s_from, s_to + 1e-9, step))[:, :2]


def smoothstep(u):
    """Quintic smoothstep on [0, 1] (zero first and second derivative at both ends)."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


def lateral_offset(ramps: tuple[tuple[float, float, float], ...], s):
    """Lateral offset (m, left +) of a planned path at arclength(s) `s`: a sum of smooth ramps
    (s_start, s_end, delta)."""
    out = 0.0 * np.asarray(s, np.float64)
    for a, b, delta in ramps:
        out = out + delta * smoothstep((np.asarray(s, np.float64) - a) / (b - a))
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

    def drivable_rects(self) -> np.ndarray:
        """The drivable area as rectangles `float64 [R, 4]` (x_min, x_max, y_min, y_max; m), the form
        `geometry.inside_rects` and `geometry.distance_to_drivable` take."""
        return np.asarray(self.drivable, np.float64).reshape(-1, 4)

    def lane_segments(self, tolerance: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every lane's centreline as segments, the form `geometry.lane_of_point` takes: starts and ends
        `float64 [S, 2]` (m), lane indices `int32 [S]` (into `lanes`), half widths `float64 [S]` (m).
        With `tolerance` > 0 (m), points that lie within it of the segment around them are dropped
        (a straight lane becomes one segment)."""
        starts, ends, lane, half = [np.zeros((0, 2))], [np.zeros((0, 2))], [np.zeros(0, np.int32)], [np.zeros(0)]
        for i, ln in enumerate(self.lanes):
            c = _simplify(np.asarray(ln["centerline"], np.float64), tolerance)
            starts.append(c[:-1])
            ends.append(c[1:])
            lane.append(np.full(len(c) - 1, i, np.int32))
            half.append(np.full(len(c) - 1, ln["width"] / 2))
        return np.concatenate(starts), np.concatenate(ends), np.concatenate(lane), np.concatenate(half)

    def on_road(self, xy: np.ndarray) -> np.ndarray:
        """Whether points `[..., 2]` lie on the drivable area (edges included)."""
        return inside_rects_np(xy, self.drivable_rects())


def _simplify(line: np.ndarray, tolerance: float) -> np.ndarray:
    """A polyline `[N, 2]` without the points that lie within `tolerance` (m) of the chord between the
    last kept point and the one after them (greedy; the ends are kept)."""
    if tolerance <= 0 or len(line) < 3:
        return line
    keep, start = [0], 0
    for i in range(2, len(line)):
        a, b = line[start], line[i]
        d = b - a
        norm = max(float(np.hypot(*d)), 1e-12)
        inner = line[start + 1:i] - a
        if np.max(np.abs(inner[:, 0] * d[1] - inner[:, 1] * d[0]) / norm) > tolerance:
            keep.append(i - 1)
            start = i - 1
    keep.append(len(line) - 1)
    return line[keep]


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
# Scene.


@dataclass
class Scene:
    """One generated scene, in the world frame (see `ar1_jax.world`).

    times `[T]` (s, t0 = 0 at `t0_index`); ego: `[T, 4]` (x, y, yaw, speed) of the expert at `times`;
    ego_controls `[T, 2]` the (a m/s^2, k 1/m) it applied from each step. origin: the ego pose
    (x, y, yaw) at t0, which defines the ego0 frame. `plan` and `params` are the expert's.
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
    _bev: tuple | None = field(default=None, repr=False)  # the renderer's map raster, cached

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
        yaw = wrap_angle(self.ego[rows, 2] - self.origin[2])
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
        """Each light's state ('r', 'y', 'g') at time t (s; the nearest step, clamped to the grid)."""
        k = int(np.clip(round((t - self.times[0]) / self.dt), 0, len(self.times) - 1))
        return [lt.states[k] for lt in self.lights]

    def expert(self) -> Expert:
        """A fresh expert on this scene (for closed-loop comparisons)."""
        from ar1_jax.world.planner import Expert  # the planner reads these types; import it on use

        return Expert(self.plan, self.params, self.agents, self.lights, self.road, self.dt)


def ego_footprint(ego: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The ego's box at rear-axle poses `[N, >=3]` (world x, y, yaw): centres `[N, 2]` (m), headings
    `[N]` (rad) and half extents (along, across) in metres."""
    eh = ego[:, 2]
    half_len = (EGO_FRONT + EGO_REAR) / 2
    ec = ego[:, :2] + (half_len - EGO_REAR) * np.stack([np.cos(eh), np.sin(eh)], -1)
    return ec, eh, (half_len, EGO_WIDTH / 2)


def wrap_angle(a):
    """Angles (rad) wrapped to [-pi, pi)."""
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
