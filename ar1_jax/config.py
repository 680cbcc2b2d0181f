"""Frozen dataclass configs for every knob, named configs, and dotted overrides.

A config is a tree of frozen dataclasses rooted at `Config`. Named configs live in `configs/<name>.py`
(importable as `ar1_jax.configs.<name>`) and expose `get_config() -> Config`. Command lines change
fields with dotted overrides: `--set model.text.num_layers=4`; a bad path or value fails with a
message naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ar1_jax.config_data import DataConfig, SceneConfig, SynthConfig  # sections defined there
from ar1_jax.config_rl import RLConfig  # the rl section (its reward weights: config_rl.RewardConfig)

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
ATTENTION_IMPLS = ("xla", "pallas", "cudnn", "auto")
ATTENTION_SITES = ("vision", "decode", "expert")  # call sites with their own attention_impl_<site>
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config field is unknown, mistyped or inconsistent; the message names the field."""


@dataclass(frozen=True)
class VisionConfig:
    """The ViT that turns HF-processor patches into image tokens for the decoder.

    Qwen2.5-VL: RMSNorm + SwiGLU blocks, 2D rotary, window attention except in
    `fullatt_block_indexes`. Qwen3-VL: LayerNorm + GELU(tanh) blocks, learned position table
    (`num_position_embeddings`, bilinearly resampled per image), DeepStack mergers after the blocks in
    `deepstack_visual_indexes` whose outputs are added into the first decoder layers.
    """

    family: str = "qwen2_5_vl"
    depth: int = 2
    hidden_size: int = 32
    intermediate_size: int = 64
    num_heads: int = 2
    out_hidden_size: int = 64
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # Qwen2.5-VL only.
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: int = 2
    # Qwen3-VL only.
    num_position_embeddings: int = 0
    deepstack_visual_indexes: tuple[int, ...] = ()
    remat: str = "none"  # rematerialise each block in the backward pass: none | full | dots | dots_no_batch

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened `pixel_values` row: C * temporal_patch * patch * patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def validate(self, where: str = "vision") -> None:
        _check_positive(self, where, ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size",
                                      "patch_size", "temporal_patch_size", "spatial_merge_size", "in_channels"))
        _check(self.family in FAMILIES, f"{where}.family", f"one of {FAMILIES}", self.family)
        _check(self.hidden_size % self.num_heads == 0, f"{where}.hidden_size",
               f"divisible by num_heads={self.num_heads}", self.hidden_size)
        _check(self.head_dim % 4 == 0, f"{where}.hidden_size",
               "hidden_size / num_heads divisible by 4 (2D rotary)", self.hidden_size)
        _check(self.hidden_act in ("silu", "gelu_pytorch_tanh", "gelu"), f"{where}.hidden_act",
               "silu | gelu_pytorch_tanh | gelu", self.hidden_act)
        _check(self.remat in REMAT_POLICIES, f"{where}.remat", f"one of {REMAT_POLICIES}", self.remat)
        for i in self.fullatt_block_indexes:
            _check(0 <= i < self.depth, f"{where}.fullatt_block_indexes", f"indexes in [0, {self.depth})", i)
        for i in self.deepstack_visual_indexes:
            _check(0 <= i < self.depth, f"{where}.deepstack_visual_indexes", f"indexes in [0, {self.depth})", i)
        if self.family == "qwen3_vl":
            side = int(round(self.num_position_embeddings**0.5))
            _check(side * side == self.num_position_embeddings and side > 0, f"{where}.num_position_embeddings",
                   "a positive perfect square", self.num_position_embeddings)
        if self.family == "qwen2_5_vl":
            _check(self.window_size % (self.patch_size * self.spatial_merge_size) == 0, f"{where}.window_size",
                   "a multiple of patch_size * spatial_merge_size", self.window_size)


@dataclass(frozen=True)
class TextConfig:
    """The decoder LLM: GQA attention with multimodal rotary positions, RMSNorm, SwiGLU."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (2, 3, 3)
    mrope_interleaved: bool = False  # Qwen3-VL interleaves T/H/W frequencies; Qwen2.5-VL sections them
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = True  # Qwen2.5 has q/k/v biases
    qk_norm: bool = False  # Qwen3 RMS-normalises q and k per head
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 32768
    scan_layers: bool = True
    remat: str = "none"

    def validate(self, where: str = "text") -> None:
        _check_positive(self, where, ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                                      "num_kv_heads", "head_dim", "max_position_embeddings"))
        _check(self.rope_theta > 0, f"{where}.rope_theta", "> 0", self.rope_theta)
        _check(self.rms_norm_eps > 0, f"{where}.rms_norm_eps", "> 0", self.rms_norm_eps)
        if self.sliding_window is not None:
            _check(self.sliding_window > 0, f"{where}.sliding_window", "> 0 or None", self.sliding_window)
        _check(self.num_heads % self.num_kv_heads == 0, f"{where}.num_heads",
               f"a multiple of num_kv_heads={self.num_kv_heads}", self.num_heads)
        _check(sum(self.mrope_section) * 2 == self.head_dim, f"{where}.mrope_section",
               f"sections summing to head_dim / 2 = {self.head_dim // 2}", self.mrope_section)
        _check(len(self.mrope_section) == 3, f"{where}.mrope_section", "three sections (T, H, W)",
               self.mrope_section)
        _check(self.remat in REMAT_POLICIES, f"{where}.remat", f"one of {REMAT_POLICIES}", self.remat)


@dataclass(frozen=True)
class VLMConfig:
    """A vision-language backbone: vision tower + decoder + the special token ids that join them."""

    family: str = "qwen2_5_vl"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 500
    video_token_id: int = 501
    vision_start_token_id: int = 502
    vision_end_token_id: int = 503
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # Attention backend (xla | pallas | cudnn | auto; see ar1_jax.model.attention) of the decoder's
    # training forward and prefill, and the default of every call site below.
    attention_impl: str = "xla"
    # Per call site overrides; "" = use attention_impl. vision: the ViT's segment attention; decode:
    # decoder steps over a KV cache with at most DECODE_MAX_QUERIES new tokens; expert: the action
    # expert's attention over the prefix cache and its own tokens.
    attention_impl_vision: str = ""
    attention_impl_decode: str = ""
    attention_impl_expert: str = ""

    def attention_impl_for(self, site: str) -> str:
        """The attention impl of a call site: "text", "vision", "decode" or "expert"."""
        if site == "text":
            return self.attention_impl
        if site not in ATTENTION_SITES:
            raise ValueError(f"attention_impl_for: unknown call site {site!r} (text, {', '.join(ATTENTION_SITES)})")
        return getattr(self, f"attention_impl_{site}") or self.attention_impl

    def validate(self, where: str = "model") -> None:
        _check(self.family in FAMILIES, f"{where}.family", f"one of {FAMILIES}", self.family)
        _check(self.vision.family == self.family, f"{where}.vision.family", f"equal to {where}.family",
               self.vision.family)
        _check(self.dtype in DTYPES, f"{where}.dtype", f"one of {DTYPES}", self.dtype)
        _check(self.param_dtype in DTYPES, f"{where}.param_dtype", f"one of {DTYPES}", self.param_dtype)
        _check(self.attention_impl in ATTENTION_IMPLS, f"{where}.attention_impl", f"one of {ATTENTION_IMPLS}",
               self.attention_impl)
        for site in ATTENTION_SITES:
            value = getattr(self, f"attention_impl_{site}")
            _check(value in ("",) + ATTENTION_IMPLS, f"{where}.attention_impl_{site}",
                   f"'' (use attention_impl) or one of {ATTENTION_IMPLS}", value)
        if self.text.sliding_window is not None:  # the Pallas kernels have no sliding window
            for site, name in (("text", "attention_impl"), ("decode", "attention_impl_decode")):
                _check(self.attention_impl_for(site) != "pallas", f"{where}.{name}",
                       f"not 'pallas' with {where}.text.sliding_window set (no kernel for it; 'auto' falls "
                       "back to xla)", self.attention_impl_for(site))
        _check(self.vision.out_hidden_size == self.text.hidden_size, f"{where}.vision.out_hidden_size",
               f"equal to {where}.text.hidden_size={self.text.hidden_size}", self.vision.out_hidden_size)
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            tid = getattr(self, name)
            _check(0 <= tid < self.text.vocab_size, f"{where}.{name}", f"in [0, vocab_size={self.text.vocab_size})",
                   tid)
        if self.family == "qwen3_vl":
            _check(len(self.vision.deepstack_visual_indexes) <= self.text.num_layers,
                   f"{where}.vision.deepstack_visual_indexes", "no more entries than decoder layers",
                   self.vision.deepstack_visual_indexes)
        self.vision.validate(f"{where}.vision")
        self.text.validate(f"{where}.text")


@dataclass(frozen=True)
class ActionConfig:
    """The action space: controls (acceleration m/s^2, curvature 1/m) at `dt` for `horizon` steps,
    their normalisation, bounds and discrete tokens, and flow-matching settings."""

    horizon: int = 64  # future steps (6.4 s at 10 Hz)
    history: int = 16  # past poses, t0 included (1.6 s)
    dt: float = 0.1  # seconds per step
    accel_bound: float = 9.8  # |a| <= bound, m/s^2
    curvature_bound: float = 0.2  # |k| <= bound, 1/m
    accel_mean: float = 0.02902694707164455  # release checkpoint config.json (action_space_cfg)
    accel_std: float = 0.6810426736454882
    curvature_mean: float = 0.0002692167976330542
    curvature_std: float = 0.026148280660833106
    smoothness_lambda: float = 1e-4  # Tikhonov weight on second differences in fit_controls
    future_bins: int = 3000  # uniform bins per control dimension over normalised values
    future_range: float = 10.0  # bins cover [-range, range] in normalised units
    history_bins: int = 1000
    history_xy_clip: float = 4.0  # metres per step, x and y deltas
    history_z_clip: float = 10.0
    flow_time_scale: float = 0.999  # training t = scale * (1 - s)
    flow_beta_a: float = 1.5  # s ~ Beta(a, b)
    flow_beta_b: float = 1.0

    def validate(self, where: str = "action") -> None:
        _check_positive(self, where, ("horizon", "history", "future_bins", "history_bins"))
        for name in ("dt", "accel_bound", "curvature_bound", "accel_std", "curvature_std", "future_range",
                     "history_xy_clip", "history_z_clip", "flow_beta_a", "flow_beta_b"):
            _check(getattr(self, name) > 0, f"{where}.{name}", "> 0", getattr(self, name))
        _check(0 < self.flow_time_scale <= 1, f"{where}.flow_time_scale", "in (0, 1]", self.flow_time_scale)


@dataclass(frozen=True)
class ExpertConfig:
    """The action expert: a decoder stack with its own width, heads and MLP that shares the
    backbone's depth, KV heads, head dim, rotary and norm style (layer i reads the backbone's layer-i
    KV cache). `hidden_size == 0` means no expert (a plain VLM)."""

    hidden_size: int = 0
    intermediate_size: int = 0
    num_heads: int = 0
    # Action-in projection: per control dimension and for t, sin/cos Fourier features of
    # `num_frequencies` log-spaced frequencies in [1, max_frequency] (or the explicit `frequencies`),
    # then an MLP of `action_in_layers` hidden layers of width `action_in_hidden` and a LayerNorm.
    num_frequencies: int = 10
    max_frequency: float = 100.0
    frequencies: tuple[float, ...] = ()  # explicit values (the release runs bf16-rounded ones)
    action_in_hidden: int = 0
    action_in_layers: int = 4
    action_in_norm_eps: float = 1e-5

    @property
    def enabled(self) -> bool:
        return self.hidden_size > 0

    def validate(self, text: "TextConfig", where: str = "expert") -> None:
        if not self.enabled:
            return
        _check_positive(self, where, ("hidden_size", "intermediate_size", "num_heads", "num_frequencies",
                                      "action_in_hidden", "action_in_layers"))
        _check(self.num_heads % text.num_kv_heads == 0, f"{where}.num_heads",
               f"a multiple of model.text.num_kv_heads={text.num_kv_heads} (it reads the backbone's KV cache)",
               self.num_heads)
        _check(not self.frequencies or len(self.frequencies) == self.num_frequencies, f"{where}.frequencies",
               f"empty or {self.num_frequencies} values", self.frequencies)


@dataclass(frozen=True)
class TokenConfig:
    """Ids of the AR1 special tokens in the backbone's vocabulary (set by the tokenizer's layout).
    Trajectory tokens: future bins at `traj_token_offset + [0, future_bins)`, history bins right after."""

    traj_token_offset: int = -1  # id of <i0>; -1: no trajectory tokens (plain VLM)
    cot_start_id: int = -1
    cot_end_id: int = -1
    traj_history_start_id: int = -1
    traj_history_end_id: int = -1
    traj_future_start_id: int = -1
    traj_future_end_id: int = -1
    eos_id: int = -1  # <|im_end|>
    pad_id: int = 0


@dataclass(frozen=True)
class LossConfig:
    """SFT loss weights: cross-entropy on reasoning and on discrete trajectory tokens, flow matching."""

    reasoning_weight: float = 1.0
    trajectory_token_weight: float = 1.0
    flow_weight: float = 1.0
    stop_gradient_kv: bool = True  # knowledge insulation: the flow loss does not train the backbone


@dataclass(frozen=True)
class InferConfig:
    """Reasoning decode and trajectory sampling at inference."""

    max_reasoning_tokens: int = 48
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 0.98
    num_samples: int = 1  # K trajectories per scene
    flow_steps: int = 10  # Euler steps of the expert's flow sampling (the one place the count is set)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh: sizes of the `data`, `fsdp` and `tensor` axes; -1 on one axis takes the rest."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: str = "default"  # a name in ar1_jax.parallel.rules.RULE_TABLES

    @property
    def axis_names(self) -> tuple[str, str, str]:
        return ("data", "fsdp", "tensor")

    def validate(self, where: str = "mesh") -> None:
        for name in self.axis_names:
            size = getattr(self, name)
            _check(size == -1 or size >= 1, f"{where}.{name}", "a size >= 1, or -1 for the remaining devices", size)
        wild = [n for n in self.axis_names if getattr(self, n) == -1]
        _check(len(wild) <= 1, f"{where}.{wild[-1] if wild else 'data'}", "at most one axis set to -1",
               ", ".join(f"{n}=-1" for n in wild))
        from ar1_jax.parallel.rules import RULE_TABLES

        _check(self.rules in RULE_TABLES, f"{where}.rules", f"one of {tuple(RULE_TABLES)}", self.rules)


@dataclass(frozen=True)
class TrainConfig:
    """The training driver (`ar1_jax.train.driver`): optimizer, schedule, precision, logging, checkpoints.

    Precision: master weights and optimizer state are kept in `model.param_dtype` (float32 by
    default), the forward/backward runs in `model.dtype` (e.g. bfloat16). Module paths in
    `lr_multipliers` ("vision=0.1") and `frozen` ("vision", "text.embed") are dotted prefixes of
    parameter paths (`vision`, `text`, `expert`, then their submodules); the longest prefix wins.
    `stage` names the SFT preset (`ar1_jax.train.sft.STAGES`) the run was built from (provenance).
    """

    steps: int = 1000
    stage: str = ""
    learning_rate: float = 1e-4  # peak, after warmup
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant
    end_lr_fraction: float = 0.1  # cosine decays to learning_rate * end_lr_fraction at `steps`
    weight_decay: float = 0.01  # decoupled (AdamW), on kernels and embeddings only
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    mu_dtype: str = ""  # Adam first-moment dtype; "" = the parameter dtype
    clip_grad_norm: float = 1.0  # global norm; 0 = off
    # Micro-batches per step, token-weighted (the whole batch's loss and gradient); data.batch_size
    # must divide by it.
    grad_accum: int = 1
    lr_multipliers: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    ema_decay: float = 0.0  # 0 = no EMA of the parameters
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3  # the most recent N
    keep_best: int = 0  # also keep the N with the lowest logged loss
    async_checkpoint: bool = True
    tensorboard: bool = True
    peak_tflops: float = 0.0  # per device, for MFU; 0 = from the device kind (unknown on CPU)
    init_from: str = ""  # orbax run dir / step dir, or a converted HF (alpamayo_r1) directory

    def validate(self, where: str = "train") -> None:
        for name in ("steps", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"{where}.{name}",
                   "a positive integer", getattr(self, name))
        for name in ("warmup_steps", "keep_best"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{where}.{name}",
                   "an integer >= 0", getattr(self, name))
        _check(self.learning_rate > 0, f"{where}.learning_rate", "> 0", self.learning_rate)
        _check(self.schedule in ("cosine", "constant"), f"{where}.schedule", "cosine or constant", self.schedule)
        _check(0 <= self.end_lr_fraction <= 1, f"{where}.end_lr_fraction", "in [0, 1]", self.end_lr_fraction)
        _check(0 <= self.ema_decay < 1, f"{where}.ema_decay", "in [0, 1)", self.ema_decay)
        _check(self.clip_grad_norm >= 0, f"{where}.clip_grad_norm", ">= 0", self.clip_grad_norm)
        _check(self.mu_dtype in ("",) + DTYPES, f"{where}.mu_dtype", f"'' or one of {DTYPES}", self.mu_dtype)
        for item in self.lr_multipliers:
            path, _, mult = item.partition("=")
            ok = bool(path.strip()) and bool(mult)
            try:
                ok = ok and float(mult) >= 0
            except ValueError:
                ok = False
            _check(ok, f"{where}.lr_multipliers", "entries 'module.path=multiplier' with a multiplier >= 0", item)


@dataclass(frozen=True)
class Config:
    """The root config: what to build and how to lay it out on devices."""

    name: str = "custom"
    model: VLMConfig = field(default_factory=VLMConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    seed: int = 0

    @property
    def is_vla(self) -> bool:
        """True for an AR1 config (backbone + action expert), False for a plain backbone."""
        return self.expert.enabled

    def validate(self) -> "Config":
        self.model.validate("model")
        self.mesh.validate("mesh")
        self.train.validate("train")
        self.data.validate("data")
        self.synth.validate("synth")
        self.rl.validate("rl")
        self.action.validate("action")
        self.expert.validate(self.model.text, "expert")
        if self.is_vla:
            t = self.tokens
            n_traj = self.action.future_bins + self.action.history_bins
            _check(t.traj_token_offset >= 0 and t.traj_token_offset + n_traj <= self.model.text.vocab_size,
                   "tokens.traj_token_offset", f"an offset with {n_traj} trajectory ids inside the vocabulary "
                   f"(vocab_size={self.model.text.vocab_size})", t.traj_token_offset)
            for name in ("cot_start_id", "cot_end_id", "traj_history_start_id", "traj_history_end_id",
                         "traj_future_start_id", "traj_future_end_id", "eos_id"):
                tid = getattr(t, name)
                _check(0 <= tid < self.model.text.vocab_size, f"tokens.{name}",
                       f"an id in [0, vocab_size={self.model.text.vocab_size})", tid)
                _check(not (t.traj_token_offset <= tid < t.traj_token_offset + n_traj), f"tokens.{name}",
                       "an id outside the trajectory-token range", tid)
            i = self.infer
            _check(i.max_reasoning_tokens > 1, "infer.max_reasoning_tokens", "> 1", i.max_reasoning_tokens)
            _check(i.num_samples > 0 and i.flow_steps > 0, "infer.num_samples",
                   "num_samples and flow_steps > 0", (i.num_samples, i.flow_steps))
            _check(0 < i.top_p <= 1 and i.temperature >= 0, "infer.top_p", "top_p in (0, 1], temperature >= 0",
                   (i.top_p, i.temperature))
        return self


def _check_positive(section: Any, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(section, name)
        _check(isinstance(value, int) and value > 0, f"{where}.{name}", "a positive integer", value)


def _check(ok: bool, field_path: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config field `{field_path}`: expected {expected}, got {got!r}")


# Named configs.

def available_configs() -> list[str]:
    """Names of the configs shipped in `configs/`."""
    import ar1_jax.configs as pkg

    root = pathlib.Path(pkg.__file__).parent
    return sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))


def get_config(name_or_path: str, overrides: typing.Sequence[str] = ()) -> Config:
    """Loads a named config (`tiny`) or a Python file defining `get_config()`, then applies overrides."""
    if name_or_path.endswith(".py"):
        path = pathlib.Path(name_or_path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"_ar1_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"config file {path} failed to import: {type(e).__name__}: {e}") from e
    else:
        names = available_configs()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config {name_or_path!r}{hint} (known: {', '.join(names)})")
        module = importlib.import_module(f"ar1_jax.configs.{name_or_path}")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config module {name_or_path!r} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"config {name_or_path!r}: get_config() returned {type(cfg).__name__}, expected "
                          f"ar1_jax.config.Config")
    return apply_overrides(cfg, overrides).validate()


# ----------------------------------------------------------------------------------------------------
# Dotted overrides.


def apply_overrides(cfg: Any, overrides: typing.Sequence[str]) -> Any:
    """Returns `cfg` with each `a.b.c=value` applied; values are parsed by the field's type."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r} has an empty field name")
        cfg = _set_path(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set_path(node: Any, parts: list[str], raw: str, full_key: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ConfigError(f"config field `{full_key}`: `{parts[0]}` is not inside a config section")
    fields = {f.name: f for f in dataclasses.fields(node)}
    name = parts[0]
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config field `{full_key}` (`{name}` is not a field of "
                          f"{type(node).__name__}){hint}")
    hints = typing.get_type_hints(type(node))
    if len(parts) == 1:
        value = parse_value(raw, hints[name], full_key)
    else:
        value = _set_path(getattr(node, name), parts[1:], raw, full_key)
    return dataclasses.replace(node, **{name: value})


def parse_value(raw: str, tp: Any, key: str = "?") -> Any:
    """Parses the text `raw` as type `tp` (int, float, bool, str, tuple[...], X | None)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(raw, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config field `{key}`: cannot parse {raw!r} as {tp} ({'; '.join(errors)})")
    if origin is tuple:
        text = raw.strip()
        if text[:1] in "([" and text[-1:] in ")]":
            text = text[1:-1]
        items = [t.strip() for t in text.split(",") if t.strip()]
        elem = args[0] if args else str
        return tuple(parse_value(t, elem, key) for t in items)
    if tp is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"config field `{key}`: expected a bool (true/false), got {raw!r}")
    if tp is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"config field `{key}`: expected an int, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"config field `{key}`: expected a float, got {raw!r}") from None
    if tp is str:
        return raw
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"config field `{key}` is a section; set one of its fields instead "
                          f"({', '.join(f.name for f in dataclasses.fields(tp))})")
    raise ConfigError(f"config field `{key}`: unsupported type {tp}")


def to_dict(cfg: Any) -> dict:
    """The config as nested plain dicts (JSON-ready)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Rebuilds a config dataclass from `to_dict` output, naming unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config field `{path}`")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, path)
        elif typing.get_origin(tp) is tuple or (
            typing.get_origin(tp) in (typing.Union, types.UnionType) and isinstance(value, list)
        ):
            value = tuple(value) if value is not None else None
        kwargs[key] = value
    return cls(**kwargs)
