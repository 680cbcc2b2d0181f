"""AR1 on the paper's 0.5B backbone (Qwen2.5-0.5B decoder + small ViT); expert width 512, 8 heads, MLP 2432 (see configs/_ar1_paper.py)."""

from ar1_jax.configs._ar1_paper import paper_ar1
from ar1_jax.configs.vlm_0p5b import get_config as backbone


def get_config():
    return paper_ar1("ar1_0p5b", backbone(), width=512, mlp=2432, heads=8, action_in_hidden=512)
