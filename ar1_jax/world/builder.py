"""Scene assembly for the scenario families: road layouts and their `RoadMap`, scripted agent
trajectories, the `SceneBuilder` a family fills, and ambient traffic.

Units: m, s, rad, m/s; world frame (the ego lane's centre on y = 0, traffic along +x). Randomness
comes from per-seed streams (`rng`): every family draws the road from STREAM_ROAD with the same calls,
so paired families share road, ego speed and history; events, ambient traffic and text have their own.
Agent trajectories are poses `[T, 3]` (x, y, yaw) on the builder's time grid `ts [T]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ar1_jax.config import ActionConfig, SynthConfig
from ar1_jax.text import coc
from ar1_jax.world.geometry import boxes_overlap_np
from ar1_jax.world.planner import Expert, Plan, PlannerParams
from ar1_jax.world.scene import MAX_AGENTS, Agent, Path, RoadMap, TrafficLight

__all__ = ["STREAM_ROAD", "STREAM_EVENT", "STREAM_AMBIENT", "STREAM_TEXT", "rng", "PALETTE", "CLASS_COLOR", "SIZES",
           "agent_poses", "integrate_speed", "brake_profile", "Road", "Intersection", "build_map", "SceneBuilder",
           "CUE_ROLES", "add_ambient"]

# RNG streams: every family draws the road from the same stream with the same calls, so paired
# families share it; events, ambient traffic and text have their own streams.
STREAM_ROAD, STREAM_EVENT, STREAM_AMBIENT, STREAM_TEXT = 1, 2, 3, 4


def rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one stream of scene `seed`."""
    return np.random.default_rng([int(seed), stream])


# ----------------------------------------------------------------------------------------------------
# Agent trajectories.

#: Vehicle body colours (RGB); classes with a fixed colour; boxes (length, width, height) m of fixed-size
#: classes (vehicles draw theirs from the event stream).
PALETTE = ((40, 70, 160), (150, 150, 155), (225, 225, 225), (30, 30, 35), (90, 100, 110), (20, 90, 110),
           (110, 70, 40), (60, 50, 120))
CLASS_COLOR = {"pedestrian": (225, 40, 175), "cyclist": (40, 200, 225), "cone": (255, 110, 0),
               "emergency_vehicle": (235, 235, 235)}
SIZES = {"pedestrian": (0.5, 0.55, 1.75), "cyclist": (1.8, 0.6, 1.7), "cone": (0.45, 0.45, 0.75),
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


def agent_poses(x, y, ts, yaw=None, default_yaw=0.0) -> np.ndarray:
    """Poses `[T, 3]` (x, y, yaw) at times `ts [T]` from positions x, y (m; scalars or `[T]`): the given
    yaw, else the direction of motion (held while standing, `default_yaw` before the first move)."""
    x = np.broadcast_to(np.asarray(x, np.float64), ts.shape)
    y = np.broadcast_to(np.asarray(y, np.float64), ts.shape)
    xy = np.stack([x, y], -1)
    yaw = _yaw_from_motion(xy, default_yaw) if yaw is None else np.broadcast_to(yaw, ts.shape)
    return np.concatenate([xy, yaw[:, None]], -1)


def integrate_speed(v: np.ndarray, ts: np.ndarray, k0: int) -> np.ndarray:
    """Distance (m) travelled since ts[k0] for speeds v `[T]` (m/s) at ts `[T]` (trapezoid): `[T]`."""
    d = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(ts))])
    return d - d[k0]


def brake_profile(p_start, v, p_stop, b, ts) -> np.ndarray | None:
    """1D positions `[T]` (m) from `p_start` at ts[0] at speed v (m/s), braking at b (m/s^2) to stand at
    `p_stop` (None when that needs more than 3.5 m/s^2); constant speed when p_stop is behind the start."""
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
class Road:
    """Road layout parameters (world frame; the ego lane centre is y = 0): lane width w (m), lanes in the
    ego's direction (n_same, the ego in lane i_ego, 0 = rightmost) and opposing (n_opp), right and left
    shoulder widths and the sidewalk width (m)."""

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
class Intersection:
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


_X_LO, _X_HI, _Y_SPAN = -150.0, 350.0, 120.0  # main road x extent, cross road half length (m)


def build_map(rd: Road, it: Intersection | None) -> RoadMap:
    """The map of a layout: lanes (centrelines every 5 m), markings, drivable rects, sidewalks and, with
    an intersection, the cross road, its stop lines and crosswalks."""
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



class SceneBuilder:
    """Collects one scene's parts. Each family function fills road, events, plan and decision.

    `lateral` is the family's lateral decision (None: the family chooses it); times `ts [T]` (s) run
    from -(history - 1) dt to (horizon + extra) dt, t0 at index `k0`."""

    def __init__(self, seed: int, family: str, action: ActionConfig, synth: SynthConfig,
                 lateral: coc.Lateral | None = None):
        self.seed, self.family = seed, family
        self.dt = float(action.dt)
        self.H, self.F = int(action.history), int(action.horizon)
        extra = int(round(synth.extra_seconds / self.dt))
        self.ts = (np.arange(self.H + self.F + extra) - (self.H - 1)) * self.dt
        self.k0 = self.H - 1
        self.rr, self.re, self.ra = rng(seed, STREAM_ROAD), rng(seed, STREAM_EVENT), rng(seed, STREAM_AMBIENT)
        r = self.rr  # the shared road stream: identical calls for every family
        self.road = Road(w=r.uniform(3.2, 3.8), n_same=int(r.choice([1, 2, 3], p=[0.3, 0.5, 0.2])), i_ego=0,
                         n_opp=int(r.choice([0, 1, 2], p=[0.15, 0.6, 0.25])), sh_r=r.uniform(0.3, 2.5),
                         sh_l=r.uniform(0.2, 0.8), walk=r.uniform(2.0, 4.0))
        self.road.i_ego = int(r.integers(self.road.n_same))
        self.v_set = r.uniform(8.0, 15.0)
        self.v_init = self.v_set - r.uniform(0.0, 2.5)
        self.params_kw = dict(a_max=r.uniform(1.0, 1.8), headway=r.uniform(1.0, 1.8), brake_onset=r.uniform(1.6, 2.6))
        self.spare = r.uniform(size=4)
        self.inter: Intersection | None = None
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
        self.lateral: coc.Lateral | None = lateral
        self.direction: str | None = None
        self.cause_fmt: dict = {}
        self.info: dict = {}
        self.arrows: list = []  # road paint (x, y, heading, kind)
        self.crosswalk_x: float | None = None  # a mid-block crosswalk across the main road
        self.road_map: RoadMap | None = None
        self.v0_est = self.v_init  # the ego's speed at t0 under free driving (set by history_run)

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
        """Adds an agent with poses `[T, 3]`; size and colour default by kind (else drawn from the event
        stream)."""
        size = size or SIZES.get(kind) or (self.re.uniform(4.2, 5.2), self.re.uniform(1.8, 2.0),
                                           self.re.uniform(1.4, 1.9))
        color = color or CLASS_COLOR.get(kind) or PALETTE[int(self.re.integers(len(PALETTE)))]
        ag = Agent(len(self.agents), kind, tuple(float(v) for v in size), poses, color, lamps, role)
        self.agents.append(ag)
        return ag

    def add_intersection(self, x_i: float, n: int | None = None):
        """A cross road whose box starts at x = x_i (m), with n lanes per direction."""
        self.inter = Intersection(x_i=x_i, n=n or self.n_cross, w=self.road.w, sh=self.sh_c)

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
                        self.add("vehicle", agent_poses(xc, y, self.ts, yaw=sgn * math.pi / 2), "cross_traffic",
                                 size=(length, 1.9, r.uniform(1.4, 1.8)))
                        t_e += length / v + r.uniform(1.5, 3.0)
                else:
                    y = (rd.y_right - 6.5 if sgn > 0 else rd.y_left + 6.5) - sgn * 2.6
                    for _ in range(int(r.integers(1, 3))):
                        self.add("vehicle", agent_poses(xc, y, self.ts, yaw=sgn * math.pi / 2), "cross_traffic")
                        y -= sgn * r.uniform(6.0, 8.0)


# ----------------------------------------------------------------------------------------------------
# Ambient traffic.

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


def _hides_cue(b: SceneBuilder, poses: np.ndarray, size) -> bool:
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


def add_ambient(b: SceneBuilder):
    """Ambient traffic that never enters the ego lane: vehicles in the other same-direction lanes
    (stopping for a red light), oncoming vehicles, sidewalk pedestrians, parked cars and a cyclist on a
    wide shoulder. Candidates that come near an event agent or an earlier ambient agent are dropped, and
    the rest once the scene holds `MAX_AGENTS` agents."""
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
                xt = brake_profile(x_start, v_lane, stop_x - size[0] / 2, r.uniform(1.5, 2.5), ts)
                if xt is None:
                    continue
            else:
                xt = x_start + v_lane * (ts - ts[0])
            cands.append(("vehicle", agent_poses(xt, rd.lane_y(j), ts, yaw=0.0), size, ""))
    for j in range(rd.n_opp):
        n = int(r.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))
        for _ in range(n):
            v, x0 = r.uniform(8.0, 14.0), r.uniform(0.0, 150.0)
            size = (r.uniform(4.2, 5.2), r.uniform(1.8, 2.0), r.uniform(1.4, 1.9))
            if b.no_oncoming:
                continue
            x_start = x0 + v * (0 - ts[0])
            if it is not None and b.signal == "r" and x_start > it.far_stop_x:
                p = brake_profile(-x_start, v, -(it.far_stop_x + 1.0 + size[0] / 2), r.uniform(1.5, 2.5), ts)
                if p is None:
                    continue
                xt = -p
            else:
                xt = x_start - v * (ts - ts[0])
            cands.append(("vehicle", agent_poses(xt, rd.opp_y(j), ts, yaw=math.pi), size, ""))
    for _ in range(int(r.integers(0, 5))):
        right = r.uniform() < 0.5
        y = (rd.y_right - rd.walk / 2 if right else rd.y_left + rd.walk / 2) + r.uniform(-0.5, 0.5)
        x0, v = r.uniform(-10.0, 80.0), r.uniform(0.8, 1.5) * (1 if r.uniform() < 0.5 else -1)
        cands.append(("pedestrian", agent_poses(x0 + v * ts, y, ts), SIZES["pedestrian"], ""))
    n_parked = int(r.integers(0, 4))
    xs_parked = r.uniform(-10.0, 100.0, size=n_parked)
    cyc = r.uniform(), r.uniform(-10.0, 60.0), r.uniform(4.0, 6.0)
    if not b.no_shoulder:
        if rd.sh_r >= 2.0:
            for x0 in xs_parked:
                size = (r.uniform(4.2, 5.0), 1.85, r.uniform(1.4, 1.8))
                cands.append(("vehicle", agent_poses(x0, rd.y_right + 1.0, ts, yaw=0.0), size, ""))
        if rd.sh_r >= 1.3 and cyc[0] < 0.3:
            cands.append(("cyclist", agent_poses(cyc[1] + cyc[2] * ts, rd.y_right + 0.6, ts), SIZES["cyclist"], ""))
    for kind, poses, size, lamps in cands:
        if len(b.agents) >= MAX_AGENTS:
            break
        if kind == "pedestrian" and b.road_map.on_road(poses[:, :2]).any():
            continue
        near_box = (poses[:, 0] > it.x_i - 8) & (poses[:, 0] < it.x_i + it.width + 8) if it is not None else None
        if it is not None and (kind != "vehicle" or np.ptp(poses[:, 0]) < 0.1) and np.any(near_box):
            continue  # no pedestrians, cyclists or parked cars in or next to the intersection
        if _hides_cue(b, poses, size):
            continue
        half = (size[0] / 2, size[1] / 2)
        if not any(boxes_overlap_np(poses[:, :2], poses[:, 2], half, o.poses[:, :2], o.poses[:, 2],
                                    (o.size[0] / 2, o.size[1] / 2), margin=0.6).any() for o in b.agents):
            b.add(kind, poses, "ambient", size=size, color=CLASS_COLOR.get(kind) or
                  PALETTE[int(r.integers(len(PALETTE)))], lamps=lamps)

