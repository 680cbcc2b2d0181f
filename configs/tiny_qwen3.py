"""Tiny Qwen3-VL-shaped backbone (interleaved M-RoPE, q/k norm, DeepStack): CPU tests."""

from ar1_jax.config import Config, TextConfig, VisionConfig, VLMConfig


def get_config() -> Config:
    vision = VisionConfig(
        family="qwen3_vl", depth=3, hidden_size=32, intermediate_size=64, num_heads=2,
        out_hidden_size=64, patch_size=16, hidden_act="gelu_pytorch_tanh",
        num_position_embeddings=64, deepstack_visual_indexes=(0, 1),
    )
    text = TextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=5_000_000.0, mrope_section=(2, 3, 3),
        mrope_interleaved=True, qkv_bias=False, qk_norm=True,
    )
    return Config(name="tiny_qwen3", model=VLMConfig(family="qwen3_vl", vision=vision, text=text))
