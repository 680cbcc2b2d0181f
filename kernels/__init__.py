"""Pallas kernels (imported as ar1_jax.kernels); each module holds a kernel and its jnp reference.

The exports below are cheap to import (jax + `jax.experimental.pallas`; the Triton and Mosaic TPU
modules load only when a kernel is traced for that backend). They are imported eagerly on purpose:
a lazy `__getattr__` would be shadowed by the submodule of the same name once anything imports
`ar1_jax.kernels.flash_attention` directly.
"""

from ar1_jax.kernels.decode_attention import decode_attention, decode_attention_reference
from ar1_jax.kernels.denoise_attention import denoise_attention, denoise_attention_reference
from ar1_jax.kernels.flash_attention import flash_attention, flash_attention_reference

__all__ = [
    "decode_attention",
    "decode_attention_reference",
    "denoise_attention",
    "denoise_attention_reference",
    "flash_attention",
    "flash_attention_reference",
]
