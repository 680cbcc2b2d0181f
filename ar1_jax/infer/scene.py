"""One driving scene on disk (`.npz`) and its conversion to model inputs.

Fields: `images [cameras, frames, H, W, 3]` uint8 (camera-major; frames oldest first, the last at
t0), `history_xyz [16, 3]` metres in the t0 ego frame (oldest first, the last is t0 ~ 0), and
optionally `future_xyz [64, 3]` (ground truth, for plots and metrics) and `name`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile
import zlib

import numpy as np

from ar1_jax.action import tokens as traj_tokens
from ar1_jax.action import unicycle
from ar1_jax.config import Config
from ar1_jax.data import images as image_lib
from ar1_jax.text import prompt as prompt_lib


@dataclasses.dataclass
class Scene:
    images: np.ndarray
    history_xyz: np.ndarray
    future_xyz: np.ndarray | None = None
    name: str = "scene"


SCENE_ARCHIVE = ("an .npz archive with images [cameras, frames, H, W, 3] uint8 and history_xyz [16, 3] "
                 "metres (optional: future_xyz [64, 3], name), e.g. from ar1_jax.infer.scene.save_scene")


def load_scene(path) -> Scene:
    """Reads a scene `.npz`; a file that is no such archive, or a missing or mis-shaped field, fails
    naming the file, the field and what was expected."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # numpy's fallback is a hint about pickles
        raise ValueError(f"{path}: not a valid scene archive (not an .npz zip file); expected "
                         f"{SCENE_ARCHIVE}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a valid scene archive (a single .npy array); expected {SCENE_ARCHIVE}")
    with archive as z:
        for key in ("images", "history_xyz"):
            if key not in z.files:
                raise ValueError(f"{path}: not a valid scene archive: missing field {key!r} (has "
                                 f"{sorted(z.files)}); expected {SCENE_ARCHIVE}")
        fields = {key: _read_field(path, z, key) for key in ("images", "history_xyz", "future_xyz", "name")
                  if key in z.files}
    for key in ("history_xyz", "future_xyz"):
        if key in fields and not np.issubdtype(fields[key].dtype, np.number):
            raise ValueError(f"{path}: {key} must be numeric metres, got dtype {fields[key].dtype}")
    scene = Scene(images=fields["images"], history_xyz=fields["history_xyz"].astype(np.float32),
                  future_xyz=fields["future_xyz"].astype(np.float32) if "future_xyz" in fields else None,
                  name=str(fields["name"]) if "name" in fields else path.stem)
    if scene.images.ndim != 5 or scene.images.shape[-1] != 3 or scene.images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8 [cameras, frames, H, W, 3], got {scene.images.dtype} "
                         f"{scene.images.shape}")
    if scene.history_xyz.shape != (16, 3) or not np.isfinite(scene.history_xyz).all():
        raise ValueError(f"{path}: history_xyz must be finite [16, 3], got shape {scene.history_xyz.shape}")
    return scene


def _read_field(path: pathlib.Path, z, key: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError:  # an object array: loading it would unpickle
        raise ValueError(f"{path}: not a valid scene archive: field {key!r} holds pickled Python objects, not "
                         f"an array of numbers; expected {SCENE_ARCHIVE}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a valid scene archive: field {key!r} cannot be read ({e}); expected "
                         f"{SCENE_ARCHIVE}") from None


def save_scene(path, scene: Scene) -> None:
    fields = dict(images=scene.images, history_xyz=scene.history_xyz, name=np.asarray(scene.name))
    if scene.future_xyz is not None:
        fields["future_xyz"] = scene.future_xyz
    np.savez_compressed(path, **fields)


def random_scene(cfg: Config, seed: int, speed: float = 8.0) -> Scene:
    """Random frames and a straight history at `speed` m/s: exercises the pipeline, means nothing."""
    rng = np.random.default_rng(seed)
    s = cfg.scene
    frames = rng.integers(0, 256, (s.num_cameras, s.num_frames, s.image_height, s.image_width, 3), dtype=np.uint8)
    t = np.arange(-15, 1) * cfg.action.dt
    history = np.stack([speed * t, np.zeros_like(t), np.zeros_like(t)], -1).astype(np.float32)
    return Scene(images=frames, history_xyz=history, name=f"random-{seed}")


def scene_inputs(cfg: Config, tokenizer, scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(prompt ids, pixel_values, image_grid_thw, v0 m/s) for the generation prompt of `scene`."""
    s, v = cfg.scene, cfg.model.vision
    cams, frames = scene.images.shape[:2]
    if (cams, frames) != (s.num_cameras, s.num_frames):
        raise ValueError(f"scene {scene.name!r} has {cams} cameras x {frames} frames; config {cfg.name!r} wants "
                         f"{s.num_cameras} x {s.num_frames}")
    flat = scene.images.reshape(-1, *scene.images.shape[2:])
    pv, grid = image_lib.preprocess_scene_frames(flat, cfg)
    bins = np.asarray(traj_tokens.encode_history(scene.history_xyz, cfg.action, -cfg.action.future_bins))
    ids, _ = prompt_lib.build_prompt(
        tokenizer, num_images=len(flat),
        image_token_counts=[image_lib.image_token_count(g, v.spatial_merge_size) for g in grid],
        history_token_ids=bins.tolist(), cot=None, include_future_start=False)
    v0 = float(unicycle.estimate_v0(scene.history_xyz[None, :, :2], dt=cfg.action.dt)[0])
    return ids, pv, grid, v0
