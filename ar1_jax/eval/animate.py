"""A closed-loop drive as a GIF: `load_track` reads a simulator track file, `animate_closed_loop` draws
one frame per step in the world frame (x drawn up, y left drawn to the left), the view following the ego.

Each frame is the world's map raster (the one the cameras see the ground from, `world.render`) cropped
around the ego, with Pillow drawing on it: the logged expert drive (faint), agents as boxes coloured by
kind, lights by state, the driven trail, the current plan, the ego box (red outline on a step flagged
as a collision or off-road), and a caption with time, speed and the plan's reasoning.
"""

from __future__ import annotations

import json
import math
import pathlib
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from ar1_jax.eval.viz import EGO_COLOR, KIND_COLORS, LIGHT_COLORS, box_corners, font
from ar1_jax.world import render
from ar1_jax.world.scene import Scene, ego_footprint

__all__ = ["TRACK_FIELDS", "load_track", "animate_closed_loop"]

#: The fields of a closed-loop track file (`ar1_jax.eval.sim.save_tracks`): scalars, then arrays.
TRACK_FIELDS = ("seed", "family", "scene_id", "policy", "dt", "ego", "agents", "plans", "replan_steps", "reasoning",
                "collision", "offroad")

# The view: metres behind / ahead of the ego's position along world x, across (each side) along y;
# pixels per metre. The ego sits _LOOK_AHEAD m behind the view's centre along its heading.
_BEHIND, _AHEAD, _ACROSS, _PX_PER_M, _LOOK_AHEAD = 32.0, 32.0, 24.0, 8, 12.0
_CAPTION_H, _BORDER = 92, 6
_TRAIL, _PLAN, _EXPERT, _ALERT = (255, 140, 0), (0, 200, 255), (235, 235, 235), (230, 20, 20)


def load_track(path) -> dict:
    """A track file as a dict: seed (int), family, scene_id, policy (str), dt (float s), ego `[N+1, 4]`,
    agents `[A, N+1, 3]`, plans `[R, P, 2]` (world, m / rad / m/s), replan_steps int `[R]`, reasoning
    (list of R str), collision / offroad bool `[N+1]`, scores (dict, empty when the file has none).
    FileNotFoundError or ValueError naming the file and the field."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such track file")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a track .npz ({e})") from None
    missing = [k for k in TRACK_FIELDS if k not in raw]
    if missing:
        raise ValueError(f"{path}: track file lacks {missing} (has {sorted(raw)})")
    track = {"seed": int(raw["seed"]), "dt": float(raw["dt"]),
             **{k: str(raw[k]) for k in ("family", "scene_id", "policy")},
             "ego": raw["ego"].astype(np.float64), "agents": raw["agents"].astype(np.float64),
             "plans": raw["plans"].astype(np.float64), "replan_steps": raw["replan_steps"].astype(np.int64),
             "reasoning": [str(t) for t in raw["reasoning"]],
             "collision": raw["collision"].astype(bool), "offroad": raw["offroad"].astype(bool)}
    n1 = track["ego"].shape[0]
    expected = {"ego": (n1, 4), "agents": (track["agents"].shape[0], n1, 3), "collision": (n1,), "offroad": (n1,),
                "plans": (len(track["replan_steps"]),) + track["plans"].shape[1:2] + (2,),
                "replan_steps": (len(track["reasoning"]),)}
    for key, shape in expected.items():
        if track[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {track[key].shape}, expected {shape} (ego has {n1} rows)")
    track["scores"] = json.loads(str(raw["scores"])) if "scores" in raw else {}
    return track


def animate_closed_loop(path, scene: Scene, track: dict, *, fps: float = 10, every: int = 1) -> int:
    """Writes a GIF of `track` (`load_track`'s dict) driven in `scene` (the world it was simulated in):
    one frame per `every` steps, `fps` frames per second. Returns the number of frames,
    ceil((N+1) / every). ValueError when the track's agents do not match the scene's."""
    n1 = len(track["ego"])
    if track["agents"].shape[0] != len(scene.agents):
        raise ValueError(f"animate_closed_loop: the track has {track['agents'].shape[0]} agents, scene "
                         f"{scene.scene_id} has {len(scene.agents)}")
    if every < 1 or fps <= 0:
        raise ValueError(f"animate_closed_loop: every must be >= 1 and fps > 0, got every={every}, fps={fps}")
    bg = _Background(scene)
    frames = [_frame(scene, track, k, bg) for k in range(0, n1, every)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return len(frames)


class _Background:
    """The map raster (world frame, rows = y, cols = x) and the crop of it around a point, rotated so that
    x is up and y left; outside the raster, grass."""

    def __init__(self, scene: Scene):
        # world.render's raster of the map, cached on the scene: the ground the cameras see.
        self.raster, self.x_lo, self.y_lo, self.res = render.map_raster(scene)
        self.grass = self.raster[0, 0]

    def crop(self, cx: float, cy: float) -> tuple[np.ndarray, float, float]:
        """The view around (cx, cy) (m) as `uint8 [rows, cols, 3]` at `_PX_PER_M`, and the world x at its
        top edge and y at its left edge (m): pixel (col, row) = ((y_left - y), (x_top - x)) * _PX_PER_M."""
        res = self.res
        i0 = int(round((cx - _BEHIND - self.x_lo) / res))  # raster column of the view's lowest x
        j0 = int(round((cy - _ACROSS - self.y_lo) / res))  # raster row of its lowest y
        nx, ny = int(round((_BEHIND + _AHEAD) / res)), int(round(2 * _ACROSS / res))
        out = np.empty((ny, nx, 3), np.uint8)
        out[:] = self.grass
        rows, cols = self.raster.shape[:2]
        a0, a1, b0, b1 = max(j0, 0), min(j0 + ny, rows), max(i0, 0), min(i0 + nx, cols)
        if a0 < a1 and b0 < b1:
            out[a0 - j0:a1 - j0, b0 - i0:b1 - i0] = self.raster[a0:a1, b0:b1]
        up = int(round(_PX_PER_M * res))
        view = out.transpose(1, 0, 2)[::-1, ::-1].repeat(up, 0).repeat(up, 1)
        return np.ascontiguousarray(view), self.x_lo + (i0 + nx) * res, self.y_lo + (j0 + ny) * res


def _frame(scene: Scene, track: dict, k: int, bg: _Background) -> Image.Image:
    ego = track["ego"]
    x, y, yaw, speed = ego[k]
    view, x_top, y_left = bg.crop(x + _LOOK_AHEAD * math.cos(yaw), y + _LOOK_AHEAD * math.sin(yaw))
    h, w = view.shape[:2]
    scene_img = Image.fromarray(view)
    dr = ImageDraw.Draw(scene_img)  # clips what lies outside the view, unlike drawing on the whole frame

    def px(xy: np.ndarray) -> list[tuple[float, float]]:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return list(zip((y_left - xy[:, 1]) * _PX_PER_M, (x_top - xy[:, 0]) * _PX_PER_M))

    dr.line(px(scene.ego[:, :2]), fill=_EXPERT, width=1)
    for lt, state in zip(scene.lights, scene.light_states_at(k * track["dt"])):
        (u, v), = px(lt.position[:2])
        dr.ellipse([u - 5, v - 5, u + 5, v + 5], fill=LIGHT_COLORS.get(state, "grey"), outline="black")
    for ag, pose in zip(scene.agents, track["agents"][:, k]):
        # Pedestrians and cones drawn at least 1 m across, to stay visible at _PX_PER_M.
        corners = box_corners(pose[:2], pose[2], max(ag.size[0], 1.0) / 2, max(ag.size[1], 1.0) / 2)
        dr.polygon(px(corners), fill=KIND_COLORS.get(ag.kind, "#333333"), outline="black")
    if k > 0:
        dr.line(px(ego[:k + 1, :2]), fill=_TRAIL, width=3)
    r = int(np.searchsorted(track["replan_steps"], k, side="right")) - 1  # the plan driven at step k
    if r >= 0:
        dr.line(px(track["plans"][r]), fill=_PLAN, width=2)
    centre, heading, (hl, hw) = ego_footprint(ego[k:k + 1])
    corners = box_corners(centre[0], heading[0], hl, hw)
    flags = [name for name, key in (("COLLISION", "collision"), ("OFF-ROAD", "offroad")) if track[key][k]]
    dr.polygon(px(corners), fill=EGO_COLOR, outline=_ALERT if flags else "black", width=3 if flags else 1)
    dr.polygon(px([corners[0], corners[1], centre[0]]), fill="black")  # the nose: which way is forward
    img = Image.new("RGB", (w, h + _CAPTION_H), (255, 255, 255))
    img.paste(scene_img, (0, 0))
    dr = ImageDraw.Draw(img)
    if flags:
        dr.rectangle([0, 0, w - 1, h + _CAPTION_H - 1], outline=_ALERT, width=_BORDER)
    _caption(dr, track, k, r, flags, w, h)
    return img


def _caption(dr: ImageDraw.ImageDraw, track: dict, k: int, r: int, flags: list[str], w: int, h: int) -> None:
    big, small = font(14), font(12)
    x0 = _BORDER + 4
    head = f"{track['scene_id']} ({track['family']})  {track['policy']}"
    dr.text((x0, h + 6), head, fill=(0, 0, 0), font=small)
    status = f"t = {k * track['dt']:4.1f} s   v = {track['ego'][k, 3]:4.1f} m/s   step {k}/{len(track['ego']) - 1}"
    dr.text((x0, h + 22), status, fill=(0, 0, 0), font=big)
    if flags:
        alert = " ".join(flags)
        dr.text((w - x0 - dr.textlength(alert, font=big), h + 22), alert, fill=_ALERT, font=big)
    text = track["reasoning"][r] if r >= 0 else ""
    for i, line in enumerate(textwrap.wrap(text, max(20, (w - 2 * x0) // 7))[:3]):
        dr.text((x0, h + 42 + 15 * i), line, fill=(30, 30, 120), font=small)
