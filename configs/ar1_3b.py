"""AR1 on the paper's 3B backbone (Qwen2.5-VL-3B); expert width 1024, 8 heads, MLP 5504 (see configs/_ar1_paper.py)."""

from ar1_jax.configs._ar1_paper import paper_ar1
from ar1_jax.configs.qwen2_5_vl_3b import get_config as backbone


def get_config():
    return paper_ar1("ar1_3b", backbone(), width=1024, mlp=5504, heads=8, action_in_hidden=1024)
