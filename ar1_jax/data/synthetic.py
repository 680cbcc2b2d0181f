"""The synthetic world as dataset records: procedural long-tail driving scenes with Chain-of-Causation
labels (`ar1_jax.world`), rendered and written in the layout the TFDS builder stores.

A record (`to_record`, keys `RECORD_KEYS`) holds the cameras, the ego history and expert future in the
ego0 frame (x forward, y left, metres, at t0), the controls fitted to that future, the CoC sentence and
its decisions, and the map and agents as JSON (ego0 frame). `generate_records` yields the records of
consecutive seeds; everything is read from one root `Config` (`cfg.scene`, `cfg.action`, `cfg.synth`).
"""

from __future__ import annotations

import functools
import json
from typing import Iterator

import numpy as np

from ar1_jax.text import coc
from ar1_jax.world.families import generate
from ar1_jax.world.render import camera_set, render
from ar1_jax.world.scene import Scene, as_config, wrap_angle

__all__ = ["RECORD_KEYS", "scene_controls", "to_record", "generate_records"]

RECORD_KEYS = ("scene_id", "family", "images", "camera_ids", "history_xyz", "history_yaw", "future_xyz",
               "future_yaw", "controls", "v0", "cot", "longitudinal", "lateral", "direction", "map_json",
               "agents_json")


@functools.lru_cache(maxsize=8)
def _fit_fn(dt: float, smoothness: float):
    import jax

    from ar1_jax.action import unicycle

    return jax.jit(lambda xy, v0, heading: unicycle.fit_controls(xy, v0, dt, smoothness, heading=heading))


def scene_controls(scene: Scene, cfg=None) -> np.ndarray:
    """`float32 [horizon, 2]` (a m/s^2, k 1/m): `unicycle.fit_controls` on the expert's future, with
    the future headings and the expert's t0 speed."""
    action = as_config(cfg, "scene_controls").action
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
        arrows=[dict(position=_r(tf(np.array([x, y])), 2), heading=round(float(wrap_angle(h - h0)), 3), kind=k)
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
        poses = np.concatenate([xy, wrap_angle(ag.poses[:, 2:] - h0)], -1)
        agents.append(dict(id=ag.id, kind=ag.kind, role=ag.role, size=_r(ag.size), lamps=ag.lamps, poses=_r(poses)))
    lights = []
    for lt in scene.lights:
        lights.append(dict(id=lt.id, position=_r([*tf(np.array(lt.position[:2])), lt.position[2]]),
                           facing=round(float(wrap_angle(lt.yaw - h0)), 3),
                           stop_line=_r(tf(np.array(lt.stop_line)), 2), states=lt.states))
    obj = dict(frame="ego_t0", dt=scene.dt, t_start=round(float(scene.times[0]), 3), num_steps=len(scene.times),
               t0_index=scene.t0_index, agents=agents, traffic_lights=lights, info=scene.info)
    return json.dumps(obj, separators=(",", ":"))


def to_record(scene: Scene, cfg=None) -> dict:
    """The scene as the arrays and strings the dataset stores (keys `RECORD_KEYS`); poses in ego0.

    images uint8 [C, F, H, W, 3]; camera_ids int32 [C] (release indices); history_xyz float32 [H, 3],
    history_yaw [H]; future_xyz [T, 3], future_yaw [T]; controls float32 [T, 2] (a m/s^2, k 1/m);
    v0 float32 (m/s); cot (CoC sentence); longitudinal / lateral int32 indices into
    coc.LONGITUDINAL / coc.LATERAL (-1: none); direction int32 (-1 none, 0 left, 1 right);
    map_json, agents_json (ego0 frame).
    """
    cfg = as_config(cfg, "to_record")
    action = cfg.action
    if scene.horizon != action.horizon or scene.t0_index + 1 != action.history:
        raise ValueError(f"to_record: scene {scene.scene_id} has history {scene.t0_index + 1} / horizon "
                         f"{scene.horizon}, config wants {action.history} / {action.horizon}")
    hx, hy = scene.history()
    fx, fy = scene.future()
    tr = scene.trace
    return dict(
        scene_id=scene.scene_id,
        family=scene.family,
        images=render(scene, cfg),
        camera_ids=np.array([c.release_id for c in camera_set(cfg.scene.num_cameras)], np.int32),
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


def generate_records(num: int, seed: int = 0, cfg=None) -> Iterator[dict]:
    """`to_record(generate(s, cfg), cfg)` for the seeds seed, seed + 1, ..., seed + num - 1."""
    for i in range(int(num)):
        yield to_record(generate(seed + i, cfg), cfg)


# ----------------------------------------------------------------------------------------------------
# Checks: meta-actions, consistency, baseline, collisions.
