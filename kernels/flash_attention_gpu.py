"""Flash attention on GPU: Pallas with the Triton lowering (forward, dq, dk/dv).

Each program owns one (batch, head, query block) (forward, dq) or one (batch, KV head, key block)
(dk/dv) and loops `lax.fori_loop(lo, hi)` over the blocks of the other axis that can hold a visible
entry (the ranges `flash_attention` computes in XLA before the call); the whole key / query sequence
of its head is one block in HBM, sliced with `pl.ds`. Padded arrays in, padded arrays out:

    q, o, dq       [B, Sq_pad, H, D_pad]       k, v, dk, dv   [B, Sk_pad, Hkv, D_pad]
    lse, delta     [B, H, Sq_pad] float32      aux            see `flash_attention`

The forward and dq kernels share the query-block setup and the key-block tile (`_query_tile`,
`_key_tile`) and one BlockSpec list (`_query_grid_specs`); they differ only in what they do with
the scores. Masks follow `ar1_jax.kernels._tiles.visibility`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ar1_jax.kernels._tiles import (LOG2E, NEG_INF, and_mask, dot, dot_nt, gpu_params, normaliser,
                                    online_softmax_step, visibility)

if TYPE_CHECKING:
    from ar1_jax.kernels.flash_attention import FlashConfig


def _query_tile(c: FlashConfig, bq, qoff_ref, bidir_ref, qseg_ref):
    """This program's query block: slots `[bq, 1]`, the scalar `bidirectional_from` and the segment
    ids `[bq, 1]` (None where the call has none)."""
    qi = pl.program_id(2)
    q_slot = (qoff_ref[0] + qi * bq + jnp.arange(bq, dtype=jnp.int32))[:, None]
    bidir = bidir_ref[0] if c.has_bidir else None
    qseg = qseg_ref[...][:, None] if c.has_seg else None
    return q_slot, bidir, qseg


def _key_tile(c: FlashConfig, j, bk, q, query, k_ref, v_ref, kseg_ref, kvalid_ref):
    """Key block j against the query block: its keys and values `[bk, D]`, the base-2 scores
    `[bq, bk]` float32 and the visibility mask (None: all visible)."""
    q_slot, bidir, qseg = query
    start = pl.multiple_of(j * bk, bk)
    ks = pl.ds(start, bk)
    kb = k_ref[ks, :]
    vb = v_ref[ks, :]
    s = dot_nt(q, kb) * (c.scale * LOG2E)
    k_idx = (start + jnp.arange(bk, dtype=jnp.int32))[None, :]
    mask = visibility(q_slot, k_idx, causal=c.causal, bidirectional_from=bidir,
                      q_segment=qseg, kv_segment=kseg_ref[ks][None, :] if c.has_seg else None,
                      kv_valid=(kvalid_ref[ks] != 0)[None, :] if c.has_valid else None)
    if c.k_padded:
        mask = and_mask(mask, k_idx < c.sk)
    return kb, vb, s, mask


def _fwd_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref,
                kvalid_ref, o_ref, lse_ref, *, c: FlashConfig):
    bq, bk = c.bq, c.bk
    q = q_ref[...]
    query = _query_tile(c, bq, qoff_ref, bidir_ref, qseg_ref)

    def body(j, carry):
        acc, m_prev, l_prev = carry
        _, vb, s, mask = _key_tile(c, j, bk, q, query, k_ref, v_ref, kseg_ref, kvalid_ref)
        if mask is not None:
            s = jnp.where(mask, s, NEG_INF)
        m_next, alpha, p, l_next = online_softmax_step(s, m_prev, l_prev)
        acc = acc * alpha[:, None] + dot(p.astype(vb.dtype), vb)
        return acc, m_next, l_next

    init = (jnp.zeros((bq, c.d_pad), jnp.float32), jnp.full((bq,), NEG_INF, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(lo_ref[0], hi_ref[0], body, init)
    l_safe, lse = normaliser(m, l)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = lse


def _dq_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, qseg_ref, kseg_ref, kvalid_ref, dq_ref, *, c: FlashConfig):
    bq, bk = c.bq_dq, c.bk_dq
    q = q_ref[...]
    do = do_ref[...]
    lse2 = (lse_ref[...] * LOG2E)[:, None]
    delta = delta_ref[...][:, None]
    query = _query_tile(c, bq, qoff_ref, bidir_ref, qseg_ref)

    def body(j, dq):
        kb, vb, s, mask = _key_tile(c, j, bk, q, query, k_ref, v_ref, kseg_ref, kvalid_ref)
        p = jnp.exp2(s - lse2)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        dp = dot_nt(do, vb)
        ds = p * (dp - delta)
        return dq + dot(ds.astype(kb.dtype), kb)

    dq = lax.fori_loop(lo_ref[0], hi_ref[0], body, jnp.zeros((bq, c.d_pad), jnp.float32))
    dq_ref[...] = (dq * c.scale).astype(dq_ref.dtype)


def _dkv_kernel(lo_ref, hi_ref, qoff_ref, bidir_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, qseg_ref, kseg_ref, kvalid_ref, dk_ref, dv_ref, *, c: FlashConfig):
    """The transposed problem s^T = k q^T: keys are rows, so logsumexp / delta enter as rows."""
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
        st = dot_nt(kb, qb) * scale2  # [bk, bq]
        q_row = (start + jnp.arange(bq, dtype=jnp.int32))[None, :]
        mask = visibility(qoff + q_row, k_idx, causal=c.causal, bidirectional_from=bidir,
                          q_segment=qseg_ref[qs][None, :] if c.has_seg else None, kv_segment=kseg,
                          kv_valid=kvalid)
        if c.k_padded:
            mask = and_mask(mask, k_idx < c.sk)
        if c.q_padded:
            mask = and_mask(mask, q_row < c.sq)
        pt = jnp.exp2(st - lse2)
        if mask is not None:
            pt = jnp.where(mask, pt, 0.0)
        dv = dv + dot(pt.astype(dob.dtype), dob)
        dpt = dot_nt(vb, dob)
        dst = pt * (dpt - delta)
        dk = dk + dot(dst.astype(qb.dtype), qb)
        return dk, dv

    def g_body(g, carry):
        return lax.fori_loop(lo, hi, functools.partial(q_body, g=g), carry)

    zeros = jnp.zeros((bk, c.d_pad), jnp.float32)
    dk, dv = lax.fori_loop(0, c.g, g_body, (zeros, zeros))
    dk_ref[...] = (dk * c.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _scalar_spec(index):
    """A (1,)-block of a flat int32 vector, for the per-program scalars."""
    return pl.BlockSpec((1,), index)


def _query_grid_specs(c: FlashConfig, bq: int, nq: int, *, grad: bool):
    """In-specs of a grid over (batch, head, query block): lo, hi, q_offset, bidirectional_from, q,
    the whole k and v of the head's KV head, [dO, lse, delta when `grad`], segment ids, kv_valid.
    Also returns the spec of a `[B, Sq_pad, H, D_pad]` query block (for dq / o)."""
    g = c.g
    q_block = pl.BlockSpec((None, bq, None, c.d_pad), lambda b, h, i: (b, i, h, 0))
    kv_whole = pl.BlockSpec((None, c.sk_pad, None, c.d_pad), lambda b, h, i: (b, 0, lax.div(h, g), 0))
    row = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    per_block = _scalar_spec(lambda b, h, i: (b * nq + i,))
    per_batch = _scalar_spec(lambda b, h, i: (b,))
    specs = [per_block, per_block, per_batch, per_batch if c.has_bidir else None, q_block, kv_whole, kv_whole]
    if grad:
        specs += [q_block, row, row]
    specs += [
        pl.BlockSpec((None, bq), lambda b, h, i: (b, i)) if c.has_seg else None,
        pl.BlockSpec((None, c.sk_pad), lambda b, h, i: (b, 0)) if c.has_seg else None,
        pl.BlockSpec((None, c.sk_pad), lambda b, h, i: (b, 0)) if c.has_valid else None,
    ]
    return specs, q_block, row


def forward(c: FlashConfig, q, k, v, aux):
    """Output `[B, Sq_pad, H, D_pad]` in q's dtype and logsumexp `[B, H, Sq_pad]` float32."""
    nq = c.sq_pad // c.bq
    in_specs, q_block, row = _query_grid_specs(c, c.bq, nq, grad=False)
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((c.b, c.h, c.sq_pad), jnp.float32)]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, c=c), grid=(c.b, c.h, nq), in_specs=in_specs,
        out_specs=[q_block, row], out_shape=out_shape, interpret=c.interpret, name="flash_fwd",
        compiler_params=gpu_params(c.num_warps, c.num_stages),
    )(aux["fwd_lo"].reshape(-1), aux["fwd_hi"].reshape(-1), aux["qoff"], aux["bidir"], q, k, v,
      aux["qseg"], aux["kseg"], aux["kvalid"])


def backward(c: FlashConfig, q, k, v, aux, do, lse, delta):
    """dq, dk, dv (padded, in the inputs' dtypes) from dO, the forward's lse and
    `delta = rowsum(dO * O) - dlse` (`[B, H, Sq_pad]`)."""
    qseg, kseg, kvalid, qoff, bidir = aux["qseg"], aux["kseg"], aux["kvalid"], aux["qoff"], aux["bidir"]
    g = c.g
    params = gpu_params(c.num_warps_bwd, c.num_stages)
    # dq: grid over query blocks, loop over the forward-style key ranges.
    nq = c.sq_pad // c.bq_dq
    in_specs, q_block, _ = _query_grid_specs(c, c.bq_dq, nq, grad=True)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, c=c), grid=(c.b, c.h, nq), in_specs=in_specs, out_specs=q_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=c.interpret,
        name="flash_bwd_dq", compiler_params=params,
    )(aux["dq_lo"].reshape(-1), aux["dq_hi"].reshape(-1), qoff, bidir, q, k, v, do, lse, delta, qseg, kseg,
      kvalid)
    # dk, dv: grid over key blocks and kv heads, loop over the group's query heads and query blocks.
    nk = c.sk_pad // c.bk_dkv
    bk = c.bk_dkv
    per_block = _scalar_spec(lambda b, h, j: (b * nk + j,))
    per_batch = _scalar_spec(lambda b, h, j: (b,))
    q_whole = pl.BlockSpec((None, c.sq_pad, g, c.d_pad), lambda b, h, j: (b, 0, h, 0))
    k_block = pl.BlockSpec((None, bk, None, c.d_pad), lambda b, h, j: (b, j, h, 0))
    rows = pl.BlockSpec((None, g, c.sq_pad), lambda b, h, j: (b, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, c=c), grid=(c.b, c.hkv, nk),
        in_specs=[
            per_block, per_block, per_batch, per_batch if c.has_bidir else None,
            q_whole, k_block, k_block, q_whole, rows, rows,
            pl.BlockSpec((None, c.sq_pad), lambda b, h, j: (b, 0)) if c.has_seg else None,
            pl.BlockSpec((None, bk), lambda b, h, j: (b, j)) if c.has_seg else None,
            pl.BlockSpec((None, bk), lambda b, h, j: (b, j)) if c.has_valid else None,
        ],
        out_specs=[k_block] * 2,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=c.interpret, name="flash_bwd_dkv", compiler_params=params,
    )(aux["dkv_lo"].reshape(-1), aux["dkv_hi"].reshape(-1), qoff, bidir, q, k, v, do, lse, delta, qseg, kseg,
      kvalid)
    return dq, dk, dv
