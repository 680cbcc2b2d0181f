"""TFDS scene records -> training examples, for the SFT pipeline (`ar1_jax.data.pipeline`).

`ScenesSource` gives random access to a split's records (frames still PNG bytes); `DecodeScene`
validates one and turns it into an example: PNG -> uint8 -> `preprocess_images`, history tokens,
future tokens and normalised controls, the prompt with the CoC text (none with `data.reasoning` off:
a trajectory-only sequence). A record that cannot be read
or fails validation becomes a bad-record marker `{BAD: (record, field, reason)}` (never a silently
wrong example); the pipeline raises `BadRecordError` for it or, in skip mode, drops and counts it.
"""

from __future__ import annotations

import functools
import io
import pathlib
from typing import Any

import numpy as np

from ar1_jax.config import Config

#: Key of a bad-record marker element: (record, field, reason).
BAD = "__bad_record__"


class BadRecordError(ValueError):
    """A record the pipeline cannot turn into a training example; names the record and the field."""

    def __init__(self, record: str, field: str, reason: str):
        self.record, self.field, self.reason = record, field, reason
        super().__init__(f"bad record {record!r}: field `{field}`: {reason}")

    def __reduce__(self):
        return BadRecordError, (self.record, self.field, self.reason)


def _bad(record: str, field: str, reason: str) -> dict:
    return {BAD: (str(record), str(field), str(reason))}


# ----------------------------------------------------------------------------------------------------
# Source.


@functools.lru_cache(maxsize=None)
def _keep_encoded_class():
    import tensorflow_datasets as tfds

    class KeepEncoded(tfds.decode.SkipDecoding):
        """Hands back the stored (PNG) bytes of a `Sequence(Image)` unchanged."""

        def decode_batch_example_np(self, example):
            return example

    return KeepEncoded


class ScenesSource:
    """Random access to one split of a TFDS scene directory (grain `RandomAccessDataSource`).

    `source[i]` is the record's features as numpy / bytes with the frames still PNG bytes, plus
    `_record` (`"split[i]"`); a record whose bytes cannot be read or parsed gives a bad-record marker
    (`{BAD: (record, field, reason)}`) so the pipeline can name it. Picklable (grain workers reopen it).
    """

    def __init__(self, data_dir: str | pathlib.Path, split: str = "train"):
        self.data_dir = str(data_dir)
        self.split = split
        self._open()

    def _open(self) -> None:
        import tensorflow_datasets as tfds

        path = pathlib.Path(self.data_dir)
        if not (path / "dataset_info.json").is_file():
            raise FileNotFoundError(f"{path} is not a TFDS dataset directory (no dataset_info.json); write one with "
                                    f"`ar1 data synth --out {path}`")
        try:
            builder = tfds.builder_from_directory(str(path))
        except Exception as e:
            raise ValueError(f"{path}: cannot read the dataset description: {type(e).__name__}: {e}") from e
        if self.split not in builder.info.splits:
            raise ValueError(f"{path}: no split {self.split!r} (has {', '.join(builder.info.splits) or 'none'})")
        try:
            self._raw = builder.as_data_source(self.split,
                                               deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        except Exception as e:
            files = sorted(p.name for p in path.glob(f"*-{self.split}.array_record-*"))
            raise ValueError(f"{path}: cannot open split {self.split!r} ({', '.join(files)}): "
                             f"{type(e).__name__}: {e}") from e
        self._features = builder.info.features
        self._decoders = {"images": _keep_encoded_class()()}
        self._len = len(self._raw)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        record = f"{self.split}[{index}]"
        try:
            raw = self._raw[index]
        except Exception as e:  # array_record: chunk hash mismatch, short file, ...
            return _bad(record, "record", f"unreadable in {self.data_dir}: {type(e).__name__}: {e}")
        try:
            example = self._features.deserialize_example_np(raw, decoders=self._decoders)
        except Exception as e:  # a truncated or corrupt serialized example
            return _bad(record, "record", f"corrupt serialized example ({len(raw)} bytes): {type(e).__name__}: {e}")
        example["_record"] = record
        return example

    def __getstate__(self):
        return {"data_dir": self.data_dir, "split": self.split}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return f"ScenesSource({self.data_dir!r}, {self.split!r}, {self._len} records)"


# ----------------------------------------------------------------------------------------------------
# Decode + tokenize one record.


@functools.lru_cache(maxsize=None)
def _action_fn(action_cfg):
    """Jitted (history bins, future bins, normalised controls), run on this process's CPU."""
    import jax

    from ar1_jax.action import tokens as traj_tokens
    from ar1_jax.action import unicycle

    a = action_cfg
    fn = jax.jit(lambda hist, ctrl: (traj_tokens.encode_history(hist, a, -a.future_bins),
                                     traj_tokens.encode_future(ctrl, a, 0), unicycle.normalize(ctrl, a)))
    try:
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS excludes cpu: run on the default device
        cpu = jax.local_devices()[0]

    def run(history_xyz, controls):
        with jax.default_device(cpu):
            return tuple(np.asarray(x) for x in fn(history_xyz, controls))

    return run


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected text, got {type(value).__name__}")


class _Reject(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DecodeScene:
    """grain map: a `ScenesSource` record -> one SFT example, or a bad-record marker.

    Example: `input_ids` int32 [L], `segments` int32 [L] (`build_prompt` kinds), `pixel_values`
    float32 [patches, D], `image_grid_thw` int64 [C*F, 3], `controls` float32 [T, 2] (normalised),
    `scene_id` str. Checks are against `cfg` (cameras, frames, history / horizon lengths) and
    `max_length` (the longest bucket).
    """

    def __init__(self, cfg: Config, tokenizer, max_length: int):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, ex: dict) -> dict:
        if BAD in ex:
            return ex
        record = ex.get("_record", "?")
        try:
            with _field("scene_id"):
                sid = _text(ex["scene_id"])
                if not sid:
                    raise _Reject("empty scene id")
            record = sid
            return self._decode(ex, sid)
        except _FieldError as e:
            return _bad(record, e.field, e.reason)
        except Exception as e:  # anything unexpected still names the record
            return _bad(record, "record", f"{type(e).__name__}: {e}")

    def _decode(self, ex: dict, sid: str) -> dict:
        from ar1_jax.data import images as image_lib
        from ar1_jax.text import prompt as prompt_lib

        s, v, a = self.cfg.scene, self.cfg.model.vision, self.cfg.action
        # Cameras and frames.
        with _field("camera_ids"):
            cams = np.asarray(ex["camera_ids"])
            if cams.ndim != 1 or len(cams) != s.num_cameras:
                raise _Reject(f"{len(cams) if cams.ndim == 1 else list(cams.shape)} camera(s), the config "
                              f"(scene.num_cameras) wants {s.num_cameras}: missing camera")
            if len(set(cams.tolist())) != len(cams):
                raise _Reject(f"repeated camera ids {cams.tolist()}")
        with _field("images"):
            pngs = list(ex["images"])
            if len(pngs) != s.num_cameras * s.num_frames:
                raise _Reject(f"{len(pngs)} frames, expected cameras x frames = {s.num_cameras} x {s.num_frames} "
                              f"(scene.num_cameras, scene.num_frames): missing camera or frame")
        frames = []
        for k, data in enumerate(pngs):
            c, f = divmod(k, s.num_frames)
            with _field(f"images[camera {c} (id {int(cams[c])}), frame {f}]"):
                frames.append(decode_png(data))
        with _field("images"):
            pv, grid = image_lib.preprocess_scene_frames(frames, self.cfg)
        # Poses and controls.
        history = _array(ex, "history_xyz", (a.history, 3))
        _array(ex, "history_yaw", (a.history,))
        _array(ex, "future_xyz", (a.horizon, 3))
        _array(ex, "future_yaw", (a.horizon,))
        controls = _array(ex, "controls", (a.horizon, 2))
        with _field("v0"):
            v0 = np.asarray(ex["v0"], np.float64)
            if v0.shape != () or not np.isfinite(v0):
                raise _Reject(f"expected a finite speed, got {ex['v0']!r}")
        history_bins, future_ids, controls_norm = _action_fn(a)(history, controls)
        # The sequence (trajectory-only, without the CoT block, when `data.reasoning` is off).
        reasoning = self.cfg.data.reasoning
        with _field("cot"):
            cot = _text(ex["cot"]) if reasoning else None
            if reasoning and not cot.strip():
                raise _Reject("empty reasoning trace")
            counts = [image_lib.image_token_count(g, v.spatial_merge_size) for g in grid]
            ids, seg = prompt_lib.build_prompt(
                self.tokenizer, num_images=len(frames), image_token_counts=counts,
                history_token_ids=history_bins.tolist(), cot=cot, include_future_start=True,
                future_token_ids=future_ids.tolist(), reasoning=reasoning)
            if len(ids) > self.max_length:
                n = seg.reasoning_span[1] - seg.reasoning_span[0] if seg.reasoning_span else 0
                raise _Reject(f"over-long trace: {n} reasoning tokens make a {len(ids)}-token sequence, longer than "
                              f"the longest bucket {self.max_length} (data.bucket_lengths)")
        return dict(input_ids=ids.astype(np.int32), segments=seg.kind.astype(np.int32), pixel_values=pv,
                    image_grid_thw=grid.astype(np.int64), controls=controls_norm.astype(np.float32), scene_id=sid)


class _FieldError(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class _field:
    """Context: any error inside is reported against `name`."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None or isinstance(exc, _FieldError):
            return False
        reason = exc.reason if isinstance(exc, _Reject) else f"{type(exc).__name__}: {exc}"
        raise _FieldError(self.name, reason) from exc


def decode_png(data: Any) -> np.ndarray:
    """An RGB PNG's pixels `uint8 [H, W, 3]`; a ValueError naming what is wrong otherwise."""
    from PIL import Image

    if not isinstance(data, (bytes, bytearray)):
        raise _Reject(f"expected PNG bytes, got {type(data).__name__}")
    if not data:
        raise _Reject("empty image (missing frame)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB":
                raise _Reject(f"expected an RGB image, got mode {im.mode}")
            return np.asarray(im, dtype=np.uint8)
    except _Reject:
        raise
    except Exception as e:
        raise _Reject(f"corrupt or truncated PNG ({len(data)} bytes): {type(e).__name__}: {e}") from None


def _array(ex: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    with _field(name):
        arr = np.asarray(ex[name], np.float32)
        if arr.shape != shape:
            raise _Reject(f"expected shape {list(shape)}, got {list(arr.shape)}")
        bad = ~np.isfinite(arr)
        if bad.any():
            raise _Reject(f"{int(bad.sum())} non-finite value(s) (NaN/inf), first at index "
                          f"{tuple(int(i) for i in np.argwhere(bad)[0])}")
        return arr
