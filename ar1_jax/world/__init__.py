"""The synthetic driving world, shared by data generation, the closed-loop simulator and RL rewards.

Modules, each with one job:
  scene     the world state: `RoadMap` (lanes, lines, stop lines, crosswalks, drivable area),
            `Agent` (an oriented box with a trajectory), `TrafficLight`, the reference `Path`, the
            ego's footprint, and `Scene` (all of it on one time grid, with the expert's drive)
  planner   the rule-based expert ego: `PlannerParams`, `Plan`, `Expert` (IDM/ACC + pure pursuit)
  builder   scene assembly: road layouts -> `RoadMap`, scripted agent trajectories, ambient traffic
  families  the long-tail scenario families (`FAMILY_SPECS`), their frequencies, and `generate`
  render    cameras (`Camera`, `camera_set`) and `render`: images from any ego pose at any step
  geometry  jittable box overlap, distance to the road edge, lane of a point (with numpy twins)
  arrays    a scene as fixed-shape padded arrays (`SceneArrays`) and jittable footprint checks
            (collision, off-road) of an ego drive against it: what RL rewards and the simulator batch

Units: metres, seconds, radians, m/s, m/s^2, 1/m. Two frames:
  world   the road frame a scene is built in: the ego's lane runs along +x with its centre on
          y = 0, left is +y, the ego's rear axle is near x = 0 at t0.
  ego0    the ego frame at t0 (x forward, y left, origin at the rear axle at t0): what records,
          `map_json` and `agents_json` use, as in AR1's data (`ar1_jax.data.synthetic`).
Time: a scene holds states on a 10 Hz grid `Scene.times` (s, t0 = 0) from -(history-1) dt to
horizon dt + `SynthConfig.extra_seconds`; the first `history` poses are the ego history, the next
`horizon` its future. Scoring of trajectories against a world lives in `ar1_jax.eval.scoring`.
"""
