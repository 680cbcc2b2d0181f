"""denoise_attention (prefix pass + own-keys pass merged by logsumexp) against its concatenating jnp
reference, in interpret mode on CPU: forward and gradients of every input, float32 and bfloat16,
GQA, padded prefixes (including a row with no valid prefix slot); and the reference against the
model's XLA attention over the concatenation."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.kernels import denoise_attention, denoise_attention_reference

F32_OUT, BF16_OUT = 2e-5, 1e-2
F32_GRAD, BF16_GRAD = 1e-4, 2e-2
# Small blocks so the prefix spans several key blocks (skipping, carries, padding).
TEST_BLOCKS = {"gpu": dict(block_q=16, block_k=32), "tpu": dict(block_q=128, block_k=128)}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n: int
    a: int
    s: int
    h: int
    hkv: int
    d: int


CASES = [
    Case("gqa2_d64", 3, 24, 150, 4, 2, 64),
    Case("gqa4_d128_a64", 2, 64, 100, 4, 1, 128),
]


def _make(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    q = jnp.asarray(normal(case.n, case.a, case.h, case.d), dtype)
    pk = jnp.asarray(normal(case.n, case.s, case.hkv, case.d), dtype)
    pv = jnp.asarray(normal(case.n, case.s, case.hkv, case.d), dtype)
    ok = jnp.asarray(normal(case.n, case.a, case.hkv, case.d), dtype)
    ov = jnp.asarray(normal(case.n, case.a, case.hkv, case.d), dtype)
    slots = np.arange(case.s)
    valid = np.zeros((case.n, case.s), bool)
    # row 0: left padding, then prompt + reasoning up to <|traj_future_start|>, then unwritten slots
    valid[0] = (slots >= 11) & (slots <= case.s - 30)
    # row 1: no valid prefix slot at all (the own keys still are): finite output and gradients
    if case.n > 2:
        valid[2] = rng.random(case.s) > 0.5  # holes anywhere
    w = jnp.asarray(normal(case.n, case.a, case.h, case.d))
    return (q, pk, pv, jnp.asarray(valid), ok, ov), w


def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _run(fn, args, w):
    q, pk, pv, valid, ok, ov = args

    def f(q, pk, pv, ok, ov):
        return fn(q, pk, pv, valid, ok, ov)

    out, vjp = jax.vjp(f, q, pk, pv, ok, ov)
    return out, vjp(w.astype(out.dtype))


# The GPU-style kernel on every case; the TPU kernel (slower to interpret; its D=64 and D=128 layouts
# are covered by the flash_attention tests) on one.
COMBOS = [(c, "gpu") for c in CASES] + [(CASES[1], "tpu")]


@pytest.mark.parametrize("dtype", (jnp.float32, jnp.bfloat16), ids=lambda d: d.__name__)
@pytest.mark.parametrize("case,backend", COMBOS, ids=lambda x: x.name if isinstance(x, Case) else x)
def test_matches_reference(case, backend, dtype):
    args, w = _make(case, dtype)
    w = w.astype(dtype).astype(jnp.float32)
    kernel = functools.partial(denoise_attention, backend=backend, interpret=True,
                               **TEST_BLOCKS[backend])
    out, grads = jax.jit(functools.partial(_run, kernel))(args, w)
    up = tuple(x if x.dtype == jnp.bool_ else x.astype(jnp.float32) for x in args)
    ref, ref_grads = jax.jit(functools.partial(_run, denoise_attention_reference))(up, w)

    assert out.shape == args[0].shape and out.dtype == dtype
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    err = _rel(out, ref)
    assert err < (F32_OUT if dtype == jnp.float32 else BF16_OUT), f"output rel err {err}"
    tol = F32_GRAD if dtype == jnp.float32 else BF16_GRAD
    for name, g, r, x in zip(("q", "prefix_k", "prefix_v", "own_k", "own_v"), grads, ref_grads,
                             (args[0], args[1], args[2], args[4], args[5])):
        assert g.shape == x.shape and g.dtype == x.dtype
        assert np.all(np.isfinite(np.asarray(g, np.float32))), f"d{name}: non-finite"
        err = _rel(g, r)
        assert err < tol, f"{case.name} {backend} {dtype.__name__}: d{name} rel err {err}"
    # invalid prefix slots get exactly zero key / value gradient
    invalid = ~np.asarray(args[3])
    assert np.all(np.asarray(grads[1], np.float32)[invalid] == 0.0)
    assert np.all(np.asarray(grads[2], np.float32)[invalid] == 0.0)


def test_cpu_default_backend_and_model_semantics():
    """backend=None on a CPU host runs interpreted; the reference is the model's XLA attention over
    the concatenated keys with `causal=False` and the concatenated validity."""
    from ar1_jax.model.attention import attention

    case = Case("model", 2, 16, 40, 4, 2, 32)
    args, _ = _make(case, jnp.float32, seed=1)
    q, pk, pv, valid, ok, ov = args
    want = jax.jit(functools.partial(attention, causal=False, impl="xla"))(
        q, jnp.concatenate([pk, ok], 1), jnp.concatenate([pv, ov], 1),
        kv_valid=jnp.concatenate([valid, jnp.ones((2, 16), bool)], 1))
    assert _rel(jax.jit(denoise_attention_reference)(*args), want) < F32_OUT
    assert _rel(denoise_attention(*args), want) < F32_OUT


def test_errors_and_export():
    import ar1_jax.kernels as kernels

    assert kernels.denoise_attention is denoise_attention
    q = jnp.zeros((1, 8, 4, 16))
    kv = jnp.zeros((1, 20, 2, 16))
    own = jnp.zeros((1, 8, 2, 16))
    with pytest.raises(ValueError, match="prefix_valid shape"):
        denoise_attention(q, kv, kv, jnp.ones((1, 19), bool), own, own)
    with pytest.raises(ValueError, match="own_k"):
        denoise_attention(q, kv, kv, jnp.ones((1, 20), bool), own[:, :4], own[:, :4])
    with pytest.raises(ValueError, match="multiple of 3 kv heads"):
        denoise_attention(q, jnp.zeros((1, 20, 3, 16)), jnp.zeros((1, 20, 3, 16)), jnp.ones((1, 20), bool),
                          jnp.zeros((1, 8, 3, 16)), jnp.zeros((1, 8, 3, 16)))


@pytest.mark.parametrize("backend,platform,target", [("gpu", "cuda", "__gpu$xla.gpu.triton"),
                                                     ("tpu", "tpu", "tpu_custom_call")])
def test_lowers_for_device(backend, platform, target):
    """Forward + backward lower for real devices: 2 forward kernels + 2 x (dq, dkv)."""
    n, a, s, h, hkv, d = 8, 64, 3072, 14, 2, 64
    q = jax.ShapeDtypeStruct((n, a, h, d), jnp.bfloat16)
    pk = jax.ShapeDtypeStruct((n, s, hkv, d), jnp.bfloat16)
    ok = jax.ShapeDtypeStruct((n, a, hkv, d), jnp.bfloat16)
    valid = jax.ShapeDtypeStruct((n, s), jnp.bool_)

    def loss(q, pk, pv, valid, ok, ov):
        return denoise_attention(q, pk, pv, valid, ok, ov, backend=backend).astype(jnp.float32).sum()

    exported = jax.export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2, 4, 5))), platforms=[platform],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(q, pk, pk, valid, ok, ok)
    assert exported.mlir_module().count(target) == 6
