"""Weight-only int8 kernels (per-output-channel scales) and the inference layout of layer stacks.

`Int8Kernel(q, scale)` stands in for a float kernel `[*in, *out]` (a leading `layers` axis allowed):
`q` int8 of the kernel's shape, `scale` float32 `[*out]` (with the layers axis: `[L, *out]`), and
kernel ~= q * scale. `matmul(x, kernel, n_in)` contracts the last `n_in` dims of `x` with the first
`n_in` (after any layers axis) of either kind of kernel; the model's dense layers, attention output
projection, LM head and embedding lookup all go through it, so a params tree whose decoder / expert
kernels were replaced by `quantize_tree` runs unchanged. The scale is applied to the product (one
multiply per output), the weights are read as 1 byte each: decode, which is weight-bandwidth bound,
reads a quarter of the f32 bytes (half of bf16).

Rows <= `GEMV_MAX_ROWS` on a CPU backend contract as a fused multiply-reduce over the int8 weights
(XLA:CPU otherwise materialises a float copy of the weights before its dot); otherwise a dot of the
dequantised weights (on GPU XLA fuses the int8 -> float convert into the matmul).

`unstack_layers(tree)` turns a stacked layer dict (`[L, ...]` leaves) into a tuple of L per-layer
dicts: the decoder then runs its layers unrolled, each reading its own weight buffers (inside a scan
or a decode `while_loop`, XLA:CPU copies every dynamically sliced layer's weights before the matmul,
tripling a decode step's memory traffic).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

GEMV_MAX_ROWS = 8


@struct.dataclass
class Int8Kernel:
    q: jax.Array  # int8 [*lead, *in, *out]
    scale: jax.Array  # float32 [*lead, *out]

    @property
    def shape(self):
        return self.q.shape

    @property
    def ndim(self):
        return self.q.ndim


def quantize(kernel: jax.Array, n_in: int, n_lead: int = 0) -> Int8Kernel:
    """Symmetric int8 of `kernel [*lead (n_lead), *in (n_in), *out]`: one scale per output channel
    (and per leading index), amax / 127 over the input dims."""
    w = kernel.astype(jnp.float32)
    axes = tuple(range(n_lead, n_lead + n_in))
    amax = jnp.max(jnp.abs(w), axis=axes)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    s = jnp.expand_dims(scale, axes)
    q = jnp.clip(jnp.round(w / s), -127, 127).astype(jnp.int8)
    return Int8Kernel(q, scale)


def matmul(x: jax.Array, kernel, n_in: int = 1) -> jax.Array:
    """`x [..., *in] @ kernel [*in, *out] -> [..., *out]` in x's dtype, for a float or an `Int8Kernel`
    kernel (no leading layers axis here: the caller indexes the layer)."""
    in_shape = x.shape[x.ndim - n_in:]
    if not isinstance(kernel, Int8Kernel):
        return jnp.tensordot(x, kernel.astype(x.dtype), axes=n_in)
    out_shape = kernel.q.shape[n_in:]
    if kernel.q.shape[:n_in] != in_shape:
        raise ValueError(f"int8 matmul: input dims {in_shape} != kernel input dims {kernel.q.shape[:n_in]}")
    rows = math.prod(x.shape[:x.ndim - n_in])
    k_in, k_out = math.prod(in_shape), math.prod(out_shape)
    xf = x.reshape(rows, k_in)
    q = kernel.q.reshape(k_in, k_out)
    if rows <= GEMV_MAX_ROWS and jax.default_backend() == "cpu":
        acc = jnp.sum(xf.astype(jnp.float32)[:, :, None] * q.astype(jnp.float32)[None], axis=1)
    else:
        acc = jnp.dot(xf, q.astype(x.dtype), preferred_element_type=jnp.float32)
    y = acc * kernel.scale.reshape(1, k_out).astype(jnp.float32)
    return y.astype(x.dtype).reshape(x.shape[:x.ndim - n_in] + out_shape)


def matmul_rows(x: jax.Array, table) -> jax.Array:
    """`x [..., E] @ table [V, E].T -> [..., V]` float32 (the tied LM head), for a float table or an
    `Int8Kernel` with per-row scales."""
    if not isinstance(table, Int8Kernel):
        return jnp.einsum("...e,ve->...v", x, table.astype(x.dtype), preferred_element_type=jnp.float32)
    rows = math.prod(x.shape[:-1])
    xf = x.reshape(rows, x.shape[-1])
    if rows <= GEMV_MAX_ROWS and jax.default_backend() == "cpu":
        acc = jnp.sum(xf.astype(jnp.float32)[:, None, :] * table.q.astype(jnp.float32)[None], axis=2)
    else:
        acc = jnp.einsum("re,ve->rv", xf, table.q.astype(x.dtype), preferred_element_type=jnp.float32)
    return (acc * table.scale[None]).reshape(x.shape[:-1] + (table.q.shape[0],))


def take_rows(table, ids: jax.Array, dtype) -> jax.Array:
    """Embedding lookup `table [V, E][ids]` for a float table or an `Int8Kernel` with per-row scales."""
    if not isinstance(table, Int8Kernel):
        return jnp.take(table, ids, axis=0).astype(dtype)
    rows = jnp.take(table.q, ids, axis=0).astype(jnp.float32) * jnp.take(table.scale, ids, axis=0)[..., None]
    return rows.astype(dtype)


# Kernels quantized per tree: (path under a decoder's param dict, input dims after the layers axis).
DECODER_KERNELS = {("attn", "q_kernel"): 1, ("attn", "k_kernel"): 1, ("attn", "v_kernel"): 1,
                   ("attn", "o_kernel"): 2, ("mlp", "gate_kernel"): 1, ("mlp", "up_kernel"): 1,
                   ("mlp", "down_kernel"): 1}


def quantize_layers(layers: dict) -> dict:
    """A stacked decoder layer dict with its seven matmul kernels as `Int8Kernel`s (norms, biases kept)."""
    out = jax.tree.map(lambda a: a, layers)
    for (group, name), n_in in DECODER_KERNELS.items():
        out[group] = dict(out[group])
        out[group][name] = quantize(layers[group][name], n_in, n_lead=1)
    return out


def quantize_params(params: dict) -> dict:
    """AR1 / VLM params with the decoder's and the expert's matmul kernels in int8, and the LM head
    (or the tied embedding table, per vocabulary row). The vision tower and the expert's small
    action-in / action-out projections stay in float."""
    params = dict(params)
    text = dict(params["text"])
    text["layers"] = quantize_layers(text["layers"])
    if "lm_head" in text:
        text["lm_head"] = quantize(text["lm_head"], 1)
    else:
        table = quantize(text["embed"].T, 1)  # the tied head contracts over E: one scale per vocabulary row
        text["embed"] = Int8Kernel(table.q.T, table.scale)
    params["text"] = text
    if "expert" in params:
        expert = dict(params["expert"])
        expert["layers"] = quantize_layers(expert["layers"])
        params["expert"] = expert
    return params


def unstack_layers(layers):
    """`{..: [L, ...]}` (Int8Kernels included) -> a tuple of L per-layer dicts; a tuple is returned as is."""
    if isinstance(layers, (tuple, list)):
        return tuple(layers)
    n = jax.tree.leaves(layers)[0].shape[0]
    return tuple(jax.tree.map(lambda a, i=i: a[i], layers) for i in range(n))


def inference_params(params: dict, *, int8: bool = False) -> dict:
    """The inference layout of AR1 / VLM params: optionally int8 (`quantize_params`), then the decoder's
    and the expert's layer stacks unstacked into per-layer buffers (`unstack_layers`). Jitted, so the
    stacked originals can be dropped by the caller; the result runs through the same model functions."""

    def convert(p):
        p = quantize_params(p) if int8 else dict(p)
        p["text"] = dict(p["text"], layers=unstack_layers(p["text"]["layers"]))
        if "expert" in p:
            p["expert"] = dict(p["expert"], layers=unstack_layers(p["expert"]["layers"]))
        return p

    return jax.jit(convert)(params)
