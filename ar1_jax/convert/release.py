"""The released Alpamayo-R1 checkpoint layout <-> our AR1 parameters and config.

    loaded = load_ar1(checkpoint_dir)            # bfloat16 by default, as the release runs
    engine = loaded.engine(tokenizer)            # with the checkpoint's inference settings
    export_ar1(loaded, out_dir)                  # the release's names back, settings under "ar1_jax"

Keys: `vlm.` + a Qwen3-VL checkpoint (the VLM family's hub layout), `expert.*`, `action_in_proj.*`,
`action_out_proj.*` (docs/design/alpamayo_release.md §7), plus optional buffers kept verbatim.
config.json: the release's fields, and under `ar1_jax` the inference and scene settings our export
writes (`settings_to_hf`; without them the release's own, `settings_from_hf`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ar1_jax.config import VLMConfig
from ar1_jax.convert.hf import (Entry, _iter_tensors, _read_params, canonical_key, config_from_hf, hub_key,
                                key_table)
from ar1_jax.convert.safetensors_io import CheckpointReader, write_checkpoint
from ar1_jax.errors import CheckpointMismatch
from ar1_jax.model.layers import dtype_of

# VLMs the release names by `vlm_name_or_path` instead of embedding their config.
KNOWN_VLMS = {"Qwen/Qwen3-VL-8B-Instruct": "qwen3_vl_8b", "nvidia/Cosmos-Reason2-8B": "qwen3_vl_8b"}
# Buffers the release may store beside the weights; kept verbatim for export, checked on load.
BUFFER_KEYS = ("action_in_proj.sinus.0.freqs", "action_in_proj.sinus.1.freqs",
               "action_in_proj.timestep_fourier_encoder.freqs", "action_space.accel_mean", "action_space.accel_std",
               "action_space.curvature_mean", "action_space.curvature_std")


@dataclasses.dataclass
class LoadedAR1:
    """An AR1 model loaded from a release-layout checkpoint."""

    cfg: Any  # ar1_jax.config.Config
    graphdef: Any
    params: Any  # nnx.State
    buffers: dict  # optional release buffers found in the checkpoint (exported back verbatim)
    hf_config: dict

    @property
    def pure_params(self) -> dict:
        return nnx.to_pure_dict(self.params)

    def engine(self, tokenizer=None, **kwargs):
        """An `Engine` over these weights (kwargs: `int8`, `mesh`, ...), with the checkpoint's own
        inference settings (`cfg.infer`)."""
        from ar1_jax.infer.engine import Engine

        return Engine(self.cfg, self.pure_params, tokenizer, **kwargs)


# config.json key under which our exports keep the inference and scene settings (the release has none).
SETTINGS_KEY = "ar1_jax"


def settings_to_hf(cfg) -> dict:
    """`{infer: {...}, scene: {...}}` of an AR1 config, for config.json's `SETTINGS_KEY`."""
    return {"infer": dataclasses.asdict(cfg.infer), "scene": dataclasses.asdict(cfg.scene)}


def settings_from_hf(hf_cfg: dict, vlm: VLMConfig):
    """(InferConfig, SceneConfig) of a release-layout config.json: the ones our export wrote under
    `SETTINGS_KEY`, else the release's own (`configs/ar1_10b_release`: 256 reasoning tokens, 6
    samples, 10 flow steps, 4 cameras x 4 frames of 320x576), image sides snapped to a multiple of
    the VLM's merge block (patch x spatial merge) so every frame tiles into whole image tokens."""
    from ar1_jax.config import InferConfig, SceneConfig
    from ar1_jax.config import get_config as named

    saved = hf_cfg.get(SETTINGS_KEY) or {}
    release = named("ar1_10b_release")
    infer = dataclasses.replace(release.infer, **saved["infer"]) if "infer" in saved else release.infer
    if "scene" in saved:
        scene = dataclasses.replace(release.scene, **{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in saved["scene"].items()})
    else:
        block = vlm.vision.patch_size * vlm.vision.spatial_merge_size
        snap = lambda n: max(block, int(round(n / block)) * block)
        scene = dataclasses.replace(release.scene, image_height=snap(release.scene.image_height),
                                    image_width=snap(release.scene.image_width))
    assert isinstance(infer, InferConfig) and isinstance(scene, SceneConfig)
    return infer, scene


def ar1_config_from_hf(hf_cfg: dict, *, dtype: str = "bfloat16"):
    """Our AR1 `Config` from a release `config.json` (the VLM nested as `vlm_config`, or named), with
    the inference and scene settings it carries (`settings_from_hf`)."""
    from ar1_jax.config import ActionConfig, Config, ExpertConfig
    from ar1_jax.config import get_config as named

    if "vlm_config" in hf_cfg:
        vlm = config_from_hf(hf_cfg["vlm_config"], dtype=dtype)
    else:
        name = hf_cfg.get("vlm_name_or_path", "Qwen/Qwen3-VL-8B-Instruct")
        if name not in KNOWN_VLMS:
            raise ValueError(f"config.json: vlm_name_or_path {name!r} is not embedded (`vlm_config`) and not one of "
                             f"{sorted(KNOWN_VLMS)}")
        vlm = dataclasses.replace(named(KNOWN_VLMS[name]).model, dtype=dtype, param_dtype=dtype)
    vocab = hf_cfg.get("vocab_size", vlm.text.vocab_size)
    vlm = dataclasses.replace(vlm, text=dataclasses.replace(vlm.text, vocab_size=vocab))
    e = hf_cfg.get("expert_cfg") or {}
    a = hf_cfg.get("action_in_proj_cfg") or {}
    n_feats = int(a.get("num_fourier_feats", 20))
    max_freq = float(a.get("max_freq", 100.0))
    # The release builds its constants under a bf16 default dtype: run what it runs.
    freqs = tuple(_bf16(np.logspace(0.0, np.log10(max_freq), n_feats // 2)).tolist())
    expert = ExpertConfig(hidden_size=e.get("hidden_size", vlm.text.hidden_size),
                          intermediate_size=e.get("intermediate_size", vlm.text.intermediate_size),
                          num_heads=e.get("num_attention_heads", vlm.text.num_heads),
                          num_frequencies=n_feats // 2, max_frequency=max_freq, frequencies=freqs,
                          action_in_hidden=int(a.get("hidden_size", 1024)),
                          action_in_layers=int(a.get("num_enc_layers", 4)))
    if e.get("head_dim", vlm.text.head_dim) != vlm.text.head_dim:
        raise ValueError(f"config.json: expert_cfg.head_dim {e['head_dim']} != VLM head_dim {vlm.text.head_dim}")
    stats = (hf_cfg.get("action_space_cfg") or {})
    action = ActionConfig(**{k: float(_bf16(stats[k])) for k in ("accel_mean", "accel_std", "curvature_mean",
                                                                 "curvature_std") if k in stats},
                          future_bins=int(hf_cfg.get("traj_vocab_size", 4000)) - 1000)
    from ar1_jax.text import layout

    # Every added id follows from where <i0> starts and the release's add order; Qwen's own ids come
    # from the VLM config (and eos / pad from config.json when given).
    qwen_ids = {"<|image_pad|>": vlm.image_token_id, "<|video_pad|>": vlm.video_token_id,
                "<|vision_start|>": vlm.vision_start_token_id, "<|vision_end|>": vlm.vision_end_token_id}
    for key, tok in (("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>")):
        if isinstance(hf_cfg.get(key), int):
            qwen_ids[tok] = hf_cfg[key]
    _, tokens, _ = layout.release(int(hf_cfg.get("traj_token_start_idx", layout.QWEN3_BASE_VOCAB)), qwen_ids)
    infer, scene = settings_from_hf(hf_cfg, vlm)
    cfg = Config(name="alpamayo_r1", model=vlm, expert=expert, action=action, tokens=tokens, infer=infer,
                 scene=scene)
    return cfg.validate()


def _bf16(x) -> np.ndarray:
    return np.asarray(jnp.asarray(np.asarray(x, np.float32), jnp.bfloat16).astype(jnp.float32))


def ar1_key_table(cfg) -> list[Entry]:
    """HF keys of a release-layout AR1 checkpoint (canonical `vlm.` names) -> our parameter paths."""
    table = [dataclasses.replace(e, hf="vlm." + e.hf, ours=e.ours) for e in key_table(cfg.model)]
    T = "expert."
    table += [Entry(T + "norm.weight", ("expert", "final_norm"), "vector"),
              Entry(T + "layers.{i}.input_layernorm.weight", ("expert", "layers", "input_norm"), "vector"),
              Entry(T + "layers.{i}.post_attention_layernorm.weight", ("expert", "layers", "post_attn_norm"), "vector"),
              Entry(T + "layers.{i}.self_attn.o_proj.weight", ("expert", "layers", "attn", "o_kernel"), "linear", 2)]
    for n in "qkv":
        table.append(Entry(T + f"layers.{{i}}.self_attn.{n}_proj.weight", ("expert", "layers", "attn", f"{n}_kernel"),
                           "linear"))
        if cfg.model.text.qkv_bias:
            table.append(Entry(T + f"layers.{{i}}.self_attn.{n}_proj.bias", ("expert", "layers", "attn", f"{n}_bias"),
                               "vector"))
    if cfg.model.text.qk_norm:
        for n in "qk":
            table.append(Entry(T + f"layers.{{i}}.self_attn.{n}_norm.weight", ("expert", "layers", "attn", f"{n}_norm"),
                               "vector"))
    for n in ("gate", "up", "down"):
        table.append(Entry(T + f"layers.{{i}}.mlp.{n}_proj.weight", ("expert", "layers", "mlp", f"{n}_kernel"), "linear"))
    n = cfg.expert.action_in_layers
    A = "action_in_proj."
    ai = ("expert", "action_in")
    table += [Entry(A + "encoder.trunk.0.weight", ai + ("fc_in_kernel",), "linear"),
              Entry(A + "encoder.trunk.0.bias", ai + ("fc_in_bias",), "vector"),
              # trunk = Linear, SiLU, [RMSNorm, Linear, SiLU] x (n - 1), RMSNorm, Linear
              Entry(A + "encoder.trunk.{3i+2}.weight", ai + ("mid_norm",), "vector"),
              Entry(A + "encoder.trunk.{3i+3}.weight", ai + ("mid_kernel",), "linear"),
              Entry(A + "encoder.trunk.{3i+3}.bias", ai + ("mid_bias",), "vector"),
              Entry(A + f"encoder.trunk.{3 * (n - 1) + 2}.weight", ai + ("final_norm",), "vector"),
              Entry(A + f"encoder.trunk.{3 * (n - 1) + 3}.weight", ai + ("fc_out_kernel",), "linear"),
              Entry(A + f"encoder.trunk.{3 * (n - 1) + 3}.bias", ai + ("fc_out_bias",), "vector"),
              Entry(A + "norm.weight", ai + ("out_norm_scale",), "vector"),
              Entry(A + "norm.bias", ai + ("out_norm_bias",), "vector"),
              Entry("action_out_proj.weight", ("expert", "action_out", "kernel"), "linear"),
              Entry("action_out_proj.bias", ("expert", "action_out", "bias"), "vector")]
    return table


def _release_canonical(key: str) -> str:
    if key.startswith("vlm."):
        return "vlm." + canonical_key(key[len("vlm."):])
    return key


def load_ar1(checkpoint_dir, dtype=jnp.bfloat16, strict: bool = True, *, mesh: jax.sharding.Mesh | None = None,
             rules: str = "default", shardings: dict | None = None) -> LoadedAR1:
    """Loads a release-layout Alpamayo-R1 checkpoint (`model_type: alpamayo_r1`), in bfloat16 by
    default (None too) as the release runs it, with its config's inference and scene settings.

    Each tensor is streamed into its sharding: `shardings` (a pure dict like the params), or the
    logical-axis `rules` on `mesh`; neither: the default device.
    """
    from ar1_jax.model.vla import AR1

    checkpoint_dir = pathlib.Path(checkpoint_dir)
    hf_cfg = json.loads((checkpoint_dir / "config.json").read_text())
    dtype_name = jnp.dtype(jnp.bfloat16 if dtype is None else dtype).name
    cfg = ar1_config_from_hf(hf_cfg, dtype=dtype_name)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: AR1(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    state_shardings = None
    if shardings is not None:
        state_shardings = jax.tree.map(lambda v, s: v.replace(s), abstract, nnx.State(shardings),
                                       is_leaf=lambda x: isinstance(x, nnx.Variable))
    elif mesh is not None:
        from ar1_jax.parallel.rules import param_shardings

        state_shardings = param_shardings(abstract, mesh, rules)
    tied_head = "vlm.lm_head.weight" if cfg.model.text.tie_word_embeddings else None
    with CheckpointReader(checkpoint_dir) as reader:
        params, present = _read_params(reader, ar1_key_table(cfg), _release_canonical, abstract, state_shardings,
                                       dtype_of(dtype_name), strict, optional={tied_head, *BUFFER_KEYS},
                                       model="AR1")
        buffers = {k: np.array(reader.get(present[k])) for k in BUFFER_KEYS if k in present}
    return LoadedAR1(_config_with_buffers(cfg, buffers), graphdef, params, buffers, hf_cfg)


def _config_with_buffers(cfg, buffers: dict):
    """Uses the checkpoint's own frequency and normalisation buffers, when it has them."""
    freq_keys = [k for k in buffers if k.endswith(".freqs")]
    if freq_keys:
        values = [tuple(np.asarray(buffers[k], np.float32).reshape(-1).tolist()) for k in freq_keys]
        if any(v != values[0] for v in values) or len(values[0]) != cfg.expert.num_frequencies:
            raise CheckpointMismatch(f"checkpoint frequency buffers {freq_keys} disagree with each other or with "
                                     f"num_frequencies={cfg.expert.num_frequencies}: {values}")
        cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, frequencies=values[0]))
    stats = {k.split(".")[-1]: float(np.asarray(v, np.float32)) for k, v in buffers.items()
             if k.startswith("action_space.")}
    if stats:
        cfg = dataclasses.replace(cfg, action=dataclasses.replace(cfg.action, **stats))
    return cfg.validate()


def export_ar1(model: LoadedAR1, out_dir, max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
    """Writes a release-layout checkpoint: the same names (`vlm.` + the VLM family's hub layout,
    `expert.*`, `action_in_proj.*`, `action_out_proj.*`, and any buffers the source had)."""
    family = model.cfg.model.family

    def key_of(key: str) -> str:
        return "vlm." + hub_key(key[len("vlm."):], family) if key.startswith("vlm.") else key

    def tensors():
        yield from _iter_tensors(model.params, ar1_key_table(model.cfg), model.cfg.model.vision, key_of)
        yield from model.buffers.items()

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_checkpoint(out_dir, tensors(), max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
    hf_config = dict(model.hf_config, **{SETTINGS_KEY: settings_to_hf(model.cfg)})
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    return out_dir
