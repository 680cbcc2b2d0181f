"""Cameras on the ego and the renderer: images of a scene from any ego pose at any step of its grid.

Each pixel's ray meets the ground plane and looks up a bird's-eye raster of the map; agents and lights
are depth-sorted boxes drawn with Pillow; everything at `supersample` x resolution, then box-filtered.
numpy + Pillow only. A closed-loop simulator re-renders with its own ego poses (world x, y, yaw) at
the steps it has reached; agents and lights are shown as they are at those steps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ar1_jax.world.scene import Scene, as_config

__all__ = ["Camera", "CAMERAS", "camera_set", "render", "map_raster"]


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


def map_raster(scene: Scene) -> tuple[np.ndarray, float, float, float]:
    """The map painted from above in the world frame, as the cameras see the ground: (image `uint8
    [rows = y, cols = x, 3]`, x of column 0 (m), y of row 0 (m), metres per pixel). Cached on the scene."""
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


def render(scene: Scene, cfg=None, *, ego_poses: np.ndarray | None = None, steps: np.ndarray | None = None
           ) -> np.ndarray:
    """Camera images `uint8 [C, F, H, W, 3]` (camera-major, oldest frame first) of `cfg.scene`'s cameras,
    frames and size, drawn at `cfg.synth.supersample`.

    By default the frames are the last F history steps (t0 - (F-1) dt .. t0) seen from the expert's
    poses; a closed-loop simulator passes its own world `ego_poses [F, 3]` (x, y, yaw; m, rad) and
    time `steps [F]` (indices into `scene.times`).
    """
    cfg = as_config(cfg, "render")
    cams = camera_set(cfg.scene.num_cameras)
    nf, h, w = cfg.scene.num_frames, cfg.scene.image_height, cfg.scene.image_width
    ss = int(cfg.synth.supersample)
    if steps is None:
        if nf > scene.t0_index + 1:
            raise ValueError(f"scene.num_frames={nf} exceeds the {scene.t0_index + 1} history steps")
        steps = np.arange(scene.t0_index - nf + 1, scene.t0_index + 1)
    steps = np.asarray(steps)
    if steps.shape != (nf,) or steps.min() < 0 or steps.max() >= len(scene.times):
        raise ValueError(f"render: steps must be {nf} (scene.num_frames) indices into the scene's "
                         f"{len(scene.times)} time steps, got {steps.tolist()}")
    if ego_poses is None:
        ego_poses = scene.ego[steps, :3]
    if np.shape(ego_poses) != (nf, 3):
        raise ValueError(f"render: ego_poses must be [{nf}, 3] (x, y, yaw per frame), got {np.shape(ego_poses)}")
    bev, x_lo, y_lo, res = map_raster(scene)
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
