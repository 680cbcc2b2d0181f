"""Static plots: a scene's bird's-eye view with predicted trajectories, its camera images as a grid,
training / RL curves from metrics.jsonl, and `plot_bev` (trajectories without a world, for `ar1 infer`).

Bird's-eye views are in the ego frame at t0 (x forward drawn up, y left drawn to the left; metres).
matplotlib (Agg) and Pillow only; the closed-loop GIF lives in `ar1_jax.eval.animate`.
"""

from __future__ import annotations

import json
import math
import pathlib
import textwrap
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from ar1_jax.world.scene import Scene, ego_footprint  # noqa: E402

__all__ = ["KIND_COLORS", "LIGHT_COLORS", "EGO_COLOR", "MAP_COLORS", "box_corners", "font", "plot_bev", "bev_figure",
           "plot_scene_bev", "plot_camera_grid", "read_metrics", "curve_panels", "plot_curves"]

#: Agent kind -> colour, shared by the BEV and the closed-loop GIF.
KIND_COLORS = {"vehicle": "#1f77b4", "pedestrian": "#ff7f0e", "cyclist": "#9467bd", "cone": "#e377c2",
               "stalled_vehicle": "#8c564b", "emergency_vehicle": "#d62728"}
LIGHT_COLORS = {"r": "#e41a1c", "y": "#ffbf00", "g": "#2ca02c"}
EGO_COLOR = "#ffd400"
MAP_COLORS = {"ground": "#e4ead9", "drivable": "#a9a9ad", "sidewalk": "#cfccc4", "crosswalk": "#f5f5f5",
              "solid_white": "#ffffff", "dashed_white": "#ffffff", "solid_yellow": "#e0b000", "stop_line": "#ffffff"}
_PRED_COLORS = ("#e41a1c", "#6a3d9a", "#ff7f00", "#a65628", "#f781bf", "#17becf", "#bcbd22", "#1f78b4")


def box_corners(centre: np.ndarray, yaw: np.ndarray, half_len, half_wid) -> np.ndarray:
    """Corners `[..., 4, 2]` (front-left, front-right, rear-right, rear-left) of boxes with centres
    `[..., 2]` (m), headings `[...]` (rad) and half extents along / across the heading (m)."""
    centre, yaw = np.asarray(centre, np.float64), np.asarray(yaw, np.float64)
    fwd = np.stack([np.cos(yaw), np.sin(yaw)], -1)[..., None, :]
    left = np.stack([-np.sin(yaw), np.cos(yaw)], -1)[..., None, :]
    along = np.array([1.0, 1.0, -1.0, -1.0])[:, None] * np.asarray(half_len, np.float64)[..., None, None]
    across = np.array([1.0, -1.0, -1.0, 1.0])[:, None] * np.asarray(half_wid, np.float64)[..., None, None]
    return centre[..., None, :] + along * fwd + across * left


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` px (its bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


# ----------------------------------------------------------------------------------------------------
# Bird's-eye views.


def plot_bev(path, trajectories: np.ndarray, history_xy: np.ndarray, future_xy: np.ndarray | None = None,
             title: str = "", labels: list[str] | None = None) -> None:
    """Writes a PNG of trajectories without a world: `trajectories [K, T, 2]`, `history_xy [H, 2]`,
    `future_xy [T, 2]`, metres in the t0 ego frame (x forward drawn up, y left drawn left)."""
    fig, ax = plt.subplots(figsize=(5, 6), dpi=110)
    ax.plot(-history_xy[:, 1], history_xy[:, 0], "k.-", lw=1.5, label="history")
    if future_xy is not None:
        ax.plot(-future_xy[:, 1], future_xy[:, 0], "g--", lw=2, label="ground truth")
    for k, traj in enumerate(trajectories):
        ax.plot(-traj[:, 1], traj[:, 0], "-", lw=1.5, alpha=0.8,
                label=_drawable(labels[k] if labels else f"sample {k}")[:40])
    ax.plot([0], [0], "r^", ms=10, label="ego at t0")
    _lateral_axis(ax)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(_drawable(title), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _drawable(text: str) -> str:
    """`text` with control characters as '?' (an undertrained model's reasoning can hold any byte; the
    plot font has no glyph for them and matplotlib warns)."""
    return "".join(c if c.isprintable() else " " if c in "\n\t" else "?" for c in text)


def _lateral_axis(ax) -> None:
    """Axis labels of a BEV whose horizontal axis is -y: the ticks show y (left +)."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{-v:g}" if v else "0"))
    ax.set_xlabel("y (m, left +)")
    ax.set_ylabel("x (m, forward)")


# Layout of `bev_figure` in inches: the map axes (60 x 100 m at the default zoom) above a band with the
# axis label, the legend (two columns, _ROW_IN per row) and the wrapped caption (_ROW_IN per line).
_BEV_WIDTH, _BEV_AXES, _TOP_IN, _ROW_IN = 5.6, (0.75, 4.5, 7.5), 0.5, 0.16
_BEV_AHEAD, _BEV_BEHIND = 80.0, 20.0
_CAPTION_CHARS, _LABEL_CHARS = 80, 40


def bev_figure(scene: Scene, *, predictions: np.ndarray | None = None, labels: Sequence[str] | None = None,
               caption: str | None = None, title: str = "") -> plt.Figure:
    """The scene at t0 in its ego0 frame as a matplotlib figure (100 dpi, 5.6 in wide, as tall as the
    legend and caption need): map, agents (boxes coloured by kind, their future faint), lights coloured by
    state, the ego box, its history, the expert future (`scene.future()`), `predictions [K, T, 2]` (m,
    ego0) labelled by `labels`, and `caption` wrapped under the legend. The window spans 20 m behind to
    at least 80 m ahead (further when a trajectory goes further), 3:5 across:along."""
    preds = np.zeros((0, 0, 2)) if predictions is None else np.asarray(predictions, np.float64).reshape(
        len(predictions), -1, 2)
    caption_lines = textwrap.wrap(_drawable(caption or ""), _CAPTION_CHARS)
    legend_rows = math.ceil((len({ag.kind for ag in scene.agents}) + 3 + len(preds)) / 2)
    left, aw, ah = _BEV_AXES
    bottom = 0.75 + legend_rows * _ROW_IN + (0.15 + len(caption_lines) * _ROW_IN if caption_lines else 0.0)
    w, h = _BEV_WIDTH, bottom + ah + _TOP_IN
    fig = plt.figure(figsize=(w, h), dpi=100)
    ax = fig.add_axes((left / w, bottom / h, aw / w, ah / h))
    ax.set_facecolor(MAP_COLORS["ground"])
    hist, _ = scene.history()
    fut, _ = scene.future()
    far = max([float(fut[:, 0].max(initial=0.0))] + [float(p[:, 0].max(initial=0.0)) for p in preds])
    ahead = float(np.clip(far + 8.0, _BEV_AHEAD, 160.0))
    half = 0.3 * (ahead + _BEV_BEHIND)
    ax.set_xlim(-half, half)
    ax.set_ylim(-_BEV_BEHIND, ahead)
    ax.set_aspect("equal", adjustable="box")
    _draw_map(ax, scene)
    handles = _draw_agents(ax, scene, horizon=scene.horizon)
    _draw_lights(ax, scene)
    t0 = scene.t0_index
    centre, heading, (hl, hw) = ego_footprint(scene.ego[t0:t0 + 1])
    corners = scene.to_ego0(box_corners(centre, heading, hl, hw)[0])
    ego_patch = Polygon(_plot_xy(corners), closed=True, fc=EGO_COLOR, ec="black", lw=1.0, zorder=6, label="ego at t0")
    ax.add_patch(ego_patch)
    ax.plot(*_plot_xy(hist[:, :2]).T, "k.-", lw=1.2, ms=2.5, zorder=7, label="history")
    ax.plot(*_plot_xy(fut[:, :2]).T, "--", color="#1a9850", lw=2.0, zorder=7, label="expert future")
    for k, traj in enumerate(preds):
        label = labels[k] if labels is not None and k < len(labels) else f"prediction {k}"
        ax.plot(*_plot_xy(traj).T, "-", color=_PRED_COLORS[k % len(_PRED_COLORS)], lw=1.6, alpha=0.9, zorder=8,
                label=textwrap.shorten(_drawable(str(label)), _LABEL_CHARS, placeholder="..."))
    _lateral_axis(ax)
    ax.grid(alpha=0.25, lw=0.5)
    ax.set_title(title or f"{scene.scene_id} ({scene.family}), v0 {scene.v0:.1f} m/s", fontsize=10)
    entries = handles + [ego_patch] + [a for a in ax.get_lines() if not a.get_label().startswith("_")]
    legend_top = bottom - 0.6
    fig.legend(handles=entries, loc="upper left", ncol=2, fontsize=7, frameon=False,
               bbox_to_anchor=(0.02, legend_top / h))
    if caption_lines:
        fig.text(0.04, (legend_top - legend_rows * _ROW_IN - 0.1) / h, "\n".join(caption_lines), fontsize=8.5,
                 va="top", ha="left")
    return fig


def plot_scene_bev(path, scene: Scene, *, predictions: np.ndarray | None = None,
                   labels: Sequence[str] | None = None, caption: str | None = None, title: str = "") -> None:
    """Writes `bev_figure(scene, ...)` as a PNG (560 px wide)."""
    fig = bev_figure(scene, predictions=predictions, labels=labels, caption=caption, title=title)
    fig.savefig(path)
    plt.close(fig)


def _plot_xy(xy: np.ndarray) -> np.ndarray:
    """Ego0 points `[..., 2]` -> plot coordinates (-y, x): forward up, left to the left."""
    xy = np.asarray(xy, np.float64)
    return np.stack([-xy[..., 1], xy[..., 0]], -1)


def _rect_corners(rect) -> np.ndarray:
    x0, x1, y0, y1 = rect
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _draw_map(ax, scene: Scene) -> None:
    road = scene.road
    for rects, kind in ((road.sidewalks, "sidewalk"), (road.drivable, "drivable")):
        for r in rects:
            ax.add_patch(Polygon(_plot_xy(scene.to_ego0(_rect_corners(r))), closed=True, fc=MAP_COLORS[kind],
                                 ec="none", zorder=1, gid=kind))
    for cw in road.crosswalks:
        span = cw.max(0) - cw.min(0)
        # Zebra stripes run along the road they cross: along x (drawn vertical) when the walk spans y.
        ax.add_patch(Polygon(_plot_xy(scene.to_ego0(cw)), closed=True, fc=MAP_COLORS["crosswalk"],
                             ec=MAP_COLORS["drivable"], lw=0.0, hatch="|||" if span[1] > span[0] else "---",
                             zorder=2, gid="crosswalk"))
    for kind, pts in road.lines:
        style = dict(solid_white=("-", 0.9), dashed_white=((0, (4, 5)), 0.9), solid_yellow=("-", 1.3),
                     stop_line=("-", 3.0)).get(kind, ("-", 0.8))
        ax.plot(*_plot_xy(scene.to_ego0(pts)).T, linestyle=style[0], lw=style[1],
                color=MAP_COLORS.get(kind, "#ffffff"), zorder=3, gid=kind, label="_map")


def _draw_agents(ax, scene: Scene, horizon: int) -> list:
    """Every agent's box at t0 and its path over the next `horizon` steps; legend handles per kind."""
    t0 = scene.t0_index
    handles = {}
    for ag in scene.agents:
        col = KIND_COLORS.get(ag.kind, "#333333")
        x, y, yaw = ag.poses[t0]
        corners = scene.to_ego0(box_corners(np.array([x, y]), np.array(yaw), ag.size[0] / 2, ag.size[1] / 2))
        patch = Polygon(_plot_xy(corners), closed=True, fc=col, ec="black", lw=0.6, zorder=5, gid=f"agent{ag.id}",
                        label=ag.kind.replace("_", " "))
        ax.add_patch(patch)
        handles.setdefault(ag.kind, patch)
        if max(ag.size[:2]) < 1.0:  # pedestrians and cones: a marker keeps them visible when zoomed out
            ax.plot(*_plot_xy(scene.to_ego0(np.array([x, y]))), "o", ms=4, mfc=col, mec="black", mew=0.5,
                    zorder=5, label="_agent")
        path = ag.poses[t0:t0 + horizon + 1, :2]
        if np.hypot(*(path[-1] - path[0])) > 0.5:
            ax.plot(*_plot_xy(scene.to_ego0(path)).T, "-", color=col, lw=1.0, alpha=0.4, zorder=4, label="_path")
    return list(handles.values())


def _draw_lights(ax, scene: Scene) -> None:
    for lt, state in zip(scene.lights, scene.light_states_at(0.0)):
        ax.plot(*_plot_xy(scene.to_ego0(np.array(lt.position[:2]))), "o", ms=7, mfc=LIGHT_COLORS.get(state, "grey"),
                mec="black", mew=0.8, zorder=6, label="_light")


# ----------------------------------------------------------------------------------------------------
# Camera images.


def plot_camera_grid(path, images: np.ndarray, title: str = "", *, cameras: Sequence[str] | None = None,
                     frame_labels: Sequence[str] | None = None, min_width: int = 240) -> tuple[int, int]:
    """Writes a PNG of camera images `uint8 [C, F, H, W, 3]` as a grid (rows = cameras, columns = frames),
    each upscaled by an integer factor (nearest neighbour) to at least `min_width` px; `cameras` names
    the rows, `frame_labels` the columns. Returns the PNG's (width, height) in pixels."""
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"plot_camera_grid: images must be [C, F, H, W, 3], got {images.shape}")
    n_cam, n_frame, h, w, _ = images.shape
    scale = max(1, math.ceil(min_width / w))
    gap, label_h, title_h = 6, 18, 30 if title else 0
    tile_w, tile_h = w * scale, h * scale
    width = n_frame * tile_w + (n_frame + 1) * gap
    height = title_h + n_cam * (label_h + tile_h + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 6), title, fill=(0, 0, 0), font=font(16))
    small = font(12)
    for c in range(n_cam):
        y = title_h + c * (label_h + tile_h + gap) + gap
        for f in range(n_frame):
            x = gap + f * (tile_w + gap)
            name = cameras[c] if cameras is not None else f"camera {c}"
            label = name if f == 0 else ""
            if frame_labels is not None:
                label = f"{label}  {frame_labels[f]}".strip()
            draw.text((x, y), label, fill=(0, 0, 0), font=small)
            tile = images[c, f].astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
            canvas.paste(Image.fromarray(tile), (x, y + label_h))
    canvas.save(path)
    return width, height


# ----------------------------------------------------------------------------------------------------
# Training and RL curves.

# Logged keys that are bookkeeping, not curves: throughput and timing (also any *_s, *_per_s key).
_NOT_CURVES = frozenset({"step", "tokens", "step_flops", "mfu", "includes_compile", "nonfinite", "stage"})
# Panels, in order: (title, predicate on the key). A key in none of them gets a panel of its own.
_PANELS = (
    ("loss", lambda k: k == "loss" or k.endswith("loss") or k.startswith("ce_") or k in ("flow", "expert_fm")),
    ("reward", lambda k: k.startswith("reward")),
    ("KL to the reference", lambda k: k == "kl" or k.endswith("_kl")),
    ("fractions", lambda k: k.endswith("_frac") or k.endswith("_rate") or k == "groups_kept"),
    ("importance ratio", lambda k: "ratio" in k),
    ("grad norm", lambda k: k == "grad_norm"),
    ("learning rate", lambda k: k == "lr"),
)


def read_metrics(path) -> list[dict]:
    """The rows of a metrics.jsonl file (a line cut short by a killed run is skipped).
    FileNotFoundError naming the file when it is missing."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve_panels(rows: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """The panels `plot_curves` draws: (title, keys) for the numeric keys of `rows`, bookkeeping skipped."""
    keys = []
    for row in rows:
        for k, v in row.items():
            if (k not in keys and k not in _NOT_CURVES and not k.endswith("_s") and _is_number(v)):
                keys.append(k)
    panels = []
    for name, belongs in _PANELS:
        members = sorted(k for k in keys if belongs(k))
        if members:
            panels.append((name, members))
        keys = [k for k in keys if k not in members]
    return panels + [(k, [k]) for k in sorted(keys)]


def plot_curves(path, rows: Sequence[dict], title: str = "") -> list[tuple[str, list[str]]]:
    """Writes a PNG with one panel per group of logged values (`curve_panels`) against the step, from
    metrics.jsonl `rows` (dicts with `step`); returns the panels. ValueError when nothing is plottable."""
    panels = curve_panels(rows)
    if not panels:
        raise ValueError("plot_curves: no numeric values logged besides the step and timing")
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.0 * nrows + 0.4), dpi=100, squeeze=False)
    ordered = sorted(rows, key=lambda r: r["step"])
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in ordered if _is_number(r.get(key))]
            emphasis = key in ("loss", "reward/total")
            ax.plot(*zip(*pts), ".-" if len(pts) <= 60 else "-", ms=3, lw=2.0 if emphasis else 1.1,
                    color="black" if emphasis else None, label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=6, ncol=2 if len(keys) > 5 else 1)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return panels
