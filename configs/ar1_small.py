"""ar1_tiny at 3x the width and twice the depth (backbone 192 wide, 4 layers; vision 64 wide; expert
96; 4.29M parameters): the largest size of `ar1 experiment longtail --sizes`' CPU sweep (an SFT
step takes about 3x ar1_tiny's on 2 CPU cores). Same scenes, tokenizer, training and inference
settings as ar1_tiny."""

import dataclasses

from ar1_jax.config import Config, ExpertConfig
from ar1_jax.configs.ar1_tiny import get_config as ar1_tiny


def get_config() -> Config:
    base = ar1_tiny()
    m = base.model
    text = dataclasses.replace(m.text, hidden_size=192, intermediate_size=512, num_layers=4, num_heads=6,
                               head_dim=32, mrope_section=(4, 6, 6))
    vision = dataclasses.replace(m.vision, hidden_size=64, intermediate_size=128, out_hidden_size=192)
    expert = ExpertConfig(hidden_size=96, intermediate_size=256, num_heads=2, action_in_hidden=64)
    return dataclasses.replace(base, name="ar1_small", model=dataclasses.replace(m, text=text, vision=vision),
                               expert=expert)
