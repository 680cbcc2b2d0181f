"""ar1_jax/train/checkpoint.py: `--init-from` a release-layout (HF) AR1 checkpoint, and refusal of
checkpoints that do not fit. (Runs, resume and mesh changes: test_train_cli / test_sharded_training.)"""

import sys
import pathlib

import jax
import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.convert import hf
from ar1_jax.parallel.mesh import make_mesh
from ar1_jax.train import checkpoint as ckpt_lib
from ar1_jax.train.trainer import Trainer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "convert"))
from test_release_layout import _release_checkpoint  # noqa: E402  (a tiny release checkpoint, written locally)


def test_init_from_a_release_checkpoint_loads_its_weights_into_the_train_state(tmp_path):
    ckpt_dir, _ = _release_checkpoint(tmp_path, with_buffers=True)
    reference = hf.load_ar1(ckpt_dir)
    cfg = reference.cfg
    trainer = Trainer(cfg, make_mesh(cfg.mesh))
    params = ckpt_lib.load_params(ckpt_dir, cfg, trainer.abstract_state["params"])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference.pure_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state = trainer.state_with_params(params)
    assert int(state["step"]) == 0
    np.testing.assert_array_equal(np.asarray(state["params"]["text"]["embed"]), reference.pure_params["text"]["embed"])


def test_a_release_checkpoint_of_another_shape_is_named(tmp_path):
    ckpt_dir, _ = _release_checkpoint(tmp_path, with_buffers=False)
    cfg = get_config("ar1_tiny")  # our token layout: a larger vocabulary than the release-layout tiny model
    trainer = Trainer(cfg, make_mesh(cfg.mesh))
    with pytest.raises(ckpt_lib.CheckpointMismatch, match=r"HF checkpoint .*`text\.embed` has shape \(4540, 64\), "
                                                           r"config 'ar1_tiny' expects \(4548, 64\)"):
        ckpt_lib.load_params(ckpt_dir, cfg, trainer.abstract_state["params"])


def test_init_from_a_path_that_is_no_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = get_config("ar1_tiny")
    abstract = Trainer(cfg, make_mesh(cfg.mesh)).abstract_state["params"]
    with pytest.raises(ckpt_lib.CheckpointMismatch, match=r"train\.init_from.*neither"):
        ckpt_lib.load_params(tmp_path / "empty", cfg, abstract)
    with pytest.raises(FileNotFoundError, match=r"train\.init_from.*does not exist"):
        ckpt_lib.load_params(tmp_path / "missing", cfg, abstract)
