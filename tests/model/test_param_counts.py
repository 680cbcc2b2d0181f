"""Real configs' parameter counts (from jax.eval_shape, nothing allocated) vs the published counts."""

import jax
import numpy as np
import pytest
from flax import nnx

from ar1_jax.config import get_config
from ar1_jax.model.vlm import VLM

# Published totals (HF model cards / safetensors metadata); for the 0.5B the decoder is
# Qwen2.5-0.5B's (494M) and the ViT is our own small one.
PUBLISHED = {
    "qwen2_5_vl_3b": ("all", 3.75e9),
    "qwen2_5_vl_7b": ("all", 8.29e9),
    "qwen3_vl_8b": ("all", 8.77e9),
    "vlm_0p5b": ("text", 0.494e9),
}


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_within_one_percent(name):
    cfg = get_config(name).model
    abstract = nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0)))
    which, published = PUBLISHED[name]
    params = nnx.state(abstract.text if which == "text" else abstract, nnx.Param)
    count = _count(params)
    assert abs(count - published) / published < 0.01, f"{name}: {count:,} vs published {published:,.0f}"
    # eval_shape must not have allocated anything.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))


def test_ar1_10b_release_counts():
    """The released AR1-10B: expert 2.279B (+ 5.32M action-in), total ~11.08B (about 22 GB in bf16)."""
    from ar1_jax.model.vla import AR1

    cfg = get_config("ar1_10b_release")
    abstract = nnx.eval_shape(lambda: AR1(cfg, rngs=nnx.Rngs(0)))
    expert = _count(nnx.state(abstract.expert, nnx.Param))
    action_in = _count(nnx.state(abstract.expert.action_in, nnx.Param))
    total = _count(nnx.state(abstract, nnx.Param))
    assert abs(action_in - 5.32e6) / 5.32e6 < 0.01
    assert abs((expert - action_in) - 2.2792e9) / 2.2792e9 < 0.01
    assert abs(total - 11.08e9) / 11.08e9 < 0.01
    # Every config builds abstractly and validates.
    for name in ("ar1_tiny", "ar1_0p5b", "ar1_3b", "ar1_7b"):
        c = get_config(name)
        assert c.is_vla and c.expert.num_heads % c.model.text.num_kv_heads == 0
        nnx.eval_shape(lambda c=c: AR1(c, rngs=nnx.Rngs(0)))
