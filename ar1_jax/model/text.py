"""The decoder LLM of Qwen2.5-VL / Qwen3-VL: embeddings, scanned GQA layers with M-RoPE, LM head.

Parameters (leading `layers` axis on everything under `layers`; E hidden, H heads, K kv heads,
D head dim, F MLP width, V vocab):
  embed [V, E]; layers.{input_norm [L, E], post_attn_norm [L, E],
  attn.{q_kernel [L, E, H, D], k_kernel/v_kernel [L, E, K, D], o_kernel [L, H, D, E],
        q_bias [L, H, D], k_bias/v_bias [L, K, D] (Qwen2.5), q_norm/k_norm [L, D] (Qwen3)},
  mlp.{gate_kernel/up_kernel [L, E, F], down_kernel [L, F, E]}}; final_norm [E]; lm_head [E, V]
  (absent when tied to the embeddings).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from ar1_jax.config import TextConfig
from ar1_jax.model import attention as attn_lib
from ar1_jax.model import quant, rope
from ar1_jax.model.kv_cache import KVCache
from ar1_jax.model.layers import dense, make_param, remat_policy, rms_norm
from ar1_jax.parallel.rules import shard_activation


class Params(nnx.Module):
    """A named bundle of Params (or sub-bundles)."""

    def __init__(self, **children):
        for name, child in children.items():
            setattr(self, name, child)


def make_layer_params(rngs: nnx.Rngs, cfg: TextConfig, param_dtype=jnp.float32) -> Params:
    """Stacked parameters `[L, ...]` of `cfg.num_layers` decoder layers (Qwen2.5 or Qwen3 style)."""
    L, E, H, K, D, F = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size)
    p = functools.partial(make_param, rngs, dtype=param_dtype)
    attn = dict(
        q_kernel=p((L, E, H, D), ("layers", "embed", "heads", "head_dim")),
        k_kernel=p((L, E, K, D), ("layers", "embed", "kv_heads", "head_dim")),
        v_kernel=p((L, E, K, D), ("layers", "embed", "kv_heads", "head_dim")),
        o_kernel=p((L, H, D, E), ("layers", "heads", "head_dim", "embed")),
    )
    if cfg.qkv_bias:
        attn.update(
            q_bias=p((L, H, D), ("layers", "heads", "head_dim"), init="zeros"),
            k_bias=p((L, K, D), ("layers", "kv_heads", "head_dim"), init="zeros"),
            v_bias=p((L, K, D), ("layers", "kv_heads", "head_dim"), init="zeros"),
        )
    if cfg.qk_norm:
        attn.update(q_norm=p((L, D), ("layers", "norm"), init="ones"),
                    k_norm=p((L, D), ("layers", "norm"), init="ones"))
    return Params(
        input_norm=p((L, E), ("layers", "norm"), init="ones"),
        post_attn_norm=p((L, E), ("layers", "norm"), init="ones"),
        attn=Params(**attn),
        mlp=Params(
            gate_kernel=p((L, E, F), ("layers", "embed", "mlp")),
            up_kernel=p((L, E, F), ("layers", "embed", "mlp")),
            down_kernel=p((L, F, E), ("layers", "mlp", "embed")),
        ),
    )


class TextDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        p = functools.partial(make_param, rngs, dtype=param_dtype)
        self.embed = p((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.layers = make_layer_params(rngs, cfg, param_dtype)
        self.final_norm = p((cfg.hidden_size,), ("norm",), init="ones")
        if not cfg.tie_word_embeddings:
            self.lm_head = p((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))


def attention_inputs(lp: dict, cfg: TextConfig, x, cos, sin, compute_dtype=None):
    """Pre-norm, q/k/v projections (+ q/k RMSNorm for Qwen3) and rotary: q `[B, T, H, D]`, k and v
    `[B, T, K, D]`. `compute_dtype` (default x's): the matmuls' dtype when the residual stream `x` is
    kept wider (the action expert under the release's autocast: norm of the f32 stream, bf16
    matmuls, rotary in f32)."""
    a = lp["attn"]
    cd = x.dtype if compute_dtype is None else compute_dtype
    h = rms_norm(x, lp["input_norm"], cfg.rms_norm_eps).astype(cd)
    q = shard_activation(dense(h, a["q_kernel"], a.get("q_bias")), ("batch", "seq", "heads", "head_dim"))
    k = shard_activation(dense(h, a["k_kernel"], a.get("k_bias")), ("batch", "seq", "kv_heads", "head_dim"))
    v = shard_activation(dense(h, a["v_kernel"], a.get("v_bias")), ("batch", "seq", "kv_heads", "head_dim"))
    if cfg.qk_norm:
        q = rms_norm(q, a["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, a["k_norm"], cfg.rms_norm_eps)
    f32_rotary = compute_dtype is not None and x.dtype == jnp.float32
    return (rope.apply_rotary(q, cos, sin, compute_in_f32=f32_rotary),
            rope.apply_rotary(k, cos, sin, compute_in_f32=f32_rotary), v)


def attention_output_and_mlp(lp: dict, cfg: TextConfig, x, o, compute_dtype=None):
    """Output projection of the attention `o [B, T, H, D]` into the residual, then the SwiGLU MLP;
    matmuls in `compute_dtype` (default x's), the residual stream in x's dtype."""
    cd = x.dtype if compute_dtype is None else compute_dtype
    x = x + quant.matmul(o.astype(cd), lp["attn"]["o_kernel"], 2).astype(x.dtype)
    x = shard_activation(x, ("batch", "seq", "embed"))
    m = lp["mlp"]
    h = rms_norm(x, lp["post_attn_norm"], cfg.rms_norm_eps).astype(cd)
    hidden = shard_activation(jax.nn.silu(dense(h, m["gate_kernel"])) * dense(h, m["up_kernel"]),
                              ("batch", "seq", "mlp"))
    return shard_activation(x + dense(hidden, m["down_kernel"]).astype(x.dtype), ("batch", "seq", "embed"))


def embed_tokens(params: dict, input_ids: Int[Array, "B T"], dtype) -> Float[Array, "B T E"]:
    # FSDP: gather the table's embed dim before the lookup (as for any weight); otherwise the partitioner
    # must move a gather sharded on embed into the batch-sharded layout, by replicating it.
    table = params["embed"]
    if isinstance(table, quant.Int8Kernel):
        table = table.replace(q=shard_activation(table.q, ("vocab", None)))
    else:
        table = shard_activation(table, ("vocab", None))
    x = quant.take_rows(table, input_ids, dtype)
    return shard_activation(x, ("batch", "seq", "embed"))


def lm_logits(params: dict, cfg: TextConfig, hidden: Float[Array, "B T E"]) -> Float[Array, "B T V"]:
    """Final norm + LM head; logits in float32."""
    h = rms_norm(hidden, params["final_norm"], cfg.rms_norm_eps)
    if cfg.tie_word_embeddings:
        logits = quant.matmul_rows(h, params["embed"])
    elif isinstance(params["lm_head"], quant.Int8Kernel):
        logits = quant.matmul(h.astype(jnp.float32), params["lm_head"], 1)
    else:
        logits = jnp.einsum("bte,ev->btv", h, params["lm_head"].astype(h.dtype), preferred_element_type=jnp.float32)
    return shard_activation(logits, ("batch", "seq", "vocab"))


def decode_layers(
    params: dict,
    cfg: TextConfig,
    x: Float[Array, "B T E"],
    positions: Int[Array, "3 B T"],
    *,
    kv_valid: Bool[Array, "B T"] | None = None,
    cache: KVCache | None = None,
    deepstack: Float[Array, "N B T E"] | None = None,
    impl: str = "xla",
) -> tuple[Float[Array, "B T E"], KVCache | None]:
    """Runs all decoder layers over `x`.

    Without a cache this is a causal self-attention over the T tokens (padding masked by
    `kv_valid`). With a cache, the T tokens are written at slots [length, length + T) and attend to
    every valid slot up to their own; `kv_valid` marks which of the new tokens are real. `impl` is the
    attention impl of this call (the caller picks it per call site: prefill vs decode). DeepStack
    features (Qwen3-VL) are added to the output of layer i for i < N (zero outside image tokens).
    """
    b, t, _ = x.shape
    cos, sin = rope.mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cfg.mrope_interleaved)
    if kv_valid is None:
        kv_valid = jnp.ones((b, t), bool)
    layer_params = params["layers"]
    n_deep = 0 if deepstack is None else deepstack.shape[0]

    # Structured slots (keys at arange, queries at q_offset + arange): what every attention impl,
    # the Pallas kernels included, can take.
    if cache is None:
        attend_kwargs = dict(q_offset=0, kv_valid=kv_valid)
    else:
        new_valid = jax.lax.dynamic_update_slice(cache.valid, kv_valid, (0, cache.length))
        attend_kwargs = dict(q_offset=cache.length, kv_valid=new_valid)

    def layer(x, lp, layer_idx, k_cache, v_cache):
        q, k, v = attention_inputs(lp, cfg, x, cos, sin)
        if k_cache is not None:  # written in place: slot `length` of layer `layer_idx`, nothing else copied
            start = (layer_idx, 0, cache.length, 0, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k[None].astype(k_cache.dtype), start)
            v_cache = jax.lax.dynamic_update_slice(v_cache, v[None].astype(v_cache.dtype), start)
            k = jax.lax.dynamic_index_in_dim(k_cache, layer_idx, 0, keepdims=False).astype(x.dtype)
            v = jax.lax.dynamic_index_in_dim(v_cache, layer_idx, 0, keepdims=False).astype(x.dtype)
        o = attn_lib.attention(q, k, v, causal=True, window=cfg.sliding_window, impl=impl, **attend_kwargs)
        x = attention_output_and_mlp(lp, cfg, x, o)
        if n_deep:
            feat = jax.lax.dynamic_index_in_dim(deepstack, jnp.minimum(layer_idx, n_deep - 1), 0, keepdims=False)
            x = x + jnp.where(layer_idx < n_deep, feat.astype(x.dtype), jnp.zeros_like(x))
        return x, k_cache, v_cache

    k_cache = None if cache is None else cache.k
    v_cache = None if cache is None else cache.v
    if isinstance(layer_params, (tuple, list)):
        # Inference layout (`quant.unstack_layers`): one weight buffer per layer, layers unrolled.
        for i, lp in enumerate(layer_params):
            x, k_cache, v_cache = layer(x, lp, i, k_cache, v_cache)
    else:
        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=remat_policy(cfg.remat))
        if cfg.scan_layers:
            def body(carry, xs):
                x, kc, vc = carry
                lp, idx = xs
                x, kc, vc = layer(x, lp, idx, kc, vc)
                return (x, kc, vc), None

            (x, k_cache, v_cache), _ = jax.lax.scan(
                body, (x, k_cache, v_cache), (layer_params, jnp.arange(cfg.num_layers, dtype=jnp.int32)))
        else:
            for i in range(cfg.num_layers):
                lp = jax.tree.map(lambda a, i=i: a[i], layer_params)
                x, k_cache, v_cache = layer(x, lp, jnp.int32(i), k_cache, v_cache)

    if cache is not None:
        cache = cache.replace(k=k_cache, v=v_cache, valid=attend_kwargs["kv_valid"], length=cache.length + t)
    return x, cache
