"""The one attention entry point of the project.

Every attention in the model (decoder self-attention with or without a KV cache, vision blocks,
the action expert later) calls `attention(...)`. Masking is described by token *slots* (the index
of each query / key in the cache or packed sequence), not by rotary positions, because M-RoPE
positions are not monotone over image tokens.

A key j is visible to query i when all of these hold:
  * `kv_valid[b, j]` (padding and unwritten cache slots are invalid),
  * causal: `kv_slot[j] <= q_slot[i]`, unless both are in the trailing bidirectional block
    (slot >= `bidirectional_from[b]`: the action expert's tokens attend to each other fully),
  * sliding window: `q_slot[i] - kv_slot[j] < window`,
  * packed segments: `q_segment[b, i] == kv_segment[b, j]`.

`impl` picks the backend: `xla` (plain einsums, f32 softmax: the reference), `cudnn`
(`jax.nn.dot_product_attention`), `pallas` (kernels, arriving with the kernels issue), `auto`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

NEG_INF = -1e30  # large finite: fully masked rows give a uniform softmax instead of NaN


def attention(
    q: Float[Array, "B Tq H D"],
    k: Float[Array, "B Tk K D"],
    v: Float[Array, "B Tk K D"],
    *,
    q_slots: Int[Array, "B Tq"] | None = None,
    kv_slots: Int[Array, "B Tk"] | None = None,
    kv_valid: Bool[Array, "B Tk"] | None = None,
    causal: bool = True,
    window: int | None = None,
    q_segment: Int[Array, "B Tq"] | None = None,
    kv_segment: Int[Array, "B Tk"] | None = None,
    bidirectional_from: Int[Array, "B"] | None = None,
    scale: float | None = None,
    impl: str = "xla",
) -> Float[Array, "B Tq H D"]:
    """Multi-head attention with GQA (H a multiple of K) and the masks described above.

    Slots default to `arange`: queries are the last `Tq` of the `Tk` keys (a plain causal
    self-attention when `Tq == Tk`, a decode step when `Tq == 1`).
    """
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    if h % kh:
        raise ValueError(f"attention: {h} query heads is not a multiple of {kh} key/value heads")
    if k.shape != v.shape:
        raise ValueError(f"attention: key shape {k.shape} != value shape {v.shape}")
    if impl == "auto":
        impl = "xla"
    if impl == "pallas":
        raise NotImplementedError("attention_impl='pallas' arrives with the Pallas kernels; use 'xla'")
    if q_slots is None:
        q_slots = jnp.broadcast_to(jnp.arange(tk - tq, tk, dtype=jnp.int32), (b, tq))
    if kv_slots is None:
        kv_slots = jnp.broadcast_to(jnp.arange(tk, dtype=jnp.int32), (b, tk))
    mask = make_mask(q_slots, kv_slots, kv_valid=kv_valid, causal=causal, window=window,
                     q_segment=q_segment, kv_segment=kv_segment, bidirectional_from=bidirectional_from)
    scale = d**-0.5 if scale is None else scale
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn")
    if impl != "xla":
        raise ValueError(f"attention: unknown impl {impl!r} (xla | cudnn | pallas | auto)")
    return _xla_attention(q, k, v, mask, scale)


def make_mask(
    q_slots: Int[Array, "B Tq"],
    kv_slots: Int[Array, "B Tk"],
    *,
    kv_valid: Bool[Array, "B Tk"] | None = None,
    causal: bool = True,
    window: int | None = None,
    q_segment: Int[Array, "B Tq"] | None = None,
    kv_segment: Int[Array, "B Tk"] | None = None,
    bidirectional_from: Int[Array, "B"] | None = None,
) -> Bool[Array, "B Tq Tk"]:
    """The boolean visibility mask `[B, Tq, Tk]` (True = attend)."""
    qs = q_slots[:, :, None]
    ks = kv_slots[:, None, :]
    mask = jnp.ones(jnp.broadcast_shapes(qs.shape, ks.shape), dtype=bool)
    if causal:
        visible = ks <= qs
        if bidirectional_from is not None:
            start = bidirectional_from[:, None, None]
            visible = visible | ((qs >= start) & (ks >= start))
        mask = mask & visible
    if window is not None:
        mask = mask & (qs - ks < window)
    if q_segment is not None or kv_segment is not None:
        if q_segment is None or kv_segment is None:
            raise ValueError("attention: give both q_segment and kv_segment, or neither")
        mask = mask & (q_segment[:, :, None] == kv_segment[:, None, :])
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, :]
    return mask


def _xla_attention(q, k, v, mask, scale):
    b, tq, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    qg = q.reshape(b, tq, kh, g, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None, None], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(b, tq, h, d)
