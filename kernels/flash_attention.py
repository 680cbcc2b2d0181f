"""Flash attention (forward with logsumexp, backward dq / dk / dv) as Pallas kernels, GPU and TPU.

`flash_attention(q, k, v, ...)` computes `softmax(q k^T * scale + mask) v` with GQA, blocked over
queries and keys with an online softmax, and is differentiable (`jax.custom_vjp` around Pallas
forward and backward kernels). `flash_attention_reference(...)` is the plain-jnp function with the
same semantics that the kernels must equal.

Layout: q `[B, Sq, H, D]`, k / v `[B, Sk, Hkv, D]`, H a multiple of Hkv (query head h reads key/value
head `h // (H // Hkv)`). Output `[B, Sq, H, D]` in q's dtype; logsumexp `[B, H, Sq]` float32 (natural
log) when `return_lse=True`.

Mask semantics (identical to `ar1_jax.model.attention.make_mask`). Query i of batch b has slot
`q_offset[b] + i`, key j has slot j. Key j is visible to query i when all of these hold:
  * `kv_valid[b, j]` (key padding; None = all valid),
  * causal: `j <= q_slot`, unless both slots are `>= bidirectional_from[b]` (the action expert's
    trailing block attends to itself fully); `causal=False` drops this condition,
  * segments: `q_seg[b, i] == kv_seg[b, j]` (packed sequences).
Map to the model's `attention(...)`: `q_slots = q_offset + arange(Sq)`, `kv_slots = arange(Sk)`,
`q_segment, kv_segment = segment_ids`, `kv_valid` and `bidirectional_from` as they are.

Fully masked query rows (no visible key) give output 0 and logsumexp -inf, and receive zero gradient.
(The model's XLA attention gives a uniform average over all keys there instead; the two agree on every
row with at least one visible key, which is the only place the comparison is meaningful.)

Design
------
* Two backends, one algorithm. `backend="gpu"`: Pallas with the Triton lowering (`pl.pallas_call` with
  grid + BlockSpecs and `triton.CompilerParams`, so it never goes to Mosaic GPU); the grid is one
  program per (batch, head, query block) and each program loops over its key blocks with
  `lax.fori_loop`, keys and values of its head living as one whole-sequence block in HBM.
  `backend="tpu"`: Pallas Mosaic, grid (batch, head, query block, key block) with the key axis
  "arbitrary" and the running max / sum / accumulator in VMEM scratch (the TPU pipeline
  double-buffers the key blocks); loop bounds come in through scalar prefetch (SMEM).
  `interpret=True` runs either on CPU (GPU: the generic Pallas interpreter; TPU: the TPU interpreter,
  `pltpu.InterpretParams()`; `pltpu.force_tpu_interpret_mode()` works too). On a CPU-only host
  `backend=None` picks the GPU-style kernel in interpret mode.
* Block table `BLOCK_TABLE[(backend, head_dim_class)]` (head_dim_class 64 for D <= 64, else 128);
  `block_q` / `block_k` override every pass, `block_sizes=BlockSizes(...)` overrides all of it:

      backend  D    fwd q x k   dq: q x k   dkv: q x k   warps fwd/bwd  stages
      gpu      64   128 x 64    128 x 64    64 x 128     4 / 4          3
      gpu      128  128 x 64    128 x 64    64 x 128     8 / 8          2
      tpu      64   512 x 512   512 x 512   512 x 512    -              -
      tpu      128  512 x 512   512 x 512   512 x 512    -              -

  GPU numbers follow the FlashAttention-2 Triton tutorial on Hopper (BLOCK_M 128 / BLOCK_N 64, and
  K-major 128 blocks in the dkv pass); TPU numbers follow splash attention (512 x 512, multiples of
  the 128-lane MXU tile). They are untuned on this repository's hardware (see `ar1_jax.bench.kernels`).
  On Hopper, Triton turns these 128-row tiles into wgmma when num_warps is a multiple of 4; a Mosaic
  GPU (warp-specialised, TMA-fed, FlashAttention-3 style) kernel is the next step if Triton stalls
  short of cuDNN, not attempted here.
  Blocks are powers of two; each is clamped to the padded sequence so short sequences use one block.
  GPU blocks are >= 16 (Triton `tl.dot` minimum), TPU blocks >= 128 (queries and keys each appear in
  the lane dimension of some tile: s is [bq, bk] in forward/dq and [bk, bq] in dkv).
* Padding. Lengths that are not block multiples are zero-padded to a multiple of the largest block
  of the three passes; padded keys are masked by a static `j < Sk` test (only emitted when padding
  happened), padded query rows are dropped on output and masked in the dkv pass. GPU pads the head
  dim to a power of two >= 16 (Triton tiles); TPU keeps D when it is 64 or a multiple of 128, else
  pads to a multiple of 128. Padding costs a copy; callers with block-multiple shapes pay nothing.
* TPU layout. With D % 128 == 0 the kernels read the arrays in place through a free reshape to
  [B, S, H*D] (block (bq, D) at column block h); for D = 64 the (8, 128) tiling rule forbids a
  (bq, 64) block of a [.., H*64] row, so q, k, v (and o, dq, dk, dv) are transposed to [B, H, S, D].
  Per-token vectors follow splash attention: a query-side vector used as a column is stored
  lane-replicated [.., S, 128], one used as a row sublane-replicated [.., 8, S].
* Block skipping. Before the kernels run, plain XLA computes per (batch, query block) the half-open
  range [lo, hi) of key blocks that can hold a visible key, and per (batch, key block) the range of
  query blocks that can see it (`_key_block_ranges`, `_query_block_ranges`): causal bounds from the
  largest query slot of the block (the whole tail when that slot reaches `bidirectional_from`), the
  first / last valid key from `kv_valid`, and for segments the keys whose id lies in the
  [min, max] id range of the query block (exact for sorted packing, conservative otherwise).
  GPU programs loop `fori_loop(lo, hi)`; TPU programs skip compute with `pl.when(lo <= j < hi)` and
  their index maps clamp the key block index into [lo, hi - 1], so a skipped step repeats the
  previous block index and the pipeline issues no DMA for it. Fully masked causal blocks therefore
  cost neither FLOPs nor HBM traffic; a fully masked query block writes zeros.
* Masks inside a block are evaluated, never loaded: iotas give query slots (`q_offset` + row) and key
  slots, combined with the per-token segment ids / key validity of the block and the scalar
  `bidirectional_from`. Every visited block applies the full mask (a masked-out score is -inf; the
  running max is replaced by 0 while it is still -inf so exp2 never sees inf - inf); splitting
  interior blocks onto an unmasked fast path is a possible optimisation not done here.
* Numerics. Scores and softmax in float32, exp2 with log2(e) folded into the scale; probabilities are
  cast to v's dtype before the PV matmul (like the model's XLA path), accumulation in float32.
  float32 inputs use full-precision dots (Triton: IEEE, not TF32).
* Backward (FlashAttention-2). `delta = rowsum(dO * O) - dlse` in XLA (cheap, elementwise; `dlse`
  is the logsumexp cotangent, so `return_lse=True` outputs are differentiable too), then two kernels:
  dq (grid over query blocks, loop over the same key ranges as forward) and dk/dv (grid over key
  blocks and KV heads; loops over the G query heads of the group and the query-block range, so GQA
  gradients are summed in the kernel, never materialised per query head). The dkv pass computes the
  transposed problem s^T = k q^T so that logsumexp / delta enter as rows and need no transpose.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
_NEG_INF = float("-inf")
_LANES = 128
_SUBLANES = 8


# --------------------------------------------------------------------------------------------------
# Block table
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Block sizes of the three passes (powers of two) and the GPU launch knobs."""

    block_q: int
    block_k: int
    block_q_dq: int
    block_k_dq: int
    block_q_dkv: int
    block_k_dkv: int
    num_warps: int = 4  # GPU forward
    num_warps_bwd: int = 4  # GPU backward
    num_stages: int = 2  # GPU

    def with_blocks(self, block_q: int | None, block_k: int | None) -> "BlockSizes":
        """Override the query / key block of every pass."""
        rep = {}
        if block_q is not None:
            rep.update(block_q=block_q, block_q_dq=block_q, block_q_dkv=block_q)
        if block_k is not None:
            rep.update(block_k=block_k, block_k_dq=block_k, block_k_dkv=block_k)
        return dataclasses.replace(self, **rep)


BLOCK_TABLE: dict[tuple[str, int], BlockSizes] = {
    ("gpu", 64): BlockSizes(128, 64, 128, 64, 64, 128, num_warps=4, num_warps_bwd=4, num_stages=3),
    ("gpu", 128): BlockSizes(128, 64, 128, 64, 64, 128, num_warps=8, num_warps_bwd=8, num_stages=2),
    ("tpu", 64): BlockSizes(512, 512, 512, 512, 512, 512),
    ("tpu", 128): BlockSizes(512, 512, 512, 512, 512, 512),
}

_MIN_BLOCK = {"gpu": 16, "tpu": 128}


def block_sizes_for(backend: str, head_dim: int) -> BlockSizes:
    """The table entry for a backend and head dim (D <= 64 uses the 64 row, larger D the 128 row)."""
    return BLOCK_TABLE[(backend, 64 if head_dim <= 64 else 128)]


def resolve_backend(backend: str | None, interpret: bool) -> tuple[str, bool]:
    """`backend=None` follows the default device; a CPU host gets the GPU-style kernel, interpreted."""
    if backend is None:
        platform = jax.default_backend()
        if platform == "tpu":
            backend = "tpu"
        elif platform in ("gpu", "cuda", "rocm"):
            backend = "gpu"
        else:
            backend, interpret = "gpu", True
    if backend not in ("gpu", "tpu"):
        raise ValueError(f"flash_attention: backend must be 'gpu', 'tpu' or None, got {backend!r}")
    return backend, interpret


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _clamp_block(block: int, length: int, minimum: int, what: str) -> int:
    if not _is_pow2(block) or block < minimum:
        raise ValueError(f"flash_attention: {what}={block} must be a power of two >= {minimum}")
    return min(block, max(minimum, pl.next_power_of_2(length)))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# --------------------------------------------------------------------------------------------------
# Mask (shared by reference, range tables and kernels)
# --------------------------------------------------------------------------------------------------


def make_mask(q_slots, k_slots, *, causal, bidirectional_from=None, q_segment=None, kv_segment=None,
              kv_valid=None):
    """Visibility `[..., Sq, Sk]` from broadcastable pieces (the kernels pass 2-D tiles)."""
    mask = None

    def _and(m, c):
        return c if m is None else jnp.logical_and(m, c)

    if causal:
        vis = k_slots <= q_slots
        if bidirectional_from is not None:
            vis = jnp.logical_or(vis, jnp.logical_and(q_slots >= bidirectional_from,
                                                      k_slots >= bidirectional_from))
        mask = _and(mask, vis)
    if q_segment is not None:
        mask = _and(mask, q_segment == kv_segment)
    if kv_valid is not None:
        mask = _and(mask, kv_valid)
    return mask


def _reference_mask(b, sq, sk, *, causal, q_offset, bidirectional_from, segment_ids, kv_valid):
    q_slots = (q_offset[:, None] + jnp.arange(sq, dtype=jnp.int32)[None, :])[:, :, None]
    k_slots = jnp.arange(sk, dtype=jnp.int32)[None, None, :]
    bf = None if bidirectional_from is None else bidirectional_from[:, None, None]
    qs = ks = None
    if segment_ids is not None:
        qs, ks = segment_ids[0][:, :, None], segment_ids[1][:, None, :]
    kvv = None if kv_valid is None else kv_valid[:, None, :]
    mask = make_mask(q_slots, k_slots, causal=causal, bidirectional_from=bf, q_segment=qs,
                     kv_segment=ks, kv_valid=kvv)
    if mask is None:
        mask = jnp.ones((b, sq, sk), bool)
    return jnp.broadcast_to(mask, (b, sq, sk))


def _normalise_args(q, k, v, segment_ids, kv_valid, bidirectional_from, q_offset):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"flash_attention: want q [B,Sq,H,D], k/v [B,Sk,Hkv,D]; got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"flash_attention: k {k.shape} / v {v.shape} do not match q {q.shape}")
    if h % hkv:
        raise ValueError(f"flash_attention: {h} query heads is not a multiple of {hkv} kv heads")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    q_off = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32), (b,))
    bidir = None
    if bidirectional_from is not None:
        bidir = jnp.broadcast_to(jnp.asarray(bidirectional_from, jnp.int32), (b,))
    if segment_ids is not None:
        qseg, kseg = segment_ids
        qseg = jnp.asarray(qseg, jnp.int32)
        kseg = jnp.asarray(kseg, jnp.int32)
        if qseg.shape != (b, sq) or kseg.shape != (b, sk):
            raise ValueError(f"flash_attention: segment_ids shapes {qseg.shape}, {kseg.shape} != "
                             f"{(b, sq)}, {(b, sk)}")
        segment_ids = (qseg, kseg)
    if kv_valid is not None:
        kv_valid = jnp.asarray(kv_valid, bool)
        if kv_valid.shape != (b, sk):
            raise ValueError(f"flash_attention: kv_valid shape {kv_valid.shape} != {(b, sk)}")
    return segment_ids, kv_valid, bidir, q_off


# --------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------


def flash_attention_reference(q, k, v, *, causal=True, segment_ids=None, kv_valid=None,
                              bidirectional_from=None, q_offset=0, scale=None, return_lse=False):
    """Plain-jnp attention with exactly the kernel's semantics (fully masked rows -> 0, lse -inf)."""
    segment_ids, kv_valid, bidir, q_off = _normalise_args(q, k, v, segment_ids, kv_valid,
                                                          bidirectional_from, q_offset)
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = h // hkv
    scale = d**-0.5 if scale is None else scale
    mask = _reference_mask(b, sq, sk, causal=causal, q_offset=q_off, bidirectional_from=bidir,
                           segment_ids=segment_ids, kv_valid=kv_valid)
    qg = q.reshape(b, sq, hkv, g, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32,
                        precision=lax.Precision.HIGHEST) * scale
    logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
    m = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(logits - m)
    l = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(l == 0.0, 1.0, l)
    out = jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                     precision=lax.Precision.HIGHEST)
    out = out.reshape(b, sq, h, d).astype(q.dtype)
    if not return_lse:
        return out
    l0 = l[..., 0]
    lse = jnp.where(l0 == 0.0, -jnp.inf, m[..., 0] + jnp.log(jnp.where(l0 == 0.0, 1.0, l0)))
    return out, lse.reshape(b, h, sq)


# --------------------------------------------------------------------------------------------------
# Block ranges (XLA, before the kernels)
# --------------------------------------------------------------------------------------------------


def _first_last(cand, length):
    """First index and one-past-last index of True along the last axis (0, 0 when none)."""
    anyc = jnp.any(cand, axis=-1)
    first = jnp.argmax(cand, axis=-1).astype(jnp.int32)
    last = (length - jnp.argmax(cand[..., ::-1], axis=-1)).astype(jnp.int32)
    return jnp.where(anyc, first, 0), jnp.where(anyc, last, 0)


def _to_blocks(lo, hi, block):
    empty = hi <= lo
    lo_b = jnp.where(empty, 0, lo // block)
    hi_b = jnp.where(empty, 0, -(-hi // block))
    return lo_b.astype(jnp.int32), hi_b.astype(jnp.int32)


def _key_block_ranges(*, b, sq, sk, bq, bk, nq, causal, q_off, bidir, segment_ids, kv_valid):
    """Per (batch, query block): [lo, hi) in key blocks covering every key visible to the block."""
    starts = jnp.arange(nq, dtype=jnp.int32) * bq
    ends = jnp.minimum(starts + bq, sq)
    lo = jnp.zeros((b, nq), jnp.int32)
    hi = jnp.full((b, nq), sk, jnp.int32)
    if causal:
        qmax = q_off[:, None] + ends[None, :] - 1
        hc = qmax + 1
        if bidir is not None:
            hc = jnp.where(qmax >= bidir[:, None], sk, hc)
        hi = jnp.minimum(hi, hc)
    if kv_valid is not None:
        f, l = _first_last(kv_valid, sk)
        lo, hi = jnp.maximum(lo, f[:, None]), jnp.minimum(hi, l[:, None])
    if segment_ids is not None:
        qseg, kseg = segment_ids
        pad = nq * bq - sq
        big = jnp.iinfo(jnp.int32).max
        qmin = jnp.pad(qseg, ((0, 0), (0, pad)), constant_values=big).reshape(b, nq, bq).min(-1)
        qmax_s = jnp.pad(qseg, ((0, 0), (0, pad)), constant_values=-big - 1).reshape(b, nq, bq).max(-1)
        cand = (kseg[:, None, :] >= qmin[..., None]) & (kseg[:, None, :] <= qmax_s[..., None])
        if kv_valid is not None:
            cand = cand & kv_valid[:, None, :]
        f, l = _first_last(cand, sk)
        lo, hi = jnp.maximum(lo, f), jnp.minimum(hi, l)
    hi = jnp.where((starts < sq)[None, :], hi, 0)
    return _to_blocks(lo, hi, bk)


def _query_block_ranges(*, b, sq, sk, bq, bk, nk, causal, q_off, bidir, segment_ids, kv_valid):
    """Per (batch, key block): [lo, hi) in query blocks covering every query that sees the block."""
    pad = nk * bk - sk
    real = jnp.arange(nk * bk) < sk
    valid = jnp.broadcast_to(real, (b, nk * bk))
    if kv_valid is not None:
        valid = valid & jnp.pad(kv_valid, ((0, 0), (0, pad)))
    valid = valid.reshape(b, nk, bk)
    f, l = _first_last(valid, bk)
    base = (jnp.arange(nk, dtype=jnp.int32) * bk)[None, :]
    kmin, kmax = base + f, base + l - 1
    anyk = jnp.any(valid, axis=-1)
    lo = jnp.zeros((b, nk), jnp.int32)
    hi = jnp.full((b, nk), sq, jnp.int32)
    if causal:
        first_slot = kmin
        if bidir is not None:
            first_slot = jnp.where(kmax >= bidir[:, None], jnp.minimum(kmin, bidir[:, None]), kmin)
        lo = jnp.maximum(lo, first_slot - q_off[:, None])
    if segment_ids is not None:
        qseg, kseg = segment_ids
        big = jnp.iinfo(jnp.int32).max
        ks = jnp.pad(kseg, ((0, 0), (0, pad))).reshape(b, nk, bk)
        smin = jnp.where(valid, ks, big).min(-1)
        smax = jnp.where(valid, ks, -big - 1).max(-1)
        cand = (qseg[:, None, :] >= smin[..., None]) & (qseg[:, None, :] <= smax[..., None])
        f2, l2 = _first_last(cand, sq)
        lo, hi = jnp.maximum(lo, f2), jnp.minimum(hi, l2)
    hi = jnp.where(anyk, hi, 0)
    return _to_blocks(lo, hi, bq)


# --------------------------------------------------------------------------------------------------
# Static configuration
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cfg:
    backend: str
    interpret: bool
    causal: bool
    scale: float
    has_seg: bool
    has_valid: bool
    has_bidir: bool
    b: int
    h: int
    hkv: int
    sq: int  # real lengths
    sk: int
    sq_pad: int
    sk_pad: int
    d_pad: int
    bq: int  # forward
    bk: int
    bq_dq: int
    bk_dq: int
    bq_dkv: int
    bk_dkv: int
    num_warps: int
    num_warps_bwd: int
    num_stages: int

    @property
    def g(self):
        return self.h // self.hkv

    @property
    def k_padded(self):
        return self.sk_pad != self.sk

    @property
    def q_padded(self):
        return self.sq_pad != self.sq


def _dot_nt(a, b):
    """a [m, d] . b [n, d]^T -> [m, n] float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _and_mask(mask, cond):
    """`mask & cond`, where a None mask means everything is visible."""
    return cond if mask is None else jnp.logical_and(mask, cond)


def _online_softmax_step(s, m_prev, l_prev):
    """One key block of the online softmax (base-2 logits `s [rows, bk]`): the new running max,
    the rescale factor of the old accumulator, the block's probabilities and the new running sum.
    Rows that have seen no key yet keep max -inf without producing NaNs."""
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
    m_safe = jnp.where(m_next == _NEG_INF, 0.0, m_next)
    alpha = jnp.exp2(m_prev - m_safe)
    p = jnp.exp2(s - m_safe[:, None])
    return m_next, alpha, p, alpha * l_prev + jnp.sum(p, axis=1)


def _dot(a, b):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a, b):
    """a [k, m]^T . b [k, n] -> [m, n] float32."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


# --------------------------------------------------------------------------------------------------
# GPU (Triton) kernels
# --------------------------------------------------------------------------------------------------


def _gpu_params(num_warps, num_stages):
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _gpu_fwd_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref,
                    kvalid_ref, o_ref, lse_ref, *, c: _Cfg):
    bq, bk = c.bq, c.bk
    qi = pl.program_id(2)
    lo, hi = lo_ref[0], hi_ref[0]
    q = q_ref[...]
    q_slot = (qoff_ref[0] + qi * bq + jnp.arange(bq, dtype=jnp.int32))[:, None]
    bidir = bidir_ref[0] if c.has_bidir else None
    qseg = qseg_ref[...][:, None] if c.has_seg else None
    scale2 = c.scale * LOG2E

    def body(j, carry):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(j * bk, bk)
        ks = pl.ds(start, bk)
        kb = k_ref[ks, :]
        vb = v_ref[ks, :]
        s = _dot_nt(q, kb) * scale2
        k_idx = (start + jnp.arange(bk, dtype=jnp.int32))[None, :]
        mask = make_mask(q_slot, k_idx, causal=c.causal, bidirectional_from=bidir,
                         q_segment=qseg, kv_segment=kseg_ref[ks][None, :] if c.has_seg else None,
                         kv_valid=(kvalid_ref[ks] != 0)[None, :] if c.has_valid else None)
        if c.k_padded:
            mask = _and_mask(mask, k_idx < c.sk)
        if mask is not None:
            s = jnp.where(mask, s, _NEG_INF)
        m_next, alpha, p, l_next = _online_softmax_step(s, m_prev, l_prev)
        acc = acc * alpha[:, None] + _dot(p.astype(vb.dtype), vb)
        return acc, m_next, l_next

    init = (jnp.zeros((bq, c.d_pad), jnp.float32), jnp.full((bq,), _NEG_INF, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    empty = l == 0.0
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, _NEG_INF, m * LN2 + jnp.log(l_safe))


def _gpu_dq_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                   delta_ref, qseg_ref, kseg_ref, kvalid_ref, dq_ref, *, c: _Cfg):
    bq, bk = c.bq_dq, c.bk_dq
    qi = pl.program_id(2)
    lo, hi = lo_ref[0], hi_ref[0]
    q = q_ref[...]
    do = do_ref[...]
    lse2 = (lse_ref[...] * LOG2E)[:, None]
    delta = delta_ref[...][:, None]
    q_slot = (qoff_ref[0] + qi * bq + jnp.arange(bq, dtype=jnp.int32))[:, None]
    bidir = bidir_ref[0] if c.has_bidir else None
    qseg = qseg_ref[...][:, None] if c.has_seg else None
    scale2 = c.scale * LOG2E

    def body(j, dq):
        start = pl.multiple_of(j * bk, bk)
        ks = pl.ds(start, bk)
        kb = k_ref[ks, :]
        vb = v_ref[ks, :]
        s = _dot_nt(q, kb) * scale2
        k_idx = (start + jnp.arange(bk, dtype=jnp.int32))[None, :]
        mask = make_mask(q_slot, k_idx, causal=c.causal, bidirectional_from=bidir,
                         q_segment=qseg, kv_segment=kseg_ref[ks][None, :] if c.has_seg else None,
                         kv_valid=(kvalid_ref[ks] != 0)[None, :] if c.has_valid else None)
        if c.k_padded:
            mask = _and_mask(mask, k_idx < c.sk)
        p = jnp.exp2(s - lse2)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        dp = _dot_nt(do, vb)
        ds = p * (dp - delta)
        return dq + _dot(ds.astype(kb.dtype), kb)

    dq = lax.fori_loop(lo, hi, body, jnp.zeros((bq, c.d_pad), jnp.float32))
    dq_ref[...] = (dq * c.scale).astype(dq_ref.dtype)


def _gpu_dkv_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                    delta_ref, qseg_ref, kseg_ref, kvalid_ref, dk_ref, dv_ref, *, c: _Cfg):
    bq, bk = c.bq_dkv, c.bk_dkv
    kj = pl.program_id(2)
    lo, hi = lo_ref[0], hi_ref[0]
    kb = k_ref[...]
    vb = v_ref[...]
    k_idx = (kj * bk + jnp.arange(bk, dtype=jnp.int32))[:, None]  # keys are rows here
    qoff = qoff_ref[0]
    bidir = bidir_ref[0] if c.has_bidir else None
    kseg = kseg_ref[...][:, None] if c.has_seg else None
    kvalid = (kvalid_ref[...] != 0)[:, None] if c.has_valid else None
    scale2 = c.scale * LOG2E

    def q_body(i, carry, g):
        dk, dv = carry
        start = pl.multiple_of(i * bq, bq)
        qs = pl.ds(start, bq)
        qb = q_ref[qs, g, :]
        dob = do_ref[qs, g, :]
        lse2 = (lse_ref[g, qs] * LOG2E)[None, :]
        delta = delta_ref[g, qs][None, :]
        st = _dot_nt(kb, qb) * scale2  # [bk, bq]
        q_row = (start + jnp.arange(bq, dtype=jnp.int32))[None, :]
        mask = make_mask(qoff + q_row, k_idx, causal=c.causal, bidirectional_from=bidir,
                         q_segment=qseg_ref[qs][None, :] if c.has_seg else None, kv_segment=kseg,
                         kv_valid=kvalid)
        if c.k_padded:
            mask = _and_mask(mask, k_idx < c.sk)
        if c.q_padded:
            mask = _and_mask(mask, q_row < c.sq)
        pt = jnp.exp2(st - lse2)
        if mask is not None:
            pt = jnp.where(mask, pt, 0.0)
        dv = dv + _dot(pt.astype(dob.dtype), dob)
        dpt = _dot_nt(vb, dob)
        dst = pt * (dpt - delta)
        dk = dk + _dot(dst.astype(qb.dtype), qb)
        return dk, dv

    def g_body(g, carry):
        return lax.fori_loop(lo, hi, functools.partial(q_body, g=g), carry)

    zeros = jnp.zeros((bk, c.d_pad), jnp.float32)
    dk, dv = lax.fori_loop(0, c.g, g_body, (zeros, zeros))
    dk_ref[...] = (dk * c.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _scalar_spec(index):
    """A (1,)-block of a flat int32 vector, for the GPU kernels' per-program scalars."""
    return pl.BlockSpec((1,), index)


def _gpu_forward(c: _Cfg, q, k, v, aux):
    nq = c.sq_pad // c.bq
    qseg, kseg, kvalid, qoff, bidir = aux["qseg"], aux["kseg"], aux["kvalid"], aux["qoff"], aux["bidir"]
    lo, hi = aux["fwd_lo"].reshape(-1), aux["fwd_hi"].reshape(-1)
    g = c.g
    in_specs = [
        _scalar_spec(lambda b, h, i: (b * nq + i,)),
        _scalar_spec(lambda b, h, i: (b * nq + i,)),
        _scalar_spec(lambda b, h, i: (b,)),
        _scalar_spec(lambda b, h, i: (b,)) if c.has_bidir else None,
        pl.BlockSpec((None, c.bq, None, c.d_pad), lambda b, h, i: (b, i, h, 0)),
        pl.BlockSpec((None, c.sk_pad, None, c.d_pad), lambda b, h, i: (b, 0, lax.div(h, g), 0)),
        pl.BlockSpec((None, c.sk_pad, None, c.d_pad), lambda b, h, i: (b, 0, lax.div(h, g), 0)),
        pl.BlockSpec((None, c.bq), lambda b, h, i: (b, i)) if c.has_seg else None,
        pl.BlockSpec((None, c.sk_pad), lambda b, h, i: (b, 0)) if c.has_seg else None,
        pl.BlockSpec((None, c.sk_pad), lambda b, h, i: (b, 0)) if c.has_valid else None,
    ]
    out_specs = [
        pl.BlockSpec((None, c.bq, None, c.d_pad), lambda b, h, i: (b, i, h, 0)),
        pl.BlockSpec((None, None, c.bq), lambda b, h, i: (b, h, i)),
    ]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((c.b, c.h, c.sq_pad), jnp.float32)]
    o, lse = pl.pallas_call(
        functools.partial(_gpu_fwd_kernel, c=c), grid=(c.b, c.h, nq), in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape, interpret=c.interpret, name="flash_fwd",
        compiler_params=_gpu_params(c.num_warps, c.num_stages),
    )(lo, hi, qoff, bidir, q, k, v, qseg, kseg, kvalid)
    return o, lse


def _gpu_backward(c: _Cfg, q, k, v, aux, do, lse, delta):
    qseg, kseg, kvalid, qoff, bidir = aux["qseg"], aux["kseg"], aux["kvalid"], aux["qoff"], aux["bidir"]
    g = c.g
    params = _gpu_params(c.num_warps_bwd, c.num_stages)
    # dq: grid over query blocks, loop over the forward-style key ranges.
    nq = c.sq_pad // c.bq_dq
    lo, hi = aux["dq_lo"].reshape(-1), aux["dq_hi"].reshape(-1)
    bq, bk = c.bq_dq, c.bk_dq
    dq = pl.pallas_call(
        functools.partial(_gpu_dq_kernel, c=c), grid=(c.b, c.h, nq),
        in_specs=[
            _scalar_spec(lambda b, h, i: (b * nq + i,)),
            _scalar_spec(lambda b, h, i: (b * nq + i,)),
            _scalar_spec(lambda b, h, i: (b,)),
            _scalar_spec(lambda b, h, i: (b,)) if c.has_bidir else None,
            pl.BlockSpec((None, bq, None, c.d_pad), lambda b, h, i: (b, i, h, 0)),
            pl.BlockSpec((None, c.sk_pad, None, c.d_pad), lambda b, h, i: (b, 0, lax.div(h, g), 0)),
            pl.BlockSpec((None, c.sk_pad, None, c.d_pad), lambda b, h, i: (b, 0, lax.div(h, g), 0)),
            pl.BlockSpec((None, bq, None, c.d_pad), lambda b, h, i: (b, i, h, 0)),
            pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
            pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
            pl.BlockSpec((None, bq), lambda b, h, i: (b, i)) if c.has_seg else None,
            pl.BlockSpec((None, c.sk_pad), lambda b, h, i: (b, 0)) if c.has_seg else None,
            pl.BlockSpec((None, c.sk_pad), lambda b, h, i: (b, 0)) if c.has_valid else None,
        ],
        out_specs=pl.BlockSpec((None, bq, None, c.d_pad), lambda b, h, i: (b, i, h, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=c.interpret,
        name="flash_bwd_dq", compiler_params=params,
    )(lo, hi, qoff, bidir, q, k, v, do, lse, delta, qseg, kseg, kvalid)
    # dk, dv: grid over key blocks and kv heads, loop over the group's query heads and query blocks.
    nk = c.sk_pad // c.bk_dkv
    lo, hi = aux["dkv_lo"].reshape(-1), aux["dkv_hi"].reshape(-1)
    bq, bk = c.bq_dkv, c.bk_dkv
    dk, dv = pl.pallas_call(
        functools.partial(_gpu_dkv_kernel, c=c), grid=(c.b, c.hkv, nk),
        in_specs=[
            _scalar_spec(lambda b, h, j: (b * nk + j,)),
            _scalar_spec(lambda b, h, j: (b * nk + j,)),
            _scalar_spec(lambda b, h, j: (b,)),
            _scalar_spec(lambda b, h, j: (b,)) if c.has_bidir else None,
            pl.BlockSpec((None, c.sq_pad, g, c.d_pad), lambda b, h, j: (b, 0, h, 0)),
            pl.BlockSpec((None, bk, None, c.d_pad), lambda b, h, j: (b, j, h, 0)),
            pl.BlockSpec((None, bk, None, c.d_pad), lambda b, h, j: (b, j, h, 0)),
            pl.BlockSpec((None, c.sq_pad, g, c.d_pad), lambda b, h, j: (b, 0, h, 0)),
            pl.BlockSpec((None, g, c.sq_pad), lambda b, h, j: (b, h, 0)),
            pl.BlockSpec((None, g, c.sq_pad), lambda b, h, j: (b, h, 0)),
            pl.BlockSpec((None, c.sq_pad), lambda b, h, j: (b, 0)) if c.has_seg else None,
            pl.BlockSpec((None, bk), lambda b, h, j: (b, j)) if c.has_seg else None,
            pl.BlockSpec((None, bk), lambda b, h, j: (b, j)) if c.has_valid else None,
        ],
        out_specs=[pl.BlockSpec((None, bk, None, c.d_pad), lambda b, h, j: (b, j, h, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=c.interpret, name="flash_bwd_dkv", compiler_params=params,
    )(lo, hi, qoff, bidir, q, k, v, do, lse, delta, qseg, kseg, kvalid)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------
# TPU (Mosaic) kernels
# --------------------------------------------------------------------------------------------------


def _tpu_interpret(interpret: bool):
    if not interpret:
        return False
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.InterpretParams()


def _tpu_params(semantics):
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.CompilerParams(dimension_semantics=semantics)


def _tpu_fused(d_pad: int) -> bool:
    return d_pad % _LANES == 0


def _tpu_operand(x, fused):
    """[B, S, N, D] -> the array the TPU kernel reads ([B, S, N*D] free reshape, or [B, N, S, D])."""
    bsz, s, n, d = x.shape
    return x.reshape(bsz, s, n * d) if fused else jnp.swapaxes(x, 1, 2)


def _tpu_result(y, fused, shape):
    return y.reshape(shape) if fused else jnp.swapaxes(y, 1, 2)


def _tpu_spec(fused, rows, d, index):
    """Block of `rows` tokens x one head; `index(*grid, *scalars) -> (batch, row_block, head)`."""
    if fused:
        return pl.BlockSpec((None, rows, d), index)

    def idx(*args):
        b, r, n = index(*args)
        return b, n, r, 0

    return pl.BlockSpec((None, None, rows, d), idx)


def _lanes(x, width):
    """A lane-replicated [rows, 128] array as [rows, width] (width a multiple of 128 or < 128)."""
    if width == _LANES:
        return x
    if width < _LANES:
        return x[:, :width]
    return jnp.tile(x, (1, width // _LANES))


def _tpu_fwd_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref,
                    kvalid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, c: _Cfg):
    bq, bk = c.bq, c.bk
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = c.sq_pad // bq, c.sk_pad // bk
    lo, hi = lo_ref[b * nq + i], hi_ref[b * nq + i]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, _NEG_INF, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(jnp.logical_and(j >= lo, j < hi))
    def _compute():
        s = _dot_nt(q_ref[...], k_ref[...]) * (c.scale * LOG2E)
        shape = (bq, bk)
        q_slot = qoff_ref[b] + i * bq + lax.broadcasted_iota(jnp.int32, shape, 0)
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = make_mask(
            q_slot, k_idx, causal=c.causal, bidirectional_from=bidir_ref[b] if c.has_bidir else None,
            q_segment=jnp.tile(qseg_ref[...], (1, bk // _LANES)) if c.has_seg else None,
            kv_segment=kseg_ref[:1, :] if c.has_seg else None,
            kv_valid=kvalid_ref[:1, :] != 0 if c.has_valid else None)
        if c.k_padded:
            mask = _and_mask(mask, k_idx < c.sk)
        if mask is not None:
            s = jnp.where(mask, s, _NEG_INF)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [bq, 128]
        m_safe = jnp.where(m_next == _NEG_INF, 0.0, m_next)
        alpha = jnp.exp2(m_prev - m_safe)
        p = jnp.exp2(s - jnp.tile(m_safe, (1, bk // _LANES)))
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
        m_sc[...] = m_next
        vb = v_ref[...]
        acc_sc[...] = acc_sc[...] * _lanes(alpha, c.d_pad) + _dot(p.astype(vb.dtype), vb)

    @pl.when(j == nk - 1)
    def _finish():
        l = l_sc[...]
        empty = l == 0.0
        l_safe = jnp.where(empty, 1.0, l)
        o_ref[...] = (acc_sc[...] * _lanes(1.0 / l_safe, c.d_pad)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, _NEG_INF, m_sc[...] * LN2 + jnp.log(l_safe))


def _tpu_dq_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                   delta_ref, qseg_ref, kseg_ref, kvalid_ref, dq_ref, dq_sc, *, c: _Cfg):
    bq, bk = c.bq_dq, c.bk_dq
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = c.sq_pad // bq, c.sk_pad // bk
    lo, hi = lo_ref[b * nq + i], hi_ref[b * nq + i]

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when(jnp.logical_and(j >= lo, j < hi))
    def _compute():
        kb = k_ref[...]
        s = _dot_nt(q_ref[...], kb) * (c.scale * LOG2E)
        shape = (bq, bk)
        q_slot = qoff_ref[b] + i * bq + lax.broadcasted_iota(jnp.int32, shape, 0)
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = make_mask(
            q_slot, k_idx, causal=c.causal, bidirectional_from=bidir_ref[b] if c.has_bidir else None,
            q_segment=jnp.tile(qseg_ref[...], (1, bk // _LANES)) if c.has_seg else None,
            kv_segment=kseg_ref[:1, :] if c.has_seg else None,
            kv_valid=kvalid_ref[:1, :] != 0 if c.has_valid else None)
        if c.k_padded:
            mask = _and_mask(mask, k_idx < c.sk)
        lse2 = jnp.expand_dims(lse_ref[0], -1) * LOG2E  # [bq, 1]
        delta = jnp.expand_dims(delta_ref[0], -1)
        p = jnp.exp2(s - lse2)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        dp = _dot_nt(do_ref[...], v_ref[...])
        ds = p * (dp - delta)
        dq_sc[...] += _dot(ds.astype(kb.dtype), kb)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * c.scale).astype(dq_ref.dtype)


def _tpu_dkv_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                    delta_ref, qseg_ref, kseg_ref, kvalid_ref, dk_ref, dv_ref, dk_sc, dv_sc, *,
                    c: _Cfg):
    bq, bk = c.bq_dkv, c.bk_dkv
    b, kj, gi, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
    nq, nk = c.sq_pad // bq, c.sk_pad // bk
    lo, hi = lo_ref[b * nk + kj], hi_ref[b * nk + kj]

    @pl.when(jnp.logical_and(gi == 0, i == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when(jnp.logical_and(i >= lo, i < hi))
    def _compute():
        qb = q_ref[...]
        dob = do_ref[...]
        st = _dot_nt(k_ref[...], qb) * (c.scale * LOG2E)  # [bk, bq]
        shape = (bk, bq)
        k_idx = kj * bk + lax.broadcasted_iota(jnp.int32, shape, 0)
        q_row = i * bq + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = make_mask(
            qoff_ref[b] + q_row, k_idx, causal=c.causal,
            bidirectional_from=bidir_ref[b] if c.has_bidir else None,
            q_segment=qseg_ref[:1, :] if c.has_seg else None,
            kv_segment=jnp.tile(kseg_ref[...], (1, bq // _LANES)) if c.has_seg else None,
            kv_valid=jnp.tile(kvalid_ref[...], (1, bq // _LANES)) != 0 if c.has_valid else None)
        if c.k_padded:
            mask = _and_mask(mask, k_idx < c.sk)
        if c.q_padded:
            mask = _and_mask(mask, q_row < c.sq)
        pt = jnp.exp2(st - lse_ref[:1, :] * LOG2E)
        if mask is not None:
            pt = jnp.where(mask, pt, 0.0)
        dv_sc[...] += _dot(pt.astype(dob.dtype), dob)
        dpt = _dot_nt(v_ref[...], dob)
        dst = pt * (dpt - delta_ref[:1, :])
        dk_sc[...] += _dot(dst.astype(qb.dtype), qb)

    @pl.when(jnp.logical_and(gi == c.g - 1, i == nq - 1))
    def _finish():
        dk_ref[...] = (dk_sc[...] * c.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _col(x, s_pad):
    """[B, S] -> lane-replicated [B, S_pad, 128] int32 (a per-token column)."""
    x = jnp.pad(x.astype(jnp.int32), ((0, 0), (0, s_pad - x.shape[1])))
    return jnp.broadcast_to(x[:, :, None], (*x.shape, _LANES))


def _row(x, s_pad):
    """[B(, H), S] -> sublane-replicated [B(, H), 8, S_pad] (a per-token row)."""
    pad = [(0, 0)] * (x.ndim - 1) + [(0, s_pad - x.shape[-1])]
    x = jnp.pad(x, pad)
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], _SUBLANES, x.shape[-1]))


def _clamp(j, lo, hi):
    return jnp.maximum(jnp.minimum(j, hi - 1), lo)


def _tpu_forward(c: _Cfg, q, k, v, aux):
    from jax.experimental.pallas import tpu as pltpu

    fused = _tpu_fused(c.d_pad)
    g, bq, bk = c.g, c.bq, c.bk
    nq, nk = c.sq_pad // bq, c.sk_pad // bk
    d = c.d_pad

    def q_idx(b, h, i, j, lo, hi, qo, bf):
        return b, i, h

    def k_idx(b, h, i, j, lo, hi, qo, bf):
        return b, _clamp(j, lo[b * nq + i], hi[b * nq + i]), lax.div(h, g)

    def kvec_idx(b, h, i, j, lo, hi, qo, bf):
        return b, 0, _clamp(j, lo[b * nq + i], hi[b * nq + i])

    in_specs = [
        _tpu_spec(fused, bq, d, q_idx), _tpu_spec(fused, bk, d, k_idx), _tpu_spec(fused, bk, d, k_idx),
        pl.BlockSpec((None, bq, _LANES), lambda b, h, i, j, *_: (b, i, 0)) if c.has_seg else None,
        pl.BlockSpec((None, _SUBLANES, bk), kvec_idx) if c.has_seg else None,
        pl.BlockSpec((None, _SUBLANES, bk), kvec_idx) if c.has_valid else None,
    ]
    out_specs = [_tpu_spec(fused, bq, d, q_idx),
                 pl.BlockSpec((None, None, bq, _LANES), lambda b, h, i, j, *_: (b, h, i, 0))]
    qseg = _col(aux["qseg"], c.sq_pad) if c.has_seg else None
    kseg = _row(aux["kseg"], c.sk_pad) if c.has_seg else None
    kvalid = _row(aux["kvalid"], c.sk_pad) if c.has_valid else None
    qt = _tpu_operand(q, fused)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(c.b, c.h, nq, nk), in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((bq, _LANES), jnp.float32), pltpu.VMEM((bq, _LANES), jnp.float32),
                        pltpu.VMEM((bq, d), jnp.float32)])
    o, lse = pl.pallas_call(
        functools.partial(_tpu_fwd_kernel, c=c), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                   jax.ShapeDtypeStruct((c.b, c.h, c.sq_pad, _LANES), jnp.float32)],
        compiler_params=_tpu_params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=_tpu_interpret(c.interpret), name="flash_fwd",
    )(aux["fwd_lo"].reshape(-1), aux["fwd_hi"].reshape(-1), aux["qoff"], _bidir_or_dummy(aux),
      qt, _tpu_operand(k, fused), _tpu_operand(v, fused), qseg, kseg, kvalid)
    return _tpu_result(o, fused, q.shape), lse[..., 0]


def _bidir_or_dummy(aux):
    return aux["bidir"] if aux["bidir"] is not None else jnp.zeros_like(aux["qoff"])


def _tpu_backward(c: _Cfg, q, k, v, aux, do, lse, delta):
    from jax.experimental.pallas import tpu as pltpu

    fused = _tpu_fused(c.d_pad)
    g, d = c.g, c.d_pad
    qt, kt, vt, dot_ = (_tpu_operand(x, fused) for x in (q, k, v, do))
    lse_r, delta_r = _row(lse, c.sq_pad), _row(delta, c.sq_pad)  # [B, H, 8, Sq_pad]
    bidir = _bidir_or_dummy(aux)
    interpret = _tpu_interpret(c.interpret)

    # dq
    bq, bk = c.bq_dq, c.bk_dq
    nq, nk = c.sq_pad // bq, c.sk_pad // bk

    def q_idx(b, h, i, j, *_):
        return b, i, h

    def k_idx(b, h, i, j, lo, hi, qo, bf):
        return b, _clamp(j, lo[b * nq + i], hi[b * nq + i]), lax.div(h, g)

    def kvec_idx(b, h, i, j, lo, hi, qo, bf):
        return b, 0, _clamp(j, lo[b * nq + i], hi[b * nq + i])

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(c.b, c.h, nq, nk),
        in_specs=[
            _tpu_spec(fused, bq, d, q_idx), _tpu_spec(fused, bk, d, k_idx),
            _tpu_spec(fused, bk, d, k_idx), _tpu_spec(fused, bq, d, q_idx),
            pl.BlockSpec((None, None, _SUBLANES, bq), lambda b, h, i, j, *_: (b, h, 0, i)),
            pl.BlockSpec((None, None, _SUBLANES, bq), lambda b, h, i, j, *_: (b, h, 0, i)),
            pl.BlockSpec((None, bq, _LANES), lambda b, h, i, j, *_: (b, i, 0)) if c.has_seg else None,
            pl.BlockSpec((None, _SUBLANES, bk), kvec_idx) if c.has_seg else None,
            pl.BlockSpec((None, _SUBLANES, bk), kvec_idx) if c.has_valid else None,
        ],
        out_specs=_tpu_spec(fused, bq, d, q_idx),
        scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)])
    dq = pl.pallas_call(
        functools.partial(_tpu_dq_kernel, c=c), grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=_tpu_params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret, name="flash_bwd_dq",
    )(aux["dq_lo"].reshape(-1), aux["dq_hi"].reshape(-1), aux["qoff"], bidir, qt, kt, vt, dot_,
      lse_r, delta_r,
      _col(aux["qseg"], c.sq_pad) if c.has_seg else None,
      _row(aux["kseg"], c.sk_pad) if c.has_seg else None,
      _row(aux["kvalid"], c.sk_pad) if c.has_valid else None)

    # dk, dv
    bq, bk = c.bq_dkv, c.bk_dkv
    nq, nk = c.sq_pad // bq, c.sk_pad // bk

    def qh_idx(b, h, j, gi, i, lo, hi, qo, bf):
        return b, _clamp(i, lo[b * nk + j], hi[b * nk + j]), h * g + gi

    def kh_idx(b, h, j, gi, i, *_):
        return b, j, h

    def lse_idx(b, h, j, gi, i, lo, hi, qo, bf):
        return b, h * g + gi, 0, _clamp(i, lo[b * nk + j], hi[b * nk + j])

    def qvec_idx(b, h, j, gi, i, lo, hi, qo, bf):
        return b, 0, _clamp(i, lo[b * nk + j], hi[b * nk + j])

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(c.b, c.hkv, nk, g, nq),
        in_specs=[
            _tpu_spec(fused, bq, d, qh_idx), _tpu_spec(fused, bk, d, kh_idx),
            _tpu_spec(fused, bk, d, kh_idx), _tpu_spec(fused, bq, d, qh_idx),
            pl.BlockSpec((None, None, _SUBLANES, bq), lse_idx),
            pl.BlockSpec((None, None, _SUBLANES, bq), lse_idx),
            pl.BlockSpec((None, _SUBLANES, bq), qvec_idx) if c.has_seg else None,
            pl.BlockSpec((None, bk, _LANES), lambda b, h, j, gi, i, *_: (b, j, 0)) if c.has_seg else None,
            pl.BlockSpec((None, bk, _LANES), lambda b, h, j, gi, i, *_: (b, j, 0)) if c.has_valid else None,
        ],
        out_specs=[_tpu_spec(fused, bk, d, kh_idx), _tpu_spec(fused, bk, d, kh_idx)],
        scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)])
    dk, dv = pl.pallas_call(
        functools.partial(_tpu_dkv_kernel, c=c), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
        compiler_params=_tpu_params(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=interpret, name="flash_bwd_dkv",
    )(aux["dkv_lo"].reshape(-1), aux["dkv_hi"].reshape(-1), aux["qoff"], bidir, qt, kt, vt, dot_,
      lse_r, delta_r,
      _row(aux["qseg"], c.sq_pad) if c.has_seg else None,
      _col(aux["kseg"], c.sk_pad) if c.has_seg else None,
      _col(aux["kvalid"], c.sk_pad) if c.has_valid else None)
    return (_tpu_result(dq, fused, q.shape), _tpu_result(dk, fused, k.shape),
            _tpu_result(dv, fused, v.shape))


# --------------------------------------------------------------------------------------------------
# custom_vjp core (padded arrays in, padded arrays out)
# --------------------------------------------------------------------------------------------------


def _forward(c, q, k, v, aux):
    if c.backend == "gpu":
        return _gpu_forward(c, q, k, v, aux)
    return _tpu_forward(c, q, k, v, aux)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(c, q, k, v, aux):
    return _forward(c, q, k, v, aux)


def _flash_core_fwd(c, q, k, v, aux):
    o, lse = _forward(c, q, k, v, aux)
    return (o, lse), (q, k, v, aux, o, lse)


def _flash_core_bwd(c, res, cts):
    q, k, v, aux, o, lse = res
    do, dlse = cts
    do = do.astype(q.dtype)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B, Sq, H]
    delta = jnp.swapaxes(delta, 1, 2) - dlse.astype(jnp.float32)  # [B, H, Sq]
    # Rows with lse = -inf have p = 0 everywhere; keep delta finite there.
    delta = jnp.where(jnp.isfinite(lse), delta, 0.0)
    if c.backend == "gpu":
        dq, dk, dv = _gpu_backward(c, q, k, v, aux, do, lse, delta)
    else:
        dq, dk, dv = _tpu_backward(c, q, k, v, aux, do, lse, delta)
    return dq, dk, dv, jax.tree.map(lambda _: None, aux)


_flash_core.defvjp(_flash_core_fwd, _flash_core_bwd)


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_q", "block_k", "backend",
                                             "interpret", "return_lse", "block_sizes"))
def flash_attention(q, k, v, *, causal=True, segment_ids=None, kv_valid=None,
                    bidirectional_from=None, q_offset=0, scale=None, block_q=None, block_k=None,
                    backend=None, interpret=False, return_lse=False, block_sizes=None):
    """Blocked attention with the module's mask semantics; differentiable in q, k, v.

    Args:
      q: [B, Sq, H, D]; k, v: [B, Sk, Hkv, D] with H % Hkv == 0.
      causal: key slot <= query slot (see `bidirectional_from`).
      segment_ids: optional `(q_seg [B, Sq], kv_seg [B, Sk])` int; attend only within a segment.
      kv_valid: optional [B, Sk] bool key padding mask.
      bidirectional_from: optional [B] int (or scalar): queries and keys with slot >= it see each
        other regardless of order.
      q_offset: int or [B] int32: query i sits at slot q_offset + i (keys at slot j).
      scale: logit scale, default D**-0.5.
      block_q, block_k: override the table's query / key blocks (all passes); `block_sizes` overrides
        every block and launch knob.
      backend: 'gpu' (Triton lowering), 'tpu' (Mosaic), None = the default device (CPU: 'gpu' in
        interpret mode).
      interpret: run the kernels in Pallas interpret mode (CPU).
      return_lse: also return the logsumexp [B, H, Sq] float32 (-inf on fully masked rows).

    Returns:
      out [B, Sq, H, D] in q.dtype (0 on fully masked rows), and lse when `return_lse`.
    """
    segment_ids, kv_valid, bidir, q_off = _normalise_args(q, k, v, segment_ids, kv_valid,
                                                          bidirectional_from, q_offset)
    backend, interpret = resolve_backend(backend, interpret)
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = float(d**-0.5 if scale is None else scale)
    bs = block_sizes if block_sizes is not None else block_sizes_for(backend, d)
    bs = bs.with_blocks(block_q, block_k)
    mn = _MIN_BLOCK[backend]
    bq = _clamp_block(bs.block_q, sq, mn, "block_q")
    bq_dq = _clamp_block(bs.block_q_dq, sq, mn, "block_q_dq")
    bq_dkv = _clamp_block(bs.block_q_dkv, sq, mn, "block_q_dkv")
    bk = _clamp_block(bs.block_k, sk, mn, "block_k")
    bk_dq = _clamp_block(bs.block_k_dq, sk, mn, "block_k_dq")
    bk_dkv = _clamp_block(bs.block_k_dkv, sk, mn, "block_k_dkv")
    sq_pad = _round_up(sq, max(bq, bq_dq, bq_dkv))
    sk_pad = _round_up(sk, max(bk, bk_dq, bk_dkv))
    if backend == "gpu":
        d_pad = max(16, pl.next_power_of_2(d))
    else:
        d_pad = d if (d % _LANES == 0 or d == 64) else _round_up(d, _LANES)
    c = _Cfg(backend=backend, interpret=bool(interpret), causal=bool(causal), scale=scale,
             has_seg=segment_ids is not None, has_valid=kv_valid is not None,
             has_bidir=bidir is not None, b=b, h=h, hkv=hkv, sq=sq, sk=sk, sq_pad=sq_pad,
             sk_pad=sk_pad, d_pad=d_pad, bq=bq, bk=bk, bq_dq=bq_dq, bk_dq=bk_dq, bq_dkv=bq_dkv,
             bk_dkv=bk_dkv, num_warps=bs.num_warps, num_warps_bwd=bs.num_warps_bwd,
             num_stages=bs.num_stages)

    common = dict(b=b, sq=sq, sk=sk, causal=causal, q_off=q_off, bidir=bidir,
                  segment_ids=segment_ids, kv_valid=kv_valid)
    fwd_lo, fwd_hi = _key_block_ranges(bq=bq, bk=bk, nq=sq_pad // bq, **common)
    if (bq_dq, bk_dq) == (bq, bk):
        dq_lo, dq_hi = fwd_lo, fwd_hi
    else:
        dq_lo, dq_hi = _key_block_ranges(bq=bq_dq, bk=bk_dq, nq=sq_pad // bq_dq, **common)
    dkv_lo, dkv_hi = _query_block_ranges(bq=bq_dkv, bk=bk_dkv, nk=sk_pad // bk_dkv, **common)
    aux = dict(
        qoff=q_off, bidir=bidir, fwd_lo=fwd_lo, fwd_hi=fwd_hi, dq_lo=dq_lo, dq_hi=dq_hi,
        dkv_lo=dkv_lo, dkv_hi=dkv_hi,
        qseg=None if segment_ids is None else jnp.pad(segment_ids[0], ((0, 0), (0, sq_pad - sq))),
        kseg=None if segment_ids is None else jnp.pad(segment_ids[1], ((0, 0), (0, sk_pad - sk))),
        kvalid=None if kv_valid is None else jnp.pad(kv_valid.astype(jnp.int32),
                                                     ((0, 0), (0, sk_pad - sk))),
    )

    def pad(x, s_pad):
        return jnp.pad(x, ((0, 0), (0, s_pad - x.shape[1]), (0, 0), (0, d_pad - d)))

    o, lse = _flash_core(c, pad(q, sq_pad), pad(k, sk_pad), pad(v, sk_pad), aux)
    o = o[:, :sq, :, :d]
    if return_lse:
        return o, lse[:, :, :sq]
    return o
