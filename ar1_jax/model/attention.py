"""The one attention entry point of the project.

Every attention in the model (decoder self-attention with or without a KV cache, vision blocks,
the action expert) calls `attention(...)` (the expert through `denoise(...)`). Masking is described
by token *slots* (the index of each query / key in the cache or packed sequence), not by rotary
positions, because M-RoPE positions are not monotone over image tokens.

A key j is visible to query i when all of these hold:
  * `kv_valid[b, j]` (padding and unwritten cache slots are invalid),
  * causal: `kv_slot[j] <= q_slot[i]`, unless both are in the trailing bidirectional block
    (slot >= `bidirectional_from[b]`: the action expert's tokens attend to each other fully),
  * sliding window: `q_slot[i] - kv_slot[j] < window`,
  * packed segments: `q_segment[b, i] == kv_segment[b, j]`.

Slots are either given as arrays (`q_slots`, `kv_slots`: anything) or structured: keys at
`arange(Tk)` and queries at `q_offset + arange(Tq)` (`q_offset` a scalar or `[B]`, default
`Tk - Tq`: the queries are the newest tokens). Every model call site uses the structured form,
which is what the kernels take.

`impl` (a static string) picks the backend:
  * `xla`: plain einsums with float32 softmax; the reference. A fully masked query row (padding)
    averages uniformly over all keys.
  * `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` with the dense boolean mask
    (GPU only; cuDNN wants float16 / bfloat16).
  * `pallas`: the Pallas kernels of `ar1_jax.kernels` (on a CPU host they run in interpret mode
    automatically: `backend=None` resolves to the GPU-style kernel, interpreted):

        call                                         kernel
        structured slots, causal, Tq <= DECODE_MAX_QUERIES < Tk,
          no segments / bidirectional block          decode_attention(lengths = q_offset + Tq,
                                                                      kv_valid)  (forward only)
        any other structured-slot call               flash_attention(q_offset, kv_valid, causal,
                                                                     segment_ids, bidirectional_from)
        denoise(...)                                 denoise_attention (two flash passes, lse merge)

    A fully masked query row gives 0 (the kernels' convention) instead of XLA's uniform average;
    the two agree on every row that sees a key, and fully masked rows are padding everywhere in the
    model. Features with no kernel equivalent, explicit `q_slots` / `kv_slots` arrays and a sliding
    `window`, raise a ValueError naming the feature under `pallas`.
  * `auto`: per backend at trace time: CPU -> `xla`; GPU and TPU -> `pallas`, except that a call
    using a feature the kernels lack (see above) falls back to `xla` instead of raising. cuDNN is
    never picked automatically: it needs a dense `[B, Tq, Tk]` mask for our masks (padding holes,
    bidirectional tail) and half-precision inputs; select it per call site where it measures faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ar1_jax.config import ATTENTION_IMPLS
from ar1_jax.kernels._tiles import visibility

NEG_INF = -1e30  # large finite: fully masked rows give a uniform softmax instead of NaN
DECODE_MAX_QUERIES = 8  # a causal call over a longer cache with at most this many queries is a decode step


def resolve_impl(impl: str) -> str:
    """`auto` -> the default backend's choice (CPU: xla; GPU, TPU: pallas); others unchanged."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: unknown impl {impl!r} ({' | '.join(ATTENTION_IMPLS)})")
    if impl != "auto":
        return impl
    return "xla" if jax.default_backend() == "cpu" else "pallas"


def attention(
    q: Float[Array, "B Tq H D"],
    k: Float[Array, "B Tk K D"],
    v: Float[Array, "B Tk K D"],
    *,
    q_slots: Int[Array, "B Tq"] | None = None,
    kv_slots: Int[Array, "B Tk"] | None = None,
    q_offset: Int[Array, "B"] | Int[Array, ""] | int | None = None,
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
    self-attention when `Tq == Tk`, a decode step when `Tq == 1`); `q_offset` moves the queries to
    slots `q_offset + arange(Tq)` (a cache written up to `q_offset`).
    """
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    if h % kh:
        raise ValueError(f"attention: {h} query heads is not a multiple of {kh} key/value heads")
    if k.shape != v.shape:
        raise ValueError(f"attention: key shape {k.shape} != value shape {v.shape}")
    if q_offset is not None and q_slots is not None:
        raise ValueError("attention: give q_slots or q_offset, not both")
    if (q_segment is None) != (kv_segment is None):
        raise ValueError("attention: give both q_segment and kv_segment, or neither")
    requested = impl
    impl = resolve_impl(impl)
    scale = d**-0.5 if scale is None else scale
    if impl == "pallas":
        unsupported = _pallas_unsupported(q_slots, kv_slots, window)
        if unsupported is None:
            return _pallas_attention(q, k, v, q_offset=q_offset, kv_valid=kv_valid, causal=causal,
                                     q_segment=q_segment, kv_segment=kv_segment,
                                     bidirectional_from=bidirectional_from, scale=scale)
        if requested == "pallas":
            raise ValueError(f"attention(impl='pallas'): {unsupported} has no Pallas kernel equivalent; "
                             "use attention_impl='xla' (or 'auto') for this call site")
        impl = "xla"
    if q_slots is None:
        offset = tk - tq if q_offset is None else q_offset
        offset = jnp.broadcast_to(jnp.asarray(offset, jnp.int32), (b,))
        q_slots = offset[:, None] + jnp.arange(tq, dtype=jnp.int32)[None, :]
    if kv_slots is None:
        kv_slots = jnp.broadcast_to(jnp.arange(tk, dtype=jnp.int32), (b, tk))
    mask = make_mask(q_slots, kv_slots, kv_valid=kv_valid, causal=causal, window=window,
                     q_segment=q_segment, kv_segment=kv_segment, bidirectional_from=bidirectional_from)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn")
    return _xla_attention(q, k, v, mask, scale)


def denoise(
    q: Float[Array, "N A H D"],
    prefix_k: Float[Array, "N S K D"],
    prefix_v: Float[Array, "N S K D"],
    prefix_valid: Bool[Array, "N S"],
    own_k: Float[Array, "N A K D"],
    own_v: Float[Array, "N A K D"],
    *,
    scale: float | None = None,
    impl: str = "xla",
) -> Float[Array, "N A H D"]:
    """The action expert's attention: its A queries over the valid prefix slots and its own A keys,
    all visible (no causal order). `xla` / `cudnn` concatenate prefix and own keys and call
    `attention(causal=False)`; `pallas` runs `denoise_attention`, which never concatenates."""
    impl = resolve_impl(impl)
    if impl == "pallas":
        from ar1_jax.kernels import denoise_attention

        dt = q.dtype
        return denoise_attention(q, prefix_k.astype(dt), prefix_v.astype(dt), prefix_valid, own_k.astype(dt),
                                 own_v.astype(dt), scale=scale)
    n, a = q.shape[:2]
    keys = jnp.concatenate([prefix_k.astype(own_k.dtype), own_k], axis=1)
    values = jnp.concatenate([prefix_v.astype(own_v.dtype), own_v], axis=1)
    valid = jnp.concatenate([prefix_valid, jnp.ones((n, a), bool)], axis=1)
    return attention(q, keys, values, causal=False, kv_valid=valid, scale=scale, impl=impl)


def _pallas_unsupported(q_slots, kv_slots, window) -> str | None:
    """The first mask feature of a call that the kernels cannot express, or None."""
    if q_slots is not None or kv_slots is not None:
        return ("explicit q_slots / kv_slots arrays (the kernels take keys at arange(Tk), queries at "
                "q_offset + arange(Tq))")
    if window is not None:
        return f"a sliding window ({window})"
    return None


def _pallas_attention(q, k, v, *, q_offset, kv_valid, causal, q_segment, kv_segment, bidirectional_from, scale):
    from ar1_jax.kernels import decode_attention, flash_attention

    b, tq = q.shape[:2]
    tk = k.shape[1]
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    offset = tk - tq if q_offset is None else q_offset
    offset = jnp.broadcast_to(jnp.asarray(offset, jnp.int32), (b,))
    if causal and q_segment is None and bidirectional_from is None and tq <= DECODE_MAX_QUERIES < tk:
        return decode_attention(q, k, v, offset + tq, kv_valid=kv_valid, scale=scale)
    segment_ids = None if q_segment is None else (q_segment, kv_segment)
    return flash_attention(q, k, v, causal=causal, segment_ids=segment_ids, kv_valid=kv_valid,
                           bidirectional_from=bidirectional_from, q_offset=offset, scale=scale)


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
    """The boolean visibility mask `[B, Tq, Tk]` (True = attend), built by the kernels' mask
    builder (`ar1_jax.kernels._tiles.visibility`) from per-query and per-key pieces."""
    if (q_segment is None) != (kv_segment is None):
        raise ValueError("attention: give both q_segment and kv_segment, or neither")
    qs, ks = q_slots[:, :, None], kv_slots[:, None, :]
    mask = visibility(
        qs, ks, causal=causal, window=window,
        bidirectional_from=None if bidirectional_from is None else bidirectional_from[:, None, None],
        q_segment=None if q_segment is None else q_segment[:, :, None],
        kv_segment=None if kv_segment is None else kv_segment[:, None, :],
        kv_valid=None if kv_valid is None else kv_valid[:, None, :])
    shape = jnp.broadcast_shapes(qs.shape, ks.shape)
    return jnp.ones(shape, bool) if mask is None else jnp.broadcast_to(mask, shape)


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
