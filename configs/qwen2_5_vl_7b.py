"""Qwen2.5-VL-7B-Instruct's shapes (the paper's 7B backbone; published total 8.29B parameters)."""

from ar1_jax.config import Config, TextConfig, VisionConfig, VLMConfig
from ar1_jax.configs.qwen2_5_vl_3b import QWEN25_TOKENS, QWEN25_VIT


def get_config() -> Config:
    vision = VisionConfig(out_hidden_size=3584, **QWEN25_VIT)
    text = TextConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0, mrope_section=(16, 24, 24),
        rms_norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=False, max_position_embeddings=128000,
    )
    model = VLMConfig(family="qwen2_5_vl", vision=vision, text=text, dtype="bfloat16", **QWEN25_TOKENS)
    return Config(name="qwen2_5_vl_7b", model=model)
