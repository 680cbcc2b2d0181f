"""Driving scenes -> a TFDS dataset directory (array_record files; no tensorflow needed to write or read).

A record is one scene, a dict with exactly these fields (what `ar1_jax.data.synthetic.generate_records`
and `random_records` yield):

    scene_id      str        unique; also decides the split (train/test by a hash of it)
    family        str        the scenario family ("random" for `random_records`)
    images        uint8 [C, F, H, W, 3]   camera-major, frames oldest first (the last at t0); or a
                             nested [C][F] sequence of PNG bytes (stored as given)
    camera_ids    int32 [C]
    history_xyz   float32 [16, 3]  metres, t0 ego frame, oldest first
    history_yaw   float32 [16]     radians
    future_xyz    float32 [64, 3]
    future_yaw    float32 [64]
    controls      float32 [64, 2]  (acceleration m/s^2, curvature 1/m), physical units
    v0            float32          m/s at t0
    cot           str        the Chain-of-Causation reasoning sentence
    longitudinal, lateral, direction   int32: index into `coc.LONGITUDINAL` / `coc.LATERAL` /
                             `coc.DIRECTIONS`, -1 for none
    map_json, agents_json    str (JSON)

On disk (TFDS features, `FEATURES`): `images` is a sequence of C*F PNG-encoded frames in the same
camera-major order (`tfds.features.Image`); the other arrays are `Tensor`s with a free leading dim
(the pipeline checks them against the model config, so a dataset is not tied to one config);
strings are `Text`. Any Python with tensorflow-datasets reads it without this package:

    tfds.builder_from_directory(out_dir).as_data_source("train")[0]["images"]  # list of [H, W, 3]

`write_dataset` makes the dataset directory itself (`out_dir/dataset_info.json`, `features.json`,
`ar1_scenes-{train,test}.array_record-*`): it spools the encoded records to a temporary folder
(one pass over the generator, with a progress bar), then lets a `GeneratorBasedBuilder` write the
splits, then moves its version folder's files to `out_dir`. A split with no record is not written.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import pathlib
import pickle
import shutil
import tempfile
from typing import Any, Iterable, Iterator

import numpy as np

DATASET_NAME = "ar1_scenes"
VERSION = _VERSION = "1.0.0"
SPLITS = ("train", "test")
RECORD_FIELDS = ("scene_id", "family", "images", "camera_ids", "history_xyz", "history_yaw", "future_xyz",
                 "future_yaw", "controls", "v0", "cot", "longitudinal", "lateral", "direction", "map_json",
                 "agents_json")
# (field, trailing shape, dtype) of the array fields; the leading dim is free.
_ARRAYS = (("camera_ids", (), np.int32), ("history_xyz", (3,), np.float32), ("history_yaw", (), np.float32),
           ("future_xyz", (3,), np.float32), ("future_yaw", (), np.float32), ("controls", (2,), np.float32))
_INTS = ("longitudinal", "lateral", "direction")
_TEXTS = ("scene_id", "family", "cot", "map_json", "agents_json")
_FINITE = ("history_xyz", "history_yaw", "future_xyz", "future_yaw", "controls", "v0")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RecordError(ValueError):
    """A record handed to the writer is malformed; the message names the scene and the field."""

    def __init__(self, scene_id: str, field: str, reason: str):
        self.scene_id, self.field, self.reason = scene_id, field, reason
        super().__init__(f"record {scene_id!r}: field `{field}`: {reason}")


def features():
    """The TFDS `FeaturesDict` of a scene (see the module docstring)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    spec: dict[str, Any] = {
        "images": f.Sequence(f.Image(shape=(None, None, 3), encoding_format="png"),
                             doc="C*F PNG frames, camera-major, frames oldest first"),
    }
    for name, trailing, dtype in _ARRAYS:
        spec[name] = f.Tensor(shape=(None,) + trailing, dtype=dtype)
    spec["v0"] = f.Scalar(dtype=np.float32, doc="speed at t0, m/s")
    for name in _INTS:
        spec[name] = f.Scalar(dtype=np.int32, doc=f"index into ar1_jax.text.coc's {name} vocabulary, -1: none")
    for name in _TEXTS:
        spec[name] = f.Text()
    return f.FeaturesDict(spec)


def split_of(scene_id: str, test_fraction: float) -> str:
    """"train" or "test" for `scene_id`, stable across runs and machines (SHA-256 of the id)."""
    h = int.from_bytes(hashlib.sha256(scene_id.encode("utf-8")).digest()[:8], "big")
    return "test" if h / 2.0**64 < test_fraction else "train"


def encode_png(frame: np.ndarray, compress_level: int = 1) -> bytes:
    """An RGB uint8 `[H, W, 3]` frame as PNG bytes (PIL; fast, lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_record(record: dict, *, strict: bool = True) -> dict:
    """A record as the TFDS features take it (PNG bytes, typed arrays), checking its structure.

    Structure is always checked (every field present, ranks, dtypes, one camera id per camera); with
    `strict` also values (finite poses, controls and v0; non-empty scene_id and cot). `strict=False`
    writes such records anyway, for testing the pipeline's own checks. Raises `RecordError`.
    """
    sid = record.get("scene_id")
    sid = sid if isinstance(sid, str) and sid else repr(sid)

    def bad(field: str, reason: str):
        return RecordError(sid, field, reason)

    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise bad(missing[0], f"missing (a record needs {', '.join(RECORD_FIELDS)})")
    extra = sorted(set(record) - set(RECORD_FIELDS))
    if extra:
        raise bad(extra[0], f"unknown field (a record has exactly {', '.join(RECORD_FIELDS)})")
    out: dict[str, Any] = {}
    for name in _TEXTS:
        value = record[name]
        if not isinstance(value, str):
            raise bad(name, f"expected str, got {type(value).__name__}")
        out[name] = value
    if strict and not out["scene_id"]:
        raise bad("scene_id", "empty")
    if strict and not out["cot"].strip():
        raise bad("cot", "empty reasoning trace")
    for name, trailing, dtype in _ARRAYS:
        arr = np.asarray(record[name])
        if arr.ndim != 1 + len(trailing) or arr.shape[1:] != trailing:
            raise bad(name, f"expected shape [N{''.join(', ' + str(d) for d in trailing)}], got {list(arr.shape)}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise bad(name, f"expected numbers, got dtype {arr.dtype}")
        out[name] = arr.astype(dtype)
    try:
        out["v0"] = np.float32(record["v0"])
    except (TypeError, ValueError):
        raise bad("v0", f"expected a float, got {record['v0']!r}") from None
    for name in _INTS:
        value = record[name]
        if isinstance(value, bool) or np.ndim(value) != 0 or not np.issubdtype(np.asarray(value).dtype, np.integer):
            raise bad(name, f"expected an int, got {value!r}")
        out[name] = np.int32(value)
    if strict:
        for name in _FINITE:
            arr = np.asarray(out[name])
            if not np.isfinite(arr).all():
                where = tuple(int(i) for i in np.argwhere(~np.isfinite(np.atleast_1d(arr)))[0])
                raise bad(name, f"non-finite value at index {where}")
    out["images"] = _encode_images(record["images"], len(out["camera_ids"]), bad)
    return out


def _encode_images(images: Any, num_cameras: int, bad) -> list[bytes]:
    if isinstance(images, np.ndarray):
        if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise bad("images", f"expected uint8 [C, F, H, W, 3], got {images.dtype} {list(images.shape)}")
        if images.shape[0] != num_cameras:
            raise bad("images", f"{images.shape[0]} cameras but {num_cameras} camera_ids")
        return [encode_png(np.ascontiguousarray(frame)) for cam in images for frame in cam]
    try:  # nested [C][F] PNG bytes
        cams = [list(cam) for cam in images]
    except TypeError:
        raise bad("images", f"expected a uint8 array or [C][F] PNG bytes, got {type(images).__name__}") from None
    if len(cams) != num_cameras:
        raise bad("images", f"{len(cams)} cameras but {num_cameras} camera_ids")
    if len({len(c) for c in cams}) > 1:
        raise bad("images", f"cameras have different frame counts {[len(c) for c in cams]}")
    flat = [frame for cam in cams for frame in cam]
    if not all(isinstance(b, (bytes, bytearray)) for b in flat):
        raise bad("images", "expected PNG bytes for every frame")
    return [bytes(b) for b in flat]


# ----------------------------------------------------------------------------------------------------
# The builder.


def _builder_class():
    """`Ar1Scenes`, defined on first use so that importing this module does not import TFDS."""
    global _BUILDER
    if _BUILDER is not None:
        return _BUILDER
    import tensorflow_datasets as tfds

    class Ar1Scenes(tfds.core.GeneratorBasedBuilder):
        """AR1 driving scenes: camera frames, ego history and future, controls, a CoC trace."""

        name = DATASET_NAME
        VERSION = tfds.core.Version(_VERSION)
        RELEASE_NOTES = {_VERSION: "Scenes from ar1_jax.data (synthetic generator or an adapter)."}

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            # No checksums file to find: nothing is downloaded. (TFDS's own lookup also needs the
            # `importlib_resources` backport for a builder defined inside a package.)
            return None

        def __init__(self, *, spools: dict[str, pathlib.Path], metadata: dict, **kwargs):
            self._spools = spools
            self._metadata = metadata
            super().__init__(**kwargs)

        def _log_download_bytes(self):  # TFDS prints the temporary folder; write_dataset reports instead
            pass

        def _log_download_done(self):
            pass

        def _info(self):
            # Outside an installed TFDS package: build DatasetInfo directly (no metadata files to find).
            return tfds.core.DatasetInfo(
                builder=self, features=features(), description=self.__doc__,
                metadata=tfds.core.MetadataDict(self._metadata), homepage="https://arxiv.org/abs/2511.00088")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(path) for split, path in self._spools.items()}

        def _generate_examples(self, path):
            for example in _read_spool(path):
                yield example["scene_id"], example

    _BUILDER = Ar1Scenes
    return Ar1Scenes


_BUILDER = None


def _read_spool(path: pathlib.Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def write_dataset(out_dir: str | pathlib.Path, records: Iterable[dict], num: int, *, test_fraction: float = 0.1,
                  metadata: dict | None = None, overwrite: bool = False, progress: bool = True,
                  strict: bool = True) -> pathlib.Path:
    """Writes the first `num` of `records` as a TFDS dataset directory `out_dir`; returns `out_dir`.

    Splits: "test" takes the scenes whose `split_of(scene_id, test_fraction)` is "test", "train" the
    rest (a split that gets no scene is not written). `metadata` (JSON-able) lands in
    `metadata.json`. An existing dataset in `out_dir` is replaced only with `overwrite`. A malformed
    record raises `RecordError` naming it (see `encode_record` for `strict`); fewer than `num`
    records, or a repeated scene_id, raise ValueError.
    """
    import tensorflow_datasets as tfds
    from tqdm.auto import tqdm

    if num <= 0:
        raise ValueError(f"write_dataset: num must be positive, got {num}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"write_dataset: test_fraction must be in [0, 1), got {test_fraction}")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "dataset_info.json").exists():
            raise ValueError(f"write_dataset: {out_dir} exists and is not a dataset directory; refusing to write "
                             f"into it")
        if not overwrite:
            raise ValueError(f"write_dataset: {out_dir} already holds a dataset (pass overwrite=True / --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        spools = {split: work / f"{split}.pkl" for split in SPLITS}
        counts = dict.fromkeys(SPLITS, 0)
        seen: set[str] = set()
        files = {split: open(path, "wb") for split, path in spools.items()}
        try:
            bar = tqdm(itertools.islice(records, num), total=num, desc=f"scenes -> {out_dir.name}", unit="scene",
                       disable=not progress)
            for record in bar:
                example = encode_record(record, strict=strict)
                sid = example["scene_id"]
                if sid in seen:
                    raise RecordError(sid, "scene_id", "repeated: scene ids must be unique")
                seen.add(sid)
                split = split_of(sid, test_fraction)
                pickle.dump(example, files[split], protocol=pickle.HIGHEST_PROTOCOL)
                counts[split] += 1
        finally:
            for f in files.values():
                f.close()
        if sum(counts.values()) < num:
            raise ValueError(f"write_dataset: the records ran out after {sum(counts.values())} of {num}")
        meta = dict(metadata or {}, num_scenes=num, test_fraction=test_fraction, split_counts=counts)
        builder = _builder_class()(spools={s: p for s, p in spools.items() if counts[s]}, metadata=meta,
                                   data_dir=str(work / "tfds"), file_format="array_record")
        if progress:
            print(f"writing {counts['train']} train + {counts['test']} test scenes (array_record) ...", flush=True)
        from tensorflow_datasets.core.utils import tqdm_utils

        bars = getattr(tqdm_utils, "_active", True)
        tfds.display_progress_bar(False)  # its bars name the temporary folder; ours counted the scenes
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
        finally:
            tfds.display_progress_bar(bars)
        built = pathlib.Path(builder.data_dir)
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in built.iterdir():
            shutil.move(str(path), out_dir / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


# ----------------------------------------------------------------------------------------------------
# A record source that needs nothing but the config: random frames, a plausible motion.


def random_records(num: int, seed: int, cfg) -> Iterator[dict]:
    """`num` scenes with random frames (`infer.scene.random_scene`) and a constant-control future.

    Each scene drives straight at a random speed (2-15 m/s) over the history, then applies one
    constant acceleration and curvature (gentle: |a| <= 1 m/s^2, |k| <= 0.03 1/m, half the scenes
    straight) for the future, integrated with the unicycle model; the controls are the least-squares
    labels `unicycle.fit_controls` makes from those poses (as for real data), and the CoC sentence
    (`coc.format`) matches the motion (slow down / speed up / keep speed; turn or keep lane). The
    frames mean nothing: this exercises the data path, it teaches no driving. Deterministic in
    (`seed`, index).
    """
    import jax

    from ar1_jax.action import unicycle
    from ar1_jax.infer import scene as scene_lib
    from ar1_jax.text import coc

    a = cfg.action
    fit = jax.jit(lambda xy, v0, yaw: unicycle.fit_controls(xy, v0, dt=a.dt, smoothness=a.smoothness_lambda,
                                                            heading=yaw))
    roll = jax.jit(lambda controls, v0: unicycle.integrate(controls, v0, dt=a.dt))
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        speed = float(rng.uniform(2.0, 15.0))
        scene = scene_lib.random_scene(cfg, int(rng.integers(2**31)), speed=speed)
        accel = float(rng.uniform(max(-1.0, -0.8 * speed / (a.horizon * a.dt)), 1.0))
        curv = float(rng.uniform(-0.03, 0.03)) if rng.random() < 0.5 else 0.0
        traj = roll(np.tile(np.float32([accel, curv]), (a.horizon, 1)), np.float32(speed))
        future_xy, future_yaw = np.asarray(traj.xy), np.asarray(traj.heading)
        controls = np.asarray(fit(future_xy, np.float32(speed), future_yaw), np.float32)
        if accel < -0.4:
            lon = coc.Longitudinal.SPEED_ADAPTATION
        elif accel > 0.4:
            lon = coc.Longitudinal.ACCELERATE_TO_PASS if rng.random() < 0.5 else coc.Longitudinal.SET_SPEED
        else:
            lon = coc.Longitudinal.LEAD_FOLLOW if rng.random() < 0.5 else coc.Longitudinal.SET_SPEED
        if abs(curv) > 0.005:
            lat, direction = coc.Lateral.TURN, ("left" if curv > 0 else "right")
        else:
            lat, direction = coc.Lateral.LANE_KEEP, None
        component = coc.COMPONENTS[int(rng.integers(len(coc.COMPONENTS)))]
        trace = coc.Trace(lon, lat, components=(component,), direction=direction)
        cot = coc.format(trace, variant=int(rng.integers(coc.NUM_VARIANTS)))
        future_xyz = np.concatenate([future_xy, np.zeros_like(future_xy[:, :1])], -1).astype(np.float32)
        yield dict(
            scene_id=f"random-{seed}-{i:06d}", family="random", images=scene.images,
            camera_ids=np.arange(cfg.scene.num_cameras, dtype=np.int32),
            history_xyz=scene.history_xyz.astype(np.float32), history_yaw=np.zeros((a.history,), np.float32),
            future_xyz=future_xyz, future_yaw=future_yaw.astype(np.float32), controls=controls,
            v0=np.float32(speed), cot=cot, longitudinal=coc.LONGITUDINAL.index(lon),
            lateral=coc.LATERAL.index(lat), direction=-1 if direction is None else coc.DIRECTIONS.index(direction),
            map_json=json.dumps({"lanes": [{"id": 0, "centerline": future_xy[::8].round(2).tolist()}]}),
            agents_json="[]")


def record_source(cfg, *, prefer_synthetic: bool = True):
    """(name, `fn(num, seed, cfg)`): `ar1_jax.data.synthetic.generate_records` when that module exists
    and exposes it, else `random_records`."""
    if prefer_synthetic:
        import importlib

        try:
            synthetic = importlib.import_module("ar1_jax.data.synthetic")
        except ModuleNotFoundError as e:
            if e.name != "ar1_jax.data.synthetic":  # the module exists but lacks a dependency: a real error
                raise
        else:
            if hasattr(synthetic, "generate_records"):
                return "ar1_jax.data.synthetic.generate_records", synthetic.generate_records
    return "ar1_jax.data.tfds_builder.random_records", random_records
