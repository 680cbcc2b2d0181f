"""Qwen3-VL-8B-Instruct's shapes (the released AR1-10B's VLM; published total 8.77B parameters)."""

from ar1_jax.config import Config, TextConfig, VisionConfig, VLMConfig


def get_config() -> Config:
    vision = VisionConfig(
        family="qwen3_vl", depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
        out_hidden_size=4096, patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
        hidden_act="gelu_pytorch_tanh", num_position_embeddings=2304, deepstack_visual_indexes=(8, 16, 24),
    )
    text = TextConfig(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=5_000_000.0, mrope_section=(24, 20, 20),
        mrope_interleaved=True, rms_norm_eps=1e-6, qkv_bias=False, qk_norm=True,
        tie_word_embeddings=False, max_position_embeddings=262144,
    )
    model = VLMConfig(family="qwen3_vl", vision=vision, text=text, dtype="bfloat16",
                      image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)
    return Config(name="qwen3_vl_8b", model=model)
