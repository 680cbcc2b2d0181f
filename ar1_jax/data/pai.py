"""NVIDIA PhysicalAI-Autonomous-Vehicles (PAI) clips -> our TFDS scenes (`tfds_builder` records).

The release reads PAI through `physical_ai_av.PhysicalAIAVDatasetInterface` (R:
`src/alpamayo_r1/load_physical_aiavdataset.py`; the per-clip files come out of the chunk zips that
`scripts/download_pai.py` fetches, e.g. `camera/<cam>/<cam>.chunk_0000.zip`). Unpacked, one clip is:

    <clip_dir>/
      camera/<cam>/<clip_id>.<cam>.mp4                 the video (NOT readable here, see below)
      camera/<cam>/<clip_id>.<cam>.timestamps.parquet  column `timestamp`: int microseconds, one row
                                                       per frame, strictly increasing
      labels/egomotion/<clip_id>.egomotion.parquet     columns `timestamp` (us), `x`, `y`, `z` (m,
                                                       world/rig frame) and `qx`, `qy`, `qz`, `qw`
                                                       (scipy xyzw order, as `physical_ai_av`'s
                                                       `EgomotionState.from_egomotion_df` reads them);
                                                       `vx`.. `curvature` may be present, unused
      calibration/<name>/<clip_id>.<name>.parquet      optional (camera_intrinsics, sensor_extrinsics,
                                                       vehicle_dimensions); read, kept, unused (the
                                                       release loader does not use calibration)

Every `camera/<cam>/` and `labels/egomotion/` file is also found directly in `<clip_dir>` (a flat
clip folder). <cam> is one of the release's names (`camera_front_wide_120fov`, ...).

Supported: the FRAMES layout. Because this package has no video decoder (no av / cv2 / imageio, by
choice), each camera's frames must already be extracted next to its timestamps parquet as
`<clip_id>.<cam>.frames/NNNNNN.{jpg,jpeg,png}` where NNNNNN is the frame's row in the timestamps
parquet (or its `frame_index` column, when that column exists), zero-padded to at least 6 digits.
Any ffmpeg will do: `ffmpeg -i X.mp4 -start_number 0 X.frames/%06d.jpg` (constant frame rate, one
image per timestamp row). NOT supported: reading the `.mp4` itself; a camera with an mp4 but no
frames folder raises `PAIError` naming the mp4 and saying how to extract it. Also not supported:
the chunk zips (unzip them first), streaming from Hugging Face, lidar/radar, calibration-dependent
processing (undistortion, rectification).

Timing and choices (the release's, `docs/design/alpamayo_release.md` section 6):
  * cameras, in feed order: cross_left_120fov (release index 0), front_wide_120fov (1),
    cross_right_120fov (2), front_tele_30fov (6); `camera_ids` stores those indices. A config with
    fewer cameras takes the subset `ar1_jax.world.render.camera_set` takes (1: front wide; 2: wide + tele;
    3: left, wide, right).
  * frames: `scene.num_frames` (4) per camera at t0 - 0.3, -0.2, -0.1, 0 s (`action.dt` apart),
    oldest first. Each is the latest frame whose timestamp is <= the requested time (the release's
    `VideoReader._get_frame_idxs_from_timestamps`: searchsorted right - 1), or with
    `frame_pick="nearest"` the nearest; a request outside the camera's timestamps, or a pick more
    than `frame_tolerance_us` away, raises `PAIError` naming the clip, camera and time.
  * ego: `action.history` (16) poses at t0 - 1.5 .. t0 and `action.horizon` (64) at t0 + 0.1 ..
    6.4 s, interpolated from egomotion (linear xyz, slerp rotation; yaw-only egomotion: linear on the
    unwrapped yaw), expressed in the t0 frame: xyz_local = R_t0^T (xyz - xyz_t0), R_local = R_t0^T R,
    yaw = atan2(R_local[1, 0], R_local[0, 0]) (x forward, y left, z up). Requested times outside the
    egomotion raise `PAIError`.
  * v0: `unicycle.estimate_v0` on the history (the release's `estimate_t0_states`); controls:
    `unicycle.fit_controls(future_xy, v0, heading=future_yaw)`.
  * frames are resized (PIL bicubic) to `scene.image_height x scene.image_width`.
  * `cot` is "" and longitudinal / lateral / direction are -1 unless a labels file
    `<clip_dir>/<clip_id>.labels.json` provides them: a JSON list of objects with `t0_us` and any of
    `cot`, `longitudinal`, `lateral` (a `coc` enum value such as "lead_follow", or an int index) and
    `direction` ("left" / "right" / int). NOTE: the SFT pipeline rejects an empty trace, so a
    dataset without labels is for trajectory-only use / evaluation (`convert_clips` writes it with
    `strict=False`; poses, controls and v0 are checked finite here instead).
  * family "pai"; scene_id "pai-<clip_id>-<t0_us>"; map_json and agents_json "{}".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

#: The release's cameras in feed order (name, release index).
CAMERAS: tuple[tuple[str, int], ...] = (
    ("camera_cross_left_120fov", 0),
    ("camera_front_wide_120fov", 1),
    ("camera_cross_right_120fov", 2),
    ("camera_front_tele_30fov", 6),
)
_CAMERA_SETS = {1: (1,), 2: (1, 3), 3: (0, 1, 2), 4: (0, 1, 2, 3)}  # as world.render.camera_set
DEFAULT_T0_US = 5_100_000  # the release's default t0 (5.1 s into the clip)
FAMILY = "pai"
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_QUAT = ("qx", "qy", "qz", "qw")


class PAIError(ValueError):
    """A clip cannot be read or converted; the message names the clip and, where known, the camera,
    file, field and time."""

    def __init__(self, clip: str, reason: str, *, camera: str | None = None, file: Any = None,
                 field: str | None = None):
        self.clip, self.camera, self.file, self.field, self.reason = clip, camera, file, field, reason
        where = [f"clip {clip!r}"]
        if camera:
            where.append(f"camera {camera}")
        if file is not None:
            where.append(f"file {file}")
        if field:
            where.append(f"field `{field}`")
        super().__init__(f"{', '.join(where)}: {reason}")


@dataclasses.dataclass
class CameraStream:
    """One camera: frame timestamps (us, increasing) and the image file of each frame."""

    name: str
    release_id: int
    timestamps_us: np.ndarray  # int64 [N]
    frame_paths: list[pathlib.Path]  # [N]
    timestamps_file: pathlib.Path


@dataclasses.dataclass
class Egomotion:
    """Ego poses: timestamps (us, increasing), positions [N, 3], and quaternions xyzw [N, 4]
    (`quat_xyzw`) or yaw [N] (`yaw`, when the file has no quaternion)."""

    timestamps_us: np.ndarray
    xyz: np.ndarray
    quat_xyzw: np.ndarray | None
    yaw: np.ndarray | None
    file: pathlib.Path


@dataclasses.dataclass
class Clip:
    clip_id: str
    clip_dir: pathlib.Path
    cameras: dict[str, CameraStream]  # by camera name, in CAMERAS order
    egomotion: Egomotion
    calibration: dict[str, dict[str, list]]  # name -> columns (parquet) or parsed JSON; may be empty
    labels: dict[int, dict]  # t0_us -> label object from <clip_id>.labels.json; may be empty


# ----------------------------------------------------------------------------------------------------
# Reading.


def camera_names(num_cameras: int = 4) -> tuple[tuple[str, int], ...]:
    """The (name, release index) of the cameras a `num_cameras` config uses, in feed order."""
    if num_cameras not in _CAMERA_SETS:
        raise ValueError(f"pai: scene.num_cameras must be 1..4 (the release's cameras), got {num_cameras}")
    return tuple(CAMERAS[i] for i in _CAMERA_SETS[num_cameras])


def _read_parquet(clip: str, path: pathlib.Path, columns: Sequence[str], camera: str | None = None) -> dict:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise PAIError(clip, f"cannot read parquet: {e}", camera=camera, file=path) from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise PAIError(clip, f"missing column (has {', '.join(table.column_names)})", camera=camera, file=path,
                       field=missing[0])
    return {c: table.column(c).to_numpy() for c in table.column_names}


def _find(clip_dir: pathlib.Path, subdirs: Sequence[str], name: str) -> pathlib.Path | None:
    for sub in subdirs:
        p = clip_dir / sub / name
        if p.exists():
            return p
    return None


def _clip_id(clip_dir: pathlib.Path) -> str:
    found = sorted({p.name[: -len(".egomotion.parquet")]
                    for sub in ("labels/egomotion", "egomotion", ".")
                    for p in (clip_dir / sub).glob("*.egomotion.parquet")})
    if not found:
        raise PAIError(clip_dir.name, "no <clip_id>.egomotion.parquet in the clip folder or labels/egomotion/",
                       file=clip_dir)
    if len(found) > 1:
        raise PAIError(clip_dir.name, f"several clips' egomotion files ({', '.join(found)}); one clip per folder",
                       file=clip_dir)
    return found[0]


def _check_increasing(clip: str, ts: np.ndarray, path, camera=None) -> None:
    if ts.ndim != 1 or len(ts) < 2:
        raise PAIError(clip, f"expected at least 2 timestamps, got {len(ts)}", camera=camera, file=path,
                       field="timestamp")
    if not np.all(np.diff(ts) > 0):
        i = int(np.argmin(np.diff(ts) > 0))
        raise PAIError(clip, f"timestamps must be strictly increasing (row {i + 1}: {ts[i + 1]} after {ts[i]})",
                       camera=camera, file=path, field="timestamp")


def _read_camera(clip_dir: pathlib.Path, clip_id: str, cam: str, release_id: int) -> CameraStream:
    subdirs = (f"camera/{cam}", cam, ".")
    ts_path = _find(clip_dir, subdirs, f"{clip_id}.{cam}.timestamps.parquet")
    frames_dir = _find(clip_dir, subdirs, f"{clip_id}.{cam}.frames")
    mp4 = _find(clip_dir, subdirs, f"{clip_id}.{cam}.mp4")
    if frames_dir is None and mp4 is not None:
        raise PAIError(clip_id, f"only a video is present; MP4 decoding is not supported (no video decoder "
                                f"dependency). Extract its frames first, e.g. `ffmpeg -i {mp4.name} -start_number 0 "
                                f"{clip_id}.{cam}.frames/%06d.jpg`", camera=cam, file=mp4)
    if ts_path is None:
        raise PAIError(clip_id, f"camera missing: no {clip_id}.{cam}.timestamps.parquet under camera/{cam}/ or the "
                                f"clip folder", camera=cam, file=clip_dir / "camera" / cam)
    if frames_dir is None or not frames_dir.is_dir():
        raise PAIError(clip_id, f"camera missing: no frames folder {clip_id}.{cam}.frames/ next to the timestamps",
                       camera=cam, file=ts_path.parent)
    cols = _read_parquet(clip_id, ts_path, ("timestamp",), camera=cam)
    ts = np.asarray(cols["timestamp"]).astype(np.int64)
    _check_increasing(clip_id, ts, ts_path, camera=cam)
    index = np.asarray(cols["frame_index"]).astype(np.int64) if "frame_index" in cols else np.arange(len(ts))
    files: dict[int, pathlib.Path] = {}
    for p in frames_dir.iterdir():
        if p.suffix.lower() in _IMAGE_EXTS and re.fullmatch(r"\d+", p.stem):
            files[int(p.stem)] = p
    # Frames are checked lazily (only the picked ones must exist), so a partial extraction still works.
    paths = [files.get(int(i), frames_dir / f"{int(i):06d}.jpg") for i in index]
    return CameraStream(cam, release_id, ts, paths, ts_path)


def _read_egomotion(clip_dir: pathlib.Path, clip_id: str) -> Egomotion:
    path = _find(clip_dir, ("labels/egomotion", "egomotion", "."), f"{clip_id}.egomotion.parquet")
    cols = _read_parquet(clip_id, path, ("timestamp", "x", "y", "z"))
    ts = np.asarray(cols["timestamp"]).astype(np.int64)
    _check_increasing(clip_id, ts, path)
    xyz = np.stack([np.asarray(cols[k], np.float64) for k in ("x", "y", "z")], -1)
    quat = yaw = None
    if all(k in cols for k in _QUAT):
        quat = np.stack([np.asarray(cols[k], np.float64) for k in _QUAT], -1)
        norm = np.linalg.norm(quat, axis=-1)
        if not np.all(np.isfinite(norm)) or np.any(norm < 1e-6):
            i = int(np.argmax(~np.isfinite(norm) | (norm < 1e-6)))
            raise PAIError(clip_id, f"zero or non-finite quaternion at row {i}", file=path, field="qx..qw")
        quat = quat / norm[:, None]
    elif "yaw" in cols:
        yaw = np.unwrap(np.asarray(cols["yaw"], np.float64))
    else:
        raise PAIError(clip_id, "no orientation: expected qx, qy, qz, qw (or yaw)", file=path, field="qx")
    bad = ~np.isfinite(xyz).all(-1)
    if bad.any():
        raise PAIError(clip_id, f"non-finite position at row {int(np.argmax(bad))}", file=path, field="x/y/z")
    return Egomotion(ts, xyz, quat, yaw, path)


def _read_calibration(clip_dir: pathlib.Path, clip_id: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    root = clip_dir / "calibration"
    candidates = list(root.rglob(f"{clip_id}.*")) if root.is_dir() else []
    candidates += [p for p in clip_dir.glob(f"{clip_id}.*") if p.stem.split(".")[-1] in
                   ("camera_intrinsics", "sensor_extrinsics", "vehicle_dimensions", "calibration")]
    for p in sorted(candidates):
        name = p.name[len(clip_id) + 1:].rsplit(".", 1)[0]
        if p.suffix == ".parquet":
            out[name] = {k: v.tolist() for k, v in _read_parquet(clip_id, p, ()).items()}
        elif p.suffix == ".json":
            try:
                out[name] = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise PAIError(clip_id, f"cannot read calibration JSON: {e}", file=p) from None
    return out


def _read_labels(clip_dir: pathlib.Path, clip_id: str) -> dict[int, dict]:
    path = clip_dir / f"{clip_id}.labels.json"
    if not path.exists():
        return {}
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PAIError(clip_id, f"cannot read labels JSON: {e}", file=path) from None
    if not isinstance(items, list) or not all(isinstance(x, dict) and "t0_us" in x for x in items):
        raise PAIError(clip_id, "expected a JSON list of objects each with `t0_us`", file=path, field="t0_us")
    return {int(x["t0_us"]): x for x in items}


def read_clip(clip_dir: str | pathlib.Path, cameras: Sequence[str] | None = None) -> Clip:
    """Reads one unpacked PAI clip folder in the frames layout (module docstring). `cameras`: the
    camera names to read (default: the release's four). Raises `PAIError` naming clip, camera, file,
    field: a missing camera, an mp4 without extracted frames, missing columns, bad timestamps."""
    clip_dir = pathlib.Path(clip_dir)
    if not clip_dir.is_dir():
        raise PAIError(clip_dir.name, "not a directory", file=clip_dir)
    clip_id = _clip_id(clip_dir)
    ids = dict(CAMERAS)
    names = list(cameras) if cameras is not None else [n for n, _ in CAMERAS]
    unknown = [n for n in names if n not in ids]
    if unknown:
        raise PAIError(clip_id, f"unknown camera (the release's: {', '.join(ids)})", camera=unknown[0])
    streams = {n: _read_camera(clip_dir, clip_id, n, ids[n]) for n in names}
    return Clip(clip_id, clip_dir, streams, _read_egomotion(clip_dir, clip_id), _read_calibration(clip_dir, clip_id),
                _read_labels(clip_dir, clip_id))


# ----------------------------------------------------------------------------------------------------
# Poses.


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _slerp(q0: np.ndarray, q1: np.ndarray, f: np.ndarray) -> np.ndarray:
    dot = np.sum(q0 * q1, -1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot).clip(-1.0, 1.0)
    theta = np.arccos(dot)
    s = np.sin(theta)
    small = s < 1e-8
    a = np.where(small, 1 - f, np.sin((1 - f) * theta) / np.where(small, 1, s))
    b = np.where(small, f, np.sin(f * theta) / np.where(small, 1, s))
    q = a[:, None] * q0 + b[:, None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def ego_poses(clip: Clip, times_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World positions [N, 3] and rotation matrices [N, 3, 3] at `times_us` (linear / slerp)."""
    ego = clip.egomotion
    t = np.asarray(times_us, np.int64)
    lo, hi = ego.timestamps_us[0], ego.timestamps_us[-1]
    outside = (t < lo) | (t > hi)
    if outside.any():
        raise PAIError(clip.clip_id, f"pose requested at {int(t[outside][0])} us (t = {t[outside][0] / 1e6:.3f} s), "
                                     f"outside the egomotion [{lo}, {hi}] us", file=ego.file, field="timestamp")
    i = np.clip(np.searchsorted(ego.timestamps_us, t, side="right") - 1, 0, len(ego.timestamps_us) - 2)
    t_a, t_b = ego.timestamps_us[i].astype(np.float64), ego.timestamps_us[i + 1].astype(np.float64)
    f = (t - t_a) / (t_b - t_a)
    xyz = ego.xyz[i] + f[:, None] * (ego.xyz[i + 1] - ego.xyz[i])
    if ego.quat_xyzw is not None:
        rot = _quat_to_matrix(_slerp(ego.quat_xyzw[i], ego.quat_xyzw[i + 1], f))
    else:
        yaw = ego.yaw[i] + f * (ego.yaw[i + 1] - ego.yaw[i])
        c, s, z, o = np.cos(yaw), np.sin(yaw), np.zeros_like(yaw), np.ones_like(yaw)
        rot = np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)
    return xyz, rot


def local_trajectory(clip: Clip, t0_us: int, num_history: int = 16, num_future: int = 64,
                     dt: float = 0.1) -> dict[str, np.ndarray]:
    """History (t0 - (H-1) dt .. t0) and future (t0 + dt .. t0 + T dt) in the t0 ego frame:
    `history_xyz` [H, 3], `history_yaw` [H], `future_xyz` [T, 3], `future_yaw` [T] (float64)."""
    step = int(round(dt * 1e6))
    hist_t = t0_us + step * np.arange(-(num_history - 1), 1, dtype=np.int64)
    fut_t = t0_us + step * np.arange(1, num_future + 1, dtype=np.int64)
    xyz, rot = ego_poses(clip, np.concatenate([hist_t, fut_t]))
    r0, p0 = rot[num_history - 1], xyz[num_history - 1]
    local_xyz = (xyz - p0) @ r0  # R0^T (p - p0), row-vector form
    local_rot = np.einsum("ji,njk->nik", r0, rot)  # R0^T R
    yaw = np.unwrap(np.arctan2(local_rot[:, 1, 0], local_rot[:, 0, 0]))
    yaw = yaw - yaw[num_history - 1]  # exactly 0 at t0 (it is, up to rounding)
    return dict(history_xyz=local_xyz[:num_history], history_yaw=yaw[:num_history],
                future_xyz=local_xyz[num_history:], future_yaw=yaw[num_history:])


# ----------------------------------------------------------------------------------------------------
# Frames.


def pick_frames(clip: Clip, camera: str, times_us: np.ndarray, *, pick: str = "before",
                tolerance_us: int = 50_000) -> np.ndarray:
    """Frame indices of `camera` for `times_us` ("before": the latest at or before each time, as the
    release; "nearest": the nearest). Raises `PAIError` naming the camera and time when a time is
    outside the camera's timestamps or the pick is more than `tolerance_us` away."""
    cam = clip.cameras[camera]
    ts = cam.timestamps_us
    t = np.asarray(times_us, np.int64)
    if pick == "before":
        idx = np.searchsorted(ts, t, side="right") - 1
        valid = (idx >= 0) & (t <= ts[-1])
    elif pick == "nearest":
        right = np.clip(np.searchsorted(ts, t), 0, len(ts) - 1)
        left = np.clip(right - 1, 0, len(ts) - 1)
        idx = np.where(np.abs(ts[left] - t) <= np.abs(ts[right] - t), left, right)
        valid = (t >= ts[0] - tolerance_us) & (t <= ts[-1] + tolerance_us)
    else:
        raise ValueError(f"pai: pick must be 'before' or 'nearest', got {pick!r}")
    for k in range(len(t)):
        if not valid[k]:
            raise PAIError(clip.clip_id, f"no frame for t = {t[k]} us ({t[k] / 1e6:.3f} s): the camera's timestamps "
                                         f"cover [{ts[0]}, {ts[-1]}] us", camera=camera, file=cam.timestamps_file,
                           field="timestamp")
        gap = abs(int(ts[idx[k]]) - int(t[k]))
        if gap > tolerance_us:
            raise PAIError(clip.clip_id, f"no frame within {tolerance_us} us of t = {t[k]} us ({t[k] / 1e6:.3f} s); "
                                         f"the closest picked is {gap} us away", camera=camera,
                           file=cam.timestamps_file, field="timestamp")
    return idx.astype(np.int64)


def load_frame(clip: Clip, camera: str, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frame `index` of `camera` as RGB uint8 [H, W, 3], resized (bicubic) to `size` = (H, W)."""
    from PIL import Image

    path = clip.cameras[camera].frame_paths[index]
    if not path.exists():
        raise PAIError(clip.clip_id, f"frame {index} not extracted (expected {path.name} or .png/.jpeg)",
                       camera=camera, file=path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            return np.asarray(im, np.uint8)
    except OSError as e:
        raise PAIError(clip.clip_id, f"cannot decode image: {e}", camera=camera, file=path) from None


# ----------------------------------------------------------------------------------------------------
# Records.


def _label_index(clip: Clip, t0_us: int, value: Any, field: str, vocab: Sequence) -> int:
    if value is None:
        return -1
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        if not -1 <= value < len(vocab):
            raise PAIError(clip.clip_id, f"t0 {t0_us}: index {value} outside 0..{len(vocab) - 1}",
                           file=f"{clip.clip_id}.labels.json", field=field)
        return value
    names = [getattr(v, "value", v) for v in vocab]
    if value not in names:
        raise PAIError(clip.clip_id, f"t0 {t0_us}: unknown value {value!r} (one of {', '.join(map(str, names))})",
                       file=f"{clip.clip_id}.labels.json", field=field)
    return names.index(value)


def clip_to_records(clip: Clip, t0_us_list: Iterable[int], cfg, *, frame_pick: str = "before",
                    frame_tolerance_us: int = 50_000, fit=None) -> Iterator[dict]:
    """One `tfds_builder` record per t0 in `t0_us_list` (module docstring for the choices). `fit`:
    optional `(future_xy, v0, future_yaw) -> controls` (default: a jitted `unicycle.fit_controls`
    with the config's dt and smoothness). Raises `PAIError`."""
    s, a = cfg.scene, cfg.action
    cams = camera_names(s.num_cameras)
    for name, _ in cams:
        if name not in clip.cameras:
            raise PAIError(clip.clip_id, "camera missing (not read by read_clip)", camera=name)
    default_fit, v0_fn = _fitters(float(a.dt), float(a.smoothness_lambda))
    fit = default_fit if fit is None else fit
    from ar1_jax.text import coc

    step = int(round(a.dt * 1e6))
    for t0 in t0_us_list:
        t0 = int(t0)
        times = t0 - step * np.arange(s.num_frames - 1, -1, -1, dtype=np.int64)
        images = np.stack([
            np.stack([load_frame(clip, name, int(i), (s.image_height, s.image_width))
                      for i in pick_frames(clip, name, times, pick=frame_pick, tolerance_us=frame_tolerance_us)])
            for name, _ in cams])
        traj = local_trajectory(clip, t0, a.history, a.horizon, a.dt)
        hist_xy, fut_xy = traj["history_xyz"][:, :2], traj["future_xyz"][:, :2]
        v0 = float(np.asarray(v0_fn(np.float32(hist_xy), np.float32(traj["history_yaw"]))))
        controls = np.asarray(fit(np.float32(fut_xy), np.float32(v0), np.float32(traj["future_yaw"])), np.float32)
        label = clip.labels.get(t0, {})
        cot = label.get("cot", "")
        if not isinstance(cot, str):
            raise PAIError(clip.clip_id, f"t0 {t0}: expected a string", file=f"{clip.clip_id}.labels.json",
                           field="cot")
        record = dict(
            scene_id=f"pai-{clip.clip_id}-{t0}", family=FAMILY, images=images,
            camera_ids=np.array([i for _, i in cams], np.int32),
            history_xyz=traj["history_xyz"].astype(np.float32), history_yaw=traj["history_yaw"].astype(np.float32),
            future_xyz=traj["future_xyz"].astype(np.float32), future_yaw=traj["future_yaw"].astype(np.float32),
            controls=controls, v0=np.float32(v0), cot=cot,
            longitudinal=_label_index(clip, t0, label.get("longitudinal"), "longitudinal", coc.LONGITUDINAL),
            lateral=_label_index(clip, t0, label.get("lateral"), "lateral", coc.LATERAL),
            direction=_label_index(clip, t0, label.get("direction"), "direction", coc.DIRECTIONS),
            map_json="{}", agents_json="{}")
        for field in ("history_xyz", "history_yaw", "future_xyz", "future_yaw", "controls", "v0"):
            if not np.isfinite(record[field]).all():
                raise PAIError(clip.clip_id, f"t0 {t0}: non-finite values", field=field)
        yield record


@functools.lru_cache(maxsize=8)
def _fitters(dt: float, smoothness: float):
    """Jitted (fit_controls, estimate_v0), cached per (dt, smoothness) so clips share compilations."""
    import jax

    from ar1_jax.action import unicycle

    fit = jax.jit(lambda xy, v0, yaw: unicycle.fit_controls(xy, v0, dt=dt, smoothness=smoothness, heading=yaw))
    v0 = jax.jit(lambda xy, yaw: unicycle.estimate_v0(xy, dt=dt, history_heading=yaw))
    return fit, v0


def default_t0s(clip: Clip, cfg, stride_s: float = 1.0) -> list[int]:
    """Every `stride_s` from the earliest t0 with full history and frames to the latest with the full
    future (and frames) inside the egomotion and camera timestamps; microseconds, rounded to 1 ms."""
    s, a = cfg.scene, cfg.action
    step = int(round(a.dt * 1e6))
    ego = clip.egomotion.timestamps_us
    names = [n for n, _ in camera_names(s.num_cameras)]
    first = max([int(ego[0]) + step * (a.history - 1)]
                + [int(clip.cameras[n].timestamps_us[0]) + step * (s.num_frames - 1) for n in names])
    last = min([int(ego[-1]) - step * a.horizon] + [int(clip.cameras[n].timestamps_us[-1]) for n in names])
    first = -(-first // 1000) * 1000
    if last < first:
        return []
    stride = int(round(stride_s * 1e6))
    if stride <= 0:
        raise ValueError(f"pai: stride_s must be positive, got {stride_s}")
    return list(range(first, last + 1, stride))


def convert_clips(clip_dirs: Iterable[str | pathlib.Path], out_dir: str | pathlib.Path, cfg, *,
                  stride_s: float = 1.0, t0_us: Sequence[int] | None = None, test_fraction: float = 0.1,
                  overwrite: bool = False, progress: bool = True, frame_pick: str = "before",
                  frame_tolerance_us: int = 50_000) -> pathlib.Path:
    """Reads each clip folder and writes all their scenes as one TFDS directory `out_dir`
    (`tfds_builder.write_dataset`). t0s: `t0_us` when given (the same for every clip, e.g. the
    release's `[DEFAULT_T0_US]`), else `default_t0s(clip, cfg, stride_s)`. Returns `out_dir`."""
    from ar1_jax.data import tfds_builder

    s = cfg.scene
    clips = [read_clip(d, [n for n, _ in camera_names(s.num_cameras)]) for d in clip_dirs]
    plan = [(c, list(t0_us) if t0_us is not None else default_t0s(c, cfg, stride_s)) for c in clips]
    for c, t0s in plan:
        if not t0s:
            raise PAIError(c.clip_id, "too short: no t0 with the full history, frames and future inside the clip",
                           file=c.clip_dir)
    num = sum(len(t) for _, t in plan)
    # Scenes without a reasoning trace fail write_dataset's strict check: write those with strict=False
    # (clip_to_records has checked poses, controls and v0 are finite).
    strict = all(str(c.labels.get(int(t), {}).get("cot", "")).strip() for c, t0s in plan for t in t0s)

    def records():
        for c, t0s in plan:
            yield from clip_to_records(c, t0s, cfg, frame_pick=frame_pick, frame_tolerance_us=frame_tolerance_us)

    return tfds_builder.write_dataset(
        out_dir, records(), num, test_fraction=test_fraction, overwrite=overwrite, progress=progress,
        strict=strict,
        metadata=dict(generator="ar1_jax.data.pai", clips=[c.clip_id for c in clips], stride_s=stride_s,
                      config=cfg.name, num_cameras=s.num_cameras, num_frames=s.num_frames,
                      image_height=s.image_height, image_width=s.image_width))
