"""The ViT of Qwen2.5-VL and Qwen3-VL over HF-processor patches.

Input: `pixel_values [Np, C * tp * p * p]`, one row per patch, each image's patches in 2x2
spatial-merge-block order (as the HF processor emits them), and `image_grid_thw [N, 3]` patches per
image along time, height, width. Output: `[Np / 4, out_hidden]` image tokens for the decoder (and,
for Qwen3-VL, DeepStack features `[n_deep, Np / 4, out_hidden]`).

Everything that depends on the grids (rotary patch positions, which patches attend together, the
Qwen3 position-table resampling) is computed on the host by `vision_layout` as small integer and
float arrays; the compiled tower only sees their shapes, so images of the same sizes never
recompile. Attention runs per segment (a frame for full attention, a window for Qwen2.5's window
blocks): tokens are gathered into `[segments, longest, ...]` with padding masked, which is
the same result as HF's per-window loop without its sequence permutation.

Parameters (Lv blocks of width Ev, Hv heads of Dv, MLP Fv, Eo = out_hidden):
  patch_embed.{kernel [P, Ev], bias [Ev] (Qwen3)}; pos_embed [num_pos, Ev] (Qwen3);
  blocks.{norm1,norm2}.{scale [Lv, Ev], bias (Qwen3)};
  blocks.attn.{q,k,v}_kernel [Lv, Ev, Hv, Dv], {q,k,v}_bias [Lv, Hv, Dv], o_kernel [Lv, Hv, Dv, Ev], o_bias;
  blocks.mlp: Qwen2.5 {gate,up,down}_{kernel,bias} (SwiGLU), Qwen3 fc1/fc2_{kernel,bias} (GELU-tanh);
  merger.{norm.{scale,bias}, fc1_kernel [4Ev, 4Ev], fc1_bias, fc2_kernel [4Ev, Eo], fc2_bias};
  deepstack (Qwen3): the merger's parameters stacked [n_deep, ...], normalising after the 2x2 merge.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ar1_jax.config import VisionConfig
from ar1_jax.model import attention as attn_lib
from ar1_jax.model import rope
from ar1_jax.model.layers import activation, dense, layer_norm, make_param, remat_policy, rms_norm
from ar1_jax.model.text import Params
from ar1_jax.parallel.rules import shard_activation


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        L, E, H, D, F = cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
        M = E * cfg.spatial_merge_size**2
        qwen3 = cfg.family == "qwen3_vl"
        p = functools.partial(make_param, rngs, dtype=param_dtype)

        def norm(prefix_shape, prefix_axes, width):
            n = dict(scale=p(prefix_shape + (width,), prefix_axes + ("norm",), init="ones"))
            if qwen3:
                n["bias"] = p(prefix_shape + (width,), prefix_axes + ("norm",), init="zeros")
            return Params(**n)

        def merger(prefix_shape=(), prefix_axes=(), norm_width=E):
            return Params(
                norm=norm(prefix_shape, prefix_axes, norm_width),
                fc1_kernel=p(prefix_shape + (M, M), prefix_axes + ("embed", "mlp")),
                fc1_bias=p(prefix_shape + (M,), prefix_axes + ("mlp",), init="zeros"),
                fc2_kernel=p(prefix_shape + (M, cfg.out_hidden_size), prefix_axes + ("mlp", "embed")),
                fc2_bias=p(prefix_shape + (cfg.out_hidden_size,), prefix_axes + ("norm",), init="zeros"),
            )

        patch = dict(kernel=p((cfg.patch_dim, E), ("patch", "embed")))
        if qwen3:
            patch["bias"] = p((E,), ("norm",), init="zeros")
        self.patch_embed = Params(**patch)
        if qwen3:
            self.pos_embed = p((cfg.num_position_embeddings, E), ("pos", "embed"))
        la = ("layers",)
        attn = Params(
            q_kernel=p((L, E, H, D), la + ("embed", "heads", "head_dim")),
            k_kernel=p((L, E, H, D), la + ("embed", "heads", "head_dim")),
            v_kernel=p((L, E, H, D), la + ("embed", "heads", "head_dim")),
            q_bias=p((L, H, D), la + ("heads", "head_dim"), init="zeros"),
            k_bias=p((L, H, D), la + ("heads", "head_dim"), init="zeros"),
            v_bias=p((L, H, D), la + ("heads", "head_dim"), init="zeros"),
            o_kernel=p((L, H, D, E), la + ("heads", "head_dim", "embed")),
            o_bias=p((L, E), la + ("norm",), init="zeros"),
        )
        if qwen3:
            mlp = Params(fc1_kernel=p((L, E, F), la + ("embed", "mlp")), fc1_bias=p((L, F), la + ("mlp",), init="zeros"),
                         fc2_kernel=p((L, F, E), la + ("mlp", "embed")), fc2_bias=p((L, E), la + ("norm",), init="zeros"))
        else:
            mlp = Params(**{f"{n}_kernel": p((L, E, F), la + ("embed", "mlp")) for n in ("gate", "up")},
                         **{f"{n}_bias": p((L, F), la + ("mlp",), init="zeros") for n in ("gate", "up")},
                         down_kernel=p((L, F, E), la + ("mlp", "embed")),
                         down_bias=p((L, E), la + ("norm",), init="zeros"))
        self.blocks = Params(norm1=norm((L,), la, E), norm2=norm((L,), la, E), attn=attn, mlp=mlp)
        self.merger = merger()
        n_deep = len(cfg.deepstack_visual_indexes)
        if qwen3 and n_deep:
            self.deepstack = merger((n_deep,), ("layers",), norm_width=M)


# ----------------------------------------------------------------------------------------------------
# Host-side layout.


def _segments_to_gather(segment_of_token: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packs tokens by segment id: gather `[S, Lmax]` (-1 pad), valid `[S, Lmax]`, inverse `[N]`."""
    n = len(segment_of_token)
    order = np.argsort(segment_of_token, kind="stable")
    seg_sorted = segment_of_token[order]
    uniq, starts, counts = np.unique(seg_sorted, return_index=True, return_counts=True)
    lmax = int(counts.max()) if n else 1
    gather = np.full((len(uniq), lmax), -1, dtype=np.int32)
    inverse = np.zeros((n,), dtype=np.int32)
    for s, (st, c) in enumerate(zip(starts, counts)):
        toks = order[st:st + c]
        gather[s, :c] = toks
        inverse[toks] = s * lmax + np.arange(c)
    return gather, gather >= 0, inverse


def _bilinear_taps(index: np.ndarray, size: np.ndarray, side: int):
    """Per-axis 2-tap bilinear resampling (align_corners=True) of a `side`-long table to `size`."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.maximum(size - 1, 1).astype(np.float32)
    floor = np.floor(src)
    taps = floor.astype(np.int64)[:, None] + np.arange(2)
    dist = np.abs(src[:, None] - floor[:, None] - np.arange(2, dtype=np.float32))
    weights = np.clip(1.0 - dist, 0.0, None).astype(np.float32)
    return np.clip(taps, 0, side - 1), weights


def vision_layout(cfg: VisionConfig, grid_thw: np.ndarray) -> dict[str, np.ndarray]:
    """Host arrays describing how the tower treats `grid_thw` images (see the module docstring)."""
    grid_thw = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    m = cfg.spatial_merge_size
    rows, cols, frame_ids, window_ids = [], [], [], []
    frame_counter = window_counter = 0
    win_units = cfg.window_size // m // cfg.patch_size  # window side in merged units
    for t, h, w in grid_thw:
        if h % m or w % m:
            raise ValueError(f"image grid {(t, h, w)}: height and width must be multiples of "
                             f"spatial_merge_size={m}")
        n = np.arange(h * w)
        in_col, in_row = n % m, (n // m) % m
        block_col, block_row = (n // (m * m)) % (w // m), n // (m * m * (w // m))
        r, c = block_row * m + in_row, block_col * m + in_col
        win_r, win_c = block_row // win_units, block_col // win_units
        n_win_c = -(-(w // m) // win_units)
        n_win = -(-(h // m) // win_units) * n_win_c
        for _ in range(t):
            rows.append(r)
            cols.append(c)
            frame_ids.append(np.full(h * w, frame_counter))
            window_ids.append(window_counter + win_r * n_win_c + win_c)
            frame_counter += 1
            window_counter += n_win
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    layout = {"rope_hw": np.stack([rows, cols], -1).astype(np.int32)}
    g, v, inv = _segments_to_gather(np.concatenate(frame_ids))
    layout.update(full_gather=g, full_valid=v, full_inverse=inv)
    if cfg.family == "qwen2_5_vl":
        g, v, inv = _segments_to_gather(np.concatenate(window_ids))
        layout.update(window_gather=g, window_valid=v, window_inverse=inv)
    else:
        side = int(round(cfg.num_position_embeddings**0.5))
        heights = np.concatenate([np.full(t * h * w, h) for t, h, w in grid_thw])
        widths = np.concatenate([np.full(t * h * w, w) for t, h, w in grid_thw])
        h_taps, h_w = _bilinear_taps(rows, heights, side)
        w_taps, w_w = _bilinear_taps(cols, widths, side)
        layout["pos_index"] = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4).astype(np.int32)
        layout["pos_weight"] = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4).astype(np.float32)
    return layout


# ----------------------------------------------------------------------------------------------------
# Compute.


def _segment_attention(q, k, v, gather, valid, inverse, impl):
    """Bidirectional attention within segments; q/k/v `[N, H, D]` -> `[N, H, D]`."""
    idx = jnp.maximum(gather, 0)
    out = attn_lib.attention(q[idx], k[idx], v[idx], causal=False, kv_valid=valid, impl=impl)
    s, lmax = gather.shape
    return out.reshape(s * lmax, *out.shape[2:])[inverse]


def _merger(mp: dict, x, cfg: VisionConfig, postshuffle: bool):
    width = cfg.hidden_size * cfg.spatial_merge_size**2
    if postshuffle:
        x = layer_norm(x.reshape(-1, width), mp["norm"]["scale"], mp["norm"]["bias"], cfg.norm_eps)
    elif cfg.family == "qwen3_vl":
        x = layer_norm(x, mp["norm"]["scale"], mp["norm"]["bias"], cfg.norm_eps).reshape(-1, width)
    else:
        x = rms_norm(x, mp["norm"]["scale"], cfg.norm_eps).reshape(-1, width)
    x = jax.nn.gelu(dense(x, mp["fc1_kernel"], mp["fc1_bias"]), approximate=False)
    return dense(x, mp["fc2_kernel"], mp["fc2_bias"])


def vision_forward(params: dict, cfg: VisionConfig, pixel_values, layout: dict, *, dtype=jnp.float32,
                   impl: str = "xla", batched: bool = False):
    """Image tokens `[Np / 4, Eo]` and DeepStack features `[n_deep, Np / 4, Eo]` (or None).

    `batched`: called under `jax.vmap(..., spmd_axis_name=...)` over scenes; the residual stream is
    then pinned to the vmapped batch sharding, so XLA keeps each scene on its devices instead of
    following the (FSDP-sharded) weights and gathering the whole batch."""
    pin = (lambda h: shard_activation(h, (None, None))) if batched else (lambda h: h)
    qwen3 = cfg.family == "qwen3_vl"
    x = dense(pixel_values.astype(dtype), params["patch_embed"]["kernel"], params["patch_embed"].get("bias"))
    if qwen3:
        table = params["pos_embed"].astype(jnp.float32)
        pos = jnp.sum(table[layout["pos_index"]] * layout["pos_weight"][..., None], axis=1)
        x = x + pos.astype(x.dtype)
    cos, sin = rope.vision_cos_sin(layout["rope_hw"], cfg.head_dim, cfg.rope_theta)
    act = activation(cfg.hidden_act)
    full_flags = np.zeros(cfg.depth, dtype=bool)
    full_flags[list(cfg.fullatt_block_indexes)] = True
    if qwen3:
        full_flags[:] = True
    deep_slot = np.full(cfg.depth, -1, dtype=np.int32)
    for j, i in enumerate(cfg.deepstack_visual_indexes if qwen3 else ()):
        deep_slot[i] = j
    n_deep = int((deep_slot >= 0).sum())

    def norm(np_, x):
        if qwen3:
            return layer_norm(x, np_["scale"], np_["bias"], cfg.norm_eps)
        return rms_norm(x, np_["scale"], cfg.norm_eps)

    def attend(q, k, v, is_full):
        full = lambda: _segment_attention(q, k, v, layout["full_gather"], layout["full_valid"],
                                          layout["full_inverse"], impl)
        if qwen3:
            return full()
        window = lambda: _segment_attention(q, k, v, layout["window_gather"], layout["window_valid"],
                                            layout["window_inverse"], impl)
        return jax.lax.cond(is_full, full, window)

    def block(carry, xs):
        x, deep = carry
        x = pin(x)
        bp, is_full, slot = xs
        a = bp["attn"]
        h = norm(bp["norm1"], x)
        q = dense(h, a["q_kernel"], a["q_bias"])
        k = dense(h, a["k_kernel"], a["k_bias"])
        v = dense(h, a["v_kernel"], a["v_bias"])
        q = rope.apply_rotary(q, cos, sin, compute_in_f32=True)
        k = rope.apply_rotary(k, cos, sin, compute_in_f32=True)
        o = attend(q, k, v, is_full)
        x = x + dense(o.reshape(o.shape[0], -1), a["o_kernel"].reshape(-1, a["o_kernel"].shape[-1]), a["o_bias"])
        mp = bp["mlp"]
        h = norm(bp["norm2"], x)
        if qwen3:
            y = dense(act(dense(h, mp["fc1_kernel"], mp["fc1_bias"])), mp["fc2_kernel"], mp["fc2_bias"])
        else:
            y = dense(act(dense(h, mp["gate_kernel"], mp["gate_bias"])) * dense(h, mp["up_kernel"], mp["up_bias"]),
                      mp["down_kernel"], mp["down_bias"])
        x = pin(x + y)
        if deep is not None:
            updated = jax.lax.dynamic_update_index_in_dim(deep, x, jnp.maximum(slot, 0), 0)
            deep = jnp.where(slot >= 0, updated, deep)
        return (x, deep), None

    if cfg.remat != "none":  # also drops the residuals of the window/full branch not taken
        block = jax.checkpoint(block, policy=remat_policy(cfg.remat))
    deep0 = jnp.zeros((n_deep,) + x.shape, x.dtype) if n_deep else None
    (x, deep), _ = jax.lax.scan(block, (x, deep0), (params["blocks"], jnp.asarray(full_flags), jnp.asarray(deep_slot)))
    tokens = _merger(params["merger"], x, cfg, postshuffle=False)
    deep_tokens = None
    if n_deep:
        deep_tokens = jax.vmap(lambda mp, h: _merger(mp, h, cfg, postshuffle=True))(params["deepstack"], deep)
    return tokens, deep_tokens
