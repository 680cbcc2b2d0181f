"""Token-policy RL: group advantages, dynamic sampling and clipped policy-gradient losses.

The VLM's tokens (reasoning text and discrete trajectory tokens) are trained with GRPO-family losses.
Rollouts come in groups: `N` prompts (scenes), each sampled `G` times, so rewards are `[N, G]`.
Flattened, the batch has `B = N * G` sequences of `L` token positions, and a `mask [B, L]` tells which
positions count (the sampled completion, not the prompt or padding).

Advantages (registry `ADVANTAGES`, each `rewards [N, G] -> [N, G]`, float32):
  - "grpo":   (r - mean_g) / (std_g + 1e-6), std with ddof=1 (`group_advantages`).
  - "drgrpo": r - mean_g (no std normalisation).
  - "rloo":   r - mean of the other G - 1 members = G / (G - 1) (r - mean_g).
  A group of one gets advantage 0. All reduce over the last axis, so they jit and vmap freely.

Policy losses (registry `POLICY_LOSSES`), one signature
`loss(logp [B, L], old_logp [B, L], advantages [B], mask [B, L], *, cfg, ref_logp=None) -> (loss, metrics)`:
  - "grpo": PPO clipped surrogate per token, mean over each sequence's tokens, then over sequences;
    optional k3 KL to a frozen reference (`cfg.kl_beta`, needs `ref_logp`).
  - "dapo": the same surrogate (asymmetric clip), token-level mean over every counted token of the batch.
  - "gspo": one length-normalised ratio per sequence, exp(mean_tokens(logp - old_logp)), clipped on the
    sequence level (use small eps, e.g. `GSPO_CONFIG`); gradients reach every token through the mean.
  `cfg.aggregation` overrides the token/sequence reduction of "grpo" and "dapo" (e.g. Dr. GRPO's
  "seq_mean_token_sum": per-sequence token sum over the constant padded length L).

Sign conventions (per token, ratio r = exp(logp - old_logp), advantage A):
  loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A); the clip is active (zero gradient) when
  A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low. Dual clip (A < 0 only): the loss r |A|
  grows without bound in r, so it is capped at dual_clip * |A| (zero gradient once r > dual_clip).

Every reduction over counted tokens divides by max(count, 1): no counted tokens gives loss 0, not NaN.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

ADV_EPS = 1e-6
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")

Mask = Bool[Array, "B L"] | Float[Array, "B L"]


# ----------------------------------------------------------------------------- advantages


def group_advantages(rewards: Float[Array, "*N G"], normalize_std: bool = True) -> Float[Array, "*N G"]:
    """Group-relative advantages: (r - mean_g) / (std_g + 1e-6), or r - mean_g if not `normalize_std`.

    `rewards` `[N, G]` (any leading dims; the group is the last axis), float32 out. The std uses
    ddof=1 (the unbiased sample variance); a group of one (G = 1) gets std 0, hence advantage 0.
    A constant group gives exactly 0 (no NaN).
    """
    r = jnp.asarray(rewards, jnp.float32)
    g = r.shape[-1]
    centred = r - jnp.mean(r, axis=-1, keepdims=True)
    if not normalize_std:
        return centred
    var = jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / max(g - 1, 1)
    return centred / (jnp.sqrt(var) + ADV_EPS)


def drgrpo_advantages(rewards: Float[Array, "*N G"]) -> Float[Array, "*N G"]:
    """Dr. GRPO: r - mean_g (no std normalisation), float32 `[N, G]`."""
    return group_advantages(rewards, normalize_std=False)


def rloo_advantages(rewards: Float[Array, "*N G"]) -> Float[Array, "*N G"]:
    """Leave-one-out baseline: r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_g); 0 when G = 1."""
    r = jnp.asarray(rewards, jnp.float32)
    g = r.shape[-1]
    if g < 2:
        return jnp.zeros_like(r)
    return (g / (g - 1)) * (r - jnp.mean(r, axis=-1, keepdims=True))


ADVANTAGES: dict[str, Callable[[Array], Array]] = {
    "grpo": group_advantages,
    "drgrpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}


def advantage_fn(name: str) -> Callable[[Array], Array]:
    """The advantage estimator registered as `name` (`rewards [N, G] -> [N, G]`); ValueError if unknown."""
    return _lookup(ADVANTAGES, name, "advantage estimator")


def keep_groups(rewards: Float[Array, "*N G"], tol: float = 0.0) -> Bool[Array, "*N"]:
    """Dynamic sampling (DAPO): True for groups whose rewards are not all equal (max - min > tol).

    A constant group has zero advantage under every estimator, so it carries no gradient.
    """
    r = jnp.asarray(rewards, jnp.float32)
    return (jnp.max(r, axis=-1) - jnp.min(r, axis=-1)) > tol


# ----------------------------------------------------------------------------- token log-probs


def masked_token_logp(
    logits: Float[Array, "B L V"], targets: Int[Array, "B L"], mask: Optional[Mask] = None
) -> Float[Array, "B L"]:
    """log softmax(logits)[target] per position, in float32 (nats).

    Computed as logit[target] - logsumexp(logits), without materialising the [B, L, V] log-softmax.
    Targets outside [0, V) (e.g. -1 padding) are clamped for the gather; pass `mask` to zero those
    positions (the result is 0 wherever `mask` is False).
    """
    x = logits.astype(jnp.float32)
    idx = jnp.clip(targets, 0, x.shape[-1] - 1).astype(jnp.int32)
    picked = jnp.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    out = picked - jax.nn.logsumexp(x, axis=-1)
    if mask is not None:
        out = jnp.where(jnp.asarray(mask, bool), out, 0.0)
    return out


def token_entropy(logits: Float[Array, "B L V"], mask: Mask) -> Float[Array, ""]:
    """Mean entropy (nats) of the token distributions softmax(logits) over counted positions; 0 if none."""
    x = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    p = jnp.exp(x - lse)
    ent = lse[..., 0] - jnp.sum(p * x, axis=-1)
    return _token_mean(ent, _fmask(mask))


# ----------------------------------------------------------------------------- policy losses


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of the token policy losses.

    eps_low, eps_high: the ratio is clipped to [1 - eps_low, 1 + eps_high] (the release: 0.2 / 0.28;
      equal values give the symmetric PPO/GRPO clip; GSPO uses ~3e-4 / 4e-4 on its sequence ratio).
    dual_clip: for A < 0 the loss is capped at dual_clip * |A| (None or 0: off; the release: 10).
      Must exceed 1 + eps_high to matter.
    kl_beta: weight of the k3 KL to the frozen reference `ref_logp` added to each token's loss
      (0: off; the release uses 0). The KL metric is reported either way.
    aggregation: None (the loss's own reduction) or one of AGGREGATIONS, used by "grpo" and "dapo":
      "token_mean" (DAPO), "seq_mean_token_mean" (GRPO), "seq_mean_token_sum" (Dr. GRPO: token sum
      divided by the padded length L, then the mean over sequences).
    """

    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: Optional[float] = 10.0
    kl_beta: float = 0.0
    aggregation: Optional[str] = None

    def __post_init__(self):
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"PolicyLossConfig: aggregation {self.aggregation!r} is not one of {AGGREGATIONS}")
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError("PolicyLossConfig: eps_low and eps_high must be >= 0")


GSPO_CONFIG = PolicyLossConfig(eps_low=3e-4, eps_high=4e-4)


def k3_kl(logp: Float[Array, "*s"], ref_logp: Float[Array, "*s"]) -> Float[Array, "*s"]:
    """k3 estimate of KL(pi || ref) per sample: exp(ref - logp) - (ref - logp) - 1 (>= 0), float32."""
    d = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    return jnp.exp(d) - d - 1.0


def clipped_surrogate(
    ratio: Float[Array, "*s"], adv: Float[Array, "*s"], cfg: PolicyLossConfig
) -> tuple[Float[Array, "*s"], Bool[Array, "*s"], Bool[Array, "*s"]]:
    """Per-element PPO loss -min(r A, clip(r) A) with the optional dual clip for A < 0.

    Returns (loss, clipped, dual_clipped): `clipped` marks elements whose PPO clip is active
    (A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low); `dual_clipped` marks A < 0 elements
    capped at dual_clip * |A|. Both have zero gradient wrt the ratio.
    """
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    loss = jnp.maximum(-ratio * adv, -jnp.clip(ratio, lo, hi) * adv)
    clipped = ((adv > 0) & (ratio > hi)) | ((adv < 0) & (ratio < lo))
    if cfg.dual_clip:
        cap = cfg.dual_clip * -adv  # = dual_clip * |A| where A < 0
        dual = (adv < 0) & (loss > cap)
        loss = jnp.where(dual, cap, loss)
    else:
        dual = jnp.zeros_like(clipped)
    return loss, clipped, dual


def grpo_loss(
    logp: Float[Array, "B L"],
    old_logp: Float[Array, "B L"],
    advantages: Float[Array, "B"],
    mask: Mask,
    *,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    ref_logp: Optional[Float[Array, "B L"]] = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """GRPO: per-token clipped surrogate (+ kl_beta * k3 KL), mean over each sequence, mean over sequences."""
    return _token_loss(logp, old_logp, advantages, mask, cfg, ref_logp, cfg.aggregation or "seq_mean_token_mean")


def dapo_loss(
    logp: Float[Array, "B L"],
    old_logp: Float[Array, "B L"],
    advantages: Float[Array, "B"],
    mask: Mask,
    *,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    ref_logp: Optional[Float[Array, "B L"]] = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """DAPO: per-token clipped surrogate (asymmetric clip), sum over all counted tokens / their count."""
    return _token_loss(logp, old_logp, advantages, mask, cfg, ref_logp, cfg.aggregation or "token_mean")


def gspo_loss(
    logp: Float[Array, "B L"],
    old_logp: Float[Array, "B L"],
    advantages: Float[Array, "B"],
    mask: Mask,
    *,
    cfg: PolicyLossConfig = GSPO_CONFIG,
    ref_logp: Optional[Float[Array, "B L"]] = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """GSPO: sequence ratio s = exp(mean_tokens(logp - old_logp)), clipped per sequence, mean over sequences.

    Sequences without counted tokens are left out of the mean (ratio 1, no gradient). The k3 KL term
    (kl_beta) is a per-sequence token mean, added to each sequence's loss. Metrics count sequences.
    """
    lp, olp, m = _prep(logp, old_logp, mask)
    adv = jnp.asarray(advantages, jnp.float32)
    cnt = jnp.sum(m, axis=-1)
    has = (cnt > 0).astype(jnp.float32)
    log_s = jnp.sum((lp - olp) * m, axis=-1) / jnp.maximum(cnt, 1.0)
    s = jnp.exp(log_s)
    seq_loss, clipped, dual = clipped_surrogate(s, adv, cfg)
    kl_tok = _kl_tokens(lp, olp, ref_logp, m)
    if cfg.kl_beta:
        _need_ref(ref_logp)
        seq_loss = seq_loss + cfg.kl_beta * jnp.sum(kl_tok * m, axis=-1) / jnp.maximum(cnt, 1.0)
    nseq = jnp.maximum(jnp.sum(has), 1.0)
    loss = jnp.sum(seq_loss * has) / nseq
    metrics = {
        "clip_frac": jnp.sum(clipped * has) / nseq,
        "dual_clip_frac": jnp.sum(dual * has) / nseq,
        "ratio_mean": jnp.sum(s * has) / nseq,
        "kl": _token_mean(kl_tok, m),
    }
    return loss, metrics


POLICY_LOSSES: dict[str, Callable] = {"grpo": grpo_loss, "dapo": dapo_loss, "gspo": gspo_loss}


def policy_loss_fn(name: str) -> Callable:
    """The policy loss registered as `name`; ValueError listing the choices if unknown.

    Each is `loss(logp [B, L], old_logp [B, L], advantages [B], mask [B, L], *, cfg, ref_logp=None)
    -> (scalar float32 loss, {"clip_frac", "dual_clip_frac", "ratio_mean", "kl"})`.
    """
    return _lookup(POLICY_LOSSES, name, "policy loss")


# ----------------------------------------------------------------------------- internals


def _token_loss(logp, old_logp, advantages, mask, cfg, ref_logp, aggregation):
    lp, olp, m = _prep(logp, old_logp, mask)
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    ratio = jnp.exp(lp - olp)
    tok_loss, clipped, dual = clipped_surrogate(ratio, adv, cfg)
    kl_tok = _kl_tokens(lp, olp, ref_logp, m)
    if cfg.kl_beta:
        _need_ref(ref_logp)
        tok_loss = tok_loss + cfg.kl_beta * kl_tok
    metrics = {
        "clip_frac": _token_mean(clipped.astype(jnp.float32), m),
        "dual_clip_frac": _token_mean(dual.astype(jnp.float32), m),
        "ratio_mean": _token_mean(ratio, m),
        "kl": _token_mean(kl_tok, m),
    }
    return _aggregate(tok_loss, m, aggregation), metrics


def _prep(logp, old_logp, mask):
    lp = logp.astype(jnp.float32)
    olp = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    m = _fmask(mask)
    if lp.shape != olp.shape or lp.shape != m.shape:
        raise ValueError(f"policy loss: logp {lp.shape}, old_logp {olp.shape} and mask {m.shape} must match")
    # Masked positions may hold garbage (padding): keep them out of exp() so no inf/NaN leaks into grads.
    lp = jnp.where(m > 0, lp, 0.0)
    olp = jnp.where(m > 0, olp, 0.0)
    return lp, olp, m


def _kl_tokens(lp, olp, ref_logp, m):
    if ref_logp is None:
        return k3_kl(lp, olp)
    ref = jnp.where(m > 0, jax.lax.stop_gradient(ref_logp.astype(jnp.float32)), 0.0)
    return k3_kl(lp, ref)


def _need_ref(ref_logp):
    if ref_logp is None:
        raise ValueError("policy loss: cfg.kl_beta > 0 needs ref_logp (the frozen reference's token log-probs)")


def _fmask(mask) -> Array:
    return jnp.asarray(mask).astype(jnp.float32)


def _token_mean(x, m) -> Array:
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def _aggregate(tok_loss, m, aggregation: str) -> Array:
    if aggregation == "token_mean":
        return _token_mean(tok_loss, m)
    cnt = jnp.sum(m, axis=-1)
    if aggregation == "seq_mean_token_mean":
        per_seq = jnp.sum(tok_loss * m, axis=-1) / jnp.maximum(cnt, 1.0)
    elif aggregation == "seq_mean_token_sum":
        per_seq = jnp.sum(tok_loss * m, axis=-1) / m.shape[-1]
    else:
        raise ValueError(f"policy loss: aggregation {aggregation!r} is not one of {AGGREGATIONS}")
    has = (cnt > 0).astype(jnp.float32)
    return jnp.sum(per_seq * has) / jnp.maximum(jnp.sum(has), 1.0)


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}") from None
