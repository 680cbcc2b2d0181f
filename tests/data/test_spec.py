"""ar1_jax/data/spec.py and the SFT spec: micro-batches, padding, shapes checks, shardings, abstract batches."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ar1_jax.config import get_config
from ar1_jax.data.sft_batch import SFT_SPEC
from ar1_jax.data.spec import BatchSpec, Field
from ar1_jax.parallel.mesh import abstract_mesh

SPEC = BatchSpec("toy", {
    "ids": Field(("B", "T"), "int32", ("batch", "seq"), pad="pad_id"),
    "pos": Field((3, "B", "T"), "int32", (None, "batch", "seq"), pad=0),
    "mask": Field(("B", "T"), "bool", ("batch", "seq"), pad=False, weight=True),
    "media.img.pixels": Field(("B", "P", 4), "float32", ("batch", None, None), optional=True),
    "media.img.layout": Field(shared=True, optional=True),
}, tokens="mask")


def _batch(rng, b=6, t=5, p=3):
    return {"ids": rng.integers(0, 100, (b, t)).astype(np.int32),
            "pos": rng.integers(0, 50, (3, b, t)).astype(np.int32),
            "mask": rng.random((b, t)) > 0.3,
            "media": {"img": {"pixels": rng.standard_normal((b, p, 4)).astype(np.float32),
                              "layout": {"grid": np.arange(4, dtype=np.int32)}}}}


@pytest.mark.parametrize("m", [1, 2, 3])
def test_microbatch_k_takes_rows_k_k_plus_m_of_every_field_along_its_own_batch_dim(m):
    batch = _batch(np.random.default_rng())
    micro = jax.tree.map(np.asarray, SPEC.split_microbatches(batch, m))
    for k in range(m):
        rows = np.arange(k, 6, m)
        np.testing.assert_array_equal(micro["ids"][k], batch["ids"][rows])
        np.testing.assert_array_equal(micro["mask"][k], batch["mask"][rows])
        np.testing.assert_array_equal(micro["pos"][k], batch["pos"][:, rows])
        np.testing.assert_array_equal(micro["media"]["img"]["pixels"][k], batch["media"]["img"]["pixels"][rows])
        np.testing.assert_array_equal(micro["media"]["img"]["layout"]["grid"][k], np.arange(4))  # shared
    assert SPEC.weight_keys == ("mask",)


def test_split_names_the_field_that_cannot_be_split():
    batch = _batch(np.random.default_rng())
    with pytest.raises(ValueError, match="`ids`: batch 6 does not split into 4"):
        SPEC.split_microbatches(batch, 4)
    batch["media"]["img"]["pixels"] = batch["media"]["img"]["pixels"].reshape(18, 4)  # flat HF form
    with pytest.raises(ValueError, match="`media.img.pixels`"):
        SPEC.split_microbatches(batch, 2)


def test_pad_fills_every_seq_dim_with_its_pad_value_and_nothing_else():
    batch = _batch(np.random.default_rng())
    out = SPEC.pad(batch, 9, pad_id=7)
    assert out["ids"].shape == (6, 9) and (out["ids"][:, 5:] == 7).all()
    assert out["pos"].shape == (3, 6, 9) and (out["pos"][..., 5:] == 0).all()
    assert out["mask"].shape == (6, 9) and not out["mask"][:, 5:].any()
    np.testing.assert_array_equal(out["ids"][:, :5], batch["ids"])
    assert out["media"] is batch["media"]
    with pytest.raises(ValueError, match="cannot pad field `ids` of 5 tokens to 4"):
        SPEC.pad(batch, 4, pad_id=0)


def test_check_returns_the_dims_and_names_what_is_wrong():
    batch = _batch(np.random.default_rng(), b=4, t=7, p=2)
    assert SPEC.check(batch) == {"B": 4, "T": 7, "P": 2}
    assert SPEC.check({k: v for k, v in batch.items() if k != "media"})["B"] == 4  # optional media
    with pytest.raises(ValueError, match="field `mask` is missing"):
        SPEC.check({k: v for k, v in batch.items() if k != "mask"})
    with pytest.raises(ValueError, match="field `pos` has shape \\(3, 4, 6\\).*T=7"):
        SPEC.check(dict(batch, pos=batch["pos"][..., :6]))
    with pytest.raises(ValueError, match="field `ids` has dtype int64"):
        SPEC.check(dict(batch, ids=batch["ids"].astype(np.int64)))
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['extra'\\]"):
        SPEC.check(dict(batch, extra=1))


def test_sft_spec_shardings_and_abstract_batch_follow_the_rules():
    cfg = get_config("ar1_tiny")
    mesh = abstract_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    specs = SFT_SPEC.partition_specs(mesh, cfg.mesh.rules)
    assert specs["input_ids"] == P(("data", "fsdp"), None)
    assert specs["positions"] == P(None, ("data", "fsdp"), None)
    assert specs["controls"] == P(("data", "fsdp"), None, None)
    assert specs["media"]["image"]["layout"] == P()
    ab = SFT_SPEC.abstract(dict(B=8, T=64, A=64, P=10, D=12), mesh, cfg.mesh.rules,
                           shared={"media.image.layout": {"x": np.zeros((5,), np.int32)}})
    assert ab["positions"].shape == (3, 8, 64) and ab["positions"].dtype == np.int32
    assert ab["media"]["image"]["pixel_values"].shape == (8, 10, 12)
    assert ab["media"]["image"]["layout"]["x"].sharding.spec == P()
    assert SFT_SPEC.weight_keys == ("reasoning_mask", "traj_mask", "controls_valid")

