"""Tiny AR1 (Qwen3-VL-shaped backbone + action expert) for CPU tests and the demo: 4 cameras x 4
frames of 64x96 pixels (6 image tokens each), our sentencepiece layout with 512 base pieces."""

import dataclasses

from ar1_jax.config import Config, DataConfig, ExpertConfig, InferConfig, SceneConfig, TrainConfig
from ar1_jax.configs.tiny_qwen3 import get_config as tiny_qwen3
from ar1_jax.text import layout

BASE_VOCAB = 512


def get_config() -> Config:
    ids, tokens, vocab = layout.ours(BASE_VOCAB)
    base = tiny_qwen3()
    model = dataclasses.replace(base.model, text=dataclasses.replace(base.model.text, vocab_size=vocab),
                                **layout.vision_ids(ids))
    expert = ExpertConfig(hidden_size=32, intermediate_size=64, num_heads=2, action_in_hidden=32)
    return Config(name="ar1_tiny", model=model, expert=expert, tokens=tokens,
                  infer=InferConfig(max_reasoning_tokens=24, num_samples=2, flow_steps=5),
                  scene=SceneConfig(num_cameras=4, num_frames=4, image_height=64, image_width=96),
                  data=DataConfig(batch_size=8),
                  # A small model learns fast: short warmup, high peak rate (the loss halves in 60 steps).
                  train=TrainConfig(steps=200, learning_rate=3e-3, warmup_steps=5, log_every=5,
                                    checkpoint_every=25))
