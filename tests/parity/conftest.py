"""Session fixtures for the HF side of the parity tests.

Each fixture yields ``(torch_model, checkpoint_dir)``: a tiny random HF model in eval mode
(float32, eager attention, O(1) logits) and the directory its ``save_pretrained`` wrote
(``model.safetensors`` + ``config.json``).  torch / transformers are imported lazily so that
collecting this directory without the ``parity`` extra skips instead of erroring.
"""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

HF_SEED = 0


def _build(tmp_path_factory, family, name, tie_word_embeddings=False):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import hf_reference

    ckpt = tmp_path_factory.mktemp(name)
    model = hf_reference.make_hf_model(
        family, ckpt, seed=HF_SEED, tie_word_embeddings=tie_word_embeddings
    )
    return model, ckpt


@pytest.fixture(scope="session")
def hf_qwen25(tmp_path_factory):
    """(Qwen2_5_VLForConditionalGeneration, checkpoint_dir), untied embeddings."""
    yield _build(tmp_path_factory, "qwen2_5_vl", "hf_qwen25")


@pytest.fixture(scope="session")
def hf_qwen25_tied(tmp_path_factory):
    """(Qwen2_5_VLForConditionalGeneration, checkpoint_dir), tie_word_embeddings=True."""
    yield _build(tmp_path_factory, "qwen2_5_vl", "hf_qwen25_tied", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def hf_qwen3(tmp_path_factory):
    """(Qwen3VLForConditionalGeneration, checkpoint_dir), untied embeddings."""
    yield _build(tmp_path_factory, "qwen3_vl", "hf_qwen3")


@pytest.fixture(scope="session")
def hf_qwen3_tied(tmp_path_factory):
    """(Qwen3VLForConditionalGeneration, checkpoint_dir), tie_word_embeddings=True."""
    yield _build(tmp_path_factory, "qwen3_vl", "hf_qwen3_tied", tie_word_embeddings=True)
