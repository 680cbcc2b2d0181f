"""`rope.get_rope_index` (host numpy) against transformers' `get_rope_index` on random layouts."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ar1_jax.model import rope  # noqa: E402

pytestmark = pytest.mark.parity

IMG, VID, VS, VE = 500, 501, 502, 503


def _random_batch(rng, family):
    rows, image_grids, video_grids, seconds = [], [], [], []
    for _ in range(3):
        ids = rng.integers(4, 400, rng.integers(1, 5)).tolist()
        for _ in range(rng.integers(0, 3)):
            kind = rng.choice(["image", "video"])
            t = int(rng.integers(1, 3)) if kind == "video" else 1
            h, w = (2 * int(x) for x in rng.integers(1, 5, 2))
            if kind == "image":
                image_grids.append((t, h, w))
                ids += [VS] + [IMG] * (t * h * w // 4) + [VE]
            else:
                video_grids.append((t, h, w))
                seconds.append(float(rng.choice([0.5, 1.0, 2.0])))
                if family == "qwen3_vl":
                    for f in range(t):
                        ids += [int(rng.integers(4, 400)), VS] + [VID] * (h * w // 4) + [VE]
                else:
                    ids += [VS] + [VID] * (t * h * w // 4) + [VE]
            ids += rng.integers(4, 400, rng.integers(1, 4)).tolist()
        rows.append(ids)
    t = max(map(len, rows))
    input_ids = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    for b, r in enumerate(rows):
        input_ids[b, t - len(r):] = r
        mask[b, t - len(r):] = 1
    return input_ids, mask, image_grids, video_grids, seconds


@pytest.mark.parametrize("fixture,family", [("hf_qwen25", "qwen2_5_vl"), ("hf_qwen3", "qwen3_vl")])
def test_get_rope_index_matches_transformers(request, fixture, family):
    torch_model, _ = request.getfixturevalue(fixture)
    rng = np.random.default_rng()
    tps = torch_model.config.vision_config.tokens_per_second if family == "qwen2_5_vl" else 1
    for _ in range(10):
        ids, mask, images, videos, secs = _random_batch(rng, family)
        mm = np.where(ids == IMG, 1, np.where(ids == VID, 2, 0)) * mask
        kwargs = dict(input_ids=torch.tensor(ids), mm_token_type_ids=torch.tensor(mm),
                      attention_mask=torch.tensor(mask),
                      image_grid_thw=torch.tensor(images) if images else None,
                      video_grid_thw=torch.tensor(videos) if videos else None)
        if family == "qwen2_5_vl" and videos:
            kwargs["second_per_grid_ts"] = torch.tensor(secs)
        want_pos, want_delta = torch_model.model.get_rope_index(**kwargs)
        got_pos, got_delta = rope.get_rope_index(
            ids, family=family, image_token_id=IMG, video_token_id=VID, spatial_merge_size=2,
            image_grid_thw=np.array(images) if images else None, video_grid_thw=np.array(videos) if videos else None,
            second_per_grid_ts=np.array(secs) if secs else None, tokens_per_second=tps, attention_mask=mask)
        valid = mask.astype(bool)
        np.testing.assert_array_equal(got_pos[:, valid], want_pos.numpy()[:, valid])
        np.testing.assert_array_equal(got_delta, want_delta.numpy().reshape(-1))
