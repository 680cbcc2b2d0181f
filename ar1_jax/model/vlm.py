"""The vision-language backbone: vision tower + decoder, and a host-side runner for HF inputs.

`VLM` is the nnx module (parameters only; compute is in pure functions over its state).
`vlm_forward` is the pure, jittable forward over `(params, inputs)`. `VLMRunner` takes the HF
processor's inputs (`input_ids`, `pixel_values`, `image_grid_thw`, ...), computes positions and
vision layouts on the host, and calls compiled functions:

    model = build_model(cfg.model, seed=0)            # or ar1_jax.convert.hf.load(dir)
    logits = model(input_ids, pixel_values=pv, image_grid_thw=thw)   # [B, T, vocab] float32
    new_tokens = model.generate(input_ids, pixel_values=pv, image_grid_thw=thw, max_new_tokens=16)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ar1_jax.config import VLMConfig
from ar1_jax.infer import sampling
from ar1_jax.model import kv_cache as kv_lib
from ar1_jax.model import attention, rope, text, vision
from ar1_jax.model.layers import dtype_of
from ar1_jax.parallel.rules import activation_spec, batch_mesh_axes, mesh_context, shard_activation


class VLM(nnx.Module):
    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        param_dtype = dtype_of(cfg.param_dtype)
        self.vision = vision.VisionTower(cfg.vision, rngs=rngs, param_dtype=param_dtype)
        self.text = text.TextDecoder(cfg.text, rngs=rngs, param_dtype=param_dtype)


def encode_media(params: dict, cfg: VLMConfig, media: dict | None, *, dtype, impl: str) -> dict:
    """Runs the vision tower: `{kind: (tokens, deepstack or None)}`.

    `media[kind]["pixel_values"]` is either flat, `[patches, D]` with a `layout` of all its images
    (any mix of sizes, as HF's processor gives): tokens `[N, E]`, deepstack `[n_deep, N, E]`; or per
    scene, `[S, P, D]` with the `layout` of one scene's images, the same for every scene (the
    training pipeline's form): tokens `[S, N_s, E]`, deepstack `[n_deep, S, N_s, E]`. Per scene, the
    tower is vmapped over S with the batch's mesh axes, so a batch sharded over devices stays
    sharded through the tower (each device encodes only its own scenes).
    """
    out = {}
    for kind in ("image", "video"):
        if not (media and kind in media):
            continue
        pv, layout = media[kind]["pixel_values"], media[kind]["layout"]
        if pv.ndim == 2:
            out[kind] = vision.vision_forward(params["vision"], cfg.vision, pv, layout, dtype=dtype, impl=impl)
            continue
        pv = shard_activation(pv, ("batch", None, None))
        one = lambda x: vision.vision_forward(params["vision"], cfg.vision, x, layout, dtype=dtype, impl=impl,
                                              batched=True)
        tokens, deep = jax.vmap(one, spmd_axis_name=batch_mesh_axes())(pv)
        out[kind] = (tokens, None if deep is None else jnp.moveaxis(deep, 1, 0))
    return out


def _scatter_rows(x, deep_dense, input_ids, token_id: int, feats, deep, dtype):
    """Per-scene features into their rows: row b's placeholders get `feats[b]` in order (the batch
    dim stays a batch dim, so a sharded batch is scattered where it lives)."""
    t = x.shape[1]

    def row(x_r, ids_r, f_r, d_r, deep_r):
        (idx,) = jnp.nonzero(ids_r == token_id, size=f_r.shape[0], fill_value=t)
        x_r = x_r.at[idx].set(f_r.astype(dtype), mode="drop")
        if d_r is not None:
            d_r = d_r.at[:, idx].set(deep_r.astype(dtype), mode="drop")
        return x_r, d_r

    d_axis = None if deep_dense is None else 1
    return jax.vmap(row, in_axes=(0, 0, 0, d_axis, d_axis), out_axes=(0, d_axis),
                    spmd_axis_name=batch_mesh_axes())(x, input_ids, feats, deep_dense, deep)


def embed_multimodal(params: dict, cfg: VLMConfig, input_ids, media: dict | None, *, dtype, impl: str,
                     encoded: dict | None = None):
    """Token embeddings with image/video features written over their placeholder tokens.

    `media` holds per kind (`image`, `video`) a dict `{pixel_values, layout}` (or pass the tower's
    output as `encoded`); features replace the placeholder tokens in row-major order (as HF's
    `masked_scatter`); per-scene features (`[B, N_s, E]`, see `encode_media`) go to their own row.
    Returns the embeddings `[B, T, E]` and the DeepStack features spread over the sequence
    `[n_deep, B, T, E]` (or None).
    """
    if encoded is None:
        encoded = encode_media(params, cfg, media, dtype=dtype, impl=impl)
    x = text.embed_tokens(params["text"], input_ids, dtype)
    b, t, e = x.shape
    deep_dense = None
    for kind, token_id in (("image", cfg.image_token_id), ("video", cfg.video_token_id)):
        if kind not in encoded:
            continue
        feats, deep = encoded[kind]
        if deep is not None and deep_dense is None:
            deep_dense = jnp.zeros((deep.shape[0], b, t, e), dtype)
        if feats.ndim == 3:
            if feats.shape[0] != b:
                raise ValueError(f"per-scene {kind} features for {feats.shape[0]} scenes, but the batch has {b} rows")
            x, deep_dense = _scatter_rows(x, deep_dense, input_ids, token_id, feats, deep, dtype)
            continue
        (idx,) = jnp.nonzero((input_ids == token_id).reshape(-1), size=feats.shape[0], fill_value=b * t)
        x = x.reshape(b * t, e).at[idx].set(feats.astype(dtype), mode="drop").reshape(b, t, e)
        if deep is not None:
            deep_dense = deep_dense.reshape(deep.shape[0], b * t, e)
            deep_dense = deep_dense.at[:, idx].set(deep.astype(dtype), mode="drop").reshape(-1, b, t, e)
    return x, deep_dense


def vlm_forward(params: dict, cfg: VLMConfig, input_ids, positions, *, kv_valid=None, media=None, cache=None,
                encoded=None, last_only: bool = False):
    """Logits `[B, T, V]` (float32; `[B, 1, V]` of the last position with `last_only`) and the updated
    cache (None without one).

    Attention impls per call site: the vision tower `cfg.attention_impl_for("vision")`; the decoder
    `attention_impl_for("decode")` for a step of at most `DECODE_MAX_QUERIES` tokens over a cache,
    else `attention_impl` (training forward, prefill)."""
    dtype = dtype_of(cfg.dtype)
    x, deep = embed_multimodal(params, cfg, input_ids, media, dtype=dtype, impl=cfg.attention_impl_for("vision"),
                               encoded=encoded)
    site = "decode" if cache is not None and input_ids.shape[1] <= attention.DECODE_MAX_QUERIES else "text"
    h, cache = text.decode_layers(params["text"], cfg.text, x, positions, kv_valid=kv_valid, cache=cache,
                                  deepstack=deep, impl=cfg.attention_impl_for(site))
    if last_only:
        h = h[:, -1:]
    return text.lm_logits(params["text"], cfg.text, h), cache


def prefill(params: dict, cfg: VLMConfig, input_ids, positions, kv_valid, next_position, *, extra_slots: int,
            media=None, encoded=None):
    """The prompt `[B, T]` into a new cache of `T + extra_slots` slots (the decode budget).

    Returns the last position's logits `[B, V]` float32 and the cache, its `next_position [B]` set
    to each row's next rotary position (`prepare_inputs`)."""
    b, t = input_ids.shape
    tc = cfg.text
    cache = kv_lib.init_cache(tc.num_layers, b, t + extra_slots, tc.num_kv_heads, tc.head_dim, dtype_of(cfg.dtype))
    logits, cache = vlm_forward(params, cfg, input_ids, positions, kv_valid=kv_valid, media=media, cache=cache,
                                encoded=encoded, last_only=True)
    return logits[:, -1], cache.replace(next_position=next_position)


def decode_step(params: dict, cfg: VLMConfig):
    """The decode step of `ar1_jax.infer.sampling.decode`: tokens `[N]` at each row's next rotary
    position into the cache -> (next-token logits `[N, V]` float32, the cache advanced one slot)."""

    def step(tokens, cache):
        n = tokens.shape[0]
        pos = jnp.broadcast_to(cache.next_position[None, :, None], (3, n, 1))
        logits, cache = vlm_forward(params, cfg, tokens[:, None], pos, kv_valid=jnp.ones((n, 1), bool), cache=cache)
        return logits[:, -1], cache.replace(next_position=cache.next_position + 1)

    return step


def prepare_inputs(cfg: VLMConfig, input_ids, *, attention_mask=None, pixel_values=None, image_grid_thw=None,
                   pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None) -> dict:
    """Validates HF-processor inputs (host numpy) and computes what the compiled model takes:
    input_ids `[B, T]` int32, M-RoPE positions `[3, B, T]`, the padding mask `kv_valid [B, T]`,
    `media` (pixel values + vision layouts per kind, or None) and each row's `next_position [B]`."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {input_ids.shape}")
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= cfg.text.vocab_size):
        raise ValueError(f"input_ids outside [0, vocab_size={cfg.text.vocab_size}): "
                         f"min {input_ids.min()}, max {input_ids.max()}")
    mask = np.ones_like(input_ids, dtype=bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {input_ids.shape}")
    media = {}
    for kind, pv, grid, token_id in (("image", pixel_values, image_grid_thw, cfg.image_token_id),
                                     ("video", pixel_values_videos, video_grid_thw, cfg.video_token_id)):
        n_tokens = int(((input_ids == token_id) & mask).sum())
        if pv is None:
            if grid is not None:
                raise ValueError(f"{kind}_grid_thw given without pixel values")
            if n_tokens:
                raise ValueError(f"input_ids hold {n_tokens} {kind} tokens but no {kind} pixel values were given")
            continue
        if grid is None:
            raise ValueError(f"{kind} pixel values given without {kind}_grid_thw")
        pv = np.asarray(pv)
        grid = np.asarray(grid, dtype=np.int64).reshape(-1, 3)
        n_patches = int(np.prod(grid, axis=-1).sum())
        if pv.ndim != 2 or pv.shape != (n_patches, cfg.vision.patch_dim):
            raise ValueError(f"{kind} pixel values have shape {pv.shape}; {kind}_grid_thw {grid.tolist()} needs "
                             f"[{n_patches}, {cfg.vision.patch_dim}] (C * temporal_patch * patch * patch)")
        expected = n_patches // cfg.vision.spatial_merge_size**2
        if n_tokens != expected:
            raise ValueError(f"input_ids hold {n_tokens} {kind} tokens but {kind}_grid_thw {grid.tolist()} gives "
                             f"{expected} (t * h * w / {cfg.vision.spatial_merge_size ** 2} per {kind})")
        media[kind] = {"pixel_values": pv.astype(np.float32), "layout": vision.vision_layout(cfg.vision, grid)}
    positions, deltas = rope.get_rope_index(
        input_ids, family=cfg.family, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
        spatial_merge_size=cfg.vision.spatial_merge_size, image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
        tokens_per_second=cfg.vision.tokens_per_second, attention_mask=mask)
    next_position = (mask.sum(-1) + deltas).astype(np.int32)
    return dict(input_ids=input_ids.astype(np.int32), positions=positions, kv_valid=mask, media=media or None,
                next_position=next_position)


class VLMRunner:
    """Holds a VLM's graph and parameters and runs it on HF-processor inputs (host numpy in)."""

    def __init__(self, cfg: VLMConfig, graphdef: Any, params: Any, mesh: jax.sharding.Mesh | None = None,
                 rules: str = "default"):
        self.cfg = cfg
        self.graphdef = graphdef
        self.params = params  # nnx.State of Params (possibly sharded)
        self.mesh = mesh
        self.rules = rules
        self._forward = jax.jit(self._forward_impl)
        self._generate = jax.jit(self._generate_impl, static_argnames=("max_new_tokens",))

    # -- jitted bodies (params as a pure dict of arrays) --
    def _forward_impl(self, params, input_ids, positions, kv_valid, media):
        logits, _ = vlm_forward(params, self.cfg, input_ids, positions, kv_valid=kv_valid, media=media)
        return logits

    def _generate_impl(self, params, input_ids, positions, kv_valid, media, next_position, *, max_new_tokens):
        logits, cache = prefill(params, self.cfg, input_ids, positions, kv_valid, next_position,
                                extra_slots=max_new_tokens, media=media)
        return sampling.decode(decode_step(params, self.cfg), cache, logits, None, max_tokens=max_new_tokens).tokens

    @property
    def pure_params(self) -> dict:
        return nnx.to_pure_dict(self.params)

    def inference_params(self) -> dict:
        """The params in the inference layout (`quant.inference_params`: per-layer weight buffers, which
        decode reads without copying), made on first use and kept while `params` is the same object."""
        from ar1_jax.model import quant

        cached = getattr(self, "_inference", None)
        if cached is None or cached[0] is not self.params:
            with self._context():
                self._inference = (self.params, quant.inference_params(self.pure_params))
        return self._inference[1]

    @property
    def module(self) -> VLM:
        return nnx.merge(self.graphdef, self.params)

    def num_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.pure_params)))

    # -- host-side preparation --
    def prepare(self, input_ids, **inputs) -> dict:
        """`prepare_inputs` with this model's config."""
        return prepare_inputs(self.cfg, input_ids, **inputs)

    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, *, attention_mask=None,
                 pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None, **unused):
        """Logits `[B, T, vocab]` float32 for HF-processor inputs (text-only when no pixels)."""
        unused.pop("mm_token_type_ids", None)
        if unused:
            raise TypeError(f"unexpected inputs: {sorted(unused)}")
        x = self.prepare(input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
                         video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts)
        with self._context():
            return self._forward(self.pure_params, *self._place(x["input_ids"], x["positions"], x["kv_valid"]),
                                 x["media"])

    def generate(self, input_ids, pixel_values=None, image_grid_thw=None, *, attention_mask=None,
                 max_new_tokens: int = 16, **media_kwargs) -> np.ndarray:
        """Greedy decoding: the `max_new_tokens` new tokens `[B, max_new_tokens]` (no stop token)."""
        media_kwargs.pop("mm_token_type_ids", None)
        x = self.prepare(input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         image_grid_thw=image_grid_thw, **media_kwargs)
        with self._context():
            out = self._generate(self.inference_params(), *self._place(x["input_ids"], x["positions"], x["kv_valid"]),
                                 x["media"], x["next_position"], max_new_tokens=max_new_tokens)
        return np.asarray(out)

    def _context(self):
        """Mesh + rule-table context so activation constraints apply while tracing."""
        return mesh_context(self.mesh, self.rules)

    def _place(self, input_ids, positions, kv_valid):
        """With a mesh, puts the batch dim of the token inputs on the batch axes (if it divides)."""
        if self.mesh is None:
            return input_ids, positions, kv_valid
        from jax.sharding import NamedSharding

        spec = activation_spec(("batch", "seq"), self.mesh, self.rules, shape=input_ids.shape)
        pos_spec = jax.sharding.PartitionSpec(None, *spec)
        put = lambda a, s: jax.device_put(a, NamedSharding(self.mesh, s))
        return put(input_ids, spec), put(positions, pos_spec), put(kv_valid, spec)


def build_model(cfg: VLMConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
                rules: str = "default") -> VLMRunner:
    """A randomly initialised backbone; with a mesh, initialised directly into its shardings."""
    cfg.validate()
    make = lambda: VLM(cfg, rngs=nnx.Rngs(seed))
    if mesh is not None:
        from ar1_jax.parallel.init import init_sharded

        graphdef, params = nnx.split(init_sharded(make, mesh, rules), nnx.Param)
    else:
        # One compiled init instead of one eager dispatch per parameter.
        graphdef = nnx.split(nnx.eval_shape(make), nnx.Param)[0]
        params = jax.jit(lambda: nnx.state(make(), nnx.Param))()
    return VLMRunner(cfg, graphdef, params, mesh, rules)
