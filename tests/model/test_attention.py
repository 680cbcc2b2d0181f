"""The attention entry point: masks element by element, GQA, and agreement with jax's reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.model import attention as attn_lib


def _brute_mask(q_slots, kv_slots, kv_valid, causal, window, q_seg, kv_seg, bidi_from):
    b, tq = q_slots.shape
    tk = kv_slots.shape[1]
    m = np.zeros((b, tq, tk), bool)
    for bi, i, j in itertools.product(range(b), range(tq), range(tk)):
        qs, ks = q_slots[bi, i], kv_slots[bi, j]
        ok = bool(kv_valid[bi, j])
        if causal:
            in_tail = bidi_from is not None and qs >= bidi_from[bi] and ks >= bidi_from[bi]
            ok &= (ks <= qs) or in_tail
        if window is not None:
            ok &= qs - ks < window
        if q_seg is not None:
            ok &= q_seg[bi, i] == kv_seg[bi, j]
        m[bi, i, j] = ok
    return m


@pytest.mark.parametrize("causal,window,segments,bidi", [
    (True, None, False, False), (False, None, False, False), (True, 3, False, False),
    (False, None, True, False), (True, None, False, True), (True, 4, True, True)])
def test_mask_element_by_element(causal, window, segments, bidi):
    rng = np.random.default_rng()
    b, tq, tk = 2, 5, 9
    q_slots = np.stack([np.arange(tk - tq, tk)] * b).astype(np.int32)
    kv_slots = np.stack([np.arange(tk)] * b).astype(np.int32)
    kv_valid = rng.random((b, tk)) > 0.2
    q_seg = rng.integers(0, 2, (b, tq)) if segments else None
    kv_seg = rng.integers(0, 2, (b, tk)) if segments else None
    bidi_from = np.array([6, 7], np.int32) if bidi else None
    got = attn_lib.make_mask(q_slots, kv_slots, kv_valid=kv_valid, causal=causal, window=window,
                             q_segment=q_seg, kv_segment=kv_seg,
                             bidirectional_from=None if bidi_from is None else jnp.asarray(bidi_from))
    want = _brute_mask(q_slots, kv_slots, kv_valid, causal, window, q_seg, kv_seg, bidi_from)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gqa_equals_repeated_heads_and_jax_reference(groups):
    key = jax.random.key(np.random.default_rng().integers(1 << 30))
    kq, kk, kv = jax.random.split(key, 3)
    b, t, kh, d = 2, 11, 2, 16
    h = kh * groups
    q = jax.random.normal(kq, (b, t, h, d))
    k = jax.random.normal(kk, (b, t, kh, d))
    v = jax.random.normal(kv, (b, t, kh, d))
    valid = jnp.ones((b, t), bool).at[0, :3].set(False)  # left padding in row 0
    out = attn_lib.attention(q, k, v, kv_valid=valid)
    ref = jax.nn.dot_product_attention(q, jnp.repeat(k, groups, 2), jnp.repeat(v, groups, 2),
                                       mask=attn_lib.make_mask(jnp.broadcast_to(jnp.arange(t), (b, t)),
                                                               jnp.broadcast_to(jnp.arange(t), (b, t)),
                                                               kv_valid=valid)[:, None],
                                       implementation="xla")
    # Rows that see at least one key must agree (fully masked rows are padding).
    np.testing.assert_allclose(np.asarray(out)[:, 3:], np.asarray(ref)[:, 3:], rtol=1e-5, atol=1e-5)


def test_decode_query_sees_only_its_prefix():
    """A single query at slot s must ignore keys after s (unwritten cache slots)."""
    rng = np.random.default_rng()
    b, s_max, h, d = 1, 8, 2, 8
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, s_max, h, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, s_max, h, d)), jnp.float32)
    slots = jnp.arange(s_max)[None]
    out = attn_lib.attention(q, k, v, q_slots=jnp.array([[4]]), kv_slots=slots)
    k2 = k.at[:, 5:].set(100.0)
    v2 = v.at[:, 5:].set(-7.0)
    out2 = attn_lib.attention(q, k2, v2, q_slots=jnp.array([[4]]), kv_slots=slots)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))


def test_bad_head_counts_raise():
    q = jnp.zeros((1, 2, 3, 4))
    kv = jnp.zeros((1, 2, 2, 4))
    with pytest.raises(ValueError, match="not a multiple"):
        attn_lib.attention(q, kv, kv)
