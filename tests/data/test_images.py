"""Image preprocessing: patch layout (merge-block order, temporal repeat), resize rules, errors."""

import numpy as np
import pytest

from ar1_jax.data import images


def test_patch_layout_is_merge_block_order_with_temporal_repeat():
    rng = np.random.default_rng()
    c, p, m, tp = 3, 4, 2, 2
    gh, gw = 4, 6
    img = rng.standard_normal((c, gh * p, gw * p)).astype(np.float32)
    patches = images.patchify(img, p, m, tp)
    assert patches.shape == (gh * gw, c * tp * p * p)
    for n in range(gh * gw):  # decode row n back to its patch position
        block, inner = divmod(n, m * m)
        br, bc = divmod(block, gw // m)
        ir, ic = divmod(inner, m)
        r, col = br * m + ir, bc * m + ic
        want = img[:, r * p:(r + 1) * p, col * p:(col + 1) * p]
        got = patches[n].reshape(c, tp, p, p)
        for t in range(tp):
            np.testing.assert_array_equal(got[:, t], want)


@pytest.mark.parametrize("h,w", [(64, 112), (1000, 30), (30, 1000), (2000, 3000)])
def test_smart_resize_bounds(h, w):
    factor, lo, hi = 28, 56 * 56, 28 * 28 * 256
    rh, rw = images.smart_resize(h, w, factor, lo, hi)
    assert rh % factor == 0 and rw % factor == 0
    assert lo <= rh * rw <= hi or rh == factor or rw == factor
    assert abs(np.log((rh / rw) / (h / w))) < 0.7


def test_fixed_size_and_errors():
    frame = np.zeros((50, 90, 3), np.uint8)
    pv, grid = images.preprocess_image(frame, size=(56, 112))
    assert grid == (1, 4, 8) and pv.shape == (32, 3 * 2 * 14 * 14)
    assert images.image_token_count(grid) == 8
    with pytest.raises(ValueError, match="multiple"):
        images.preprocess_image(frame, size=(50, 112))
    with pytest.raises(ValueError, match="RGB"):
        images.preprocess_image(np.zeros((10, 10)), size=(28, 28))
