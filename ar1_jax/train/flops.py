"""Analytic FLOPs of one AR1 SFT step, device peak FLOP/s, and model FLOPs utilisation (MFU).

Counted: every matrix multiply of `ar1_jax.model.vla.sft_loss`, 2 FLOPs per multiply-add, the way
the XLA reference computes it. Elementwise work (norms, activations, rotary, softmax, losses) is
not counted; it is a few percent of the total at real sizes (`tests/train/test_flops.py` checks
the count against XLA's own cost analysis). These are *model* FLOPs: recomputation under
`text.remat` is not counted, as is usual for MFU.

Parts (`B` batch, `T` sequence, `Np` vision patches in the batch before merging):
  vision   patch embed, blocks (q/k/v/o, MLP), per-segment attention, merger, DeepStack mergers
  text     decoder layers: q/k/v/o projections, full `T x T` attention scores and values (the XLA
           path computes the causal mask's upper half too), SwiGLU MLP
  lm_head  final projection to the vocabulary
  expert   action-in MLP, expert layers (`A = action.horizon` queries over `T + A` keys), action-out
           (0 with `loss.flow_weight == 0`: the loss does not run the expert then)

Backward (`sft_step_flops`), per part: *trained* (its parameters get gradients), *traversed*
(frozen, but gradients pass through it to a trained part upstream: the text when it is frozen and
the vision trains; the expert when it is frozen and `loss.stop_gradient_kv` is off) or neither (no backward).
  - a weight matmul: 2x its forward trained (input and weight gradients), 1x traversed (input only);
  - on a non-differentiated input (pixels, the expert's Fourier features): 1x trained, 0 traversed;
  - the rest of the expert's action-in MLP: 2x trained, 0 traversed (not on the path to the K/V);
  - attention scores and values (activation x activation): 2x either way, the expert's attention
    over the stop-gradient backbone K/V included (the XLA path concatenates prefix and own keys,
    the flash kernel's backward computes dK/dV whole; the prefix part is then dropped).
Frozen parameters are assumed to get no gradient computed (the training loop stop-gradients them).
These rules reproduce the dot count of `jax.value_and_grad(sft_loss)` exactly (tests).
"""

from __future__ import annotations

import math

from ar1_jax.config import Config, VisionConfig

PARTS = ("vision", "text", "expert")  # top-level parameter modules

# Backward cost per forward FLOP by kind of matmul: (part trained, part frozen but traversed).
_BACKWARD = {
    "weight": (2.0, 1.0),  # activation x parameter: input and weight gradients
    "input_weight": (1.0, 0.0),  # parameter applied to a non-differentiated input: weight gradient only
    "data_weight": (2.0, 0.0),  # later matmuls on a branch fed only by data (the expert's action-in MLP)
    "act": (2.0, 2.0),  # activation x activation (attention scores and values)
}

# Dense bf16 peak FLOP/s per device, matched as a case-insensitive substring of `device_kind`
# (the longest matching key wins, so "H100 PCIe" beats "H100" and "TPU v5 lite" beats "TPU v5").
PEAK_FLOPS: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "B200": 2.25e15,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def _mm(rows: float, fan_in: float, fan_out: float) -> float:
    """FLOPs of `[rows, fan_in] @ [fan_in, fan_out]`."""
    return 2.0 * rows * fan_in * fan_out


def _attn(groups: float, heads: int, q_len: float, k_len: float, head_dim: int) -> float:
    """FLOPs of attention scores (`q k^T`) plus values (`p v`) over `groups` independent sequences."""
    return 4.0 * groups * heads * q_len * k_len * head_dim


def default_frame_hw(cfg: Config) -> tuple[int, int]:
    """Patches per frame `(height, width)` of the config's fixed scene frame size."""
    p = cfg.model.vision.patch_size
    return cfg.scene.image_height // p, cfg.scene.image_width // p


def _vision_segments(v: VisionConfig, frames: int, frame_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """`(blocks, segments, longest)` per attention kind: each block attends within `segments`
    groups padded to `longest` patches (as `vision.vision_layout` packs them)."""
    h, w = frame_hw
    if v.family == "qwen3_vl":
        return [(v.depth, frames, h * w)]
    m = v.spatial_merge_size
    units = v.window_size // m // v.patch_size  # window side in merged units
    hm, wm = h // m, w // m
    windows = math.ceil(hm / units) * math.ceil(wm / units)
    longest = min(units, hm) * min(units, wm) * m * m
    n_full = len(set(v.fullatt_block_indexes))
    return [(n_full, frames, h * w), (v.depth - n_full, frames * windows, longest)]


def _vision_terms(v: VisionConfig, num_patches: int, frame_hw: tuple[int, int]) -> dict[str, float]:
    if num_patches == 0:
        return {}
    frame = frame_hw[0] * frame_hw[1]
    if frame <= 0 or num_patches % frame:
        raise ValueError(f"num_patches={num_patches} is not a whole number of frames of {frame_hw[0]}x{frame_hw[1]} "
                         f"patches (frame_hw)")
    n, e, f = num_patches, v.hidden_size, v.intermediate_size
    mlp_mats = 2 if v.family == "qwen3_vl" else 3  # fc1/fc2 (GELU) vs gate/up/down (SwiGLU)
    merged, width = n / v.spatial_merge_size**2, e * v.spatial_merge_size**2
    mergers = 1 + (len(v.deepstack_visual_indexes) if v.family == "qwen3_vl" else 0)
    attention = sum(_attn(segments, v.num_heads, longest, longest, v.head_dim) * blocks
                    for blocks, segments, longest in _vision_segments(v, n // frame, frame_hw))
    return {
        "input_weight": _mm(n, v.patch_dim, e),
        "weight": v.depth * (_mm(n, e, 4 * e) + mlp_mats * _mm(n, e, f))
        + mergers * (_mm(merged, width, width) + _mm(merged, width, v.out_hidden_size)),
        "act": attention,
    }


def _text_terms(cfg: Config, b: int, t: int) -> dict[str, float]:
    c = cfg.model.text
    n, qd, kd = b * t, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    per_layer = _mm(n, c.hidden_size, qd + 2 * kd) + _mm(n, qd, c.hidden_size) + 3 * _mm(n, c.hidden_size,
                                                                                       c.intermediate_size)
    return {"weight": c.num_layers * per_layer, "act": c.num_layers * _attn(b, c.num_heads, t, t, c.head_dim)}


def _expert_terms(cfg: Config, b: int, t: int) -> dict[str, float]:
    e, c = cfg.expert, cfg.model.text
    if not e.enabled or not cfg.loss.flow_weight:  # sft_loss skips the expert at flow weight 0
        return {}
    a = cfg.action.horizon
    n, qd, kd = b * a, e.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    hin = e.action_in_hidden
    per_layer = _mm(n, e.hidden_size, qd + 2 * kd) + _mm(n, qd, e.hidden_size) + 3 * _mm(n, e.hidden_size,
                                                                                        e.intermediate_size)
    return {
        "input_weight": _mm(n, 6 * e.num_frequencies, hin),  # Fourier features of (x_t, t)
        "data_weight": (e.action_in_layers - 1) * _mm(n, hin, hin) + _mm(n, hin, e.hidden_size),
        "weight": c.num_layers * per_layer + _mm(n, e.hidden_size, 2),
        "act": c.num_layers * _attn(b, e.num_heads, a, t + a, c.head_dim),  # over prefix + own keys
    }


def _terms(cfg: Config, batch_size: int, seq_len: int, num_patches: int,
           frame_hw: tuple[int, int] | None) -> dict[str, dict[str, float]]:
    """Forward FLOPs per part and kind of matmul (the keys of `_BACKWARD`)."""
    c = cfg.model.text
    return {
        "vision": _vision_terms(cfg.model.vision, num_patches, frame_hw or default_frame_hw(cfg)),
        "text": _text_terms(cfg, batch_size, seq_len),
        "lm_head": {"weight": _mm(batch_size * seq_len, c.hidden_size, c.vocab_size)},
        "expert": _expert_terms(cfg, batch_size, seq_len),
    }


def sft_forward_flops(cfg: Config, *, batch_size: int, seq_len: int, num_patches: int,
                      frame_hw: tuple[int, int] | None = None) -> dict[str, float]:
    """Matmul FLOPs of one SFT forward (`vla.sft_loss`) per part: vision, text, lm_head, expert, total.

    `batch_size` examples of `seq_len` tokens (the padded bucket length); `num_patches` vision
    patches in the whole batch (`pixel_values` rows, before the 2x2 merge), in frames of `frame_hw`
    patches (default: `cfg.scene`'s frame size / patch size; every frame assumed that size).
    """
    out = {part: sum(kinds.values()) for part, kinds in _terms(cfg, batch_size, seq_len, num_patches,
                                                               frame_hw).items()}
    out["total"] = sum(out.values())
    return out


def _frozen_parts(frozen) -> set[str]:
    """Top-level parts frozen whole. Dotted entries (`text.embed`) freeze only part of a module,
    which still needs its full backward, so they do not count here."""
    whole = set()
    for entry in frozen:
        top = entry.split(".")[0]
        if top not in PARTS:
            raise ValueError(f"frozen entry {entry!r}: expected a module path under one of {PARTS}")
        if entry == top:
            whole.add(top)
    return whole


def sft_step_flops(cfg: Config, *, batch_size: int, seq_len: int, num_patches: int,
                   frame_hw: tuple[int, int] | None = None, frozen=()) -> dict[str, float]:
    """FLOPs of one SFT training step (forward + backward) per part and `total`; see the module
    docstring for the backward rules. `frozen`: module paths as in `train.frozen`; whole top-level
    modules ("vision", "text", "expert") reduce the count, the LM head belonging to "text"."""
    terms = _terms(cfg, batch_size, seq_len, num_patches, frame_hw)
    whole = _frozen_parts(frozen)
    trained = {p: p not in whole for p in PARTS}
    traversed = {  # frozen, but a trained part upstream sends gradients through it
        "vision": False,
        "text": trained["vision"],
        "expert": not cfg.loss.stop_gradient_kv and (trained["vision"] or trained["text"]),
    }
    out = {}
    for part, kinds in terms.items():
        module = "text" if part == "lm_head" else part
        col = 0 if trained[module] else 1 if traversed[module] else None
        backward = 0.0 if col is None else sum(_BACKWARD[k][col] * f for k, f in kinds.items())
        out[part] = sum(kinds.values()) + backward
    out["total"] = sum(out.values())
    return out


def peak_flops(device, override: float = 0) -> float | None:
    """Dense bf16 peak FLOP/s of `device` (a `jax.Device` or its `device_kind` string): `override`
    when > 0, else from `PEAK_FLOPS`; None for a CPU or an unknown kind."""
    if override and override > 0:
        return float(override)
    kind = (device if isinstance(device, str) else getattr(device, "device_kind", "")).lower()
    matches = [k for k in PEAK_FLOPS if k.lower() in kind]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def mfu(step_flops: float, step_seconds: float, num_devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over `num_devices * peak`; None without a peak."""
    if not peak or step_seconds <= 0 or num_devices <= 0:
        return None
    return step_flops / (step_seconds * num_devices * peak)
