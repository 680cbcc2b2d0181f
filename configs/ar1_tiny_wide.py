"""ar1_tiny at twice the width (backbone 128 wide, expert 64; 1.74M parameters against ar1_tiny's
0.84M): the middle size of `ar1 experiment longtail --sizes`' CPU sweep (an SFT step takes about
1.4x ar1_tiny's on 2 CPU cores). Same scenes, tokenizer, training and inference settings as
ar1_tiny; only the widths differ."""

import dataclasses

from ar1_jax.config import Config, ExpertConfig
from ar1_jax.configs.ar1_tiny import get_config as ar1_tiny


def get_config() -> Config:
    base = ar1_tiny()
    m = base.model
    text = dataclasses.replace(m.text, hidden_size=128, intermediate_size=256, head_dim=32, mrope_section=(4, 6, 6))
    vision = dataclasses.replace(m.vision, out_hidden_size=128)
    expert = ExpertConfig(hidden_size=64, intermediate_size=128, num_heads=2, action_in_hidden=64)
    return dataclasses.replace(base, name="ar1_tiny_wide", model=dataclasses.replace(m, text=text, vision=vision),
                               expert=expert)
