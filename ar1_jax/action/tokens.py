"""Discrete trajectory tokens: the future controls (128 ids) and the ego history deltas (48 ids).

The release appends `traj_vocab = future_bins + history_bins` (3000 + 1000) tokens `<i0>`..`<i3999>`
after the text vocabulary; `offset` below is the id of `<i0>`. Future ids are `offset + bin`, bin in
[0, future_bins); history ids are `offset + future_bins + bin`, bin in [0, history_bins).

Quantisation (both tokenizers, as in the release): a value clipped to [lo, hi] maps to
`bin = round((x - lo) / (hi - lo) * (bins - 1))`, and a bin decodes to `lo + bin (hi - lo) / (bins - 1)`.
The `bins` levels include both ends, so the spacing is `(hi - lo) / (bins - 1)` and an in-range value
comes back within half of it (`future_bin_width`, `history_bin_width`).

Future: physical controls -> z-scores (`unicycle.normalize`) -> clipped to +-future_range -> bins, laid
out a0 k0 a1 k1 ... (step-major). History: poses `[..., H, 3]` in the t0 ego frame -> H deltas taken
after a zero pose is put in front (so the first delta is the oldest pose itself, usually clipped) ->
clipped to +-(xy, xy, z) -> bins, laid out x0 y0 z0 x1 ... .

Decoding never wraps or silently accepts an id outside its range: it returns a boolean mask of the
valid positions (jittable); an invalid id decodes as the nearest valid bin. `check_ids` turns the mask
into a ValueError naming the first bad position, for host-side use.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ar1_jax.action.unicycle import denormalize, normalize
from ar1_jax.config import ActionConfig


def future_bin_width(cfg: ActionConfig) -> float:
    """Spacing of the future quantisation levels, in normalised (z-score) units."""
    return 2.0 * cfg.future_range / (cfg.future_bins - 1)


def history_bin_width(cfg: ActionConfig) -> tuple[float, float, float]:
    """Spacing of the history quantisation levels for (x, y, z), metres."""
    xy = 2.0 * cfg.history_xy_clip / (cfg.history_bins - 1)
    return (xy, xy, 2.0 * cfg.history_z_clip / (cfg.history_bins - 1))


def traj_vocab_size(cfg: ActionConfig) -> int:
    """Number of trajectory tokens added after the text vocabulary (future then history)."""
    return cfg.future_bins + cfg.history_bins


# ----------------------------------------------------------------------------------------------------
# Future controls.


def encode_future(controls: Float[Array, "... T 2"], cfg: ActionConfig, offset: int) -> Int[Array, "... 2*T"]:
    """Physical controls (a m/s^2, k 1/m) `[..., T, 2]` -> ids `[..., 2T]` int32, a0 k0 a1 k1 ...

    Values beyond +-future_range (normalised) land in the edge bins.
    """
    z = normalize(controls, cfg)
    bins = _quantize(z, -cfg.future_range, cfg.future_range, cfg.future_bins)
    return (offset + bins).reshape(bins.shape[:-2] + (-1,))


def decode_future(
    ids: Int[Array, "... 2*T"], cfg: ActionConfig, offset: int
) -> tuple[Float[Array, "... T 2"], Bool[Array, "... 2*T"]]:
    """Ids `[..., 2T]` -> (physical controls `[..., T, 2]`, valid `[..., 2T]`).

    `valid[i]` is False where `ids[i]` is outside [offset, offset + future_bins); that position decodes
    as the nearest valid bin.
    """
    ids = jnp.asarray(ids)
    if ids.shape[-1] % 2:
        raise ValueError(f"future ids: expected an even number of ids (a0 k0 a1 k1 ...), got {ids.shape[-1]}")
    bins = ids - offset
    valid = (bins >= 0) & (bins < cfg.future_bins)
    z = _dequantize(bins, -cfg.future_range, cfg.future_range, cfg.future_bins)
    return denormalize(z.reshape(z.shape[:-1] + (-1, 2)), cfg), valid


# ----------------------------------------------------------------------------------------------------
# History deltas.


def history_deltas(history_xyz: Float[Array, "... H 3"]) -> Float[Array, "... H 3"]:
    """Per-step deltas as the release's history tokenizer takes them: a zero pose is put in front,
    so delta 0 is the oldest pose itself and delta i > 0 is pose i - pose i-1 (metres)."""
    xyz = jnp.asarray(history_xyz, jnp.float32)
    prev = jnp.concatenate([jnp.zeros_like(xyz[..., :1, :]), xyz[..., :-1, :]], axis=-2)
    return xyz - prev


def encode_history(history_xyz: Float[Array, "... H 3"], cfg: ActionConfig, offset: int) -> Int[Array, "... 3*H"]:
    """Past poses `[..., H, 3]` (x, y, z metres, t0 ego frame, oldest first) -> ids `[..., 3H]` int32,
    x0 y0 z0 x1 ..., each at `offset + future_bins + bin`. Deltas beyond the clip land in the edge bins.
    """
    lo, hi = _history_range(cfg)
    bins = _quantize(history_deltas(history_xyz), lo, hi, cfg.history_bins)
    return (offset + cfg.future_bins + bins).reshape(bins.shape[:-2] + (-1,))


def decode_history(
    ids: Int[Array, "... 3*H"], cfg: ActionConfig, offset: int
) -> tuple[Float[Array, "... H 3"], Bool[Array, "... 3*H"]]:
    """Ids `[..., 3H]` -> (deltas `[..., H, 3]` metres, valid `[..., 3H]`).

    The poses are `cumsum(deltas, axis=-2)` (what the release's decoder returns); they equal the
    encoded poses up to quantisation when no delta was clipped. `valid[i]` is False where `ids[i]` is
    outside [offset + future_bins, offset + future_bins + history_bins); it decodes as the nearest bin.
    """
    ids = jnp.asarray(ids)
    if ids.shape[-1] % 3:
        raise ValueError(f"history ids: expected a multiple of 3 ids (x0 y0 z0 x1 ...), got {ids.shape[-1]}")
    bins = (ids - offset - cfg.future_bins).reshape(ids.shape[:-1] + (-1, 3))
    valid = (bins >= 0) & (bins < cfg.history_bins)
    lo, hi = _history_range(cfg)
    return _dequantize(bins, lo, hi, cfg.history_bins), valid.reshape(ids.shape)


def check_ids(valid: Bool[Array, "... N"], what: str = "trajectory ids") -> None:
    """Host-side: raises ValueError naming the first invalid position of a decode mask (not jittable)."""
    valid = np.asarray(valid)
    if not valid.all():
        bad = np.argwhere(~valid)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(f"{what}: {len(bad)} id(s) outside the token range, first at index {first}")


# ----------------------------------------------------------------------------------------------------


def _history_range(cfg: ActionConfig) -> tuple[Array, Array]:
    hi = jnp.asarray([cfg.history_xy_clip, cfg.history_xy_clip, cfg.history_z_clip], jnp.float32)
    return -hi, hi


def _quantize(x, lo, hi, bins: int) -> Array:
    unit = (jnp.asarray(x, jnp.float32) - lo) / (hi - lo)
    return jnp.clip(jnp.round(unit * (bins - 1)), 0, bins - 1).astype(jnp.int32)


def _dequantize(bins, lo, hi, n: int) -> Array:
    b = jnp.clip(bins, 0, n - 1).astype(jnp.float32)
    return lo + b * ((hi - lo) / (n - 1))
