"""ar1_jax/data/pai.py: a tiny PAI clip fabricated in the frames layout -> TFDS scenes."""

import json
import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ar1_jax.config import get_config
from ar1_jax.data import pai

CLIP = "0a1b2c3d-test"
R, V, PSI0 = 50.0, 10.0, 0.3  # arc radius (m, turning left), speed (m/s), initial heading (rad)
W = V / R  # yaw rate
CENTER = (120.0, -40.0)
EGO_END_S = 13.0
# Camera c: first frame at CAM_START_S[c], ~30 Hz with a deterministic jitter, until CAM_END_S.
CAM_START_S = {"camera_cross_left_120fov": 3.0, "camera_front_wide_120fov": 3.25, "camera_cross_right_120fov": 3.01,
               "camera_front_tele_30fov": 3.02}
CAM_END_S = 6.5
T0S = [4_100_000, 5_100_000]


def _pose(t_s):
    psi = PSI0 + W * t_s
    return CENTER[0] + R * np.sin(psi), CENTER[1] - R * np.cos(psi), psi


def _cam_timestamps(cam_i, start_s):
    n = int((CAM_END_S - start_s) * 30)
    k = np.arange(n)
    jitter = ((k * 7919 + cam_i * 131) % 4001) - 2000  # +-2 ms
    return (np.round(start_s * 1e6 + k * 33_333.3) + jitter).astype(np.int64)


def _frame_colour(cam_i, k):
    return (k % 256, k // 256 * 16 + 3, 40 * cam_i + 7)


def _write_clip(root: pathlib.Path, quat: bool = True) -> pathlib.Path:
    clip = root / CLIP
    ego_dir = clip / "labels" / "egomotion"
    ego_dir.mkdir(parents=True)
    t_us = np.arange(0, int(EGO_END_S * 1e6) + 1, 10_000, dtype=np.int64)  # 100 Hz
    x, y, psi = _pose(t_us / 1e6)
    cols = {"timestamp": t_us, "x": x, "y": y, "z": np.full_like(x, 1.25)}
    if quat:
        cols.update(qx=np.zeros_like(x), qy=np.zeros_like(x), qz=np.sin(psi / 2), qw=np.cos(psi / 2),
                    vx=np.full_like(x, V), curvature=np.full_like(x, 1 / R))
    else:
        cols["yaw"] = np.angle(np.exp(1j * psi))  # wrapped on purpose
    pq.write_table(pa.table(cols), ego_dir / f"{CLIP}.egomotion.parquet")
    for cam_i, (cam, _) in enumerate(pai.CAMERAS):
        d = clip / "camera" / cam
        frames = d / f"{CLIP}.{cam}.frames"
        frames.mkdir(parents=True)
        ts = _cam_timestamps(cam_i, CAM_START_S[cam])
        pq.write_table(pa.table({"timestamp": ts}), d / f"{CLIP}.{cam}.timestamps.parquet")
        for k in range(len(ts)):
            img = np.empty((12, 20, 3), np.uint8)
            img[:] = _frame_colour(cam_i, k)
            Image.fromarray(img).save(frames / f"{k:06d}.png", compress_level=0)
    calib = clip / "calibration" / "camera_intrinsics"
    calib.mkdir(parents=True)
    pq.write_table(pa.table({"camera": [c for c, _ in pai.CAMERAS], "fx": [1000.0] * 4}),
                   calib / f"{CLIP}.camera_intrinsics.parquet")
    (clip / f"{CLIP}.labels.json").write_text(json.dumps(
        [{"t0_us": T0S[1], "cot": "Keep the lane and follow the curve.", "longitudinal": "set_speed",
          "lateral": "lane_keep"}]))
    return clip


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _write_clip(tmp_path_factory.mktemp("pai"))


@pytest.fixture(scope="module")
def records(clip_dir, cfg):
    return list(pai.clip_to_records(pai.read_clip(clip_dir), T0S, cfg))


def _analytic(dt_s):
    """The arc in the t0 ego frame, `dt_s` seconds from t0."""
    a = W * np.asarray(dt_s)
    return np.stack([R * np.sin(a), R * (1 - np.cos(a)), np.zeros_like(a)], -1), a


def test_read_clip(clip_dir):
    clip = pai.read_clip(clip_dir)
    assert clip.clip_id == CLIP
    assert list(clip.cameras) == [c for c, _ in pai.CAMERAS]
    assert clip.egomotion.quat_xyzw is not None
    assert clip.calibration["camera_intrinsics"]["fx"] == [1000.0] * 4
    assert set(clip.labels) == {T0S[1]}


def test_frames_are_picked_at_the_release_times(records, cfg):
    s = cfg.scene
    assert len(records) == 2
    for rec, t0 in zip(records, T0S):
        assert rec["images"].shape == (4, 4, s.image_height, s.image_width, 3)
        assert rec["images"].dtype == np.uint8
        assert rec["camera_ids"].tolist() == [0, 1, 2, 6]
        for cam_i, (cam, _) in enumerate(pai.CAMERAS):
            ts = _cam_timestamps(cam_i, CAM_START_S[cam])
            for f in range(4):
                want_t = t0 - (3 - f) * 100_000
                k = int(np.flatnonzero(ts <= want_t)[-1])  # the latest frame at or before (the release's rule)
                assert want_t - ts[k] < 34_000
                np.testing.assert_array_equal(rec["images"][cam_i, f], np.broadcast_to(
                    np.uint8(_frame_colour(cam_i, k)), rec["images"].shape[2:]), err_msg=f"{cam} frame {f}")


def test_poses_yaw_v0_and_controls_match_the_arc(records, cfg):
    a = cfg.action
    for rec in records:
        hist, hist_yaw = _analytic(a.dt * np.arange(-(a.history - 1), 1))
        fut, fut_yaw = _analytic(a.dt * np.arange(1, a.horizon + 1))
        assert np.abs(rec["history_xyz"] - hist).max() < 0.01
        assert np.abs(rec["future_xyz"] - fut).max() < 0.01
        np.testing.assert_allclose(rec["history_yaw"], hist_yaw, atol=1e-4)
        np.testing.assert_allclose(rec["future_yaw"], fut_yaw, atol=1e-4)
        assert rec["history_xyz"][-1].tolist() == [0.0, 0.0, 0.0] and rec["history_yaw"][-1] == 0.0
        assert abs(float(rec["v0"]) - V) < 0.05
        c = rec["controls"]
        assert c.shape == (a.horizon, 2)
        assert np.abs(np.median(c[:, 0])) < 0.05 and abs(np.median(c[:, 1]) - 1 / R) < 1e-3
    assert records[0]["cot"] == "" and records[0]["longitudinal"] == records[0]["lateral"] == -1
    assert records[1]["cot"].startswith("Keep the lane") and records[1]["lateral"] >= 0
    assert records[0]["family"] == "pai" and records[0]["map_json"] == "{}" == records[0]["agents_json"]


def test_yaw_only_egomotion(tmp_path, cfg):
    clip = pai.read_clip(_write_clip(tmp_path, quat=False))
    assert clip.egomotion.quat_xyzw is None
    traj = pai.local_trajectory(clip, T0S[0], cfg.action.history, cfg.action.horizon, cfg.action.dt)
    fut, fut_yaw = _analytic(cfg.action.dt * np.arange(1, cfg.action.horizon + 1))
    assert np.abs(traj["future_xyz"] - fut).max() < 0.01
    np.testing.assert_allclose(traj["future_yaw"], fut_yaw, atol=1e-4)


def test_convert_clips_writes_a_readable_dataset(clip_dir, cfg, tmp_path):
    import tensorflow_datasets as tfds

    out = pai.convert_clips([clip_dir], tmp_path / "ds", cfg, t0_us=T0S, test_fraction=0.0, progress=False)
    src = tfds.builder_from_directory(str(out)).as_data_source("train")
    got = {src[i]["scene_id"].decode(): src[i] for i in range(len(src))}
    assert sorted(got) == [f"pai-{CLIP}-{t}" for t in T0S]
    ex = got[f"pai-{CLIP}-{T0S[0]}"]
    assert len(ex["images"]) == 16 and ex["images"][0].shape == (cfg.scene.image_height, cfg.scene.image_width, 3)
    assert ex["family"].decode() == "pai" and ex["future_xyz"].shape == (cfg.action.horizon, 3)
    # default t0s: every stride inside the clip (history, frames and 6.4 s of future all covered)
    clip = pai.read_clip(clip_dir)
    t0s = pai.default_t0s(clip, cfg, stride_s=0.5)
    first_wide = int(_cam_timestamps(1, CAM_START_S["camera_front_wide_120fov"])[0])
    assert len(t0s) == 6 and first_wide + 300_000 <= t0s[0] < first_wide + 301_000
    assert len(list(pai.clip_to_records(clip, [t0s[0], t0s[-1]], cfg))) == 2


def test_missing_camera_is_named(clip_dir, tmp_path):
    broken = tmp_path / CLIP
    shutil.copytree(clip_dir, broken)
    shutil.rmtree(broken / "camera" / "camera_front_tele_30fov")
    with pytest.raises(pai.PAIError, match="camera_front_tele_30fov") as e:
        pai.read_clip(broken)
    assert CLIP in str(e.value) and "missing" in str(e.value)


def test_mp4_without_frames_is_a_clear_error(clip_dir, tmp_path):
    broken = tmp_path / CLIP
    shutil.copytree(clip_dir, broken)
    cam = broken / "camera" / "camera_cross_right_120fov"
    shutil.rmtree(cam / f"{CLIP}.camera_cross_right_120fov.frames")
    (cam / f"{CLIP}.camera_cross_right_120fov.mp4").write_bytes(b"")
    with pytest.raises(pai.PAIError, match=r"camera_cross_right_120fov\.mp4.*MP4 decoding is not supported"):
        pai.read_clip(broken)


def test_frames_not_covering_t0_minus_0_3_name_camera_and_time(clip_dir, cfg):
    # camera_front_wide_120fov starts at 3.25 s: t0 = 3.5 s needs a frame at 3.2 s.
    with pytest.raises(pai.PAIError, match=r"camera_front_wide_120fov.*3200000 us") as e:
        list(pai.clip_to_records(pai.read_clip(clip_dir), [3_500_000], cfg))
    assert CLIP in str(e.value)
    # and the egomotion must cover the future
    with pytest.raises(pai.PAIError, match="outside the egomotion"):
        pai.local_trajectory(pai.read_clip(clip_dir), 7_000_000)


def test_cli_data_pai(clip_dir, tmp_path, capsys):
    from ar1_jax import cli

    out = tmp_path / "cli"
    rc = cli.main(["data", "pai", "--out", str(out), str(clip_dir), "--t0-us", str(T0S[0]), "--t0-us", str(T0S[1]),
                   "--test-fraction", "0"])
    assert rc == 0 and (out / "dataset_info.json").exists()
    assert "train 2" in capsys.readouterr().out
    rc = cli.main(["data", "pai", "--out", str(tmp_path / "bad"), str(clip_dir), "--t0-us", "3500000"])
    assert rc == 2 and "camera_front_wide_120fov" in capsys.readouterr().err
