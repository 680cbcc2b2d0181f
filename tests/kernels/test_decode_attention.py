"""decode_attention: GPU-style (Triton) and TPU (Mosaic) split-K decode kernels against the jnp
reference in interpret mode on CPU; the reference against the model's XLA attention over a cache;
lowering for CUDA and TPU. The full cross product is `-m slow`."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.kernels import decode_attention, decode_attention_reference
from ar1_jax.kernels.decode_attention import BLOCK_TABLE

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 1e-2}
TEST_BLOCK_K = {"gpu": 32, "tpu": 128}
BACKENDS = ("gpu", "tpu")
DTYPES = (jnp.float32, jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    b: int
    tq: int
    h: int
    hkv: int
    d: int
    s: int
    lengths: tuple[int, ...]
    splits: int | None


CASES = [
    # S = 300 is no multiple of any block: the cache is padded
    Case("tq1_gqa4_d64_padded_cache", 2, 1, 8, 2, 64, 300, (300, 7), 3),
    # lengths 2 < Tq = 3 (first query before slot 0) and 0 (nothing visible): zero rows
    Case("tq3_mha_d128_short_lengths", 3, 3, 4, 4, 128, 256, (256, 2, 0), 2),
    Case("tq2_gqa8_default_splits", 1, 2, 8, 1, 64, 512, (389,), None),
    Case("tq4_gqa2_d128_one_split", 2, 4, 4, 2, 128, 200, (200, 150), 1),
]


def _make(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((case.b, case.tq, case.h, case.d), np.float32), dtype)
    k = jnp.asarray(rng.standard_normal((case.b, case.s, case.hkv, case.d), np.float32), dtype)
    v = jnp.asarray(rng.standard_normal((case.b, case.s, case.hkv, case.d), np.float32), dtype)
    return q, k, v, jnp.asarray(case.lengths, jnp.int32)


def _visible_rows(case: Case):
    """[B, Tq]: query t of sequence b sees at least one key (its slot lengths - Tq + t >= 0)."""
    lengths = np.asarray(case.lengths)[:, None]
    return lengths - case.tq + np.arange(case.tq)[None, :] >= 0


def _rel(a, b, rows):
    a = np.asarray(a, np.float64)[rows]
    b = np.asarray(b, np.float64)[rows]
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _check(case, dtype, backend, block_k):
    q, k, v, lengths = _make(case, dtype)
    out = decode_attention(q, k, v, lengths, backend=backend, interpret=True, block_k=block_k,
                           num_splits=case.splits)
    ref = jax.jit(decode_attention_reference)(q.astype(jnp.float32), k.astype(jnp.float32),
                                              v.astype(jnp.float32), lengths)
    assert out.shape == q.shape and out.dtype == q.dtype
    rows = _visible_rows(case)
    err = _rel(out, ref, rows)
    assert err < TOL[dtype], f"{case.name} {backend} {dtype.__name__}: rel err {err}"
    assert np.all(np.asarray(out, np.float32)[~rows] == 0.0)
    assert np.all(np.isfinite(np.asarray(out, np.float32)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference(case, backend, dtype):
    _check(case, dtype, backend, TEST_BLOCK_K[backend])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_valid_holes(backend, dtype):
    """`kv_valid` hides slots below `lengths`: left padding (row 0), random holes (row 1), and a row
    whose only in-range slots are all invalid (row 2: output 0). Against the reference and against the
    model's XLA attention over the same cache mask."""
    from ar1_jax.model.attention import attention

    case = Case("holes", 3, 2, 8, 2, 64, 300, (300, 211, 40), 3)
    q, k, v, lengths = _make(case, dtype)
    rng = np.random.default_rng(3)
    valid = np.ones((case.b, case.s), bool)
    valid[0, :37] = False  # left padding of a batched prompt
    valid[1] = rng.random(case.s) > 0.4
    valid[2, :] = False
    valid[2, 40:] = True  # beyond lengths: must stay hidden anyway
    valid = jnp.asarray(valid)
    out = decode_attention(q, k, v, lengths, kv_valid=valid, backend=backend, interpret=True,
                           block_k=TEST_BLOCK_K[backend], num_splits=case.splits)
    up = lambda x: x.astype(jnp.float32)
    ref = jax.jit(decode_attention_reference)(up(q), up(k), up(v), lengths, kv_valid=valid)
    q_slots = lengths[:, None] - case.tq + jnp.arange(case.tq, dtype=jnp.int32)[None, :]
    in_range = jnp.arange(case.s)[None, :] < lengths[:, None]
    want = jax.jit(functools.partial(attention, impl="xla"))(up(q), up(k), up(v), q_slots=q_slots,
                                                             kv_valid=valid & in_range)
    rows = _visible_rows(case)
    rows[2] = False
    assert out.shape == q.shape and out.dtype == q.dtype
    assert _rel(out, ref, rows) < TOL[dtype]
    assert _rel(ref, want, rows) < 2e-5
    assert np.all(np.asarray(out, np.float32)[~rows] == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_table_block_and_cpu_default(backend):
    case = Case("table", 2, 2, 4, 2, 64, 1024, (1000, 513), None)
    _check(case, jnp.float32, backend, None)


def test_cpu_default_backend_runs_interpreted():
    case = CASES[0]
    q, k, v, lengths = _make(case, jnp.float32)
    out = decode_attention(q, k, v, lengths)
    ref = jax.jit(decode_attention_reference)(q, k, v, lengths)
    assert _rel(out, ref, _visible_rows(case)) < TOL[jnp.float32]


def test_reference_matches_model_xla_attention_over_a_cache():
    """Decode semantics = the model's attention with q_slots = lengths - Tq + t over a cache whose
    slots >= lengths are invalid."""
    from ar1_jax.model.attention import attention

    case = Case("model", 3, 3, 8, 2, 64, 40, (40, 17, 2), None)
    q, k, v, lengths = _make(case, jnp.float32)
    q_slots = lengths[:, None] - case.tq + jnp.arange(case.tq, dtype=jnp.int32)[None, :]
    kv_valid = jnp.arange(case.s)[None, :] < lengths[:, None]
    want = jax.jit(functools.partial(attention, impl="xla"))(q, k, v, q_slots=q_slots,
                                                             kv_valid=kv_valid)
    rows = _visible_rows(case)
    assert _rel(jax.jit(decode_attention_reference)(q, k, v, lengths), want, rows) < 2e-5
    got = decode_attention(q, k, v, lengths, backend="gpu", interpret=True, block_k=16,
                           num_splits=2)
    assert _rel(got, want, rows) < 2e-5


def test_block_table_and_errors():
    for (backend, _), blocks in BLOCK_TABLE.items():
        assert blocks.block_k & (blocks.block_k - 1) == 0
        assert blocks.block_k >= (16 if backend == "gpu" else 128)
    q = jnp.zeros((1, 1, 3, 64))
    k = jnp.zeros((1, 64, 2, 64))
    with pytest.raises(ValueError, match="multiple of 2 kv heads"):
        decode_attention(q, k, k, jnp.array([3]))
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(q[:, :, :2], k, k, jnp.array([3]), block_k=24, backend="gpu",
                         interpret=True)


@pytest.mark.parametrize("backend,platform,target", [("gpu", "cuda", "__gpu$xla.gpu.triton"),
                                                     ("tpu", "tpu", "tpu_custom_call")])
@pytest.mark.parametrize("d,h,hkv", [(64, 14, 2), (128, 32, 8)])
def test_kernel_lowers_for_device(backend, platform, target, d, h, hkv):
    q = jax.ShapeDtypeStruct((4, 1, h, d), jnp.bfloat16)
    cache = jax.ShapeDtypeStruct((4, 4096, hkv, d), jnp.bfloat16)
    lengths = jax.ShapeDtypeStruct((4,), jnp.int32)
    exported = jax.export.export(
        jax.jit(functools.partial(decode_attention, backend=backend)), platforms=[platform],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(q, cache, cache,
                                                                             lengths)
    assert exported.mlir_module().count(target) == 1
    valid = jax.ShapeDtypeStruct((4, 4096), jnp.bool_)
    exported = jax.export.export(
        jax.jit(functools.partial(decode_attention, backend=backend)), platforms=[platform],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(q, cache, cache,
                                                                             lengths, kv_valid=valid)
    assert exported.mlir_module().count(target) == 1


SWEEP = [
    Case(f"sweep_{i}", b, tq, 8, 8 // g, d, s, tuple(int(x) for x in np.linspace(s, 0, b)), splits)
    for i, (b, tq, g, d, s, splits) in enumerate(itertools.product(
        [3], [1, 5], [1, 2, 4, 8], [64, 128], [128, 300, 640], [1, 4]))
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SWEEP, ids=lambda c: c.name)
def test_sweep(case, backend, dtype):
    _check(case, dtype, backend, TEST_BLOCK_K[backend])
