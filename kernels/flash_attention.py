"""Flash attention (forward with logsumexp, backward dq / dk / dv) as Pallas kernels, GPU and TPU.

`flash_attention(q, k, v, ...)` computes `softmax(q k^T * scale + mask) v` with GQA, blocked over
queries and keys with an online softmax, and is differentiable (`jax.custom_vjp` around Pallas
forward and backward kernels). `flash_attention_reference(...)` is the plain-jnp function with the
same semantics that the kernels must equal.

Layout: q `[B, Sq, H, D]`, k / v `[B, Sk, Hkv, D]`, H a multiple of Hkv (query head h reads key/value
head `h // (H // Hkv)`). Output `[B, Sq, H, D]` in q's dtype; logsumexp `[B, H, Sq]` float32 (natural
log) when `return_lse=True`.

Mask semantics (`ar1_jax.kernels._tiles.visibility`, the builder under the model's `make_mask`
too). Query i of batch b has slot `q_offset[b] + i`, key j has slot j. Key j is visible to query i
when all of these hold:
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
* Two backends, one algorithm: `flash_attention_gpu` and `flash_attention_tpu` hold the kernels
  around the tile math they share (`_tiles`: mask, online-softmax step, matmuls); this module holds
  the entry point, the reference, the block table and ranges and the custom_vjp wiring.
  `backend="gpu"`: Pallas with the Triton lowering (`pl.pallas_call` with grid + BlockSpecs and
  `triton.CompilerParams`, so it never goes to Mosaic GPU); the grid is one program per (batch,
  head, query block) and each program loops over its key blocks with `lax.fori_loop`, keys and
  values of its head living as one whole-sequence block in HBM.
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

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ar1_jax.kernels import flash_attention_gpu, flash_attention_tpu
from ar1_jax.kernels._tiles import LANES, MIN_BLOCK, head_dim_class, is_pow2, resolve_backend, round_up, visibility


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


def block_sizes_for(backend: str, head_dim: int) -> BlockSizes:
    """The table entry for a backend and head dim (D <= 64 uses the 64 row, larger D the 128 row)."""
    return BLOCK_TABLE[(backend, head_dim_class(head_dim))]


def _clamp_block(block: int, length: int, minimum: int, what: str) -> int:
    if not is_pow2(block) or block < minimum:
        raise ValueError(f"flash_attention: {what}={block} must be a power of two >= {minimum}")
    return min(block, max(minimum, pl.next_power_of_2(length)))


# --------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------


def _reference_mask(b, sq, sk, *, causal, q_offset, bidirectional_from, segment_ids, kv_valid):
    q_slots = (q_offset[:, None] + jnp.arange(sq, dtype=jnp.int32)[None, :])[:, :, None]
    k_slots = jnp.arange(sk, dtype=jnp.int32)[None, None, :]
    bf = None if bidirectional_from is None else bidirectional_from[:, None, None]
    qs = ks = None
    if segment_ids is not None:
        qs, ks = segment_ids[0][:, :, None], segment_ids[1][:, None, :]
    kvv = None if kv_valid is None else kv_valid[:, None, :]
    mask = visibility(q_slots, k_slots, causal=causal, bidirectional_from=bf, q_segment=qs,
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
class FlashConfig:
    """Static shapes, blocks and mask features of one call (the kernels' `c`)."""

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


# --------------------------------------------------------------------------------------------------
# custom_vjp core (padded arrays in, padded arrays out)
# --------------------------------------------------------------------------------------------------


def _forward(c, q, k, v, aux):
    if c.backend == "gpu":
        return flash_attention_gpu.forward(c, q, k, v, aux)
    return flash_attention_tpu.forward(c, q, k, v, aux)


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
        dq, dk, dv = flash_attention_gpu.backward(c, q, k, v, aux, do, lse, delta)
    else:
        dq, dk, dv = flash_attention_tpu.backward(c, q, k, v, aux, do, lse, delta)
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
    mn = MIN_BLOCK[backend]
    bq = _clamp_block(bs.block_q, sq, mn, "block_q")
    bq_dq = _clamp_block(bs.block_q_dq, sq, mn, "block_q_dq")
    bq_dkv = _clamp_block(bs.block_q_dkv, sq, mn, "block_q_dkv")
    bk = _clamp_block(bs.block_k, sk, mn, "block_k")
    bk_dq = _clamp_block(bs.block_k_dq, sk, mn, "block_k_dq")
    bk_dkv = _clamp_block(bs.block_k_dkv, sk, mn, "block_k_dkv")
    sq_pad = round_up(sq, max(bq, bq_dq, bq_dkv))
    sk_pad = round_up(sk, max(bk, bk_dq, bk_dkv))
    if backend == "gpu":
        d_pad = max(16, pl.next_power_of_2(d))
    else:
        d_pad = d if (d % LANES == 0 or d == 64) else round_up(d, LANES)
    c = FlashConfig(backend=backend, interpret=bool(interpret), causal=bool(causal), scale=scale,
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
