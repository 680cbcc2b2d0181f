"""Rotary position embeddings: multimodal M-RoPE for the decoder, 2D rotary for the ViT.

Decoder tokens carry three position ids (temporal, height, width); text tokens have all three equal.
Each of the `head_dim / 2` rotary frequencies takes its angle from one of the three axes:
  * Qwen2.5-VL (sectioned): the first `mrope_section[0]` frequencies use T, the next `[1]` use H,
    the last `[2]` use W.
  * Qwen3-VL (interleaved): frequency f uses H if f % 3 == 1 and f < 3 * section[1], W if
    f % 3 == 2 and f < 3 * section[2], else T.
The rotation is the "rotate half" convention of HF Qwen (pairs (x_i, x_{i + D/2})).

`get_rope_index` computes the position ids on the host (numpy) from token ids and image grids:
it depends on data only through shapes the batch already fixes, so it belongs to the input
pipeline, not to the compiled step.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def inv_frequencies(dim: int, theta: float) -> np.ndarray:
    """`[dim / 2]` inverse frequencies theta^(-2i/dim), float32 as HF computes them."""
    return (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))).astype(np.float32)


def mrope_axis_of_frequency(head_dim: int, section: tuple[int, ...], interleaved: bool) -> np.ndarray:
    """`[head_dim / 2]` in {0, 1, 2}: which position axis (T, H, W) drives each frequency."""
    n = head_dim // 2
    if interleaved:
        axis = np.zeros(n, dtype=np.int32)
        for dim, offset in ((1, 1), (2, 2)):
            idx = np.arange(offset, section[dim] * 3, 3)
            axis[idx[idx < n]] = dim
        return axis
    return np.concatenate([np.full(s, i % 3, dtype=np.int32) for i, s in enumerate(section)])


def mrope_cos_sin(
    positions: Int[Array, "3 B T"], head_dim: int, theta: float, section: tuple[int, ...], interleaved: bool
) -> tuple[Float[Array, "B T D"], Float[Array, "B T D"]]:
    """cos and sin `[B, T, head_dim]` (float32) for 3-axis positions."""
    inv = jnp.asarray(inv_frequencies(head_dim, theta))
    axis = mrope_axis_of_frequency(head_dim, tuple(section), interleaved)
    # positions per frequency: pick the axis that drives frequency f.
    pos = jnp.take(positions.astype(jnp.float32), jnp.asarray(axis), axis=0)  # [F, B, T]
    freqs = jnp.moveaxis(pos, 0, -1) * inv  # [B, T, F]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: Float[Array, "... T H D"], cos: Float[Array, "... T D"], sin: Float[Array, "... T D"],
                 compute_in_f32: bool = False):
    """Rotates `x` by per-token angles; heads broadcast. Qwen's ViT rotates in f32, its decoder in
    the activation dtype (cos/sin cast down first): `compute_in_f32` picks which."""
    cos = cos[..., None, :]
    sin = sin[..., None, :]
    if compute_in_f32:
        xf = x.astype(jnp.float32)
        return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)
    cos = cos.astype(x.dtype)
    sin = sin.astype(x.dtype)
    return x * cos + rotate_half(x) * sin


def vision_cos_sin(hw_positions: Int[Array, "N 2"], head_dim: int, theta: float):
    """2D rotary for ViT patches: `[N, head_dim]` cos, sin. The first half of the frequencies
    rotate with the patch row, the second half with the column (each `head_dim / 4` wide)."""
    inv = jnp.asarray(inv_frequencies(head_dim // 2, theta))
    freqs = hw_positions.astype(jnp.float32)[:, :, None] * inv  # [N, 2, D/4]
    freqs = freqs.reshape(freqs.shape[0], -1)  # [N, D/2]: h freqs then w freqs
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


# ----------------------------------------------------------------------------------------------------
# Host-side position logic (the `get_rope_index` of HF Qwen-VL).


def get_rope_index(
    input_ids: np.ndarray,
    *,
    family: str,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
    tokens_per_second: float = 2.0,
    attention_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """3-axis positions `[3, B, T]` (int32) and rope deltas `[B]`.

    Text tokens advance all three axes by one. An image (or video) block of t x h x w merged
    tokens, starting at position p, gets T = p + t_index * interval, H = p + row, W = p + col;
    the next token starts at p + max(h, w). For video in Qwen2.5-VL, interval = tokens_per_second *
    seconds per grid; Qwen3-VL splits a video into single frames (timestamps are text tokens).
    Padding (attention_mask == 0) gets position 0 and is skipped. The delta is
    `max position + 1 - number of valid tokens`: a token appended at valid index n sits at n + delta.
    """
    input_ids = np.asarray(input_ids)
    bsz, seq = input_ids.shape
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    attention_mask = np.asarray(attention_mask).astype(bool)
    images = [tuple(int(x) for x in g) for g in (image_grid_thw if image_grid_thw is not None else [])]
    videos = []
    if video_grid_thw is not None:
        secs = (np.ones(len(video_grid_thw)) if second_per_grid_ts is None
                else np.asarray(second_per_grid_ts, dtype=np.float64))
        for g, s in zip(video_grid_thw, secs):
            t, h, w = (int(x) for x in g)
            if family == "qwen3_vl":
                videos += [((1, h, w), 1.0)] * t
            else:
                videos.append(((t, h, w), float(tokens_per_second * s)))
    image_iter, video_iter = iter(images), iter(videos)
    m = spatial_merge_size
    positions = np.zeros((3, bsz, seq), dtype=np.int64)
    deltas = np.zeros((bsz,), dtype=np.int64)
    for b in range(bsz):
        ids = input_ids[b][attention_mask[b]]
        kind = np.where(ids == image_token_id, 1, np.where(ids == video_token_id, 2, 0))
        out = np.zeros((3, len(ids)), dtype=np.int64)
        i, cur = 0, 0
        while i < len(ids):
            if kind[i] == 0:
                j = i
                while j < len(ids) and kind[j] == 0:
                    j += 1
                out[:, i:j] = np.arange(cur, cur + j - i)[None]
                cur += j - i
                i = j
                continue
            # One vision block: consume exactly one grid's worth of tokens (adjacent images without
            # separators are still split correctly).
            if kind[i] == 1:
                grid = next(image_iter, None)
                interval = 1.0
                what = "image"
            else:
                item = next(video_iter, None)
                grid, interval = (None, 1.0) if item is None else item
                what = "video"
            if grid is None:
                raise ValueError(f"row {b}: more {what} token blocks than {what}_grid_thw entries")
            t, h, w = grid[0], grid[1] // m, grid[2] // m
            n = t * h * w
            if i + n > len(ids) or not np.all(kind[i:i + n] == kind[i]):
                raise ValueError(f"row {b}: {what} block at token {i} has fewer than the {n} tokens its grid "
                                 f"{grid} needs")
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
            out[0, i:i + n] = (tt.reshape(-1) * interval).astype(np.int64) + cur
            out[1, i:i + n] = hh.reshape(-1) + cur
            out[2, i:i + n] = ww.reshape(-1) + cur
            cur += max(h, w)
            i += n
        positions[:, b, attention_mask[b]] = out
        deltas[b] = (out.max() + 1 if out.size else 0) - len(ids)
    return positions.astype(np.int32), deltas.astype(np.int32)
