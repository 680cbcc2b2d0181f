"""Denoise attention: the action expert's queries over the VLM prefix cache plus their own keys.

`denoise_attention(q, prefix_k, prefix_v, prefix_valid, own_k, own_v)` is softmax attention of the A
action queries over the union of the valid prefix keys and the A own keys, all visible (the action
tokens attend to the whole prefix and to each other bidirectionally; there is no causal order):

    softmax(q [prefix_k | own_k]^T * scale, masked by [prefix_valid | 1]) [prefix_v | own_v]

`denoise_attention_reference` is that formula in plain jnp (it concatenates). The kernel path never
concatenates: the prefix cache is the same array every Euler step (and every expert layer reads its
own layer's slice of it), so copying `[N, S, Hkv, D]` per layer per step only to append 64 keys is
pure HBM traffic. Instead:

  1. `flash_attention(q, prefix_k, prefix_v, causal=False, kv_valid=prefix_valid, return_lse=True)`:
     the prefix pass (skips key blocks outside the first / last valid slot),
  2. `flash_attention(q, own_k, own_v, causal=False, return_lse=True)`: the own-keys pass (A x A),
  3. merge by the logsumexps, in float32: `lse = logaddexp(lse_p, lse_o)`,
     `o = exp(lse_p - lse) o_p + exp(lse_o - lse) o_o`.

This is exact (the two passes are a split of the softmax's key axis). A row whose prefix is fully
padded has `lse_p = -inf` and weight 0 (never NaN: the own keys are always visible, so `lse` is
finite). Both flash passes are differentiable (custom VJP, including the lse output), so the merge
is differentiable in q, prefix_k / prefix_v and own_k / own_v.

What is not fused (decided without a GPU profile, to revisit with one): the merge is a few
elementwise XLA ops over `[N, A, H, D]` (A = 64), two orders of magnitude smaller than the prefix
K/V the first pass streams; the second pass is one 64 x 64 tile per head. A single kernel that reads
both K/V sources in one loop would save one launch and the `[N, A, H, D]` round trip, not HBM
traffic on the prefix.

Layout: q `[N, A, H, D]`, prefix_k / prefix_v `[N, S, Hkv, D]`, prefix_valid `[N, S]` bool,
own_k / own_v `[N, A, Hkv, D]`; H a multiple of Hkv. Output `[N, A, H, D]` in q's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ar1_jax.kernels.flash_attention import flash_attention, flash_attention_reference


def _check(q, prefix_k, prefix_v, prefix_valid, own_k, own_v):
    if q.ndim != 4 or prefix_k.ndim != 4 or own_k.ndim != 4:
        raise ValueError(f"denoise_attention: want q [N,A,H,D], prefix_k/v [N,S,Hkv,D], own_k/v "
                         f"[N,A,Hkv,D]; got {q.shape}, {prefix_k.shape}, {own_k.shape}")
    n, a, h, d = q.shape
    s, hkv = prefix_k.shape[1], prefix_k.shape[2]
    if prefix_k.shape != prefix_v.shape or prefix_k.shape[0] != n or prefix_k.shape[3] != d:
        raise ValueError(f"denoise_attention: prefix_k {prefix_k.shape} / prefix_v {prefix_v.shape} "
                         f"do not match q {q.shape}")
    if own_k.shape != own_v.shape or own_k.shape != (n, a, hkv, d):
        raise ValueError(f"denoise_attention: own_k {own_k.shape} / own_v {own_v.shape} != "
                         f"{(n, a, hkv, d)}")
    if jnp.shape(prefix_valid) != (n, s):
        raise ValueError(f"denoise_attention: prefix_valid shape {jnp.shape(prefix_valid)} != {(n, s)}")
    if h % hkv:
        raise ValueError(f"denoise_attention: {h} query heads is not a multiple of {hkv} kv heads")


def denoise_attention_reference(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, *, scale=None):
    """Plain jnp: one attention over the concatenated keys (what the model's XLA path computes)."""
    _check(q, prefix_k, prefix_v, prefix_valid, own_k, own_v)
    n, a = q.shape[:2]
    keys = jnp.concatenate([prefix_k, own_k], axis=1)
    values = jnp.concatenate([prefix_v, own_v], axis=1)
    valid = jnp.concatenate([jnp.asarray(prefix_valid, bool), jnp.ones((n, a), bool)], axis=1)
    return flash_attention_reference(q, keys, values, causal=False, kv_valid=valid, scale=scale)


@functools.partial(jax.jit, static_argnames=("scale", "backend", "interpret", "block_q", "block_k"))
def denoise_attention(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, *, scale=None,
                      backend=None, interpret=False, block_q=None, block_k=None):
    """Attention of q over the valid prefix keys and the own keys, without concatenating them.

    Args:
      q: [N, A, H, D] action queries.
      prefix_k, prefix_v: [N, S, Hkv, D] the VLM's cached keys / values (one layer).
      prefix_valid: [N, S] bool, the prefix slots the queries may read.
      own_k, own_v: [N, A, Hkv, D] the action tokens' own keys / values (all visible).
      scale: logit scale, default D**-0.5.
      backend, interpret, block_q, block_k: passed to both `flash_attention` passes (backend None =
        the default device; a CPU host runs the GPU-style kernels interpreted).

    Returns:
      [N, A, H, D] in q.dtype.
    """
    _check(q, prefix_k, prefix_v, prefix_valid, own_k, own_v)
    dtype = q.dtype
    prefix_k, prefix_v = prefix_k.astype(dtype), prefix_v.astype(dtype)
    own_k, own_v = own_k.astype(dtype), own_v.astype(dtype)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    kw = dict(causal=False, scale=scale, backend=backend, interpret=interpret, return_lse=True,
              block_q=block_q, block_k=block_k)
    o_p, lse_p = flash_attention(q, prefix_k, prefix_v, kv_valid=jnp.asarray(prefix_valid, bool), **kw)
    o_o, lse_o = flash_attention(q, own_k, own_v, **kw)
    lse = jnp.logaddexp(lse_p, lse_o)  # [N, H, A]; finite: the own keys are always visible
    w_p = jnp.swapaxes(jnp.exp(lse_p - lse), 1, 2)[..., None]  # [N, A, H, 1]
    w_o = jnp.swapaxes(jnp.exp(lse_o - lse), 1, 2)[..., None]
    out = w_p * o_p.astype(jnp.float32) + w_o * o_o.astype(jnp.float32)
    return out.astype(dtype)
