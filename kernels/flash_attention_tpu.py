"""Flash attention on TPU: Pallas Mosaic kernels (forward, dq, dk/dv).

The grid is (batch, head, query block, key block) for the forward and dq passes and
(batch, KV head, key block, group head, query block) for dk/dv, the last axis "arbitrary" with the
running max / sum / accumulators in VMEM scratch (the pipeline double-buffers the streamed blocks).
The block ranges computed before the call come in through scalar prefetch (SMEM): a program skips
compute outside [lo, hi) with `pl.when`, and its index maps clamp the streamed block index into
[lo, hi - 1], so a skipped step repeats the previous block and issues no DMA.

Layout. With D % 128 == 0 the kernels read `[B, S, N, D]` arrays in place through a free reshape to
`[B, S, N*D]` (block (rows, D) at column block n); for D = 64 the (8, 128) tiling rule forbids that
block, so the arrays are transposed to `[B, N, S, D]`. Per-token vectors follow splash attention: a
vector used as a column is stored lane-replicated `[.., S, 128]` (`_col`), one used as a row
sublane-replicated `[.., 8, S]` (`_row`). The running max / sum are lane-replicated `[rows, 128]`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ar1_jax.kernels._tiles import (LANES, LOG2E, NEG_INF, SUBLANES, and_mask, dot, dot_nt, lanes, normaliser,
                                    online_softmax_step, tpu_interpret, tpu_params, visibility)

if TYPE_CHECKING:
    from ar1_jax.kernels.flash_attention import FlashConfig

_QUERY_GRID = ("parallel", "parallel", "parallel", "arbitrary")


# --------------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------------


def _fused(d_pad: int) -> bool:
    return d_pad % LANES == 0


def _operand(x, fused):
    """[B, S, N, D] -> the array the kernel reads ([B, S, N*D] free reshape, or [B, N, S, D])."""
    bsz, s, n, d = x.shape
    return x.reshape(bsz, s, n * d) if fused else jnp.swapaxes(x, 1, 2)


def _result(y, fused, shape):
    return y.reshape(shape) if fused else jnp.swapaxes(y, 1, 2)


def _spec(fused, rows, d, index):
    """Block of `rows` tokens x one head; `index(*grid, *scalars) -> (batch, row_block, head)`."""
    if fused:
        return pl.BlockSpec((None, rows, d), index)

    def idx(*args):
        b, r, n = index(*args)
        return b, n, r, 0

    return pl.BlockSpec((None, None, rows, d), idx)


def _col(x, s_pad):
    """[B, S] -> lane-replicated [B, S_pad, 128] int32 (a per-token column)."""
    x = jnp.pad(x.astype(jnp.int32), ((0, 0), (0, s_pad - x.shape[1])))
    return jnp.broadcast_to(x[:, :, None], (*x.shape, LANES))


def _row(x, s_pad):
    """[B(, H), S] -> sublane-replicated [B(, H), 8, S_pad] (a per-token row)."""
    pad = [(0, 0)] * (x.ndim - 1) + [(0, s_pad - x.shape[-1])]
    x = jnp.pad(x, pad)
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], SUBLANES, x.shape[-1]))


def _clamp(j, lo, hi):
    return jnp.maximum(jnp.minimum(j, hi - 1), lo)


def _bidir_or_dummy(aux):
    return aux["bidir"] if aux["bidir"] is not None else jnp.zeros_like(aux["qoff"])


# --------------------------------------------------------------------------------------------------
# Forward and dq: a grid over (batch, head, query block, key block)
# --------------------------------------------------------------------------------------------------


def _query_block(c: FlashConfig, bq, bk, lo_ref, hi_ref):
    """Program ids (b, i, j), the number of key blocks and this query block's key range [lo, hi)."""
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = c.sq_pad // bq, c.sk_pad // bk
    return b, i, j, nk, lo_ref[b * nq + i], hi_ref[b * nq + i]


def _tile_mask(c: FlashConfig, b, i, j, bq, bk, qoff_ref, bidir_ref, qseg_ref, kseg_ref, kvalid_ref):
    """Visibility of the (query block i, key block j) tile `[bq, bk]` (None: all visible)."""
    shape = (bq, bk)
    q_slot = qoff_ref[b] + i * bq + lax.broadcasted_iota(jnp.int32, shape, 0)
    k_idx = j * bk + lax.broadcasted_iota(jnp.int32, shape, 1)
    mask = visibility(
        q_slot, k_idx, causal=c.causal, bidirectional_from=bidir_ref[b] if c.has_bidir else None,
        q_segment=jnp.tile(qseg_ref[...], (1, bk // LANES)) if c.has_seg else None,
        kv_segment=kseg_ref[:1, :] if c.has_seg else None,
        kv_valid=kvalid_ref[:1, :] != 0 if c.has_valid else None)
    if c.k_padded:
        mask = and_mask(mask, k_idx < c.sk)
    return mask


def _fwd_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref,
                kvalid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, c: FlashConfig):
    bq, bk = c.bq, c.bk
    b, i, j, nk, lo, hi = _query_block(c, bq, bk, lo_ref, hi_ref)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG_INF, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(jnp.logical_and(j >= lo, j < hi))
    def _compute():
        s = dot_nt(q_ref[...], k_ref[...]) * (c.scale * LOG2E)
        mask = _tile_mask(c, b, i, j, bq, bk, qoff_ref, bidir_ref, qseg_ref, kseg_ref, kvalid_ref)
        if mask is not None:
            s = jnp.where(mask, s, NEG_INF)
        m_next, alpha, p, l_next = online_softmax_step(s, m_sc[...], l_sc[...], lanes=True)
        l_sc[...] = l_next
        m_sc[...] = m_next
        vb = v_ref[...]
        acc_sc[...] = acc_sc[...] * lanes(alpha, c.d_pad) + dot(p.astype(vb.dtype), vb)

    @pl.when(j == nk - 1)
    def _finish():
        l_safe, lse = normaliser(m_sc[...], l_sc[...])
        o_ref[...] = (acc_sc[...] * lanes(1.0 / l_safe, c.d_pad)).astype(o_ref.dtype)
        lse_ref[...] = lse


def _dq_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, qseg_ref, kseg_ref, kvalid_ref, dq_ref, dq_sc, *, c: FlashConfig):
    bq, bk = c.bq_dq, c.bk_dq
    b, i, j, nk, lo, hi = _query_block(c, bq, bk, lo_ref, hi_ref)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when(jnp.logical_and(j >= lo, j < hi))
    def _compute():
        kb = k_ref[...]
        s = dot_nt(q_ref[...], kb) * (c.scale * LOG2E)
        mask = _tile_mask(c, b, i, j, bq, bk, qoff_ref, bidir_ref, qseg_ref, kseg_ref, kvalid_ref)
        lse2 = jnp.expand_dims(lse_ref[0], -1) * LOG2E  # [bq, 1]
        delta = jnp.expand_dims(delta_ref[0], -1)
        p = jnp.exp2(s - lse2)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        dp = dot_nt(do_ref[...], v_ref[...])
        ds = p * (dp - delta)
        dq_sc[...] += dot(ds.astype(kb.dtype), kb)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * c.scale).astype(dq_ref.dtype)


def _query_grid_specs(c: FlashConfig, bq: int, bk: int, fused: bool):
    """Specs of a query-grid pass: a query-block spec, a key-block spec (clamped into the block's
    key range) and the segment-id / kv_valid specs (None where the call has none)."""
    g, d, nq = c.g, c.d_pad, c.sq_pad // bq

    def q_idx(b, h, i, j, *_):
        return b, i, h

    def k_idx(b, h, i, j, lo, hi, qo, bf):
        return b, _clamp(j, lo[b * nq + i], hi[b * nq + i]), lax.div(h, g)

    def kvec_idx(b, h, i, j, lo, hi, qo, bf):
        return b, 0, _clamp(j, lo[b * nq + i], hi[b * nq + i])

    vectors = [
        pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, *_: (b, i, 0)) if c.has_seg else None,
        pl.BlockSpec((None, SUBLANES, bk), kvec_idx) if c.has_seg else None,
        pl.BlockSpec((None, SUBLANES, bk), kvec_idx) if c.has_valid else None,
    ]
    return _spec(fused, bq, d, q_idx), _spec(fused, bk, d, k_idx), vectors


def _query_grid_vectors(c: FlashConfig, aux):
    """Query segment ids as columns, key segment ids and kv_valid as rows (or None)."""
    return (_col(aux["qseg"], c.sq_pad) if c.has_seg else None,
            _row(aux["kseg"], c.sk_pad) if c.has_seg else None,
            _row(aux["kvalid"], c.sk_pad) if c.has_valid else None)


def forward(c: FlashConfig, q, k, v, aux):
    """Output `[B, Sq_pad, H, D_pad]` in q's dtype and logsumexp `[B, H, Sq_pad]` float32."""
    from jax.experimental.pallas import tpu as pltpu

    fused = _fused(c.d_pad)
    bq, bk, d = c.bq, c.bk, c.d_pad
    nq, nk = c.sq_pad // bq, c.sk_pad // bk
    q_spec, k_spec, vectors = _query_grid_specs(c, bq, bk, fused)
    qt = _operand(q, fused)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(c.b, c.h, nq, nk), in_specs=[q_spec, k_spec, k_spec, *vectors],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j, *_: (b, h, i, 0))],
        scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
                        pltpu.VMEM((bq, d), jnp.float32)])
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, c=c), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                   jax.ShapeDtypeStruct((c.b, c.h, c.sq_pad, LANES), jnp.float32)],
        compiler_params=tpu_params(_QUERY_GRID), interpret=tpu_interpret(c.interpret), name="flash_fwd",
    )(aux["fwd_lo"].reshape(-1), aux["fwd_hi"].reshape(-1), aux["qoff"], _bidir_or_dummy(aux),
      qt, _operand(k, fused), _operand(v, fused), *_query_grid_vectors(c, aux))
    return _result(o, fused, q.shape), lse[..., 0]


# --------------------------------------------------------------------------------------------------
# dk, dv: a grid over (batch, KV head, key block, group head, query block)
# --------------------------------------------------------------------------------------------------


def _dkv_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, qseg_ref, kseg_ref, kvalid_ref, dk_ref, dv_ref, dk_sc, dv_sc, *,
                c: FlashConfig):
    """The transposed problem s^T = k q^T `[bk, bq]`: logsumexp / delta enter as rows."""
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
        st = dot_nt(k_ref[...], qb) * (c.scale * LOG2E)  # [bk, bq]
        shape = (bk, bq)
        k_idx = kj * bk + lax.broadcasted_iota(jnp.int32, shape, 0)
        q_row = i * bq + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = visibility(
            qoff_ref[b] + q_row, k_idx, causal=c.causal,
            bidirectional_from=bidir_ref[b] if c.has_bidir else None,
            q_segment=qseg_ref[:1, :] if c.has_seg else None,
            kv_segment=jnp.tile(kseg_ref[...], (1, bq // LANES)) if c.has_seg else None,
            kv_valid=jnp.tile(kvalid_ref[...], (1, bq // LANES)) != 0 if c.has_valid else None)
        if c.k_padded:
            mask = and_mask(mask, k_idx < c.sk)
        if c.q_padded:
            mask = and_mask(mask, q_row < c.sq)
        pt = jnp.exp2(st - lse_ref[:1, :] * LOG2E)
        if mask is not None:
            pt = jnp.where(mask, pt, 0.0)
        dv_sc[...] += dot(pt.astype(dob.dtype), dob)
        dpt = dot_nt(v_ref[...], dob)
        dst = pt * (dpt - delta_ref[:1, :])
        dk_sc[...] += dot(dst.astype(qb.dtype), qb)

    @pl.when(jnp.logical_and(gi == c.g - 1, i == nq - 1))
    def _finish():
        dk_ref[...] = (dk_sc[...] * c.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def backward(c: FlashConfig, q, k, v, aux, do, lse, delta):
    """dq, dk, dv (padded, in the inputs' dtypes) from dO, the forward's lse and
    `delta = rowsum(dO * O) - dlse` (`[B, H, Sq_pad]`)."""
    from jax.experimental.pallas import tpu as pltpu

    fused = _fused(c.d_pad)
    g, d = c.g, c.d_pad
    qt, kt, vt, dot_ = (_operand(x, fused) for x in (q, k, v, do))
    lse_r, delta_r = _row(lse, c.sq_pad), _row(delta, c.sq_pad)  # [B, H, 8, Sq_pad]
    bidir = _bidir_or_dummy(aux)
    interpret = tpu_interpret(c.interpret)

    # dq
    bq, bk = c.bq_dq, c.bk_dq
    q_spec, k_spec, vectors = _query_grid_specs(c, bq, bk, fused)
    row = pl.BlockSpec((None, None, SUBLANES, bq), lambda b, h, i, j, *_: (b, h, 0, i))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(c.b, c.h, c.sq_pad // bq, c.sk_pad // bk),
        in_specs=[q_spec, k_spec, k_spec, q_spec, row, row, *vectors], out_specs=q_spec,
        scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)])
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, c=c), grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=tpu_params(_QUERY_GRID), interpret=interpret, name="flash_bwd_dq",
    )(aux["dq_lo"].reshape(-1), aux["dq_hi"].reshape(-1), aux["qoff"], bidir, qt, kt, vt, dot_,
      lse_r, delta_r, *_query_grid_vectors(c, aux))

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

    qh_spec, kh_spec = _spec(fused, bq, d, qh_idx), _spec(fused, bk, d, kh_idx)
    kvec = pl.BlockSpec((None, bk, LANES), lambda b, h, j, gi, i, *_: (b, j, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(c.b, c.hkv, nk, g, nq),
        in_specs=[
            qh_spec, kh_spec, kh_spec, qh_spec,
            pl.BlockSpec((None, None, SUBLANES, bq), lse_idx),
            pl.BlockSpec((None, None, SUBLANES, bq), lse_idx),
            pl.BlockSpec((None, SUBLANES, bq), qvec_idx) if c.has_seg else None,
            kvec if c.has_seg else None,
            kvec if c.has_valid else None,
        ],
        out_specs=[kh_spec, kh_spec],
        scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)])
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, c=c), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
        compiler_params=tpu_params(_QUERY_GRID + ("arbitrary",)), interpret=interpret, name="flash_bwd_dkv",
    )(aux["dkv_lo"].reshape(-1), aux["dkv_hi"].reshape(-1), aux["qoff"], bidir, qt, kt, vt, dot_,
      lse_r, delta_r,
      _row(aux["qseg"], c.sq_pad) if c.has_seg else None,
      _col(aux["kseg"], c.sk_pad) if c.has_seg else None,
      _col(aux["kvalid"], c.sk_pad) if c.has_valid else None)
    return _result(dq, fused, q.shape), _result(dk, fused, k.shape), _result(dv, fused, v.shape)
