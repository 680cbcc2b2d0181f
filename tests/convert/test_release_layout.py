"""A tiny random checkpoint in the released Alpamayo-R1-10B layout: load -> export is identity.

The expert / action-projection key names and shapes are written out by hand from the release's
module tree (docs/design/alpamayo_release.md §7.2), not from our key table, so the mapping is
checked against an independent description.
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.convert import hf
from ar1_jax.convert.safetensors_io import CheckpointReader, write_checkpoint
from ar1_jax.model.vlm import build_model

E, HEADS, KV, D, MLP, HIN = 32, 2, 2, 16, 64, 32  # tiny expert; backbone is configs/tiny_qwen3


def _release_checkpoint(tmp_path, with_buffers: bool, *, vocab_size: int = 512 + 4000 + 28, traj_start: int = 512,
                        eos_id: int = 1, pad_id: int = 0, vision_ids: dict | None = None):
    """(directory, tensors) of a random release-layout checkpoint on the tiny_qwen3 backbone. Defaults: 512
    text ids, then <i0>..<i3999>, then 28 specials; a tokenizer's layout can be given instead (its vocabulary,
    where <i0> starts, its end-of-turn / pad ids and `vision_ids`: image_token_id and the like)."""
    rng = np.random.default_rng()
    base = get_config("tiny_qwen3").model
    backbone = dataclasses.replace(base, text=dataclasses.replace(base.text, vocab_size=vocab_size),
                                   **(vision_ids or {}))
    vlm = build_model(backbone, seed=int(rng.integers(1000)))
    vlm_dir = hf.export(vlm, tmp_path / "vlm")
    tensors = {}
    with CheckpointReader(vlm_dir) as r:
        for k in r.keys():
            tensors["vlm." + k] = np.array(r.get(k))
    layers = backbone.text.num_layers
    for i in range(layers):
        p = f"expert.layers.{i}."
        shapes = {"self_attn.q_proj.weight": (HEADS * D, E), "self_attn.k_proj.weight": (KV * D, E),
                  "self_attn.v_proj.weight": (KV * D, E), "self_attn.o_proj.weight": (E, HEADS * D),
                  "self_attn.q_norm.weight": (D,), "self_attn.k_norm.weight": (D,),
                  "mlp.gate_proj.weight": (MLP, E), "mlp.up_proj.weight": (MLP, E), "mlp.down_proj.weight": (E, MLP),
                  "input_layernorm.weight": (E,), "post_attention_layernorm.weight": (E,)}
        for name, shape in shapes.items():
            tensors[p + name] = rng.standard_normal(shape).astype(np.float32)
    tensors["expert.norm.weight"] = rng.standard_normal((E,)).astype(np.float32)
    trunk = {0: (HIN, 60), 3: (HIN, HIN), 6: (HIN, HIN), 9: (HIN, HIN), 12: (E, HIN)}
    for j, shape in trunk.items():
        tensors[f"action_in_proj.encoder.trunk.{j}.weight"] = rng.standard_normal(shape).astype(np.float32)
        tensors[f"action_in_proj.encoder.trunk.{j}.bias"] = rng.standard_normal(shape[:1]).astype(np.float32)
    for j in (2, 5, 8, 11):
        tensors[f"action_in_proj.encoder.trunk.{j}.weight"] = rng.standard_normal((HIN,)).astype(np.float32)
    tensors["action_in_proj.norm.weight"] = rng.standard_normal((E,)).astype(np.float32)
    tensors["action_in_proj.norm.bias"] = rng.standard_normal((E,)).astype(np.float32)
    tensors["action_out_proj.weight"] = rng.standard_normal((2, E)).astype(np.float32)
    tensors["action_out_proj.bias"] = rng.standard_normal((2,)).astype(np.float32)
    if with_buffers:
        freqs = np.asarray(jnp.asarray(np.logspace(0, 2, 10), jnp.bfloat16)).reshape(1, 10)
        for k in ("sinus.0", "sinus.1", "timestep_fourier_encoder"):
            tensors[f"action_in_proj.{k}.freqs"] = freqs
        for k, v in (("accel_mean", 0.029), ("accel_std", 0.68), ("curvature_mean", 2.7e-4),
                     ("curvature_std", 0.026)):
            tensors[f"action_space.{k}"] = np.asarray(v, np.float32)
    out = tmp_path / "release"
    write_checkpoint(out, tensors, max_shard_bytes=300_000)  # sharded, as the release is
    vlm_config = json.loads((vlm_dir / "config.json").read_text())
    config = {"model_type": "alpamayo_r1", "architectures": ["AlpamayoR1"], "vlm_config": vlm_config,
              "vocab_size": backbone.text.vocab_size, "traj_vocab_size": 4000, "traj_token_start_idx": traj_start,
              "eos_token_id": eos_id, "pad_token_id": pad_id,
              "tokens_per_history_traj": 48, "tokens_per_future_traj": 128,
              "expert_cfg": {"hidden_size": E, "num_attention_heads": HEADS, "intermediate_size": MLP, "head_dim": D},
              "action_in_proj_cfg": {"hidden_size": HIN, "num_enc_layers": 4, "num_fourier_feats": 20,
                                     "max_freq": 100.0},
              "action_space_cfg": {"accel_mean": 0.029, "accel_std": 0.68, "curvature_mean": 2.7e-4,
                                   "curvature_std": 0.026}}
    (out / "config.json").write_text(json.dumps(config))
    return out, tensors


@pytest.mark.parametrize("with_buffers", [True, False])
def test_load_export_round_trip_is_identity(tmp_path, with_buffers):
    ckpt, tensors = _release_checkpoint(tmp_path, with_buffers)
    model = _load_tiny(ckpt)
    assert model.cfg.expert.hidden_size == E and model.cfg.model.family == "qwen3_vl"
    p = model.pure_params["expert"]
    # Spot-check the mapping: q_proj [H*D, E] -> our kernel [E, H, D]; trunk.3 -> mid_kernel[0].
    np.testing.assert_array_equal(np.asarray(p["layers"]["attn"]["q_kernel"][1]),
                                  tensors["expert.layers.1.self_attn.q_proj.weight"].T.reshape(E, HEADS, D))
    np.testing.assert_array_equal(np.asarray(p["action_in"]["mid_kernel"][0]),
                                  tensors["action_in_proj.encoder.trunk.3.weight"].T)
    np.testing.assert_array_equal(np.asarray(p["action_in"]["final_norm"]),
                                  tensors["action_in_proj.encoder.trunk.11.weight"])
    out = hf.export(model, tmp_path / "exported")
    with CheckpointReader(out) as r:
        assert sorted(r.keys()) == sorted(tensors)
        for k in r.keys():
            np.testing.assert_array_equal(np.asarray(r.get(k)), tensors[k], err_msg=k)
    if with_buffers:  # the checkpoint's own constants are what runs
        assert model.cfg.expert.frequencies[1] == 1.671875 and model.cfg.action.accel_std == pytest.approx(0.68)


def test_missing_and_misshaped_expert_tensors_name_the_key(tmp_path):
    ckpt, tensors = _release_checkpoint(tmp_path, True)
    bad = dict(tensors)
    bad.pop("expert.layers.1.mlp.up_proj.weight")
    d = tmp_path / "bad"
    write_checkpoint(d, bad)
    (d / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(hf.CheckpointMismatch, match=r"expert\.layers\.1\.mlp\.up_proj\.weight"):
        _load_tiny(d)
    bad = dict(tensors)
    bad["action_out_proj.weight"] = np.zeros((3, E), np.float32)
    write_checkpoint(d, bad)
    with pytest.raises(hf.CheckpointMismatch, match=r"action_out_proj\.weight.*shape"):
        _load_tiny(d)


def _load_tiny(ckpt):
    return hf.load(ckpt, dtype=jnp.float32)  # exact round trips of the random f32 tensors


def test_default_load_is_bf16_with_settings_that_travel(tmp_path):
    """A release checkpoint loads in bf16 (as the release runs) with the release's inference settings and
    frames that tile into whole image tokens; an export writes our settings into config.json and a
    load reads them back."""
    ckpt, _ = _release_checkpoint(tmp_path, True)
    model = hf.load(ckpt)
    assert {x.dtype for x in __import__("jax").tree.leaves(model.pure_params)} == {jnp.dtype(jnp.bfloat16)}
    cfg = model.cfg
    assert cfg.model.dtype == "bfloat16" and cfg.infer == get_config("ar1_10b_release").infer
    block = cfg.model.vision.patch_size * cfg.model.vision.spatial_merge_size
    assert cfg.scene.image_height % block == 0 and cfg.scene.image_width % block == 0
    model.cfg = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, max_reasoning_tokens=40, flow_steps=5),
                                    scene=dataclasses.replace(cfg.scene, image_height=64, image_width=96))
    out = hf.export(model, tmp_path / "with_settings")
    assert json.loads((out / "config.json").read_text())[hf.SETTINGS_KEY]["infer"]["flow_steps"] == 5
    again = hf.load(out).cfg
    assert again.infer == model.cfg.infer and again.scene == model.cfg.scene
