"""ar1_jax/world/geometry.py: box overlap (touching, overlapping, separated, rotated, an axis only SAT
finds), the numpy twin against jnp, jit and vmap, the drivable area and lanes by hand and on a scene."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.world.families import generate
from ar1_jax.world.geometry import (boxes_overlap, boxes_overlap_np, distance_to_drivable, inside_rects,
                                    inside_rects_np, lane_of_point)
from ar1_jax.world.scene import RoadMap

# Jitted once per module (eager jnp dispatch compiles every primitive for every new shape).
OVERLAP, INSIDE, DISTANCE, LANE = (jax.jit(f) for f in (boxes_overlap, inside_rects, distance_to_drivable,
                                                         lane_of_point))
Q = math.pi / 4
SQ2 = math.sqrt(2.0)
# (centre2, yaw2, half2, overlap) against box 1: centre (0, 0), yaw 0, half extents (2, 1).
CASES = [
    ((4.0, 0.0), 0.0, (2.0, 1.0), True),  # end to end, touching: gap exactly 0
    ((4.1, 0.0), 0.0, (2.0, 1.0), False),  # 10 cm apart
    ((0.0, 2.0), 0.0, (2.0, 1.0), True),  # side by side, touching
    ((3.9, 1.9), 0.0, (2.0, 1.0), True),  # corners overlap by 10 cm each way
    ((2 + SQ2 - 0.1, 0.0), Q, (1.0, 1.0), True),  # a diamond (square at 45 deg) reaching 1.414 m: 10 cm in
    ((2 + SQ2 + 0.1, 0.0), Q, (1.0, 1.0), False),  # ... and 10 cm out
    ((0.0, 1 + SQ2 - 0.1), Q, (1.0, 1.0), True),
    ((0.0, 1 + SQ2 + 0.1), Q, (1.0, 1.0), False),
    ((0.0, 0.0), 1.0, (0.1, 0.1), True),  # inside
]


def _stack(cases):
    c2, y2, h2, want = (np.array(x, np.float64) for x in zip(*cases))
    n = len(cases)
    return (np.zeros((n, 2)), np.zeros(n), np.tile([2.0, 1.0], (n, 1)), c2, y2, h2), want.astype(bool)


def test_box_overlap_hand_cases_numpy_and_jnp():
    args, want = _stack(CASES)
    assert boxes_overlap_np(*args).tolist() == want.tolist()
    got = OVERLAP(*(jnp.asarray(a, jnp.float32) for a in args))
    assert got.dtype == jnp.bool_ and got.tolist() == want.tolist()
    # Growing both boxes by a margin turns "10 cm apart" into an overlap.
    assert bool(OVERLAP((0.0, 0.0), 0.0, (2.0, 1.0), (4.1, 0.0), 0.0, (2.0, 1.0), margin=0.06))
    assert not bool(OVERLAP((0.0, 0.0), 0.0, (2.0, 1.0), (4.1, 0.0), 0.0, (2.0, 1.0), margin=0.04))


def test_separating_axis_beyond_bounding_boxes():
    # Two parallel sticks along the diagonal, 0.707 m apart across it: their axis-aligned bounding boxes
    # overlap, the boxes do not (the separating axis is the sticks' normal).
    stick = (1.0, 0.1)
    both = OVERLAP(np.zeros((2, 2)), Q, stick, np.array([[0.5, -0.5], [0.1, -0.1]]), Q, stick)
    assert np.asarray(both).tolist() == [False, True]  # 0.707 m apart; 0.14 m apart < 0.2 m of width
    assert not boxes_overlap_np(np.zeros((1, 2)), np.full(1, Q), stick, np.array([[0.5, -0.5]]), np.full(1, Q),
                                stick)[0]


def test_box_overlap_broadcasts_and_vmaps_and_matches_numpy():
    r = np.random.default_rng(0)
    n = 4000
    c1, c2 = r.uniform(-6, 6, (n, 2)), r.uniform(-6, 6, (n, 2))
    y1, y2 = r.uniform(-np.pi, np.pi, n), r.uniform(-np.pi, np.pi, n)
    h1, h2 = r.uniform(0.2, 3.0, (n, 2)), r.uniform(0.2, 3.0, (n, 2))
    want = boxes_overlap_np(c1, y1, h1, c2, y2, h2)
    assert 0.2 < want.mean() < 0.8  # both outcomes are exercised
    got = np.asarray(OVERLAP(c1, y1, h1, c2, y2, h2))
    assert (got != want).sum() <= 2  # float32 vs float64 only at a tie
    # One ego box against every agent box at every step: [T, A] from [T, 1] x [T, A] broadcasting ...
    ego = c1[:8, None], y1[:8, None], h1[:8, None]
    agents = c2[:40].reshape(8, 5, 2), y2[:40].reshape(8, 5), h2[:40].reshape(8, 5, 2)
    want_grid = boxes_overlap_np(*ego, *agents)
    grid = np.asarray(OVERLAP(*ego, *agents))
    assert grid.shape == want_grid.shape == (8, 5) and (grid != want_grid).sum() <= 1
    # ... and the same under vmap over the steps.
    np.testing.assert_array_equal(jax.jit(jax.vmap(boxes_overlap))(*ego, *agents), grid)


RECTS = np.array([[0.0, 100.0, -2.0, 5.0], [40.0, 50.0, -60.0, 60.0]])  # a road along x and a cross road


def test_inside_and_distance_to_the_drivable_area():
    pts = np.array([[10.0, 0.0], [10.0, 5.0], [10.0, 8.0], [-3.0, -6.0], [45.0, 30.0], [45.0, 0.0], [45.0, 70.0]])
    inside = [True, True, False, False, True, True, False]
    assert inside_rects_np(pts, RECTS).tolist() == inside
    assert np.asarray(INSIDE(pts, RECTS)).tolist() == inside
    d = np.asarray(DISTANCE(pts, RECTS))
    # 2 m from the right edge; on the left edge; 3 m off it; 5 m off a corner (3-4-5); 5 m from the cross
    # road's sides; in both roads, 5 m deep in the cross road (2 m from the main road's edge); 10 m past
    # the cross road's end.
    np.testing.assert_allclose(d, [-2.0, 0.0, 3.0, 5.0, -5.0, -5.0, 10.0], atol=1e-5)
    assert np.asarray(DISTANCE(np.zeros(2), np.zeros((0, 4)))) == np.inf
    rd = RoadMap(drivable=[tuple(r) for r in RECTS])
    assert rd.on_road(pts).tolist() == inside


def test_lane_of_a_point():
    rd = RoadMap()
    for j, y in enumerate((0.0, 3.5)):  # two lanes along +x, 3.5 m wide, from x = 0 to 100
        rd.lanes.append(dict(id=f"same_{j}", kind="same", width=3.5, heading=0.0,
                             centerline=np.stack([np.arange(0.0, 101.0, 5.0), np.full(21, y)], -1)))
    segs = rd.lane_segments()
    pts = np.array([[10.0, 0.3], [10.0, 3.0], [10.0, 1.7], [10.0, 1.8], [62.5, -1.7], [10.0, 6.0], [101.0, 0.0],
                    [150.0, 0.0]])
    got = np.asarray(LANE(pts, *segs))
    assert got.dtype == np.int32
    # lane 0; lane 1; nearer lane 0's centre; nearer lane 1's; lane 0's right edge; 2.5 m off lane 1
    # (half width 1.75); 1 m past the end (within the half width); 50 m past it.
    assert got.tolist() == [0, 1, 0, 1, 0, -1, 0, -1]
    assert np.asarray(LANE(pts.reshape(2, 4, 2), *segs)).tolist() == [[0, 1, 0, 1], [0, -1, 0, -1]]


def test_geometry_on_a_generated_scene():
    sc = generate(1_000_000, get_config("ar1_tiny"), family="lane_follow")
    rects, segs = sc.road.drivable_rects(), sc.road.lane_segments()
    ego_xy = sc.ego[: sc.t0_index + 1, :2]  # the expert's history runs along its lane's centre
    off = np.array([[0.0, rects[0, 3] + 2.0]])  # 2 m beyond the road's left edge
    pts = np.concatenate([ego_xy, off])
    dist, lanes = np.asarray(DISTANCE(pts, rects)), np.asarray(LANE(pts, *segs))
    assert np.all(dist[:-1] < -1.0) and dist[-1] == pytest.approx(2.0, abs=1e-4)
    ego_lane = next(i for i, ln in enumerate(sc.road.lanes) if ln["kind"] == "same" and ln["centerline"][0, 1] == 0)
    assert lanes.tolist() == [ego_lane] * (sc.t0_index + 1) + [-1]
