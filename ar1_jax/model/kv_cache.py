"""A preallocated KV cache for prefill + decode.

Slots are shared across the batch: slot s of every row is written at the same step, so the write
index is one scalar. Left padding and unwritten slots are excluded by `valid`. Each row keeps its
own next rotary position (M-RoPE positions are not slot indices once images are in the prompt).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int


@struct.dataclass
class KVCache:
    k: Float[Array, "L B S K D"]
    v: Float[Array, "L B S K D"]
    valid: Bool[Array, "B S"]
    length: Int[Array, ""]  # slots written so far == the next write slot
    next_position: Int[Array, "B"]  # rotary position (all three axes) of the next appended token

    @property
    def max_length(self) -> int:
        return self.k.shape[2]


def init_cache(num_layers: int, batch: int, max_length: int, num_kv_heads: int, head_dim: int,
               dtype=jnp.float32) -> KVCache:
    """An empty cache of `max_length` slots."""
    shape = (num_layers, batch, max_length, num_kv_heads, head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, max_length), bool),
        length=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


CACHE_LOGICAL_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
