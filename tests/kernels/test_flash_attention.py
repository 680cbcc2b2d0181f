"""flash_attention: the GPU-style (Triton) and TPU (Mosaic) Pallas kernels against the jnp reference,
in interpret mode on CPU, forward and gradients, for every mask kind; the reference against the
model's XLA attention; and lowering of both kernels for CUDA and TPU (no device needed).

The default run covers each feature at least once per dtype and backend on small shapes; the full
cross product is `-m slow`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.kernels import flash_attention, flash_attention_reference
from ar1_jax.kernels.flash_attention import BLOCK_TABLE, BlockSizes, block_sizes_for

F32_OUT, BF16_OUT = 2e-5, 1e-2
F32_GRAD, BF16_GRAD = 1e-4, 2e-2
# Small blocks so the short test sequences still span several blocks (skipping, carries, padding).
TEST_BLOCKS = {"gpu": dict(block_q=32, block_k=16), "tpu": dict(block_q=128, block_k=128)}
BACKENDS = ("gpu", "tpu")
DTYPES = (jnp.float32, jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    b: int = 2
    sq: int = 77
    sk: int = 77
    h: int = 4
    hkv: int = 4
    d: int = 64
    causal: bool = True
    segments: str | None = None  # None | "sorted" | "random"
    kv_valid: str | None = None  # None | "lengths" | "random"
    bidir: bool = False
    q_offset: str | None = None  # None | "scalar" | "array"


def _np_mask(case: Case, a):
    """Visibility [B, Sq, Sk] by brute force in numpy (a third, independent statement of the mask)."""
    qs = a["q_offset"][:, None] + np.arange(case.sq)[None, :]
    m = np.ones((case.b, case.sq, case.sk), bool)
    ks = np.arange(case.sk)
    for bi in range(case.b):
        for i in range(case.sq):
            ok = np.ones(case.sk, bool)
            if case.causal:
                vis = ks <= qs[bi, i]
                if a["bidir"] is not None:
                    f = a["bidir"][bi]
                    vis |= (qs[bi, i] >= f) & (ks >= f)
                ok &= vis
            if a["seg"] is not None:
                ok &= a["seg"][0][bi, i] == a["seg"][1][bi]
            if a["kv_valid"] is not None:
                ok &= a["kv_valid"][bi]
            m[bi, i] = ok
    return m


def _make(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)  # numpy inputs: no per-shape RNG compiles

    def normal(*shape):
        return rng.standard_normal(shape, np.float32)

    q = jnp.asarray(normal(case.b, case.sq, case.h, case.d), dtype)
    k = jnp.asarray(normal(case.b, case.sk, case.hkv, case.d), dtype)
    v = jnp.asarray(normal(case.b, case.sk, case.hkv, case.d), dtype)
    w = jnp.asarray(normal(case.b, case.sq, case.h, case.d))
    a = dict(seg=None, kv_valid=None, bidir=None, q_offset=np.zeros(case.b, np.int32))
    if case.q_offset == "scalar":
        a["q_offset"] = np.full(case.b, case.sk - case.sq, np.int32)
    elif case.q_offset == "array":
        # batch 0 starts before slot 0 (its first rows see nothing), the others continue a cache
        offs = rng.integers(0, max(1, case.sk - case.sq), case.b).astype(np.int32)
        offs[0] = -5
        a["q_offset"] = offs
    if case.segments == "sorted":
        def packed(n):
            cuts = np.sort(rng.choice(np.arange(1, n), 2, replace=False))
            return np.searchsorted(cuts, np.arange(n), side="right").astype(np.int32)
        if case.sq == case.sk:
            s = np.stack([packed(case.sq) for _ in range(case.b)])
            a["seg"] = (s, s)
        else:
            a["seg"] = (np.stack([packed(case.sq) for _ in range(case.b)]),
                        np.stack([packed(case.sk) for _ in range(case.b)]))
    elif case.segments == "random":
        a["seg"] = (rng.integers(0, 3, (case.b, case.sq)).astype(np.int32),
                    rng.integers(0, 3, (case.b, case.sk)).astype(np.int32))
    if case.kv_valid == "lengths":
        lens = rng.integers(case.sk // 3, case.sk, case.b)
        lens[-1] = 0  # a sequence with no valid key: every row fully masked
        a["kv_valid"] = np.arange(case.sk)[None, :] < lens[:, None]
    elif case.kv_valid == "random":
        a["kv_valid"] = rng.random((case.b, case.sk)) > 0.3
    if case.bidir:
        a["bidir"] = rng.integers(case.sk // 2, case.sk, case.b).astype(np.int32)
    return q, k, v, w, a


def _kwargs(case: Case, a):
    return dict(causal=case.causal, segment_ids=a["seg"], kv_valid=a["kv_valid"],
                bidirectional_from=a["bidir"],
                q_offset=a["q_offset"] if case.q_offset == "array" else int(a["q_offset"][0]))


def _rel(a, b, rows=None):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if rows is not None:
        a, b = a[rows], b[rows]
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if b.size else 0.0


def _up(x):
    return x.astype(jnp.float32)


CASES = [
    Case("causal_mha", sq=77, sk=77, h=4, hkv=4, d=64),
    Case("noncausal_keypad_gqa2_d128", sq=50, sk=131, h=4, hkv=2, d=128, causal=False,
         kv_valid="lengths"),
    Case("segments_qoffset_gqa4", sq=150, sk=150, h=4, hkv=1, d=64, segments="sorted",
         q_offset="array"),
    Case("denoise_tail_gqa8_d128", sq=40, sk=170, h=8, hkv=1, d=128, kv_valid="random", bidir=True,
         q_offset="scalar"),
    Case("combo_random_segments", sq=130, sk=130, h=4, hkv=2, d=64, segments="random",
         kv_valid="random", bidir=True),
    Case("headdim40", b=1, sq=45, sk=45, h=2, hkv=1, d=40),
]


def _check(case, dtype, backend, blocks, grads=True, seed=0):
    """Forward (output and logsumexp) and, with `grads`, the VJP of both outputs, in one compile."""
    q, k, v, w, a = _make(case, dtype, seed)
    w = w.astype(dtype).astype(jnp.float32)  # the same cotangent for kernel and reference
    wl = jnp.asarray(np.random.default_rng(seed + 11).standard_normal((case.b, case.h, case.sq),
                                                                       np.float32))
    kw = _kwargs(case, a)

    def kernel(q, k, v):
        return flash_attention(q, k, v, backend=backend, interpret=True, return_lse=True, **kw,
                               **blocks)

    def reference(q, k, v):
        return flash_attention_reference(q, k, v, return_lse=True, **kw)

    def run(fn, q, k, v):
        (o, lse), vjp = jax.vjp(fn, q, k, v)
        if not grads:
            return o, lse, None
        return o, lse, vjp((w.astype(o.dtype), wl))

    out, lse, g = jax.jit(functools.partial(run, kernel))(q, k, v)
    ref, ref_lse, rg = jax.jit(functools.partial(run, reference))(_up(q), _up(k), _up(v))

    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (case.b, case.h, case.sq) and lse.dtype == jnp.float32
    rows = _np_mask(case, a).any(-1)  # [B, Sq]: rows with at least one visible key
    tol = F32_OUT if dtype == jnp.float32 else BF16_OUT
    err = _rel(out, ref, rows)
    assert err < tol, f"{case.name} {backend} {dtype.__name__}: output rel err {err}"
    lse_t = np.swapaxes(np.asarray(lse), 1, 2)  # [B, Sq, H]
    ref_lse_t = np.swapaxes(np.asarray(ref_lse), 1, 2)
    assert _rel(lse_t, ref_lse_t, rows) < max(tol, 1e-5)
    # fully masked rows: exactly zero output, -inf logsumexp
    assert np.all(np.asarray(out, np.float32)[~rows] == 0.0)
    assert np.all(np.isneginf(lse_t[~rows]))
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    if not grads:
        return
    tol = F32_GRAD if dtype == jnp.float32 else BF16_GRAD
    for name, gi, ri, x in zip("qkv", g, rg, (q, k, v)):
        assert gi.shape == x.shape and gi.dtype == x.dtype
        assert np.all(np.isfinite(np.asarray(gi, np.float32))), f"{name}: non-finite gradient"
        err = _rel(gi, ri)
        assert err < tol, f"{case.name} {backend} {dtype.__name__}: d{name} rel err {err}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference(case, backend, dtype):
    """Output, logsumexp and gradients of q, k, v (through both outputs) against the reference."""
    if case.name == "headdim40" and dtype == jnp.bfloat16:
        pytest.skip("odd head dim is covered in float32")
    _check(case, dtype, backend, TEST_BLOCKS[backend], grads=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_table_blocks_and_uneven_pass_blocks(backend):
    """Default table blocks (one block for these short sequences) and, separately, forward / dq /
    dkv passes with different block shapes (different padding and range tables per pass)."""
    case = Case("uneven", b=1, sq=150, sk=190, h=4, hkv=2, d=64, kv_valid="random",
                q_offset="scalar")
    _check(case, jnp.float32, backend, {}, grads=False)
    if backend == "gpu":
        bs = BlockSizes(32, 64, 64, 16, 16, 32)
    else:
        bs = BlockSizes(128, 256, 256, 128, 128, 256)
    _check(case, jnp.float32, backend, dict(block_sizes=bs))


def test_tpu_kernel_under_force_tpu_interpret_mode():
    """The TPU path with interpret=False, interpreted because of pltpu.force_tpu_interpret_mode()."""
    from jax.experimental.pallas import tpu as pltpu

    case = Case("forced", b=1, sq=140, sk=140, h=2, hkv=1, d=128, segments="sorted")
    q, k, v, _, a = _make(case, jnp.float32)
    kw = _kwargs(case, a)
    with pltpu.force_tpu_interpret_mode():
        out = flash_attention(q, k, v, backend="tpu", block_q=128, block_k=128, **kw)
    ref = jax.jit(functools.partial(flash_attention_reference, **kw))(q, k, v)
    assert _rel(out, ref, _np_mask(case, a).any(-1)) < F32_OUT


def test_cpu_default_backend_runs_interpreted():
    case = Case("default", b=1, sq=20, sk=20, h=2, hkv=1, d=64)
    q, k, v, _, a = _make(case, jnp.float32)
    out = flash_attention(q, k, v)  # backend=None on a CPU host: GPU-style kernel, interpreted
    assert _rel(out, jax.jit(flash_attention_reference)(q, k, v)) < F32_OUT


@pytest.mark.parametrize("case", [
    Case("model_causal_segments", b=2, sq=70, sk=70, h=4, hkv=2, segments="random", kv_valid="random"),
    Case("model_denoise", b=2, sq=24, sk=90, h=4, hkv=1, kv_valid="lengths", bidir=True,
         q_offset="scalar"),
    Case("model_offset_array_noncausal", b=2, sq=17, sk=50, h=2, hkv=2, causal=False,
         q_offset="array", kv_valid="random"),
], ids=lambda c: c.name)
def test_semantics_match_model_xla_attention(case):
    """Same answer as `ar1_jax.model.attention.attention(impl='xla')` on every row with a visible
    key (the model averages uniformly over fully masked rows; the kernels give 0 there)."""
    from ar1_jax.model.attention import attention, make_mask

    q, k, v, _, a = _make(case, jnp.float32)
    q_slots = jnp.asarray(a["q_offset"])[:, None] + jnp.arange(case.sq, dtype=jnp.int32)[None, :]
    kv_slots = jnp.broadcast_to(jnp.arange(case.sk, dtype=jnp.int32), (case.b, case.sk))
    seg = a["seg"] or (None, None)
    model_kw = dict(q_slots=q_slots, kv_slots=kv_slots,
                    kv_valid=None if a["kv_valid"] is None else jnp.asarray(a["kv_valid"]),
                    causal=case.causal, q_segment=seg[0], kv_segment=seg[1],
                    bidirectional_from=None if a["bidir"] is None else jnp.asarray(a["bidir"]))
    want = jax.jit(lambda q, k, v, kw: attention(q, k, v, impl="xla", causal=case.causal, **kw))(
        q, k, v, {n: x for n, x in model_kw.items() if n != "causal"})
    model_mask = np.asarray(make_mask(q_slots, kv_slots, kv_valid=model_kw["kv_valid"],
                                      causal=case.causal, q_segment=seg[0], kv_segment=seg[1],
                                      bidirectional_from=model_kw["bidirectional_from"]))
    np.testing.assert_array_equal(model_mask, _np_mask(case, a))
    rows = model_mask.any(-1)
    kw = _kwargs(case, a)
    got = flash_attention(q, k, v, backend="gpu", interpret=True, block_q=16, block_k=32, **kw)
    assert _rel(got, want, rows) < F32_OUT
    ref = jax.jit(functools.partial(flash_attention_reference, **kw))(q, k, v)
    assert _rel(ref, want, rows) < F32_OUT


def test_block_table_and_errors():
    import ar1_jax.kernels as kernels

    assert kernels.flash_attention is flash_attention and callable(kernels.flash_attention_reference)
    for (backend, d), bs in BLOCK_TABLE.items():
        for blk in (bs.block_q, bs.block_k, bs.block_q_dq, bs.block_k_dq, bs.block_q_dkv, bs.block_k_dkv):
            assert blk & (blk - 1) == 0
            assert blk >= (16 if backend == "gpu" else 128)
    assert block_sizes_for("gpu", 96) is BLOCK_TABLE[("gpu", 128)]
    assert block_sizes_for("tpu", 64) is BLOCK_TABLE[("tpu", 64)]
    q = jnp.zeros((1, 8, 3, 64))
    k = jnp.zeros((1, 8, 2, 64))
    with pytest.raises(ValueError, match="multiple of 2 kv heads"):
        flash_attention(q, k, k, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        flash_attention(q[:, :, :2], k, k, block_q=48, backend="gpu", interpret=True)
    with pytest.raises(ValueError, match="backend"):
        flash_attention(q[:, :, :2], k, k, backend="cuda")


@pytest.mark.parametrize("backend,platform,target", [("gpu", "cuda", "__gpu$xla.gpu.triton"),
                                                     ("tpu", "tpu", "tpu_custom_call")])
def test_kernels_lower_for_device(backend, platform, target):
    """Forward and backward lower to Triton IR / Mosaic MLIR for real devices (catches unsupported
    primitives and illegal TPU block shapes without hardware; compiling that IR needs the device)."""
    b, s, h, hkv = 2, 1000, 14, 2
    q = jax.ShapeDtypeStruct((b, s, h, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((b, s, hkv, 64), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((b, s), jnp.int32)
    valid = jax.ShapeDtypeStruct((b, s), jnp.bool_)
    start = jax.ShapeDtypeStruct((b,), jnp.int32)

    def loss(q, k, v, seg, valid, start):
        o = flash_attention(q, k, v, segment_ids=(seg, seg), kv_valid=valid,
                            bidirectional_from=start, q_offset=start, backend=backend)
        return o.astype(jnp.float32).sum()

    checks = [jax.export.DisabledSafetyCheck.custom_call(target)]
    exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=[platform],
                                 disabled_checks=checks)(q, k, k, seg, valid, start)
    assert exported.mlir_module().count(target) == 3  # forward, dq, dkv
    q128 = jax.ShapeDtypeStruct((1, 512, 8, 128), jnp.float32)
    exported = jax.export.export(
        jax.jit(lambda q, k, v: flash_attention(q, k, v, backend=backend)), platforms=[platform],
        disabled_checks=checks)(q128, q128, q128)
    assert exported.mlir_module().count(target) == 1


MASK_KINDS = {  # name -> Case fields
    "causal": dict(),
    "noncausal": dict(causal=False),
    "segments": dict(segments="sorted"),
    "keypad_noncausal": dict(causal=False, kv_valid="lengths"),
    "tail_offset_keypad": dict(bidir=True, q_offset="scalar", kv_valid="random"),
    "everything": dict(segments="random", kv_valid="random", bidir=True, q_offset="array"),
}
SWEEP = [
    Case(f"{mask}_s{sq}x{sk}_g{g}_d{d}", b=2, sq=sq, sk=sk, h=8, hkv=8 // g, d=d, **MASK_KINDS[mask])
    for mask, (sq, sk), g, d in itertools.product(
        MASK_KINDS, [(61, 61), (37, 203), (250, 250)], [1, 2, 4, 8], [64, 128])
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SWEEP, ids=lambda c: c.name)
def test_sweep(case, backend, dtype):
    _check(case, dtype, backend, TEST_BLOCKS[backend])
