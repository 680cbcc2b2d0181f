"""Tiny Qwen2.5-VL-shaped backbone: runs in seconds on a laptop CPU (tests, `make demo`)."""

from ar1_jax.config import Config, TextConfig, VisionConfig, VLMConfig


def get_config() -> Config:
    vision = VisionConfig(
        family="qwen2_5_vl", depth=4, hidden_size=32, intermediate_size=64, num_heads=2,
        out_hidden_size=64, patch_size=14, window_size=56, fullatt_block_indexes=(1, 3),
    )
    text = TextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, mrope_section=(2, 3, 3), qkv_bias=True,
    )
    return Config(name="tiny", model=VLMConfig(family="qwen2_5_vl", vision=vision, text=text))
