"""The AR1 action expert: denoises 64 controls while reading the backbone's KV cache.

A decoder stack with its own width, heads and MLP but the backbone's depth, KV heads, head dim,
rotary and norm style. Layer i attends to the backbone's layer-i keys/values of the prefix (prompt,
reasoning and `<|traj_future_start|>`) plus its own 64 action tokens, which see each other
bidirectionally. The action tokens' rotary positions continue after `<|traj_future_start|>`,
equal on all three M-RoPE axes. The backbone's keys/values arrive rotated and normed, as cached.

Action-in (per control step): sqrt(2) [sin, cos](2 pi u f) for 10 log-spaced frequencies f in
[1, 100], for u = acceleration, curvature (normalised) and the flow time t: 60 features -> MLP
(Linear, SiLU, [RMSNorm, Linear, SiLU] x (n - 1), RMSNorm, Linear) -> LayerNorm -> expert width.
Action-out: the final-normed hidden state -> Linear -> velocity `[64, 2]` in normalised control space.

Parameters: action_in.{fc_in_kernel [6F, Hin], fc_in_bias, mid_norm [n-1, Hin], mid_kernel
[n-1, Hin, Hin], mid_bias, final_norm [Hin], fc_out_kernel [Hin, E], fc_out_bias, out_norm_scale [E],
out_norm_bias [E]}; layers (as the decoder's, stacked [L, ...]); final_norm [E];
action_out.{kernel [E, 2], bias [2]}.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from ar1_jax.config import Config, TextConfig
from ar1_jax.model import attention as attn_lib
from ar1_jax.model import rope
from ar1_jax.model.layers import dense, layer_norm, make_param, rms_norm
from ar1_jax.model.text import Params, attention_inputs, attention_output_and_mlp, make_layer_params

CONTROL_DIMS = 2


def expert_text_config(cfg: Config) -> TextConfig:
    """The backbone's decoder config with the expert's width, heads and MLP (nothing else changes)."""
    e = cfg.expert
    return dataclasses.replace(cfg.model.text, hidden_size=e.hidden_size, intermediate_size=e.intermediate_size,
                               num_heads=e.num_heads, tie_word_embeddings=True)


def fourier_frequencies(cfg: Config) -> np.ndarray:
    """`[F]` frequencies: the explicit list when given, else log-spaced in [1, max_frequency]."""
    e = cfg.expert
    if e.frequencies:
        return np.asarray(e.frequencies, np.float32)
    return np.logspace(0.0, np.log10(e.max_frequency), e.num_frequencies).astype(np.float32)


class ActionExpert(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        e = cfg.expert
        tcfg = expert_text_config(cfg)
        hin, E, n = e.action_in_hidden, e.hidden_size, e.action_in_layers
        feats = 2 * e.num_frequencies * (CONTROL_DIMS + 1)
        p = functools.partial(make_param, rngs, dtype=param_dtype)
        self.action_in = Params(
            fc_in_kernel=p((feats, hin), ("features", "mlp"), std=feats**-0.5),
            fc_in_bias=p((hin,), ("mlp",), init="zeros"),
            mid_norm=p((n - 1, hin), ("layers", "norm"), init="ones"),
            mid_kernel=p((n - 1, hin, hin), ("layers", "embed", "mlp"), std=hin**-0.5),
            mid_bias=p((n - 1, hin), ("layers", "mlp"), init="zeros"),
            final_norm=p((hin,), ("norm",), init="ones"),
            fc_out_kernel=p((hin, E), ("mlp", "embed"), std=hin**-0.5),
            fc_out_bias=p((E,), ("norm",), init="zeros"),
            out_norm_scale=p((E,), ("norm",), init="ones"),
            out_norm_bias=p((E,), ("norm",), init="zeros"),
        )
        self.layers = make_layer_params(rngs, tcfg, param_dtype)
        self.final_norm = p((E,), ("norm",), init="ones")
        self.action_out = Params(kernel=p((E, CONTROL_DIMS), ("embed", "features")),
                                 bias=p((CONTROL_DIMS,), ("features",), init="zeros"))


def fourier_features(u: Float[Array, "..."], freqs: np.ndarray) -> Float[Array, "... F2"]:
    """sqrt(2) [sin(2 pi u f), cos(2 pi u f)] over the frequencies (all sines, then all cosines)."""
    arg = 2.0 * jnp.pi * u.astype(jnp.float32)[..., None] * jnp.asarray(freqs)
    return jnp.sqrt(2.0) * jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def action_in(params: dict, cfg: Config, x_t: Float[Array, "N A 2"], t: Float[Array, "N"], dtype):
    """Noisy normalised controls and flow time -> expert input embeddings `[N, A, E]`."""
    freqs = fourier_frequencies(cfg)
    tt = jnp.broadcast_to(t.astype(jnp.float32)[:, None], x_t.shape[:2])
    f = jnp.concatenate([fourier_features(x_t[..., 0], freqs), fourier_features(x_t[..., 1], freqs),
                         fourier_features(tt, freqs)], axis=-1)
    p = params["action_in"]
    eps = cfg.expert.action_in_norm_eps
    h = jax.nn.silu(dense(f.astype(dtype), p["fc_in_kernel"], p["fc_in_bias"]))
    for i in range(cfg.expert.action_in_layers - 1):
        h = jax.nn.silu(dense(rms_norm(h, p["mid_norm"][i], eps), p["mid_kernel"][i], p["mid_bias"][i]))
    h = dense(rms_norm(h, p["final_norm"], eps), p["fc_out_kernel"], p["fc_out_bias"])
    return layer_norm(h, p["out_norm_scale"], p["out_norm_bias"], eps)


def expert_velocity(
    params: dict,
    cfg: Config,
    x_t: Float[Array, "N A 2"],
    t: Float[Array, "N"],
    prefix_k: Float[Array, "L N S K D"],
    prefix_v: Float[Array, "L N S K D"],
    prefix_valid: Bool[Array, "N S"],
    first_position: Int[Array, "N"],
    *,
    dtype=jnp.float32,
    impl: str = "xla",
) -> Float[Array, "N A 2"]:
    """The predicted flow velocity for noisy controls `x_t` at time `t`.

    `prefix_k/v` are the backbone's cached keys/values per layer; `prefix_valid` marks the slots the
    actions may read (valid prompt and reasoning up to and including `<|traj_future_start|>`).
    Action token j sits at rotary position `first_position + j` on all three axes. `impl` is the
    attention impl (`attention.denoise`: `pallas` reads the prefix cache in place, without
    concatenating it with the action tokens' keys; pass `cfg.model.attention_impl_for("expert")`).
    """
    tcfg = expert_text_config(cfg)
    n, a, _ = x_t.shape
    # The residual stream and the rotary stay float32 with `dtype` matmuls, as the release runs its
    # expert under bf16 autocast (f32 activations between the autocast linears / attention).
    x = action_in(params, cfg, x_t, t, dtype).astype(jnp.float32)
    pos = first_position[:, None] + jnp.arange(a, dtype=jnp.int32)[None]
    cos, sin = rope.mrope_cos_sin(jnp.broadcast_to(pos[None], (3, n, a)), tcfg.head_dim, tcfg.rope_theta,
                                  tcfg.mrope_section, tcfg.mrope_interleaved)

    def layer(x, lp, pk, pv):
        q, k, v = attention_inputs(lp, tcfg, x, cos, sin, compute_dtype=dtype)
        o = attn_lib.denoise(q, pk, pv, prefix_valid, k, v, impl=impl)
        return attention_output_and_mlp(lp, tcfg, x, o, compute_dtype=dtype)

    if isinstance(params["layers"], (tuple, list)):  # inference layout: per-layer buffers, unrolled
        for i, lp in enumerate(params["layers"]):
            x = layer(x, lp, prefix_k[i], prefix_v[i])
    else:
        x, _ = jax.lax.scan(lambda x, xs: (layer(x, *xs), None), x, (params["layers"], prefix_k, prefix_v))
    h = rms_norm(x, params["final_norm"], tcfg.rms_norm_eps).astype(dtype)
    out = params["action_out"]
    return dense(h, out["kernel"], out["bias"]).astype(jnp.float32)
