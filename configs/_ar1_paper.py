"""Shared builder of the paper-size AR1 configs (ar1_0p5b, ar1_3b, ar1_7b).

The paper does not publish its experts' sizes; ours follow the release's ratio (about half the
backbone's width, heads a multiple of the backbone's KV heads). Vocabulary and special-token ids
follow the release's layout. Scenes: 4 cameras x 4 frames at the paper's 280x448 (160 tokens per
image), normalised with the Qwen2.5-VL processor's CLIP statistics."""

import dataclasses

from ar1_jax.config import Config, ExpertConfig, SceneConfig
from ar1_jax.data.images import CLIP_MEAN, CLIP_STD
from ar1_jax.text import layout


def paper_ar1(name: str, backbone: Config, *, width: int, mlp: int, heads: int, action_in_hidden: int) -> Config:
    ids, tokens, vocab = layout.release()
    # Training at these sizes rematerialises every decoder layer and ViT block (docs/memory.md);
    # inference does not differentiate, so remat changes nothing there.
    model = dataclasses.replace(backbone.model,
                                text=dataclasses.replace(backbone.model.text, vocab_size=vocab, remat="full"),
                                vision=dataclasses.replace(backbone.model.vision, remat="full"),
                                **layout.vision_ids(ids))
    expert = ExpertConfig(hidden_size=width, intermediate_size=mlp, num_heads=heads, action_in_hidden=action_in_hidden)
    scene = SceneConfig(num_cameras=4, num_frames=4, image_height=280, image_width=448, image_mean=CLIP_MEAN,
                        image_std=CLIP_STD)
    return Config(name=name, model=model, expert=expert, tokens=tokens, scene=scene)
