"""Decode attention over a KV cache (forward only) as Pallas kernels, GPU and TPU, split-K.

`decode_attention(q, k_cache, v_cache, lengths)`: q `[B, Tq, H, D]` holds the Tq (1..few) newest
tokens of each sequence, whose keys / values are already written to the cache `[B, S, Hkv, D]`;
`lengths [B]` is the valid cache length, so query t sits at slot `lengths - Tq + t` and sees cache
slots `j <= lengths - Tq + t` (causal among the new tokens, everything before them). The optional
`kv_valid [B, S]` additionally hides slots inside that range (left padding of a batched prompt, the
holes a right-padded prompt leaves before the generated tokens). A query that sees nothing (slot
negative because lengths < Tq, or every visible slot invalid) gives 0, like `flash_attention`'s fully
masked rows. `decode_attention_reference` is the same thing in plain jnp (it is
`flash_attention_reference` with `q_offset = lengths - Tq` and `kv_valid = (arange(S) < lengths) &
kv_valid`).

Design
------
* GQA folding. The G = H / Hkv query heads that share a KV head, times the Tq new tokens, become the
  rows of one query tile: q is rearranged (it is tiny) to `[B, Hkv, G*Tq, D]`, row r = g*Tq + t, so
  each K/V block read from HBM feeds a [G*Tq, block_k] matmul instead of G matrix-vector products.
  Rows are padded to a power of two >= 16 on GPU (Triton's dot minimum) and to a multiple of 8 on
  TPU; a per-row "distance from the newest token" vector (Tq - 1 - t, huge on padded rows) makes the
  mask one compare: key j is visible to row r iff `j + back[r] < lengths[b]`.
* Split-K. The cache's key blocks are cut into `num_splits` contiguous ranges, each computed by its
  own program (more parallelism when B * Hkv is small: decode at batch 1 has only Hkv programs
  otherwise); each writes its normalised partial output and logsumexp in float32, and XLA combines
  them (`o = sum_s exp(lse_s - lse) o_s`, empty splits have lse -inf and weight 0).
* Key validity (`kv_valid`, optional, a static switch: no cost when absent) is read per key block
  like the cache (GPU: one int32 row per sequence; TPU: a sublane-replicated `[B, 8, S]` row with the
  cache's block index map) and ANDed into the visibility test.
* Block skipping. Only key blocks below `cdiv(lengths[b], block_k)` are visited: GPU programs loop
  over `[split start, min(split end, that bound))`; TPU grid steps outside it skip compute under
  `pl.when` and their index map repeats the last useful block index, so no DMA is issued.
* GPU (Triton lowering): grid (B, Hkv, num_splits); the cache is read in place in its
  `[B, S, Hkv, D]` layout (one head's whole sequence is the block, the program loops over it).
* TPU (Mosaic): grid (B, num_splits, blocks per split), the last axis "arbitrary" with the running
  max / sum / accumulator in VMEM scratch; the cache is read in place through a free reshape to
  `[B, S, Hkv*D]` with blocks `(block_k, Hkv*D)` (the full minor dim satisfies the (8, 128) tiling
  rule for any D and Hkv), and every KV head of the block is processed in the same grid step by a
  static loop over lane slices `h*D:(h+1)*D` (lane-aligned when D % 128 == 0).
* Block table (`BLOCK_TABLE`, overridable by `block_k`): GPU block_k 128 for D <= 64, 64 for D = 128
  (4 warps, 2 stages); TPU block_k 512. A block that does not divide S is halved until it does (down
  to 16 on GPU, 128 on TPU); only then is the cache padded (a copy: allocate caches in multiples of
  the block to avoid it). Default `num_splits`: GPU enough programs for ~2 waves of 132 SMs
  (`ceil(264 / (B * Hkv))`, at most 32 and the block count); TPU 2 when B == 1 (both TensorCores of
  a megacore chip), else 1.
* Numerics as in `flash_attention`: float32 scores, exp2 with log2(e) folded into the scale,
  probabilities cast to the cache dtype for the PV matmul, float32 accumulation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ar1_jax.kernels._tiles import (LANES, LOG2E, MIN_BLOCK, NEG_INF, dot, dot_nt, gpu_params, head_dim_class,
                                    is_pow2, lanes, normaliser, online_softmax_step, resolve_backend, round_up,
                                    tpu_interpret, tpu_params)
from ar1_jax.kernels.flash_attention import flash_attention_reference

_FAR = 1 << 30  # "distance" of padded query rows: no key is visible to them


@dataclasses.dataclass(frozen=True)
class DecodeBlocks:
    block_k: int
    num_warps: int = 4  # GPU
    num_stages: int = 2  # GPU


BLOCK_TABLE: dict[tuple[str, int], DecodeBlocks] = {
    ("gpu", 64): DecodeBlocks(128, num_warps=4, num_stages=2),
    ("gpu", 128): DecodeBlocks(64, num_warps=4, num_stages=2),
    ("tpu", 64): DecodeBlocks(512),
    ("tpu", 128): DecodeBlocks(512),
}


def decode_attention_reference(q, k_cache, v_cache, lengths, *, kv_valid=None, scale=None):
    """Plain-jnp decode attention with the kernel's semantics."""
    b, tq = q.shape[:2]
    s = k_cache.shape[1]
    lengths = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (b,))
    in_length = jnp.arange(s, dtype=jnp.int32)[None, :] < lengths[:, None]
    kv_valid = in_length if kv_valid is None else in_length & jnp.asarray(kv_valid, bool)
    return flash_attention_reference(q, k_cache, v_cache, causal=True, q_offset=lengths - tq,
                                     kv_valid=kv_valid, scale=scale)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    backend: str
    interpret: bool
    scale: float
    b: int
    hkv: int
    rows: int  # padded G * Tq
    d: int  # kernel head dim (padded on GPU)
    s_pad: int
    bk: int
    splits: int
    per_split: int  # key blocks per split
    has_valid: bool  # a kv_valid row is passed
    num_warps: int
    num_stages: int


def _gpu_kernel(len_ref, back_ref, q_ref, k_ref, v_ref, kvalid_ref, o_ref, lse_ref, *, c: _Cfg):
    bk = c.bk
    split = pl.program_id(2)
    length = len_ref[0]
    lo = split * c.per_split
    hi = jnp.minimum(jnp.minimum(lo + c.per_split, lax.div(length + bk - 1, bk)), c.s_pad // bk)
    q = q_ref[...]
    back = back_ref[...][:, None]
    scale2 = c.scale * LOG2E

    def body(j, carry):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(j * bk, bk)
        kb = k_ref[pl.ds(start, bk), :]
        vb = v_ref[pl.ds(start, bk), :]
        s = dot_nt(q, kb) * scale2
        k_idx = (start + jnp.arange(bk, dtype=jnp.int32))[None, :]
        visible = k_idx + back < length
        if c.has_valid:
            visible = jnp.logical_and(visible, (kvalid_ref[pl.ds(start, bk)] != 0)[None, :])
        s = jnp.where(visible, s, NEG_INF)
        m_next, alpha, p, l_next = online_softmax_step(s, m_prev, l_prev)
        acc = acc * alpha[:, None] + dot(p.astype(vb.dtype), vb)
        return acc, m_next, l_next

    init = (jnp.zeros((c.rows, c.d), jnp.float32), jnp.full((c.rows,), NEG_INF, jnp.float32),
            jnp.zeros((c.rows,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    l_safe, lse = normaliser(m, l)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = lse


def _gpu_call(c: _Cfg, qr, k, v, lengths, back, kvalid):
    return pl.pallas_call(
        functools.partial(_gpu_kernel, c=c), grid=(c.b, c.hkv, c.splits),
        in_specs=[
            pl.BlockSpec((1,), lambda b, h, s: (b,)),
            pl.BlockSpec((c.rows,), lambda b, h, s: (0,)),
            pl.BlockSpec((None, None, c.rows, c.d), lambda b, h, s: (b, h, 0, 0)),
            pl.BlockSpec((None, c.s_pad, None, c.d), lambda b, h, s: (b, 0, h, 0)),
            pl.BlockSpec((None, c.s_pad, None, c.d), lambda b, h, s: (b, 0, h, 0)),
            pl.BlockSpec((None, c.s_pad), lambda b, h, s: (b, 0)) if c.has_valid else None,
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, c.rows, c.d), lambda b, h, s: (b, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, c.rows), lambda b, h, s: (b, h, s, 0)),
        ],
        out_shape=[jax.ShapeDtypeStruct((c.b, c.hkv, c.splits, c.rows, c.d), jnp.float32),
                   jax.ShapeDtypeStruct((c.b, c.hkv, c.splits, c.rows), jnp.float32)],
        interpret=c.interpret, name="decode_attention",
        compiler_params=gpu_params(c.num_warps, c.num_stages),
    )(lengths, back, qr, k, v, kvalid)


def _tpu_kernel(len_ref, back_ref, q_ref, k_ref, v_ref, kvalid_ref, o_ref, lse_ref, m_sc, l_sc,
                acc_sc, *, c: _Cfg):
    bk, d = c.bk, c.d
    b, split, jj = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    length = len_ref[b]
    blk = split * c.per_split + jj

    @pl.when(jj == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG_INF, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(blk * bk < length)
    def _compute():
        shape = (c.rows, bk)
        k_idx = blk * bk + lax.broadcasted_iota(jnp.int32, shape, 1)
        visible = k_idx + jnp.tile(back_ref[...], (1, bk // LANES)) < length
        if c.has_valid:
            visible = jnp.logical_and(visible, kvalid_ref[:1, :] != 0)
        kb_all = k_ref[...]
        vb_all = v_ref[...]
        for h in range(c.hkv):  # static: every KV head of this cache block
            kb = kb_all[:, h * d:(h + 1) * d]
            vb = vb_all[:, h * d:(h + 1) * d]
            s = jnp.where(visible, dot_nt(q_ref[h], kb) * (c.scale * LOG2E), NEG_INF)
            m_next, alpha, p, l_next = online_softmax_step(s, m_sc[h], l_sc[h], lanes=True)
            l_sc[h] = l_next
            m_sc[h] = m_next
            acc_sc[h] = acc_sc[h] * lanes(alpha, d) + dot(p.astype(vb.dtype), vb)

    @pl.when(jj == c.per_split - 1)
    def _finish():
        for h in range(c.hkv):
            l_safe, lse = normaliser(m_sc[h], l_sc[h])
            o_ref[h] = acc_sc[h] * lanes(1.0 / l_safe, d)
            lse_ref[h] = lse


def _tpu_call(c: _Cfg, qr, k, v, lengths, back, kvalid):
    from jax.experimental.pallas import tpu as pltpu

    b_, s_, hkv, d = k.shape
    kf = k.reshape(b_, s_, hkv * d)
    vf = v.reshape(b_, s_, hkv * d)
    back_col = jnp.broadcast_to(back[:, None], (c.rows, LANES))

    def kv_block(b, s, jj, len_ref):
        last = jnp.clip(lax.div(len_ref[b] + c.bk - 1, c.bk) - 1, 0, c.s_pad // c.bk - 1)
        return jnp.minimum(s * c.per_split + jj, last)

    def kv_idx(b, s, jj, len_ref):
        return b, kv_block(b, s, jj, len_ref), 0

    def kvalid_idx(b, s, jj, len_ref):
        return b, 0, kv_block(b, s, jj, len_ref)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(c.b, c.splits, c.per_split),
        in_specs=[
            pl.BlockSpec((c.rows, LANES), lambda b, s, jj, _: (0, 0)),
            pl.BlockSpec((None, c.hkv, c.rows, d), lambda b, s, jj, _: (b, 0, 0, 0)),
            pl.BlockSpec((None, c.bk, hkv * d), kv_idx),
            pl.BlockSpec((None, c.bk, hkv * d), kv_idx),
            pl.BlockSpec((None, 8, c.bk), kvalid_idx) if c.has_valid else None,
        ],
        out_specs=[
            pl.BlockSpec((None, None, c.hkv, c.rows, d), lambda b, s, jj, _: (b, s, 0, 0, 0)),
            pl.BlockSpec((None, None, c.hkv, c.rows, LANES), lambda b, s, jj, _: (b, s, 0, 0, 0)),
        ],
        scratch_shapes=[pltpu.VMEM((c.hkv, c.rows, LANES), jnp.float32),
                        pltpu.VMEM((c.hkv, c.rows, LANES), jnp.float32),
                        pltpu.VMEM((c.hkv, c.rows, d), jnp.float32)])
    o, lse = pl.pallas_call(
        functools.partial(_tpu_kernel, c=c), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((c.b, c.splits, c.hkv, c.rows, d), jnp.float32),
                   jax.ShapeDtypeStruct((c.b, c.splits, c.hkv, c.rows, LANES), jnp.float32)],
        compiler_params=tpu_params(("parallel", "parallel", "arbitrary")),
        interpret=tpu_interpret(c.interpret), name="decode_attention",
    )(lengths, back_col, qr, kf, vf,
      None if kvalid is None else jnp.broadcast_to(kvalid[:, None, :], (c.b, 8, c.s_pad)))
    # -> [B, Hkv, splits, rows, ...] like the GPU kernel
    return jnp.swapaxes(o, 1, 2), jnp.swapaxes(lse[..., 0], 1, 2)


def _pick_block(block, s, minimum):
    if not is_pow2(block) or block < minimum:
        raise ValueError(f"decode_attention: block_k={block} must be a power of two >= {minimum}")
    block = min(block, max(minimum, pl.next_power_of_2(s)))
    b = block
    while b >= minimum:
        if s % b == 0:
            return b, s
        b //= 2
    return block, round_up(s, block)


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "num_splits", "backend",
                                             "interpret"))
def decode_attention(q, k_cache, v_cache, lengths, *, kv_valid=None, scale=None, block_k=None,
                     num_splits=None, backend=None, interpret=False):
    """Attention of the Tq newest tokens over a KV cache; see the module docstring.

    Args:
      q: [B, Tq, H, D]. k_cache, v_cache: [B, S, Hkv, D], H % Hkv == 0.
      lengths: [B] int32 (or scalar), valid cache length per sequence (including the Tq new tokens),
        in [0, S].
      kv_valid: optional [B, S] bool: slots below `lengths` that are nevertheless hidden (padding).
      scale: default D**-0.5. block_k: override the table's key block. num_splits: split-K factor.
      backend: 'gpu' | 'tpu' | None (default device; CPU runs the GPU-style kernel interpreted).
      interpret: Pallas interpret mode.

    Returns:
      [B, Tq, H, D] in q.dtype.
    """
    b, tq, h, d = q.shape
    s, hkv = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(f"decode_attention: cache {k_cache.shape} / {v_cache.shape} does not match "
                         f"q {q.shape}")
    if h % hkv:
        raise ValueError(f"decode_attention: {h} query heads is not a multiple of {hkv} kv heads")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"decode_attention: q and cache dtypes differ ({q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype})")
    if kv_valid is not None and jnp.shape(kv_valid) != (b, s):
        raise ValueError(f"decode_attention: kv_valid shape {jnp.shape(kv_valid)} != {(b, s)}")
    backend, interpret = resolve_backend(backend, interpret)
    lengths = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (b,))
    scale = float(d**-0.5 if scale is None else scale)
    g = h // hkv
    table = BLOCK_TABLE[(backend, head_dim_class(d))]
    bk, s_pad = _pick_block(block_k or table.block_k, s, MIN_BLOCK[backend])
    nk = s_pad // bk
    if num_splits is None:
        if backend == "gpu":
            num_splits = min(32, max(1, -(-264 // (b * hkv))))
        else:
            num_splits = 2 if b == 1 else 1
    splits = max(1, min(num_splits, nk))
    per_split = -(-nk // splits)
    splits = -(-nk // per_split)
    rows = g * tq
    if backend == "gpu":
        rows_pad = max(16, pl.next_power_of_2(rows))
        d_k = max(16, pl.next_power_of_2(d))
    else:
        rows_pad = round_up(rows, 8)
        d_k = d
    c = _Cfg(backend=backend, interpret=bool(interpret), scale=scale, b=b, hkv=hkv, rows=rows_pad,
             d=d_k, s_pad=s_pad, bk=bk, splits=splits, per_split=per_split,
             has_valid=kv_valid is not None, num_warps=table.num_warps, num_stages=table.num_stages)

    # q [B, Tq, H, D] -> [B, Hkv, G*Tq, D], row = g*Tq + t
    qr = q.reshape(b, tq, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, rows, d)
    qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows_pad - rows), (0, d_k - d)))
    back = jnp.tile(tq - 1 - jnp.arange(tq, dtype=jnp.int32), g)
    back = jnp.pad(back, (0, rows_pad - rows), constant_values=_FAR)
    k, v = k_cache, v_cache
    if s_pad != s or d_k != d:
        pad = ((0, 0), (0, s_pad - s), (0, 0), (0, d_k - d))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)

    kvalid = None
    if kv_valid is not None:
        kvalid = jnp.pad(jnp.asarray(kv_valid).astype(jnp.int32), ((0, 0), (0, s_pad - s)))
    if backend == "gpu":
        o, lse = _gpu_call(c, qr, k, v, lengths, back, kvalid)
    else:
        o, lse = _tpu_call(c, qr, k, v, lengths, back, kvalid)
    # combine splits: o [B, Hkv, splits, rows, D], lse [B, Hkv, splits, rows]
    m = jnp.max(lse, axis=2, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse - m)
    denom = jnp.sum(w, axis=2)
    out = jnp.sum(w[..., None] * o, axis=2) / jnp.where(denom == 0.0, 1.0, denom)[..., None]
    out = out[:, :, :rows, :d].reshape(b, hkv, g, tq, d).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, tq, h, d).astype(q.dtype)
