"""Tile math shared by the Pallas attention kernels (flash, decode) and their references.

* `visibility`: the one attention mask builder of the project (the model's `make_mask`, the kernel
  references and every kernel tile call it).
* `online_softmax_step` / `normaliser`: one key block of the base-2 online softmax and its final
  normalisation, in the row form (GPU: running max / sum `[rows]`) and the lane-replicated form
  (TPU: `[rows, 128]`, every lane equal).
* matmuls with float32 accumulation, lane replication, block arithmetic, backend resolution and
  the per-backend compiler parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
NEG_INF = float("-inf")
LANES = 128  # TPU vreg lanes
SUBLANES = 8  # TPU vreg sublanes
MIN_BLOCK = {"gpu": 16, "tpu": 128}  # Triton `tl.dot` minimum; TPU: a token axis sits in the lanes


# --------------------------------------------------------------------------------------------------
# Mask
# --------------------------------------------------------------------------------------------------


def visibility(q_slots, k_slots, *, causal, bidirectional_from=None, q_segment=None, kv_segment=None,
               kv_valid=None, window=None):
    """Which keys each query sees, from broadcastable pieces (bool `[..., Sq, Sk]`, or None when no
    condition applies: everything visible).

    Key j is visible to query i when all of these hold: `kv_valid` (padding and unwritten slots
    are invalid); causal: `k_slot <= q_slot`, unless both slots are `>= bidirectional_from` (the
    action expert's trailing block attends to itself fully); `q_slot - k_slot < window` (sliding
    window); `q_segment == kv_segment` (packed sequences). Slots are token indices in the cache or
    packed sequence, never rotary positions. The model passes `[B, Tq, 1]` / `[B, 1, Tk]` pieces,
    the kernels 2-D tiles.
    """
    mask = None
    if causal:
        vis = k_slots <= q_slots
        if bidirectional_from is not None:
            vis = jnp.logical_or(vis, jnp.logical_and(q_slots >= bidirectional_from,
                                                      k_slots >= bidirectional_from))
        mask = and_mask(mask, vis)
    if window is not None:
        mask = and_mask(mask, q_slots - k_slots < window)
    if q_segment is not None:
        mask = and_mask(mask, q_segment == kv_segment)
    if kv_valid is not None:
        mask = and_mask(mask, kv_valid)
    return mask


def and_mask(mask, cond):
    """`mask & cond`, where a None mask means everything is visible."""
    return cond if mask is None else jnp.logical_and(mask, cond)


# --------------------------------------------------------------------------------------------------
# Online softmax (base-2 logits: log2(e) is folded into the scale)
# --------------------------------------------------------------------------------------------------


def online_softmax_step(s, m_prev, l_prev, *, lanes: bool = False):
    """One key block of the online softmax over scores `s [rows, bk]` (masked entries -inf).

    Returns the new running max, the rescale factor of the old accumulator, the block's
    probabilities `[rows, bk]` and the new running sum. Row form: `m, l [rows]`; lane form
    (`lanes=True`): `m, l [rows, 128]` lane-replicated, `bk` a multiple of 128. Rows that have seen
    no key yet keep max -inf without producing NaNs (their max counts as 0 in the exponents).
    """
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=lanes))
    m_safe = jnp.where(m_next == NEG_INF, 0.0, m_next)
    alpha = jnp.exp2(m_prev - m_safe)
    p = jnp.exp2(s - (jnp.tile(m_safe, (1, s.shape[1] // LANES)) if lanes else m_safe[:, None]))
    return m_next, alpha, p, alpha * l_prev + jnp.sum(p, axis=1, keepdims=lanes)


def normaliser(m, l):
    """After the last block: the safe divisor (1 on rows that saw no key, whose output is 0) and
    the natural-log logsumexp (-inf on those rows), in the shape of `m` / `l`."""
    empty = l == 0.0
    l_safe = jnp.where(empty, 1.0, l)
    return l_safe, jnp.where(empty, NEG_INF, m * LN2 + jnp.log(l_safe))


def lanes(x, width):
    """A lane-replicated `[rows, 128]` array as `[rows, width]`."""
    if width == LANES:
        return x
    if width < LANES:
        return x[:, :width]
    return jnp.tile(x, (1, -(-width // LANES)))[:, :width]


# --------------------------------------------------------------------------------------------------
# Matmuls (float32 accumulation)
# --------------------------------------------------------------------------------------------------


def dot(a, b):
    """a [m, k] . b [k, n] -> [m, n] float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def dot_nt(a, b):
    """a [m, d] . b [n, d]^T -> [m, n] float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


# --------------------------------------------------------------------------------------------------
# Blocks, backends, compiler parameters
# --------------------------------------------------------------------------------------------------


def is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def head_dim_class(d: int) -> int:
    """The block-table row of a head dim: 64 for D <= 64, else 128."""
    return 64 if d <= 64 else 128


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


def gpu_params(num_warps, num_stages):
    """Triton compiler parameters (the Triton lowering loads only when a GPU kernel is traced)."""
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def tpu_params(semantics):
    """Mosaic compiler parameters: the grid's dimension semantics."""
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.CompilerParams(dimension_semantics=semantics)


def tpu_interpret(interpret: bool):
    """The `interpret=` argument of a TPU `pallas_call`: the TPU interpreter, or False."""
    if not interpret:
        return False
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.InterpretParams()
