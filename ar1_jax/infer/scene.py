"""One driving scene on disk (`.npz`) and its conversion to model inputs.

Fields: `images [cameras, frames, H, W, 3]` uint8 (camera-major; frames oldest first, the last at
t0), `history_xyz [16, 3]` metres in the t0 ego frame (oldest first, the last is t0 ~ 0), and
optionally `future_xyz [64, 3]` (ground truth, for plots and metrics) and `name`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from ar1_jax.action import tokens as traj_tokens
from ar1_jax.action import unicycle
from ar1_jax.config import Config
from ar1_jax.data import images as image_lib
from ar1_jax.text import tokenizer as tok_lib


@dataclasses.dataclass
class Scene:
    images: np.ndarray
    history_xyz: np.ndarray
    future_xyz: np.ndarray | None = None
    name: str = "scene"


def load_scene(path) -> Scene:
    """Reads a scene `.npz`; a missing or mis-shaped field fails naming it and the file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene file {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        for key in ("images", "history_xyz"):
            if key not in z:
                raise ValueError(f"{path}: missing field {key!r} (has {sorted(z.files)})")
        scene = Scene(images=z["images"], history_xyz=z["history_xyz"].astype(np.float32),
                      future_xyz=z["future_xyz"].astype(np.float32) if "future_xyz" in z else None,
                      name=str(z["name"]) if "name" in z else path.stem)
    if scene.images.ndim != 5 or scene.images.shape[-1] != 3 or scene.images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8 [cameras, frames, H, W, 3], got {scene.images.dtype} "
                         f"{scene.images.shape}")
    if scene.history_xyz.shape != (16, 3) or not np.isfinite(scene.history_xyz).all():
        raise ValueError(f"{path}: history_xyz must be finite [16, 3], got shape {scene.history_xyz.shape}")
    return scene


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
    ids, _ = tok_lib.build_prompt(tokenizer, num_images=len(flat),
                                  image_token_counts=[image_lib.image_token_count(g, v.spatial_merge_size) for g in grid],
                                  history_token_ids=bins.tolist(), cot=None, include_future_start=False)
    v0 = float(unicycle.estimate_v0(scene.history_xyz[None, :, :2], dt=cfg.action.dt)[0])
    return ids, pv, grid, v0
