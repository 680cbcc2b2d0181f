"""Per-device memory of one SFT train step: an analytic estimate and XLA's compiled figure.

    est = analytic_estimate(cfg, {"fsdp": 8}, batch_size=8, seq_len=2944)        # no devices needed
    got = compiled_estimate(cfg, mesh, batch_size=8, seq_len=2944)               # needs mesh.size devices

Both are bytes per device. Nothing is ever allocated: shapes come from `Trainer` (`jax.eval_shape`)
and `abstract_batch`, and `compiled_estimate` only lowers and compiles the step.

Analytic estimate (`analytic_estimate`), per device:
  params, opt_state, ema  the `Trainer`'s state leaves, each counted at its shard shape under the rule
                          table (`sharding.shard_shape`): master weights in `model.param_dtype`, AdamW
                          mu (`train.mu_dtype`) and nu, EMA copy if `train.ema_decay > 0`.
  grads                   one gradient per trainable parameter shard, in the parameter dtype; plus an
                          f32 accumulator when `train.grad_accum > 1`.
  batch                   the batch shard (`abstract_batch`).
  activations             `activation_estimate` (see there): the peak of what the forward saves for
                          the backward plus the largest working phase (loss, one layer, one ViT block).
  total                   the sum: the bytes live at the step's peak. XLA's allocation differs
                          (fusion, scheduling, collectives' buffers, and the packing of its temp
                          buffer); `compiled_estimate` is the check (docs/memory.md: compiled on CPU /
                          analytic with f32 activations about 1.0-1.06 at 2-10 scenes per device, up to
                          ~1.4 at one scene per device, where the CPU packs its temp buffer loosely;
                          about one gradient shard more on data > 1, tensor > 1 or grad_accum > 1
                          meshes: `unmodelled_gradient_buffer`).

Compiled figure (`compiled_estimate`): `Compiled.memory_analysis()` of the jitted step (state donated):
argument, output, alias (output bytes that reuse donated inputs) and temp bytes;
`peak = argument + output - alias + temp` (every argument and output buffer live at once, plus the
scratch that buffer assignment gives the step: an upper bound on the real high-water mark). The CPU
backend's analysis (what fake devices give) is not the GPU's or TPU's: other fusions, no
backend-specific scratch, a different schedule, and always the XLA attention path.

Units: bytes unless a name says GiB (2**30 bytes).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np

from ar1_jax.config import Config
from ar1_jax.parallel.mesh import AXES, abstract_mesh
GiB = 2**30
# Text tokens of the prompt scaffolding besides images, history, reasoning and future tokens: the system
# prompt, chat markers and the instruction (~30 words and ~10 special tokens). An allowance, not measured
# with the release tokenizer (not available offline); sequences are rounded up to 128 anyway.
PROMPT_TEXT_TOKENS = 64
REASONING_TOKENS = 40  # a typical Chain-of-Causation trace (about 40 tokens)
# Whether the ViT's activations are split over the batch shards. They are: `vlm.encode_media` vmaps the
# tower over the scenes of a per-scene batch (`pixel_values [B, P, D]`) with `spmd_axis_name` = the batch's
# mesh axes (`rules.batch_mesh_axes`), and `vision.vision_forward(..., batched=True)` pins the block carry,
# so each device encodes only its own scenes (`compiled_estimate` reports `vision_replicated`, checked by
# tests/train/test_memory.py). `analytic_estimate(..., vision_sharded=False)` still models a tower run on
# the global micro-batch on every device.
VISION_SHARDED = True
LOGIT_COPIES = 3  # f32 [Bm, T, V] buffers live at the loss's peak (see `activation_estimate`)

# Accelerators we size for: HBM a program can use per device (bytes) and devices per host. H100 SXM:
# 81559 MiB (JAX preallocates 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION is raised); v5p: 95 GiB
# user-allocatable of 96 GiB (Cloud TPU docs).
TARGETS = {
    "H100 80GB": dict(hbm=81559 * 2**20, per_host=8),
    "TPU v5p": dict(hbm=95 * GiB, per_host=4),
}
# Documented recipes (docs/memory.md): a mesh and global batch per config that fit both targets with
# everything trained (the `sft1` / `sft2` setup), bf16 compute, f32 master weights and AdamW moments, and
# remat of every decoder layer and ViT block (all four configs' defaults, so no overrides), with the ViT
# and the feature scatter split over the batch as the model runs them. Each is the largest batch (a
# multiple of the device count) that was compiled on fake CPU devices (2026-11-25) with its CPU peak
# also under 90% of an H100 (except ar1_10b_release on 16 devices: 64 passes too, by 0.13 GiB, and was
# left out for lack of margin); the next multiples up are over (docs/memory.md).
# `RECIPES` (used by `ar1 bench memory --recipe`): 8 devices, one H100 node or a v5p-16 slice;
# `RECIPES_16`: 16 devices, two H100 nodes or a v5p-32.
RECIPES = {
    "ar1_0p5b": dict(mesh="fsdp=8", batch=80, overrides=()),
    "ar1_3b": dict(mesh="fsdp=8", batch=48, overrides=()),
    "ar1_7b": dict(mesh="fsdp=8", batch=32, overrides=()),
    "ar1_10b_release": dict(mesh="fsdp=8", batch=24, overrides=()),
}
RECIPES_16 = {
    "ar1_0p5b": dict(mesh="fsdp=16", batch=160, overrides=()),
    "ar1_3b": dict(mesh="fsdp=16", batch=112, overrides=()),
    "ar1_7b": dict(mesh="fsdp=16", batch=80, overrides=()),
    "ar1_10b_release": dict(mesh="fsdp=16", batch=48, overrides=()),
}
# A step "fits" when its estimate is at most this share of the HBM (fragmentation, collectives'
# buffers, kernel workspaces and the runtime are not in the estimate).
HEADROOM = 0.9


# ----------------------------------------------------------------------------------------------------
# Meshes.


def parse_mesh(text: str) -> dict[str, int]:
    """`"data=2,fsdp=8"` -> `{"data": 2, "fsdp": 8, "tensor": 1}` (missing axes are 1)."""
    out = dict.fromkeys(AXES, 1)
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, size = item.partition("=")
        if name.strip() not in AXES or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"mesh {text!r}: expected comma-separated AXIS=SIZE with AXIS in {AXES} and SIZE >= 1, "
                             f"got {item!r}")
        out[name.strip()] = int(size)
    return out


def _shape_of(mesh) -> dict[str, int]:
    return dict(mesh) if isinstance(mesh, Mapping) else dict(mesh.shape)


# ----------------------------------------------------------------------------------------------------
# Scene and sequence sizes.


def scene_grid(cfg: Config) -> np.ndarray:
    """`image_grid_thw` of one scene `[cameras * frames, 3]`: every frame resized to the scene size."""
    s, v = cfg.scene, cfg.model.vision
    frame = [1, s.image_height // v.patch_size, s.image_width // v.patch_size]
    return np.tile([frame], (s.num_cameras * s.num_frames, 1))


def patches_per_scene(cfg: Config) -> int:
    """ViT patches of one scene (all its cameras and frames)."""
    return int(sum(t * h * w for t, h, w in scene_grid(cfg)))


def image_tokens_per_scene(cfg: Config) -> int:
    m = cfg.model.vision.spatial_merge_size
    return patches_per_scene(cfg) // (m * m)


def typical_seq_len(cfg: Config, reasoning_tokens: int = REASONING_TOKENS, multiple: int = 128,
                    prompt_text_tokens: int = PROMPT_TEXT_TOKENS) -> int:
    """A training sequence length: image tokens (+ 2 markers per image), 48 history tokens (+ 2),
    `prompt_text_tokens` of system prompt and instruction, `<|cot_start|>` reasoning `<|cot_end|>`,
    `<|traj_future_start|>` 128 future tokens `<|traj_future_end|><|im_end|>\\n`, rounded up to `multiple`.

    4 cameras x 4 frames: 280x448 (paper configs, 160 tokens an image) -> 2944; 320x576 (release, 180) -> 3200.
    """
    n_images = cfg.scene.num_cameras * cfg.scene.num_frames
    n = (image_tokens_per_scene(cfg) + 2 * n_images + 48 + 2 + prompt_text_tokens + reasoning_tokens + 2
         + 1 + 128 + 3)
    return -(-n // multiple) * multiple


def batch_axes_size(cfg: Config, mesh) -> int:
    """How many ways the batch dim is split (the mesh axes the rules give `batch`)."""
    from ar1_jax.parallel.rules import batch_shard_count

    return batch_shard_count(abstract_mesh(_shape_of(mesh)), cfg.mesh.rules)


def abstract_batch(cfg: Config, mesh, batch_size: int, seq_len: int) -> dict:
    """`jax.ShapeDtypeStruct`s shaped like a pipeline batch (`build_sft_batch` + media) of
    `batch_size` scenes of `seq_len` tokens (`SFT_SPEC.abstract`), with the spec's shardings.

    `mesh` is a `Mesh` or `AbstractMesh`. Images are in the per-scene form: `pixel_values
    [batch_size, patches per scene, D]` (split over the batch shards) and the `layout` of one scene's
    images, shared by every scene and micro-batch (replicated).
    """
    from ar1_jax.data.sft_batch import SFT_SPEC
    from ar1_jax.model import vision

    b, m = batch_size, cfg.train.grad_accum
    if b % m:
        raise ValueError(f"batch_size {b} is not divisible by train.grad_accum={m}")
    layout = vision.vision_layout(cfg.model.vision, scene_grid(cfg))
    dims = dict(B=b, T=seq_len, A=cfg.action.horizon, P=patches_per_scene(cfg), D=cfg.model.vision.patch_dim)
    return SFT_SPEC.abstract(dims, mesh, cfg.mesh.rules, shared={"media.image.layout": layout})


# ----------------------------------------------------------------------------------------------------
# Analytic estimate.


def shard_bytes(tree: Any) -> int:
    """Sum over `ShapeDtypeStruct` leaves (with shardings) of their per-device shard bytes."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def state_estimate(cfg: Config, mesh) -> dict:
    """Per-device bytes of the train state by part, read off `Trainer(cfg, mesh).abstract_state`
    (`mesh`: a Mesh, AbstractMesh or a dict of axis sizes) and the trainable parameter count."""
    from ar1_jax.train.trainer import Trainer

    if isinstance(mesh, Mapping):
        mesh = abstract_mesh(mesh)
    trainer = Trainer(cfg, mesh)
    st = trainer.abstract_state
    params = jax.tree.leaves(st["params"])
    frozen = jax.tree.leaves(trainer.frozen)
    trainable = sum(math.prod(p.sharding.shard_shape(p.shape)) for p, f in zip(params, frozen) if not f)
    grad_bytes = trainable * np.dtype(cfg.model.param_dtype).itemsize
    gradient_shard = grad_bytes
    if cfg.train.grad_accum > 1:
        grad_bytes += trainable * 4  # the f32 accumulator of the micro-batch scan
    return dict(params=shard_bytes(st["params"]), grads=grad_bytes, gradient_shard=gradient_shard, opt_state=shard_bytes(st["opt_state"]),
                ema=shard_bytes(st.get("ema", {})), other=shard_bytes({k: st[k] for k in ("step", "rng")}),
                num_params=trainer.num_params, num_trainable=trainer.num_trainable)


class _Local:
    """Per-device element counts of activations named by logical axes under the config's rules."""

    def __init__(self, cfg: Config, mesh_shape: Mapping[str, int]):
        from ar1_jax.parallel.rules import logical_to_spec

        self._spec = logical_to_spec
        self.mesh, self.rules, self.sizes = abstract_mesh(mesh_shape), cfg.mesh.rules, _shape_of(mesh_shape)

    def __call__(self, names: tuple, shape: tuple) -> float:
        spec = self._spec(names, shape, self.mesh, self.rules)
        split = 1
        for axes in spec:
            for a in (() if axes is None else ((axes,) if isinstance(axes, str) else axes)):
                split *= self.sizes[a]
        return math.prod(shape) / split


def activation_estimate(cfg: Config, mesh_shape: Mapping[str, int], batch_size: int, seq_len: int,
                        attention: str | None = None, vision_sharded: bool = VISION_SHARDED,
                        act_bytes: int | None = None) -> dict:
    """What one micro-batch's forward/backward keeps alive at its peak, per device, in bytes, by part.

    Peak (`total`) = vision_saved + max(text_checkpoints + kv_cache + expert + media_scatter +
    max(loss_phase, layer_phase), vision_phase): the saved terms live from the forward to their
    layer's backward; the ViT's working phase comes before the decoder's forward (frozen ViT) or
    after its backward (trained).
    Bm = the per-device micro-batch (batch_size / grad_accum over the mesh axes the rules give
    `batch`); every dim is divided by the mesh axes the rules give its logical name (heads, kv_heads,
    mlp, vocab on `tensor` by default); c = bytes of `model.dtype`. `attention`: "xla" (materialised
    scores, the reference path and the only one on CPU) or "flash" (Pallas / cuDNN: no T x T
    buffers); default from `model.attention_impl`. Text decoder: L layers, width E, H / K heads of D,
    MLP F, vocab V, T tokens; expert: He heads, A = action.horizon action tokens.

      text_checkpoints  remat=full: each layer's input, L * Bm*T*E * c; remat=none / dots: each
                        layer's saved set S = Bm*T*(4E + 3HD + 4KD + 4F) * c (plus, xla, its scores
                        Bm*H*T*T * (4 + c + 1)), times L (dots: 0.6 S, scores only for `dots`).
      kv_cache          the per-layer K/V the expert reads: 2 * L * Bm*T*K*D * c.
      expert            per layer: the concatenated prefix + action K/V, 2 * Bm*(T+A)*K*D * c, and
                        (xla) the f32 scores and their copy, Bm*He*A*(T+A) * 8.
      vision_saved      a trained ViT, Np patches (Pf per frame, Nf frames), Lv blocks of width Ev,
                        MLP Fv, Hv heads; pairs = Nf*Hv*Pf^2 full-frame score entries (xla), plus for
                        Qwen2.5-VL Nw*Hv*Pw^2 window ones (its `lax.cond` keeps both branches'). Per
                        `model.vision.remat`: full: each block's input, Lv * Np*Ev * c; none: each
                        block's residuals, Lv * B with B = Np*(8 Ev + 6 Fv)*c (Qwen3-VL: 5 Ev)
                        + pairs*(4 + c + 1); dots: Lv * 0.6 B (scores only for `dots`). Plus the
                        patch mergers' residuals, 7 * Np*Ev * c each (1 + DeepStack ones), and
                        Qwen3-VL's DeepStack carry, n_deep * Np*Ev * c.
      media_scatter     the image tokens written into the sequence and Qwen3-VL's DeepStack
                        features spread over it, (Ni + n_deep * T) * E * 4 per scene, Ni image tokens
                        a scene, for the device's own scenes (`vlm.embed_multimodal` scatters row by
                        row, vmapped over the batch shards).
      loss_phase        `LOGIT_COPIES` (3) f32 [Bm, T, V] buffers live at once (logits, their
                        exp / log-softmax, the gradient and its transposed copy, XLA reusing buffers
                        in place): 3 * Bm*T*V * 4, plus the FSDP-gathered LM head (or tied
                        embedding) and its f32 gradient, 2 * V*E * 4.
      layer_phase       one decoder layer recomputed and differentiated: 2 S, plus (xla) its scores'
                        working set Bm*H*T*T * (5 * 4 + 1), plus the gathered layer weights and their
                        f32 gradients, 2 * W * 4.
      vision_phase      trained: one block's backward (recomputed if remat): without remat 2 B;
                        with remat, the larger of its attention part, Np*12 Ev*c + full pairs *
                        (12 + c + 1; Qwen3-VL 12) + window pairs * (4 + c + 1), and its MLP part,
                        Np*(2 Ev + 6 Fv)*c. Frozen: one block's forward, nothing kept:
                        Np*(4 Ev + 3 Fv)*c + pairs * (4 + 4 + c).

    The ViT's patch count is that of the per-device micro-batch if `vision_sharded`, of the global
    micro-batch otherwise (see `VISION_SHARDED`). Frozen modules (`train.frozen`) keep no residuals
    unless a gradient passes through them to a trained module. `act_bytes` overrides c: the CPU backend computes bf16
    elementwise work in f32 and keeps many of those buffers in f32, so `act_bytes=4` is what fake CPU
    devices show for a bf16 config.
    """
    attention = attention or ("xla" if cfg.model.attention_impl == "xla" else "flash")
    if attention not in ("xla", "flash"):
        raise ValueError(f"attention must be xla or flash, got {attention!r}")
    xla = attention == "xla"
    local = _Local(cfg, mesh_shape)
    tc = cfg.model.text
    c = act_bytes or np.dtype(cfg.model.dtype).itemsize
    gb, t = batch_size // cfg.train.grad_accum, seq_len  # global micro-batch
    L, E, H, K, D, F, V = (tc.num_layers, tc.hidden_size, tc.num_heads, tc.num_kv_heads, tc.head_dim,
                           tc.intermediate_size, tc.vocab_size)
    trained = _trained_modules(cfg)
    vision_grad = trained["vision"]
    text_grad = trained["text"] or vision_grad
    bte = local(("batch", "seq", "embed"), (gb, t, E))
    scores = local(("batch", "heads", "seq", None), (gb, H, t, t)) if xla else 0.0  # elements
    saved = _layer_saved(local, gb, t, E, H, K, D, F, c)
    out: dict[str, float] = {}
    if not text_grad:
        out["text_checkpoints"] = 0.0
    elif tc.remat == "full":
        out["text_checkpoints"] = L * bte * c
    elif tc.remat == "none":
        out["text_checkpoints"] = L * (saved + scores * (4 + c + 1))
    else:
        out["text_checkpoints"] = L * (0.6 * saved + (scores * (4 + c + 1) if tc.remat == "dots" else 0.0))
    kv = local(("batch", "seq", "kv_heads", "head_dim"), (gb, t, K, D))
    out["kv_cache"] = 2 * L * kv * c
    a, he = cfg.action.horizon, cfg.expert.num_heads
    if cfg.loss.flow_weight:
        prefix = local(("batch", "seq", "kv_heads", "head_dim"), (gb, t + a, K, D))
        escores = local(("batch", "heads", None, "seq"), (gb, he, a, t + a)) if xla else 0.0
        out["expert"] = L * (2 * prefix * c + escores * 8) if trained["expert"] else 0.0
    else:
        out["expert"] = 0.0
    out["vision_saved"], v_phase = _vision(cfg, local, gb, c, xla, vision_sharded, vision_grad)
    v = cfg.model.vision
    n_deep = len(v.deepstack_visual_indexes) if v.family == "qwen3_vl" else 0
    scenes = local(("batch",), (gb,))  # `vlm._scatter_rows`: per scene, vmapped over the batch shards
    out["media_scatter"] = scenes * (image_tokens_per_scene(cfg) + n_deep * t) * E * 4
    layer_w = (local((None, "heads", None), (E, H + 2 * K, D)) + local(("heads", None, None), (H, D, E))
               + 3 * local((None, "mlp"), (E, F)))
    head_w = local(("vocab", None), (V, E))
    logits = local(("batch", "seq", "vocab"), (gb, t, V))
    phases = dict(loss_phase=(LOGIT_COPIES * logits + 2 * head_w) * 4,
                  layer_phase=(2 * saved + scores * 21 + 2 * layer_w * 4) if text_grad else 0.0,
                  vision_phase=v_phase)
    out.update(phases)
    out = {k: int(v) for k, v in out.items()}
    text = (out["text_checkpoints"] + out["kv_cache"] + out["expert"] + out["media_scatter"]
            + max(out["loss_phase"], out["layer_phase"]))
    out["total"] = out["vision_saved"] + max(text, out["vision_phase"])
    return out


def _trained_modules(cfg: Config) -> dict[str, bool]:
    """Whether each top-level module (vision, text, expert) has a trainable parameter."""
    frozen = [f.strip() for f in cfg.train.frozen]
    return {m: not any(f == m or m.startswith(f + ".") for f in frozen) for m in ("vision", "text", "expert")}


def _layer_saved(local, b, t, E, H, K, D, F, c) -> float:
    """Bytes one decoder layer saves for its backward without remat (scores apart): residual and norm
    inputs / outputs (4 E), q / k / v before and after rotary and the attention output
    (3 HD + 4 KD), the MLP's gate, up, SiLU and product (4 F)."""
    e = local(("batch", "seq", "embed"), (b, t, E))
    hd = local(("batch", "seq", "heads", "head_dim"), (b, t, H, D))
    kd = local(("batch", "seq", "kv_heads", "head_dim"), (b, t, K, D))
    f = local(("batch", "seq", "mlp"), (b, t, F))
    return (4 * e + 3 * hd + 4 * kd + 4 * f) * c


def _vision(cfg: Config, local, gb: int, c: int, xla: bool, sharded: bool, trained: bool) -> tuple[float, float]:
    """Per device: (bytes the ViT keeps from its forward to its backward, bytes of its largest working
    phase: one block's forward if frozen, one block's backward if trained). See `activation_estimate`."""
    v = cfg.model.vision
    grid = scene_grid(cfg)
    per_frame = int(grid[0, 1] * grid[0, 2])
    scenes = local(("batch",), (gb,)) if sharded else gb
    frames = scenes * len(grid)
    patches = frames * per_frame
    qwen3 = v.family == "qwen3_vl"
    ev, fv = v.hidden_size, v.intermediate_size
    full_pairs = win_pairs = 0.0
    if xla:
        full_pairs = frames * v.num_heads * per_frame**2
        if not qwen3:  # window attention over (window_size / patch)^2 patches
            side = v.window_size // v.patch_size
            n_win = math.ceil(grid[0, 1] / side) * math.ceil(grid[0, 2] / side)
            win_pairs = frames * n_win * v.num_heads * (side * side) ** 2
    pairs = full_pairs + win_pairs
    if not trained:  # one block's forward, nothing kept
        return 0.0, patches * (4 * ev + 3 * fv) * c + pairs * (4 + 4 + c)
    # One block's residuals without remat (Qwen2.5's lax.cond keeps both branches' scores).
    block = patches * ((5 if qwen3 else 8) * ev + 6 * fv) * c + pairs * (4 + c + 1)
    n_deep = len(v.deepstack_visual_indexes) if qwen3 else 0
    # The DeepStack carry, and the patch mergers' residuals (outside the blocks' remat): ~7 Ev per patch
    # and merger (norm in / out, fc1 in / out, GELU, seen as f32 and bf16 copies on CPU).
    deep = n_deep * patches * ev * c + (1 + n_deep) * 7 * patches * ev * c
    if v.remat == "none":
        return v.depth * block + deep, 2 * block
    if v.remat == "full":
        saved = patches * ev * c  # the block's input
    else:  # dots / dots_no_batch: the matmul outputs (and, for `dots`, the attention scores)
        saved = 0.6 * patches * ((5 if qwen3 else 8) * ev + 6 * fv) * c
        saved += pairs * (4 + c + 1) if v.remat == "dots" else 0.0
    # A block's backward, recomputed: at its attention, q / k / v, the output and their gradients
    # (~12 Ev per patch) plus the f32 scores, probabilities and their gradient (12 bytes a pair; Qwen2.5's
    # cond also keeps bf16 probabilities and a mask, and the window branch's set); at its MLP, the
    # hidden activations and their gradients.
    attn = patches * 12 * ev * c + full_pairs * (12 + (0 if qwen3 else c + 1)) + win_pairs * (4 + c + 1)
    mlp = patches * (2 * ev + 6 * fv) * c
    return v.depth * saved + deep, max(attn, mlp)


def analytic_estimate(cfg: Config, mesh_shape: Mapping[str, int], batch_size: int, seq_len: int,
                      attention: str | None = None, vision_sharded: bool = VISION_SHARDED,
                      act_bytes: int | None = None) -> dict:
    """Per-device bytes by part (see the module docstring) plus `total`, `activations` (their sum),
    and the inputs (mesh, batch, seq_len, per-device micro-batch, attention path)."""
    shape = {a: int(mesh_shape.get(a, 1)) for a in AXES}
    shards = batch_axes_size(cfg, shape)
    micro = batch_size // cfg.train.grad_accum
    if batch_size % cfg.train.grad_accum or micro % shards:
        raise ValueError(f"batch {batch_size} / grad_accum {cfg.train.grad_accum} does not split over the {shards} "
                         f"batch shards of mesh {shape}")
    state = state_estimate(cfg, shape)
    acts = activation_estimate(cfg, shape, batch_size, seq_len, attention, vision_sharded, act_bytes)
    batch = shard_bytes(abstract_batch(cfg, abstract_mesh(shape), batch_size, seq_len))
    parts = dict(params=state["params"], grads=state["grads"], opt_state=state["opt_state"], ema=state["ema"],
                 batch=batch, activations=acts.pop("total"))
    return dict(parts, total=sum(parts.values()) + state["other"], activation_parts=acts, mesh=shape,
                devices=math.prod(shape.values()), batch_size=batch_size, seq_len=seq_len,
                micro_batch_per_device=micro // shards, num_params=state["num_params"],
                grad_accum=cfg.train.grad_accum, gradient_shard=state["gradient_shard"],
                attention=attention or ("xla" if cfg.model.attention_impl == "xla" else "flash"),
                remat=cfg.model.text.remat, vision_remat=cfg.model.vision.remat, vision_sharded=vision_sharded,
                dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype)


# ----------------------------------------------------------------------------------------------------
# Compiled figure.


def compiled_estimate(cfg: Config, mesh: jax.sharding.Mesh, batch_size: int, seq_len: int) -> dict:
    """XLA's memory analysis of the compiled train step on `mesh` (bytes per device); never runs it.

    Returns argument / output / alias / temp / generated-code bytes, `peak` (argument + output - alias +
    temp), `state_argument` and `batch_argument` (the argument's two parts, analytic), timings, and
    `vision_replicated`: whether some per-device buffer of the compiled step spans all the global
    micro-batch's scenes at the per-scene patch count (`[B / grad_accum, patches, ...]`), i.e. the ViT
    is not split over the batch (see `VISION_SHARDED`); None when the batch is not split.
    """
    import re
    import time

    from ar1_jax.train.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg, mesh)
    batch = abstract_batch(cfg, mesh, batch_size, seq_len)
    lowered = trainer.compile_step().lower(trainer.abstract_state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    mem = compiled.memory_analysis()
    t2 = time.perf_counter()
    gb, patches = batch_size // cfg.train.grad_accum, patches_per_scene(cfg)
    local = batch["input_ids"].sharding.shard_shape(batch["input_ids"].shape)[0]  # the argument's scenes
    replicated = None
    if gb > local // cfg.train.grad_accum and gb != local:
        replicated = re.search(rf"\[{gb},{patches}[,\]]", compiled.as_text()) is not None
    out = dict(argument=int(mem.argument_size_in_bytes), output=int(mem.output_size_in_bytes),
               alias=int(mem.alias_size_in_bytes), temp=int(mem.temp_size_in_bytes),
               generated_code=int(mem.generated_code_size_in_bytes))
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out.update(state_argument=shard_bytes(trainer.abstract_state), batch_argument=shard_bytes(batch),
               lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2), devices=mesh.size,
               mesh=dict(mesh.shape), backend=jax.default_backend(), batch_size=batch_size, seq_len=seq_len,
               vision_replicated=replicated)
    return out


def check_devices(mesh_shape: Mapping[str, int]) -> jax.sharding.Mesh:
    """The real mesh of these sizes over all devices; a ValueError that says how to get fake CPU devices
    when the device count differs."""
    from ar1_jax.config import MeshConfig
    from ar1_jax.parallel.mesh import make_mesh

    need, have = math.prod(mesh_shape.values()), jax.device_count()
    if need != have:
        hint = (f"; on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={need} before starting "
                f"(fake devices)" if jax.default_backend() == "cpu" else "")
        raise ValueError(f"mesh {dict(mesh_shape)} needs {need} devices, but {have} {jax.default_backend()} "
                         f"device(s) are available{hint}")
    return make_mesh(MeshConfig(**{a: mesh_shape.get(a, 1) for a in AXES}))


def unmodelled_gradient_buffer(est: dict) -> float:
    """Bytes per device the analytic total likely misses on this mesh (0 if none is known).

    Compiled on 8 fake CPU devices (docs/memory.md, 2026-11-25), steps on meshes with data > 1,
    tensor > 1 or train.grad_accum > 1 peaked 1.07-1.15x the analytic figure, about one gradient shard
    more (the cross-replica reduction, the tensor-sharded gradient's relayout, the scan carry);
    fsdp-only meshes without accumulation stayed within 0.94-1.06x.
    """
    m = est["mesh"]
    if m.get("data", 1) > 1 or m.get("tensor", 1) > 1 or est["grad_accum"] > 1:
        return est["gradient_shard"]
    return 0.0


def fits(total_bytes: float) -> dict[str, bool]:
    """Whether `total_bytes` per device is at most `HEADROOM` of each target's HBM (`TARGETS`)."""
    return {name: total_bytes <= HEADROOM * t["hbm"] for name, t in TARGETS.items()}


def gib(x: float) -> float:
    return round(x / GiB, 2)


def format_breakdown(est: dict, compiled: dict | None = None, cpu_est: dict | None = None) -> str:
    """Text lines: the analytic parts in GiB, the compiled figures and the CPU-equivalent analytic total
    if given, and whether the analytic total fits each target."""
    lines = [f"mesh {est['mesh']} ({est['devices']} devices), batch {est['batch_size']} "
             f"({est['micro_batch_per_device']} per device per micro-batch), seq_len {est['seq_len']}, "
             f"{est['num_params'] / 1e9:.2f}B params, dtype {est['dtype']} / params {est['param_dtype']}, "
             f"remat text {est['remat']} / vision {est['vision_remat']}, attention {est['attention']}, "
             f"ViT {'split over the batch' if est['vision_sharded'] else 'on the global batch'}",
             "analytic, GiB per device:"]
    for k in ("params", "grads", "opt_state", "ema", "batch", "activations"):
        lines.append(f"  {k:<14}{gib(est[k]):>9.2f}")
    for k, v in est["activation_parts"].items():
        lines.append(f"    {k:<18}{gib(v):>7.2f}")
    lines.append(f"  {'total':<14}{gib(est['total']):>9.2f}")
    if compiled:
        lines.append(f"compiled ({compiled['backend']}, {compiled['devices']} devices, {compiled['compile_s']} s), "
                     "GiB per device:")
        for k in ("argument", "output", "alias", "temp", "peak"):
            lines.append(f"  {k:<14}{gib(compiled[k]):>9.2f}")
        if compiled.get("vision_replicated") is not None:
            lines.append(f"  ViT on the whole global micro-batch on every device: "
                         f"{'yes' if compiled['vision_replicated'] else 'no'} "
                         f"(memory.VISION_SHARDED = {VISION_SHARDED})")
    if compiled and cpu_est:
        lines.append(f"  analytic with f32 activations, as the CPU backend keeps them: {gib(cpu_est['total']):.2f} "
                     f"(compiled / analytic = {compiled['peak'] / cpu_est['total']:.2f})")
    lines.append(f"fits (analytic total <= {HEADROOM:.0%} of HBM): " + ", ".join(
        f"{k} ({gib(t['hbm']):.1f} GiB): {'yes' if ok else 'no'}"
        for (k, ok), t in zip(fits(est["total"]).items(), TARGETS.values())))
    extra = unmodelled_gradient_buffer(est)
    if extra:
        with_extra = fits(est["total"] + extra)
        lines.append(f"caution: on meshes with data > 1, tensor > 1 or grad_accum > 1 the compiled step has run about "
                     f"one gradient shard ({gib(extra):.2f} GiB) above the analytic total (docs/memory.md); with "
                     f"it, {gib(est['total'] + extra):.2f} GiB: " +
                     ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in with_extra.items()))
    return "\n".join(lines)


def report(cfg: Config, mesh_shape: Mapping[str, int], batch_size: int, seq_len: int,
           compile: bool = False) -> tuple[dict, str]:
    """(JSON-able result, text) for `ar1 bench memory`: the analytic estimate (the config's attention
    path, and the total for both paths), and with `compile` the compiled figure on the current devices
    (`check_devices`) plus, on CPU, the analytic estimate with f32 activations to compare it with."""
    est = analytic_estimate(cfg, mesh_shape, batch_size, seq_len)
    other = "flash" if est["attention"] == "xla" else "xla"
    out = dict(config=cfg.name, analytic=est, fits=fits(est["total"]),
               total_by_attention={est["attention"]: est["total"],
                                   other: analytic_estimate(cfg, mesh_shape, batch_size, seq_len, other)["total"]},
               targets={k: dict(v, headroom=HEADROOM) for k, v in TARGETS.items()}, compiled=None,
               unmodelled_gradient_buffer=unmodelled_gradient_buffer(est),
               jax_version=jax.__version__)
    cpu_est = None
    if compile:
        mesh = check_devices(mesh_shape)
        out["compiled"] = compiled_estimate(cfg, mesh, batch_size, seq_len)
        if out["compiled"]["backend"] == "cpu":
            cpu_est = analytic_estimate(cfg, mesh_shape, batch_size, seq_len, act_bytes=4)
            out["analytic_cpu_f32_activations"] = cpu_est
    return out, format_breakdown(est, out["compiled"], cpu_est)
