"""HF safetensors checkpoints of `qwen2_5_vl` / `qwen3_vl` <-> our parameters.

    from ar1_jax.convert import hf
    model = hf.load(checkpoint_dir, dtype=jnp.float32)      # family read from config.json
    logits = model(input_ids, pixel_values=pv, image_grid_thw=thw)
    hf.export(model, out_dir)                                # back to the HF layout

Loading streams tensor by tensor from memory-mapped safetensors (single file or sharded with
`model.safetensors.index.json`) straight into each parameter's target sharding: with a mesh, every
device reads only its own shard's region. Every checkpoint key must map to a parameter and every
parameter must be found, with the right shape, or loading fails naming the key. No pickle anywhere.

The mapping is a table of `Entry`s: an HF key template (`{i}` = layer index, stacked into our
leading `layers` axis) and our parameter path, with how the array is laid out on each side.
The released Alpamayo-R1 layout (`vlm.` + Qwen3-VL, expert, action projections) is in
`ar1_jax.convert.release`; its names are re-exported here (`hf.load_ar1`, `hf.LoadedAR1`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ar1_jax.config import TextConfig, VisionConfig, VLMConfig
from ar1_jax.convert.safetensors_io import CheckpointReader, write_checkpoint
from ar1_jax.errors import CheckpointMismatch
from ar1_jax.model.layers import dtype_of
from ar1_jax.model.vlm import VLM, VLMRunner


# ----------------------------------------------------------------------------------------------------
# config.json <-> VLMConfig


def config_from_hf(hf: dict, *, dtype: str = "float32") -> VLMConfig:
    """Our config from a HF `config.json` dict (transformers 4 and 5 layouts)."""
    family = hf.get("model_type")
    if family not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"config.json model_type {family!r} is not supported (qwen2_5_vl | qwen3_vl)")
    t = dict(hf.get("text_config") or {})
    for key, value in hf.items():  # transformers-4 checkpoints keep text fields at the top level
        if key not in ("text_config", "vision_config"):
            t.setdefault(key, value)
    rope_params = dict(t.get("rope_parameters") or t.get("rope_scaling") or {})
    theta = rope_params.get("rope_theta", t.get("rope_theta", 1e6 if family == "qwen2_5_vl" else 5e5))
    heads = t["num_attention_heads"]
    head_dim = t.get("head_dim") or t["hidden_size"] // heads
    section = tuple(rope_params.get("mrope_section") or ((16, 24, 24) if family == "qwen2_5_vl" else (24, 20, 20)))
    qwen3 = family == "qwen3_vl"
    tie = bool(hf.get("tie_word_embeddings", t.get("tie_word_embeddings", False)))
    text = TextConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
        num_layers=t["num_hidden_layers"], num_heads=heads, num_kv_heads=t.get("num_key_value_heads") or heads,
        head_dim=head_dim, rope_theta=float(theta), mrope_section=section,
        mrope_interleaved=qwen3 or bool(rope_params.get("mrope_interleaved", False)),
        rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
        qkv_bias=not qwen3 or bool(t.get("attention_bias", False)), qk_norm=qwen3,
        tie_word_embeddings=tie,
        sliding_window=t.get("sliding_window") if t.get("use_sliding_window") else None,
        max_position_embeddings=int(t.get("max_position_embeddings", 32768)),
    )
    if text.sliding_window is not None:
        raise ValueError("config.json: use_sliding_window=True is not supported (no released Qwen-VL uses it)")
    if t.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: text hidden_act {t.get('hidden_act')!r} is not supported (silu)")
    v = hf["vision_config"]
    vrope = v.get("rope_parameters") or {}
    vision = VisionConfig(
        family=family, depth=v["depth"], hidden_size=v.get("hidden_size", v.get("embed_dim")),
        intermediate_size=v["intermediate_size"], num_heads=v["num_heads"], out_hidden_size=v["out_hidden_size"],
        patch_size=v.get("patch_size", v.get("spatial_patch_size", 14)),
        temporal_patch_size=v.get("temporal_patch_size", 2), spatial_merge_size=v.get("spatial_merge_size", 2),
        in_channels=v.get("in_channels", v.get("in_chans", 3)), hidden_act=v.get("hidden_act", "silu"),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        window_size=v.get("window_size", 112), fullatt_block_indexes=tuple(v.get("fullatt_block_indexes") or ()),
        tokens_per_second=v.get("tokens_per_second", 2),
        num_position_embeddings=v.get("num_position_embeddings", 0) if qwen3 else 0,
        deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes") or ()) if qwen3 else (),
    )
    cfg = VLMConfig(
        family=family, vision=vision, text=text, image_token_id=hf.get("image_token_id", 151655),
        video_token_id=hf.get("video_token_id", 151656), vision_start_token_id=hf.get("vision_start_token_id", 151652),
        vision_end_token_id=hf.get("vision_end_token_id", 151653), dtype=dtype, param_dtype=dtype,
    )
    cfg.validate()
    return cfg


def config_to_hf(cfg: VLMConfig) -> dict:
    """A transformers-5 `config.json` dict for `cfg`."""
    t, v = cfg.text, cfg.vision
    qwen3 = cfg.family == "qwen3_vl"
    rope_parameters = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}
    text = dict(model_type=f"{cfg.family}_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads, hidden_act="silu",
                rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
                rope_parameters=rope_parameters)
    vision = dict(model_type=f"{cfg.family}_vision", depth=v.depth, hidden_size=v.hidden_size,
                  intermediate_size=v.intermediate_size, num_heads=v.num_heads, out_hidden_size=v.out_hidden_size,
                  patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                  spatial_merge_size=v.spatial_merge_size, in_channels=v.in_channels, hidden_act=v.hidden_act,
                  rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta})
    if qwen3:
        text.update(head_dim=t.head_dim, attention_bias=t.qkv_bias)
        rope_parameters["mrope_interleaved"] = True
        vision.update(num_position_embeddings=v.num_position_embeddings,
                      deepstack_visual_indexes=list(v.deepstack_visual_indexes))
    else:
        text.update(use_sliding_window=False, sliding_window=None)
        vision.update(window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
                      tokens_per_second=v.tokens_per_second)
    arch = "Qwen3VLForConditionalGeneration" if qwen3 else "Qwen2_5_VLForConditionalGeneration"
    return dict(architectures=[arch], model_type=cfg.family, text_config=text, vision_config=vision,
                image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
                tie_word_embeddings=t.tie_word_embeddings, dtype=cfg.param_dtype)


# ----------------------------------------------------------------------------------------------------
# The key table.


@dataclasses.dataclass(frozen=True)
class Entry:
    hf: str  # canonical (transformers-5) key; `{i}` for a layer index
    ours: tuple[str, ...]  # path in the VLM's param state
    kind: str  # linear | vector | identity | patch
    n_in: int = 1  # linear: how many leading dims of ours form the input
    chunk: tuple[int, int] | None = None  # (j, n): ours is the j-th of n equal row-blocks of the HF tensor

    @property
    def stacked(self) -> bool:
        return "{" in self.hf

    def key(self, i: int = 0) -> str:
        """The HF key of layer `i`: `{i}` -> i, `{3i+2}` -> 3 * i + 2 (the release's action-in trunk
        interleaves norms and linears)."""
        def repl(m):
            a, b = m.group(1), m.group(2)
            return str((int(a) if a else 1) * i + (int(b) if b else 0))

        return re.sub(r"\{(\d*)i(?:\+(\d+))?\}", repl, self.hf)


def key_table(cfg: VLMConfig) -> list[Entry]:
    """Every (HF key, parameter) pair for this config, in canonical HF naming."""
    t, v = cfg.text, cfg.vision
    qwen3 = cfg.family == "qwen3_vl"
    T, V = "model.language_model.", "model.visual."
    e = [Entry(T + "embed_tokens.weight", ("text", "embed"), "identity"),
         Entry(T + "norm.weight", ("text", "final_norm"), "vector"),
         Entry(T + "layers.{i}.input_layernorm.weight", ("text", "layers", "input_norm"), "vector"),
         Entry(T + "layers.{i}.post_attention_layernorm.weight", ("text", "layers", "post_attn_norm"), "vector"),
         Entry(T + "layers.{i}.self_attn.o_proj.weight", ("text", "layers", "attn", "o_kernel"), "linear", 2)]
    for n in "qkv":
        e.append(Entry(T + f"layers.{{i}}.self_attn.{n}_proj.weight", ("text", "layers", "attn", f"{n}_kernel"), "linear"))
        if t.qkv_bias:
            e.append(Entry(T + f"layers.{{i}}.self_attn.{n}_proj.bias", ("text", "layers", "attn", f"{n}_bias"), "vector"))
    if t.qk_norm:
        for n in "qk":
            e.append(Entry(T + f"layers.{{i}}.self_attn.{n}_norm.weight", ("text", "layers", "attn", f"{n}_norm"), "vector"))
    for n in ("gate", "up", "down"):
        e.append(Entry(T + f"layers.{{i}}.mlp.{n}_proj.weight", ("text", "layers", "mlp", f"{n}_kernel"), "linear"))
    if not t.tie_word_embeddings:
        e.append(Entry("lm_head.weight", ("text", "lm_head"), "linear"))

    B = V + "blocks.{i}."
    e += [Entry(V + "patch_embed.proj.weight", ("vision", "patch_embed", "kernel"), "patch"),
          Entry(B + "attn.proj.weight", ("vision", "blocks", "attn", "o_kernel"), "linear", 2),
          Entry(B + "attn.proj.bias", ("vision", "blocks", "attn", "o_bias"), "vector")]
    for j, n in enumerate("qkv"):
        e.append(Entry(B + "attn.qkv.weight", ("vision", "blocks", "attn", f"{n}_kernel"), "linear", 1, (j, 3)))
        e.append(Entry(B + "attn.qkv.bias", ("vision", "blocks", "attn", f"{n}_bias"), "vector", 1, (j, 3)))
    norm_fields = (("weight", "scale"), ("bias", "bias")) if qwen3 else (("weight", "scale"),)
    for hf_name, ours in norm_fields:
        for n in ("norm1", "norm2"):
            e.append(Entry(B + f"{n}.{hf_name}", ("vision", "blocks", n, ours), "vector"))
    if qwen3:
        e += [Entry(V + "patch_embed.proj.bias", ("vision", "patch_embed", "bias"), "vector"),
              Entry(V + "pos_embed.weight", ("vision", "pos_embed"), "identity")]
        for n in ("fc1", "fc2"):
            e.append(Entry(B + f"mlp.linear_{n}.weight", ("vision", "blocks", "mlp", f"{n}_kernel"), "linear"))
            e.append(Entry(B + f"mlp.linear_{n}.bias", ("vision", "blocks", "mlp", f"{n}_bias"), "vector"))
        mergers = [(V + "merger.", ("vision", "merger"))]
        if v.deepstack_visual_indexes:
            mergers.append((V + "deepstack_merger_list.{i}.", ("vision", "deepstack")))
        for prefix, path in mergers:
            e += [Entry(prefix + "norm.weight", path + ("norm", "scale"), "vector"),
                  Entry(prefix + "norm.bias", path + ("norm", "bias"), "vector")]
            for n in ("fc1", "fc2"):
                e.append(Entry(prefix + f"linear_{n}.weight", path + (f"{n}_kernel",), "linear"))
                e.append(Entry(prefix + f"linear_{n}.bias", path + (f"{n}_bias",), "vector"))
    else:
        for n in ("gate", "up", "down"):
            e.append(Entry(B + f"mlp.{n}_proj.weight", ("vision", "blocks", "mlp", f"{n}_kernel"), "linear"))
            e.append(Entry(B + f"mlp.{n}_proj.bias", ("vision", "blocks", "mlp", f"{n}_bias"), "vector"))
        e += [Entry(V + "merger.ln_q.weight", ("vision", "merger", "norm", "scale"), "vector"),
              Entry(V + "merger.mlp.0.weight", ("vision", "merger", "fc1_kernel"), "linear"),
              Entry(V + "merger.mlp.0.bias", ("vision", "merger", "fc1_bias"), "vector"),
              Entry(V + "merger.mlp.2.weight", ("vision", "merger", "fc2_kernel"), "linear"),
              Entry(V + "merger.mlp.2.bias", ("vision", "merger", "fc2_bias"), "vector")]
    return e


def canonical_key(key: str) -> str:
    """transformers-4 / Qwen2.5 hub names (`model.layers`, `visual.`) -> transformers-5 names."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key[len("model."):]
    return key


def hub_key(key: str, family: str) -> str:
    """Canonical -> the layout transformers writes for the family (Qwen2.5-VL keeps the legacy one)."""
    if family != "qwen2_5_vl":
        return key
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


# ----------------------------------------------------------------------------------------------------
# Per-entry array transforms (numpy, one layer at a time).


def _hf_shape(entry: Entry, layer_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor's shape (before chunking) for our per-layer shape."""
    n = entry.chunk[1] if entry.chunk else 1
    if entry.kind == "linear":
        return (n * int(np.prod(layer_shape[entry.n_in:])), int(np.prod(layer_shape[:entry.n_in])))
    if entry.kind == "patch":
        return (layer_shape[1], layer_shape[0])  # conv weight flattened; checked by size below
    if entry.kind == "vector":
        return (n * int(np.prod(layer_shape)),)
    return tuple(layer_shape)


def hf_to_ours(entry: Entry, w: np.ndarray, layer_shape: tuple[int, ...]) -> np.ndarray:
    if entry.chunk:
        j, n = entry.chunk
        rows = w.shape[0] // n
        w = w[j * rows:(j + 1) * rows]
    if entry.kind == "linear":
        return np.ascontiguousarray(w.T).reshape(layer_shape)
    if entry.kind == "patch":
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    return np.asarray(w).reshape(layer_shape)


def ours_to_hf(entry: Entry, a: np.ndarray, conv_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if entry.kind == "linear":
        n_in = int(np.prod(a.shape[:entry.n_in]))
        return np.ascontiguousarray(a.reshape(n_in, -1).T)
    if entry.kind == "patch":
        return np.ascontiguousarray(a.T).reshape(conv_shape)
    if entry.kind == "vector":
        return a.reshape(-1)
    return a


# ----------------------------------------------------------------------------------------------------
# Load.


def _path_str(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def load(checkpoint_dir, dtype=None, mesh: jax.sharding.Mesh | None = None, rules: str = "default",
         strict: bool = True) -> VLMRunner:
    """Loads a HF `qwen2_5_vl` / `qwen3_vl` checkpoint directory into a runnable model (an
    `alpamayo_r1` one into a `LoadedAR1`, see `load_ar1`).

    `dtype` is the parameter and compute dtype; None: float32 for a Qwen-VL checkpoint, bfloat16
    (what the release runs) for an Alpamayo-R1 one. With `mesh`, parameters are created directly in the
    shardings the logical-axis `rules` give; otherwise on the default device.
    """
    checkpoint_dir = pathlib.Path(checkpoint_dir)
    config_path = checkpoint_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.json (expected a HF checkpoint directory)")
    hf_cfg = json.loads(config_path.read_text())
    if hf_cfg.get("model_type") == "alpamayo_r1":
        from ar1_jax.convert.release import load_ar1

        return load_ar1(checkpoint_dir, dtype=dtype, strict=strict, mesh=mesh, rules=rules)
    dtype_name = jnp.dtype(jnp.float32 if dtype is None else dtype).name
    cfg = config_from_hf(hf_cfg, dtype=dtype_name)
    abstract = nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    if mesh is not None:
        from ar1_jax.parallel.rules import param_shardings

        shardings = param_shardings(abstract_params, mesh, rules)
    else:
        shardings = None
    tied_head = "lm_head.weight" if cfg.text.tie_word_embeddings else None
    with CheckpointReader(checkpoint_dir) as reader:
        params, _ = _read_params(reader, key_table(cfg), canonical_key, abstract_params, shardings,
                                 dtype_of(dtype_name), strict, optional={tied_head},
                                 context=f"config {cfg.family} with {cfg.text.num_layers} text / "
                                         f"{cfg.vision.depth} vision layers", model=cfg.family)
    return VLMRunner(cfg, graphdef, params, mesh, rules)


def _read_params(reader: CheckpointReader, table: list[Entry], canonical, abstract_params, shardings, dtype,
                 strict: bool, *, optional=frozenset(), context: str = "", model: str = "model"):
    """Streams every parameter of `abstract_params` from `reader` into its sharding (default device
    without `shardings`). `table` maps HF keys (named as `canonical(key)`) to parameter paths;
    checkpoint keys in `optional` may stay unused. Returns (params state, {canonical: stored key})."""
    present = {canonical(k): k for k in reader.keys()}
    entries = {e.ours: e for e in table}
    used: set[str] = set()
    flat_shard = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out = []
    for path, var in nnx.to_flat_state(abstract_params):
        path = _path_str(path)
        entry = entries.get(path)
        if entry is None:
            raise CheckpointMismatch(f"parameter {'.'.join(path)} has no checkpoint key mapping")
        shape = tuple(var.get_value().shape)
        layer_shape = shape[1:] if entry.stacked else shape
        keys = [entry.key(i) for i in range(shape[0])] if entry.stacked else [entry.key()]
        for key in keys:
            if key not in present:
                where = f", {context}" if context else ""
                raise CheckpointMismatch(f"checkpoint is missing tensor {key!r} (for parameter {'.'.join(path)}"
                                         f"{where})")
            raw_shape = tuple(reader.shape(present[key]))
            expected = _hf_shape(entry, layer_shape)
            if entry.kind == "patch":  # conv [E, C, tp, p, p] flattens onto our [C * tp * p * p, E]
                ok = raw_shape[:1] == layer_shape[1:] and int(np.prod(raw_shape[1:])) == layer_shape[0]
            else:
                ok = raw_shape == expected
            if not ok:
                raise CheckpointMismatch(f"checkpoint tensor {key!r} has shape {raw_shape}, expected {expected} "
                                         f"(parameter {'.'.join(path)} of shape {layer_shape})")
            used.add(key)

        def load_region(index, entry=entry, keys=keys, layer_shape=layer_shape):
            if entry.stacked:
                region = np.stack([hf_to_ours(entry, reader.get(present[k]), layer_shape)[index[1:]]
                                   for k in keys[index[0]]], 0)
            else:
                region = hf_to_ours(entry, reader.get(present[keys[0]]), layer_shape)[index]
            return np.asarray(region).astype(dtype)

        sharding = flat_shard.get(tuple(path))
        sharding = sharding.get_value() if sharding is not None else default_sharding
        out.append((path, var.replace(jax.make_array_from_callback(shape, sharding, load_region))))
    extra = sorted(k for c, k in present.items() if c not in used and c not in optional)
    if extra and strict:
        raise CheckpointMismatch(f"checkpoint has {len(extra)} tensor(s) the {model} model does not use, "
                                 f"e.g. {extra[:5]}")
    return nnx.from_flat_state(out), present


# ----------------------------------------------------------------------------------------------------
# Export.


def _iter_tensors(params, table: list[Entry], vision, key_of) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (key_of(canonical HF key), numpy array) for every tensor of `table`, one at a time;
    entries sharing a key (Qwen's fused qkv) are concatenated in chunk order."""
    flat = {_path_str(p): v.get_value() for p, v in nnx.to_flat_state(params)}
    conv_shape = (vision.hidden_size, vision.in_channels, vision.temporal_patch_size, vision.patch_size,
                  vision.patch_size)
    groups: dict[str, list[Entry]] = {}
    for e in table:
        groups.setdefault(e.hf, []).append(e)
    for entries in groups.values():
        entries = sorted(entries, key=lambda e: e.chunk or (0, 1))
        arrays = [flat[e.ours] for e in entries]
        stacked = entries[0].stacked
        for i in range(arrays[0].shape[0] if stacked else 1):
            parts = [ours_to_hf(e, np.asarray(jax.device_get(a[i] if stacked else a)), conv_shape)
                     for e, a in zip(entries, arrays)]
            yield key_of(entries[0].key(i)), parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def iter_hf_tensors(model: VLMRunner) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (hub key, numpy array) for every tensor of the HF layout, one at a time."""
    cfg = model.cfg
    return _iter_tensors(model.params, key_table(cfg), cfg.vision, lambda k: hub_key(k, cfg.family))


def export(model, out_dir, max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
    """Writes `config.json` and safetensors in the HF layout that transformers loads (or, for a
    `LoadedAR1`, the release's layout)."""
    from ar1_jax.convert.release import LoadedAR1, export_ar1

    if isinstance(model, LoadedAR1):
        return export_ar1(model, out_dir, max_shard_bytes)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_checkpoint(out_dir, iter_hf_tensors(model), max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config_to_hf(model.cfg), indent=2))
    return out_dir


# The release layout's public names, re-exported (defined in ar1_jax.convert.release, which imports this module).
from ar1_jax.convert.release import (  # noqa: E402
    BUFFER_KEYS, KNOWN_VLMS, SETTINGS_KEY, LoadedAR1, ar1_config_from_hf, ar1_key_table, export_ar1, load_ar1,
    settings_from_hf, settings_to_hf)

__all__ = ["BUFFER_KEYS", "KNOWN_VLMS", "SETTINGS_KEY", "CheckpointMismatch", "Entry", "LoadedAR1",
           "ar1_config_from_hf", "ar1_key_table", "canonical_key", "config_from_hf", "config_to_hf", "export",
           "export_ar1", "hub_key", "iter_hf_tensors", "key_table", "load", "load_ar1", "settings_from_hf",
           "settings_to_hf"]
