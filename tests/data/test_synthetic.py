"""ar1_jax/data/synthetic.py: the world as records: layout, reproducibility, controls fitted to the
future, the map and agents JSON, camera subsets, config plumbing and generation speed."""

import dataclasses
import json
import time

import numpy as np
import pytest

from ar1_jax.action import unicycle
from ar1_jax.config import apply_overrides, get_config
from ar1_jax.data import synthetic as S
from ar1_jax.eval.scoring import record_consistent
from ar1_jax.text import coc
from ar1_jax.text.coc_parse import parse
from ar1_jax.world import families as F
from ar1_jax.world.scene import CLASSES

CFG = get_config("ar1_tiny")  # 4 cameras x 4 frames of 64 x 96, 16 history / 64 future steps
TEST_SEED = 1_000_000  # the test split's first seed


@pytest.fixture(scope="module")
def scene():
    return F.generate(TEST_SEED + 3, CFG)


@pytest.fixture(scope="module")
def record(scene):
    return S.to_record(scene, CFG)


def test_record_layout(record, scene):
    assert tuple(record) == S.RECORD_KEYS
    a = CFG.action
    shapes = dict(images=(4, 4, 64, 96, 3), camera_ids=(4,), history_xyz=(a.history, 3), history_yaw=(a.history,),
                  future_xyz=(a.horizon, 3), future_yaw=(a.horizon,), controls=(a.horizon, 2), v0=())
    for key, shape in shapes.items():
        assert np.shape(record[key]) == shape, key
    assert record["images"].dtype == np.uint8 and record["camera_ids"].dtype == np.int32
    for key in ("history_xyz", "history_yaw", "future_xyz", "future_yaw", "controls", "v0"):
        assert record[key].dtype == np.float32, key
    for key in ("longitudinal", "lateral", "direction"):
        assert record[key].dtype == np.int32 and record[key].shape == (), key
    assert record["camera_ids"].tolist() == [0, 1, 2, 6]  # release camera indices
    np.testing.assert_allclose(record["history_xyz"][-1], 0.0, atol=1e-4)  # t0 at the origin
    assert abs(record["history_yaw"][-1]) < 1e-5
    assert np.all(np.diff(record["history_xyz"][:, 0]) >= 0)  # oldest first, driving forward
    assert record["scene_id"] == "synth_001000003" and record["family"] == scene.family
    assert record["v0"] == np.float32(scene.v0) and record["cot"] == scene.cot
    assert record["images"].std() > 10  # not blank
    assert record_consistent(record)


def test_map_and_agents_json_are_in_the_ego0_frame(record, scene):
    m, ag = json.loads(record["map_json"]), json.loads(record["agents_json"])
    assert m["frame"] == ag["frame"] == "ego_t0" and m["units"] == "m"
    assert len(m["lanes"]) == len(scene.road.lanes) and len(m["drivable_area"]) == len(scene.road.drivable)
    assert np.hypot(*np.asarray(m["route"]).T).min() < 1.0  # the route passes the ego at t0
    assert m["set_speed"] == round(scene.params.v_set, 3)
    assert ag["num_steps"] == len(scene.times) and ag["t0_index"] == scene.t0_index == 15
    assert ag["t_start"] == -1.5 and ag["dt"] == 0.1
    assert len(ag["agents"]) == len(scene.agents)
    for a, agent in zip(ag["agents"], scene.agents):
        assert a["kind"] in CLASSES and len(a["poses"]) == ag["num_steps"]
        # Pose at t0, rounded to 3 decimals, equals the agent's world pose moved into ego0.
        want = scene.to_ego0(agent.poses[scene.t0_index, :2])
        np.testing.assert_allclose(a["poses"][scene.t0_index][:2], want, atol=6e-4)


def test_controls_reproduce_the_future(scene, record):
    xy = np.asarray(unicycle.integrate(record["controls"], float(record["v0"]), scene.dt).xy)
    err = float(np.max(np.hypot(*(xy - record["future_xyz"][:, :2]).T)))
    assert err < 0.1  # centimetres: the fit with the future headings tracks the expert
    np.testing.assert_array_equal(record["controls"], S.scene_controls(scene, CFG))


def test_same_seed_same_bytes_other_seed_differs():
    a, b = (S.to_record(F.generate(TEST_SEED + 7, CFG), CFG) for _ in range(2))
    for key in S.RECORD_KEYS:
        va, vb = a[key], b[key]
        if isinstance(va, str):
            assert va == vb, key
        else:
            assert va.dtype == vb.dtype and va.tobytes() == vb.tobytes(), key
    c = S.to_record(F.generate(TEST_SEED + 8, CFG), CFG)
    assert c["history_xyz"].tobytes() != a["history_xyz"].tobytes()


def test_decision_indices_round_trip_through_coc():
    rec = S.to_record(F.generate(TEST_SEED, CFG, family="stalled_car_lane_change"), CFG)
    assert rec["longitudinal"] == -1  # chosen per scene: none stated
    assert coc.LATERAL[int(rec["lateral"])] == coc.Lateral.LANE_CHANGE
    assert coc.DIRECTIONS[int(rec["direction"])] in ("left", "right")
    got = parse(rec["cot"])
    assert got.ok and got.lateral == coc.Lateral.LANE_CHANGE


def test_camera_subsets_follow_the_config():
    cfg2 = get_config("ar1_tiny", ["scene.num_cameras=2", "scene.image_height=32", "scene.image_width=48"])
    rec = S.to_record(F.generate(TEST_SEED, cfg2), cfg2)
    assert rec["images"].shape == (2, 4, 32, 48, 3) and rec["camera_ids"].tolist() == [1, 6]
    short = dataclasses.replace(CFG, action=dataclasses.replace(CFG.action, horizon=32))
    with pytest.raises(ValueError, match="horizon"):
        S.to_record(F.generate(TEST_SEED, CFG), short)
    with pytest.raises(TypeError, match="Config"):
        S.to_record(F.generate(TEST_SEED, CFG), CFG.synth)


def test_generate_records_reads_cfg_synth():
    only_turns = apply_overrides(CFG, ["synth.families=turn", "synth.frequencies=1.0"])
    recs = list(S.generate_records(2, 40, only_turns))
    assert [r["family"] for r in recs] == ["turn", "turn"]
    assert [r["scene_id"] for r in recs] == ["synth_000000040", "synth_000000041"]


def test_generation_speed():
    S.to_record(F.generate(TEST_SEED, CFG), CFG)  # compile the controls fit
    n = 12
    start, cpu = time.perf_counter(), time.process_time()
    recs = list(S.generate_records(n, TEST_SEED + 100, CFG))
    per_scene, cpu_per_scene = ((t1 - t0) / n for t1, t0 in ((time.perf_counter(), start), (time.process_time(), cpu)))
    print(f"\ngenerate + render + to_record: {per_scene * 1000:.1f} ms per scene ({cpu_per_scene * 1000:.1f} ms CPU)")
    assert len(recs) == n and cpu_per_scene < 0.5  # CPU time, not wall time: a busy machine does not fail it
