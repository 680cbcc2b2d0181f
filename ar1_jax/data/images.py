"""Camera frames -> the Qwen-VL vision tower's inputs (`pixel_values`, `image_grid_thw`).

The same layout the HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL image processors emit, so checkpoints see
what they were trained on: resize so both sides are multiples of `patch * merge` (keeping the
aspect ratio and the pixel count within [min_pixels, max_pixels]), rescale to [0, 1], normalise
per channel, cut into `patch x patch` squares ordered in `merge x merge` blocks (row-major blocks,
row-major inside a block), and repeat a still image `temporal_patch_size` times along time. Each
row of `pixel_values` is one patch flattened as (channel, time, row, column).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2-VL / Qwen2.5-VL processors
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # Qwen3-VL processor: mean = std = 0.5


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) an image is resized to: multiples of `factor`, aspect ratio kept as
    closely as rounding allows, area within [min_pixels, max_pixels]."""
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


def patchify(image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """`[C, H, W]` float image (H, W multiples of patch * merge) -> `[H/p * W/p, C * tp * p * p]`."""
    c, h, w = image.shape
    gh, gw = h // patch_size, w // patch_size
    x = image.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # block row, block col, in-block row, in-block col, C, p, p
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (temporal_patch_size,) + x.shape[5:])
    return x.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size)


def preprocess_image(image: np.ndarray, *, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2,
                     min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280, size: tuple[int, int] | None = None,
                     mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> tuple[np.ndarray, tuple]:
    """One RGB frame `[H, W, 3]` uint8 -> (patches `[gh * gw, 3 * tp * p * p]` float32, grid (1, gh, gw)).

    `size=(h, w)` resizes to exactly that (multiples of patch * merge), as the AR1 release does for
    its fixed camera resolution; otherwise `smart_resize` picks the size.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    factor = patch_size * merge_size
    if size is None:
        size = smart_resize(image.shape[0], image.shape[1], factor, min_pixels, max_pixels)
    elif size[0] % factor or size[1] % factor:
        raise ValueError(f"size {size} is not a multiple of patch * merge = {factor}")
    if (image.shape[0], image.shape[1]) != tuple(size):
        pil = Image.fromarray(image.astype(np.uint8))
        image = np.asarray(pil.resize((size[1], size[0]), resample=Image.BICUBIC))
    x = image.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    patches = patchify(x.transpose(2, 0, 1), patch_size, merge_size, temporal_patch_size)
    return patches.astype(np.float32), (1, size[0] // patch_size, size[1] // patch_size)


def preprocess_images(images: Sequence[np.ndarray], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Several frames -> (`pixel_values [sum patches, D]`, `image_grid_thw [N, 3]`), in order."""
    out = [preprocess_image(im, **kwargs) for im in images]
    return np.concatenate([p for p, _ in out], 0), np.asarray([g for _, g in out], dtype=np.int64)


def preprocess_scene_frames(frames: Sequence[np.ndarray], cfg) -> tuple[np.ndarray, np.ndarray]:
    """A scene's camera frames (camera-major) -> (`pixel_values`, `image_grid_thw`) with the
    backbone's patching and the config's fixed frame size and normalisation (`cfg`: a root Config)."""
    v, s = cfg.model.vision, cfg.scene
    return preprocess_images(list(frames), patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                             temporal_patch_size=v.temporal_patch_size, size=(s.image_height, s.image_width),
                             mean=s.image_mean, std=s.image_std)


def image_token_count(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """Decoder tokens one image contributes: t * h * w / merge^2."""
    t, h, w = grid_thw
    return int(t * h * w) // (merge_size * merge_size)
