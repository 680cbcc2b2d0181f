"""Parameter creation with logical axis names, and the small numeric building blocks.

Every parameter is an `nnx.Param` whose metadata `logical_axes` names each dimension (`embed`,
`heads`, `mlp`, `layers`, ...); `ar1_jax.parallel.rules` turns those names into shardings. Layer
stacks hold their parameters with a leading `layers` axis and are applied with `lax.scan`, so the
compute functions here are pure functions of arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ar1_jax.config import DTYPES
from ar1_jax.model import quant


def dtype_of(name_or_dtype) -> jnp.dtype:
    """A config dtype name (one of `ar1_jax.config.DTYPES`) or any dtype -> the jnp dtype."""
    if isinstance(name_or_dtype, str) and name_or_dtype not in DTYPES:
        raise ValueError(f"unknown dtype {name_or_dtype!r}; expected one of {DTYPES}")
    return jnp.dtype(name_or_dtype)


def make_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], *, init: str = "normal",
               std: float = 0.02, dtype=jnp.float32) -> nnx.Param:
    """A Param of `shape` named by `axes`; `init` is normal(std) | zeros | ones."""
    if len(shape) != len(axes):
        raise ValueError(f"param shape {shape} and logical axes {axes} differ in rank")
    if init == "normal":
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, logical_axes=tuple(axes))


def values(module: nnx.Module) -> dict:
    """The module's Params as a nested dict of plain arrays (what the pure functions take)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def rms_norm(x, scale, eps: float):
    """RMSNorm as Qwen computes it: normalise in f32, cast back, then multiply by the scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


def layer_norm(x, scale, bias, eps: float):
    """LayerNorm with f32 statistics."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
    return y * scale.astype(x.dtype) + bias.astype(x.dtype)


def dense(x, kernel, bias=None):
    """`x @ kernel (+ bias)` over the last axis of x; kernel `[in, ...out]` (multi-dim outputs allowed),
    a float array or a `quant.Int8Kernel`."""
    y = quant.matmul(x, kernel, 1)
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y


def activation(name: str):
    if name == "silu":
        return jax.nn.silu
    if name == "gelu_pytorch_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    raise ValueError(f"unknown activation {name!r}")


def remat_policy(name: str):
    """`jax.checkpoint` policy for a scanned layer (`none` = no rematerialisation)."""
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots
    if name == "dots_no_batch":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return None
