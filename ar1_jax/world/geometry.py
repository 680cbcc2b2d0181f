"""Planar geometry of the world: oriented boxes, the drivable area, lanes.

Units: metres and radians in the world frame (see `ar1_jax.world`). Each test is written once against
an array module `xp` (numpy or jax.numpy). The jnp functions are jittable and batch by broadcasting,
for the closed-loop simulator and RL rewards; the `*_np` twins run the same expressions in float64
numpy for scene generation and the numpy scorers (bit for bit what those always computed).

Boxes are footprints: a centre `[..., 2]`, a heading `[...]` (rad, the box's long axis) and half
extents `[..., 2]` (half length along the heading, half width across). The drivable area is a union of
axis-aligned rectangles `[R, 4]` (x_min, x_max, y_min, y_max) as `RoadMap.drivable_rects()` gives;
lanes are centreline segments as `RoadMap.lane_segments()` gives.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["boxes_overlap", "boxes_overlap_np", "inside_rects", "inside_rects_np", "distance_to_drivable",
           "lane_of_point"]


def _axes(xp, yaw):
    """Unit vectors along and across headings `[...]`: two `[..., 2]`."""
    return xp.stack([xp.cos(yaw), xp.sin(yaw)], -1), xp.stack([-xp.sin(yaw), xp.cos(yaw)], -1)


def _overlap(xp, c1, h1, half1, c2, h2, half2, margin):
    d = xp.asarray(c2) - xp.asarray(c1)
    u1, v1 = _axes(xp, h1)
    u2, v2 = _axes(xp, h2)
    a1, b1 = half1[..., 0] + margin, half1[..., 1] + margin
    a2, b2 = half2[..., 0] + margin, half2[..., 1] + margin
    separated = None
    for n in (u1, v1, u2, v2):  # the four candidate separating axes
        r1 = a1 * xp.abs(xp.sum(u1 * n, -1)) + b1 * xp.abs(xp.sum(v1 * n, -1))
        r2 = a2 * xp.abs(xp.sum(u2 * n, -1)) + b2 * xp.abs(xp.sum(v2 * n, -1))
        gap = xp.abs(xp.sum(d * n, -1)) > r1 + r2
        separated = gap if separated is None else separated | gap
    return ~separated


def boxes_overlap(c1, yaw1, half1, c2, yaw2, half2, margin: float = 0.0) -> jnp.ndarray:
    """Whether oriented rectangles overlap (separating-axis test), broadcast over leading axes.

    c1, c2: centres `[..., 2]` (m); yaw1, yaw2: headings `[...]` (rad); half1, half2: half extents
    `[..., 2]` (m, along and across the heading); each box is grown by `margin` (m) on every side.
    Returns bool `[...]`; boxes that only touch (a gap of exactly 0) count as overlapping. Jittable.
    """
    return _overlap(jnp, c1, jnp.asarray(yaw1), jnp.asarray(half1), c2, jnp.asarray(yaw2), jnp.asarray(half2),
                    margin)


def boxes_overlap_np(c1, yaw1, half1, c2, yaw2, half2, margin: float = 0.0) -> np.ndarray:
    """`boxes_overlap` in float64 numpy (scene generation, `ar1_jax.eval.scoring.collisions`)."""
    return _overlap(np, c1, np.asarray(yaw1), np.asarray(half1, np.float64), c2, np.asarray(yaw2),
                    np.asarray(half2, np.float64), margin)


def _inside(xp, xy, rects):
    x, y = xy[..., 0:1], xy[..., 1:2]
    return xp.any((x >= rects[:, 0]) & (x <= rects[:, 1]) & (y >= rects[:, 2]) & (y <= rects[:, 3]), -1)


def inside_rects(xy, rects) -> jnp.ndarray:
    """Whether points `[..., 2]` (m) lie in any of the rectangles `[R, 4]` (x_min, x_max, y_min, y_max),
    edges included: bool `[...]`. Jittable."""
    return _inside(jnp, jnp.asarray(xy), jnp.asarray(rects).reshape(-1, 4))


def inside_rects_np(xy, rects) -> np.ndarray:
    """`inside_rects` in numpy (`RoadMap.on_road`)."""
    return _inside(np, np.asarray(xy), np.asarray(rects, np.float64).reshape(-1, 4))


def distance_to_drivable(xy, rects) -> jnp.ndarray:
    """Signed distance (m) from points `[..., 2]` to the edge of the drivable area, a union of rectangles
    `[R, 4]`: positive off the road (the exact distance to the nearest rectangle), zero on an edge,
    negative on the road (minus the clearance to the edge of the rectangle the point is deepest in; a
    lower bound where rectangles join, exact inside a single one). `inf` with no rectangles. Jittable."""
    xy, rects = jnp.asarray(xy), jnp.asarray(rects).reshape(-1, 4)
    x, y = xy[..., 0:1], xy[..., 1:2]
    dx = jnp.maximum(jnp.maximum(rects[:, 0] - x, x - rects[:, 1]), 0.0)
    dy = jnp.maximum(jnp.maximum(rects[:, 2] - y, y - rects[:, 3]), 0.0)
    outside = jnp.min(jnp.hypot(dx, dy), -1, initial=jnp.inf)
    clearance = jnp.minimum(jnp.minimum(x - rects[:, 0], rects[:, 1] - x), jnp.minimum(y - rects[:, 2], rects[:, 3] - y))
    inside = jnp.max(clearance, -1, initial=-jnp.inf)
    return jnp.where(inside > 0.0, -inside, outside)


def lane_of_point(xy, seg_start, seg_end, seg_lane, seg_half_width) -> jnp.ndarray:
    """The lane a point lies in: int32 `[...]`, an index into `RoadMap.lanes`, or -1 off every lane.

    xy: points `[..., 2]` (m). seg_start, seg_end: centreline segments `[S, 2]`; seg_lane: int `[S]`
    their lanes; seg_half_width: `[S]` half the lane width (m). A point belongs to the lane of its
    nearest centreline segment when it is within that half width of it (where lanes cross, as in an
    intersection box, the nearest centreline wins). Jittable.
    """
    p = jnp.asarray(xy)[..., None, :]
    a, b = jnp.asarray(seg_start), jnp.asarray(seg_end)
    ab = b - a
    t = jnp.clip(jnp.sum((p - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
    dist = jnp.linalg.norm(p - (a + t[..., None] * ab), axis=-1)  # [..., S]
    nearest = jnp.argmin(dist, -1)
    within = jnp.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= jnp.asarray(seg_half_width)[nearest]
    return jnp.where(within, jnp.asarray(seg_lane, jnp.int32)[nearest], -1)
