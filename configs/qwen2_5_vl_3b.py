"""Qwen2.5-VL-3B-Instruct's shapes (the paper's 3B backbone; published total 3.75B parameters)."""

from ar1_jax.config import Config, TextConfig, VisionConfig, VLMConfig

QWEN25_VIT = dict(
    family="qwen2_5_vl", depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, hidden_act="silu",
    window_size=112, fullatt_block_indexes=(7, 15, 23, 31), tokens_per_second=2,
)
QWEN25_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                     vision_end_token_id=151653)


def get_config() -> Config:
    vision = VisionConfig(out_hidden_size=2048, **QWEN25_VIT)
    text = TextConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
        num_kv_heads=2, head_dim=128, rope_theta=1_000_000.0, mrope_section=(16, 24, 24),
        rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=128000,
    )
    model = VLMConfig(family="qwen2_5_vl", vision=vision, text=text, dtype="bfloat16", **QWEN25_TOKENS)
    return Config(name="qwen2_5_vl_3b", model=model)
