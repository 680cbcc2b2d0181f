"""The released Alpamayo-R1-10B: Qwen3-VL-8B (vocabulary grown to 155697) + a 2.3B expert
(width 2048, 16 heads, MLP 8256, the VLM's 36 layers / 8 KV heads / head dim 128), 4 cameras x 4
frames at 320x576 (180 tokens each). Constants the release runs in bf16 are kept bf16-rounded."""

import dataclasses

from ar1_jax.config import ActionConfig, Config, ExpertConfig, InferConfig, SceneConfig
from ar1_jax.configs.qwen3_vl_8b import get_config as qwen3_vl_8b
from ar1_jax.text import layout

# The release builds these buffers under a bf16 default dtype (docs/design/alpamayo_release.md §9).
BF16_FREQUENCIES = (1.0, 1.671875, 2.78125, 4.65625, 7.75, 12.9375, 21.5, 36.0, 60.0, 100.0)


def get_config() -> Config:
    ids, tokens, vocab = layout.release()
    base = qwen3_vl_8b()
    # Remat for training (docs/memory.md); a no-op for inference.
    model = dataclasses.replace(base.model, text=dataclasses.replace(base.model.text, vocab_size=vocab, remat="full"),
                                vision=dataclasses.replace(base.model.vision, remat="full"),
                                **layout.vision_ids(ids))
    expert = ExpertConfig(hidden_size=2048, intermediate_size=8256, num_heads=16, action_in_hidden=1024,
                          action_in_layers=4, frequencies=BF16_FREQUENCIES)
    action = ActionConfig(accel_mean=0.029052734375, accel_std=0.6796875, curvature_mean=0.0002689361572265625,
                          curvature_std=0.026123046875)
    return Config(name="ar1_10b_release", model=model, expert=expert, action=action, tokens=tokens,
                  infer=InferConfig(max_reasoning_tokens=256, temperature=0.6, top_p=0.98, num_samples=6,
                                    flow_steps=10),
                  scene=SceneConfig(num_cameras=4, num_frames=4, image_height=320, image_width=576))
