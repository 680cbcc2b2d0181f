"""Our image preprocessing against transformers' Qwen2-VL PIL image processor."""

import numpy as np
import pytest

pytest.importorskip("transformers")

from ar1_jax.data import images  # noqa: E402

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("hw", [(64, 112), (100, 37), (280, 448), (57, 57)])
def test_matches_hf_pil_processor(hw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for _ in range(2)]
    proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 200)
    want = proc(images=frames, return_tensors="np")
    pv, grid = images.preprocess_images(frames, min_pixels=56 * 56, max_pixels=28 * 28 * 200)
    np.testing.assert_array_equal(grid, want["image_grid_thw"])
    np.testing.assert_allclose(pv, want["pixel_values"], atol=1e-5)
