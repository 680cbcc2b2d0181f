"""Synthetic CoC scenes: record layout, reproducibility, long-tail family counts, decisions vs the
trajectory's meta-actions, kinematics, the constant-velocity baseline, pixel-decided families,
closed-loop hooks and generation speed."""

import json
import time

import numpy as np
import pytest

from ar1_jax.action import unicycle
from ar1_jax.config import SynthConfig, get_config
from ar1_jax.data import synthetic as S
from ar1_jax.text import coc

CFG = get_config("ar1_tiny")  # 4 cameras x 4 frames of 64 x 96, 16 history / 64 future steps
TEST_SEED = 1_000_000  # the test split's first seed
N_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [S.generate(s, CFG) for s in range(TEST_SEED, TEST_SEED + N_SCENES)]


@pytest.fixture(scope="module")
def record():
    return S.to_record(S.generate(TEST_SEED + 3, CFG), CFG)


def test_record_layout(record):
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
    for key in ("scene_id", "family", "cot", "map_json", "agents_json"):
        assert isinstance(record[key], str) and record[key], key
    m, ag = json.loads(record["map_json"]), json.loads(record["agents_json"])
    assert m["frame"] == ag["frame"] == "ego_t0" and m["lanes"] and m["drivable_area"]
    assert np.hypot(*np.asarray(m["route"]).T).min() < 1.0  # the route passes the ego at t0
    for agent in ag["agents"]:
        assert agent["kind"] in S.CLASSES and len(agent["poses"]) == ag["num_steps"]
    assert record["images"].std() > 10  # not blank


def test_same_seed_same_bytes_other_seed_differs():
    a, b = (S.to_record(S.generate(TEST_SEED + 7, CFG), CFG) for _ in range(2))
    for key in S.RECORD_KEYS:
        va, vb = a[key], b[key]
        if isinstance(va, str):
            assert va == vb, key
        else:
            assert va.dtype == vb.dtype and va.tobytes() == vb.tobytes(), key
    c = S.to_record(S.generate(TEST_SEED + 8, CFG), CFG)
    assert c["history_xyz"].tobytes() != a["history_xyz"].tobytes()


def test_family_counts_follow_long_tail():
    freqs = S.family_frequencies(CFG)
    assert list(freqs) == list(S.FAMILIES) and abs(sum(freqs.values()) - 1) < 1e-12
    assert freqs["lane_follow"] > freqs["lead_follow"] > freqs["jaywalker"] > freqs["emergency_stop"]
    n = 400
    for start in (0, TEST_SEED):
        fams = [S.family_of(s, CFG) for s in range(start, start + n)]
        counts = np.array([fams.count(f) for f in freqs])
        expected = n * np.array(list(freqs.values()))
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        print(f"\nfamily counts over seeds {start}..{start + n - 1}: "
              + ", ".join(f"{f}={c} ({e:.0f})" for f, c, e in zip(freqs, counts, expected)) + f"; chi2={chi2:.2f}")
        assert chi2 < 24.72  # the 1% critical value of chi-square with 11 degrees of freedom
        assert np.all(np.abs(counts - expected) <= np.maximum(3, 0.15 * expected))
    assert S.generate(5, CFG).family == S.family_of(5, CFG)
    custom = SynthConfig(families=("jaywalker", "turn"), frequencies=(3.0, 1.0))
    fams = [S.family_of(s, synth=custom) for s in range(200)]
    assert abs(fams.count("jaywalker") - 150) <= 3
    with pytest.raises(ValueError, match="unknown"):
        S.family_frequencies(SynthConfig(families=("lane_follow", "flying"), frequencies=(1.0, 1.0)))
    with pytest.raises(ValueError, match="equal length"):
        S.family_frequencies(SynthConfig(families=("lane_follow",), frequencies=(1.0, 1.0)))


def _decisions(rec):
    lon = None if rec["longitudinal"] < 0 else coc.LONGITUDINAL[int(rec["longitudinal"])]
    lat = None if rec["lateral"] < 0 else coc.LATERAL[int(rec["lateral"])]
    d = None if rec["direction"] < 0 else coc.DIRECTIONS[int(rec["direction"])]
    return lon, lat, d


def test_every_family_generates_and_its_cot_parses_back():
    for fam in S.FAMILIES:
        for seed in (TEST_SEED, TEST_SEED + 1):
            rec = S.to_record(S.generate(seed, CFG, family=fam), CFG)
            assert rec["family"] == fam
            got = coc.parse(rec["cot"])
            assert got.ok and not got.ambiguous, rec["cot"]
            assert (got.longitudinal, got.lateral, got.direction) == _decisions(rec), (fam, rec["cot"])
    # Every cause phrase in every sentence variant parses to the family's decisions.
    for fam, spec in S.FAMILY_SPECS.items():
        lat = spec.lateral or coc.Lateral.IN_LANE_NUDGE
        direction = "left" if lat in coc.DIRECTIONAL_LATERAL else None
        for cause in spec.causes:
            trace = coc.Trace(spec.longitudinal, lat, spec.components, direction, cause=cause.format(side="left"))
            for v in range(coc.NUM_VARIANTS):
                text = coc.format(trace, variant=v)
                assert coc.parse(text).matches(trace), (fam, text)


def test_decisions_agree_with_trajectory_meta_actions(scenes):
    ok, by_family = [], {}
    for sc in scenes:
        fx, fy = sc.future()
        meta = S.meta_actions_from_trajectory(fx, fy, sc.v0, sc.dt)
        good = S.is_consistent(sc.trace.longitudinal, sc.trace.lateral, sc.trace.direction, meta)
        ok.append(good)
        by_family.setdefault(sc.family, []).append(good)
    rate = float(np.mean(ok))
    print(f"\nCoC decisions vs trajectory meta-actions over {len(scenes)} scenes: {rate:.1%} consistent; "
          + ", ".join(f"{f} {np.mean(v):.0%}" for f, v in sorted(by_family.items())))
    assert rate >= 0.95
    assert len(by_family) >= 10  # the long tail is present in 200 scenes
    rec = S.to_record(scenes[0], CFG)
    assert S.record_consistent(rec)


def test_meta_actions_from_simple_trajectories():
    t = np.arange(1, 65) * 0.1
    straight = lambda x: np.stack([x, 0 * x, 0 * x], -1)  # noqa: E731
    M, Lm = coc.LongitudinalMeta, coc.LateralMeta
    assert S.meta_actions_from_trajectory(straight(10 * t), 0 * t, 10.0) == coc.MetaAction(M.KEEP, Lm.STRAIGHT)
    assert S.meta_actions_from_trajectory(straight(10 * t + t * t), 0 * t, 10.0).longitudinal == M.ACCELERATE
    assert S.meta_actions_from_trajectory(straight(10 * t - 0.5 * t * t), 0 * t, 10.0).longitudinal == M.DECELERATE
    stop = np.minimum(10 * t - 1.0 * t * t, 25.0)  # stops at t = 5 s
    assert S.meta_actions_from_trajectory(straight(stop), 0 * t, 10.0).longitudinal == M.STOP
    assert S.meta_actions_from_trajectory(straight(0 * t), 0 * t, 0.0).longitudinal == M.STOP
    lane_change = np.stack([10 * t, 3.5 * np.clip(t / 4, 0, 1), 0 * t], -1)
    assert S.meta_actions_from_trajectory(lane_change, 0 * t, 10.0).lateral == Lm.LEFT
    arc = np.stack([8 * np.sin(t * 0.5), -8 * (1 - np.cos(t * 0.5)), 0 * t], -1)  # right turn, radius 8 m
    assert S.meta_actions_from_trajectory(arc, -t * 0.5, 4.0).lateral == Lm.RIGHT


def test_kinematics_controls_and_safety(scenes):
    sample = scenes[::3]
    worst = 0.0
    for sc in sample:
        fx, fy = sc.future()
        assert np.all(np.isfinite(fx)) and np.all(np.isfinite(fy))
        controls = S.scene_controls(sc, CFG)
        assert np.all(np.isfinite(controls))
        assert np.all(np.abs(controls[:, 0]) <= 9.8) and np.all(np.abs(controls[:, 1]) <= 0.2), sc.scene_id
        xy = np.asarray(unicycle.integrate(controls, sc.v0, sc.dt).xy)
        err = float(np.max(np.hypot(*(xy - fx[:, :2]).T)))
        worst = max(worst, err)
        assert err < 0.1, (sc.scene_id, sc.family, err)
        applied = sc.ego_controls[sc.t0_index: sc.t0_index + sc.horizon]
        assert np.all(np.abs(applied[:, 0]) <= S.MAX_BRAKE + 1e-6) and np.all(np.abs(applied[:, 1]) <= 0.2)
        assert np.all(sc.ego[:, 3] >= 0)
        hx, _ = sc.history()
        assert np.all(np.abs(np.diff(hx[:, :2], axis=0)) <= 4.0)  # inside the history token clip
    print(f"\nworst controls round trip over {len(sample)} scenes: {worst * 100:.2f} cm")
    hits = [(sc.scene_id, sc.family, S.collisions(sc)[:1]) for sc in scenes if S.collisions(sc)]
    assert not hits, hits


def test_collision_check_sees_an_overlap():
    sc = S.generate(TEST_SEED, CFG, family="emergency_stop")
    lead = next(a for a in sc.agents if a.role == "braking_lead")
    steps = np.arange(sc.t0_index + 1, sc.t0_index + 65)
    ego = lead.poses[steps].copy()  # drive the ego's rear axle through the lead
    assert any(i == lead.id for i, _ in S.collisions(sc, ego, steps))


def test_constant_velocity_baseline_ade(scenes):
    ade = np.array([S.constant_velocity_ade(sc.future()[0], sc.v0, sc.dt) for sc in scenes])
    fams = np.array([sc.family for sc in scenes])
    assert np.all(np.isfinite(ade)) and ade.mean() > 0
    per = {f: float(ade[fams == f].mean()) for f in sorted(set(fams))}
    print(f"\nconstant-velocity baseline ADE (64 steps) on {len(scenes)} test scenes: {ade.mean():.2f} m; "
          + ", ".join(f"{f} {v:.2f}" for f, v in per.items()))
    assert per["lane_follow"] < per["red_light_stop"]  # decisions change where the car goes


def _masked(rec):
    """What a model sees with the cameras masked out."""
    return {k: rec[k].tobytes() for k in ("history_xyz", "history_yaw", "v0")} | {
        "images": np.zeros_like(rec["images"]).tobytes()}


def _colour_pixels(images, colour):
    r, g, b = (images[..., i].astype(int) for i in range(3))
    if colour == "red":
        return int(np.sum((r > 200) & (g < 110) & (b < 110)))
    return int(np.sum((g > 190) & (r < 150) & (b < 170)))


@pytest.mark.parametrize("pair", S.PIXEL_PAIRS, ids=lambda p: f"{p[0]}-vs-{p[1]}")
def test_pixel_decided_families_are_ambiguous_without_images(pair):
    cue, look_alike = pair
    for seed in range(TEST_SEED, TEST_SEED + 4):
        a = S.to_record(S.generate(seed, CFG, family=cue), CFG)
        b = S.to_record(S.generate(seed, CFG, family=look_alike), CFG)
        assert _masked(a) == _masked(b)  # same history and speed: images masked, the inputs coincide
        assert _decisions(a) != _decisions(b)  # ... yet the decisions differ
        front_t0 = (slice(1, 4, 2), -1)  # front-wide and front-tele at t0
        assert not np.array_equal(a["images"][front_t0], b["images"][front_t0])
        if cue == "red_light_stop":  # the light's colour is the cue: red bulbs in one, green in the other
            assert _colour_pixels(a["images"][front_t0], "red") > _colour_pixels(b["images"][front_t0], "red")
            assert _colour_pixels(b["images"][front_t0], "green") > 0 and _colour_pixels(a["images"], "green") == 0


def test_closed_loop_hooks():
    sc = S.generate(TEST_SEED + 11, CFG, family="cut_in")
    k = sc.t0_index + 5
    np.testing.assert_allclose(sc.agents_at(float(sc.times[k]))[:, :2], np.stack([a.poses[k, :2] for a in sc.agents]),
                               atol=1e-9)
    assert np.all(np.isfinite(sc.agents_at(float(sc.times[-1]) + 2.0)))  # held velocity past the end
    assert len(sc.light_states_at(0.0)) == len(sc.lights)
    # The expert replays its own controls from its recorded states.
    ex = sc.expert()
    for j in range(sc.t0_index + 10):
        x, y, h, v = sc.ego[j]
        prev = sc.ego_controls[j - 1, 0] if j else S._free_accel(v, sc.params.v_set, sc.params)
        a, kappa = ex.control(j, x, y, h, v, prev)
        np.testing.assert_allclose(max(0.0, v + a * sc.dt), sc.ego[j + 1, 3], atol=1e-9)
        np.testing.assert_allclose(kappa, sc.ego_controls[j, 1], atol=1e-12)
    # Rendering from other poses (a simulator's) works and changes the view.
    steps = np.arange(sc.t0_index - 3, sc.t0_index + 1)
    shifted = sc.ego[steps, :3] + np.array([0.0, 1.5, 0.0])
    moved = S.render(sc, CFG, ego_poses=shifted, steps=steps)
    assert moved.shape == (4, 4, 64, 96, 3) and not np.array_equal(moved, S.render(sc, CFG))


def test_camera_subsets_and_bad_input():
    cfg2 = get_config("ar1_tiny", ["scene.num_cameras=2", "scene.image_height=32", "scene.image_width=48"])
    rec = S.to_record(S.generate(TEST_SEED, cfg2), cfg2)
    assert rec["images"].shape == (2, 4, 32, 48, 3) and rec["camera_ids"].tolist() == [1, 6]
    with pytest.raises(ValueError, match="family"):
        S.generate(0, CFG, family="flying")
    with pytest.raises(ValueError, match="seed"):
        S.generate(-1, CFG)
    with pytest.raises(ValueError, match="num_cameras"):
        S.camera_set(5)


def test_generation_speed():
    S.to_record(S.generate(TEST_SEED, CFG), CFG)  # compile the controls fit
    n = 12
    start = time.perf_counter()
    recs = list(S.generate_records(n, TEST_SEED + 100, CFG))
    per_scene = (time.perf_counter() - start) / n
    print(f"\ngenerate + render + to_record: {per_scene * 1000:.1f} ms per scene")
    assert len(recs) == n and per_scene < 0.2
