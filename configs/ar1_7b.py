"""AR1 on the paper's 7B backbone (Qwen2.5-VL-7B); expert width 2048, 16 heads, MLP 9472 (see configs/_ar1_paper.py)."""

from ar1_jax.configs._ar1_paper import paper_ar1
from ar1_jax.configs.qwen2_5_vl_7b import get_config as backbone


def get_config():
    return paper_ar1("ar1_7b", backbone(), width=2048, mlp=9472, heads=16, action_in_hidden=1024)
