"""The paper's 0.5B backbone: a Qwen2.5-0.5B-shaped decoder (published 494M parameters) with a
small Qwen2.5-VL-style ViT (12 blocks of width 768, about 90M parameters)."""

from ar1_jax.config import Config, TextConfig, VisionConfig, VLMConfig
from ar1_jax.configs.qwen2_5_vl_3b import QWEN25_TOKENS


def get_config() -> Config:
    vision = VisionConfig(
        family="qwen2_5_vl", depth=12, hidden_size=768, intermediate_size=2048, num_heads=12,
        out_hidden_size=896, patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
        hidden_act="silu", window_size=112, fullatt_block_indexes=(3, 7, 11), tokens_per_second=2,
    )
    text = TextConfig(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, rope_theta=1_000_000.0, mrope_section=(8, 12, 12),
        rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=32768,
    )
    model = VLMConfig(family="qwen2_5_vl", vision=vision, text=text, dtype="bfloat16", **QWEN25_TOKENS)
    return Config(name="vlm_0p5b", model=model)
