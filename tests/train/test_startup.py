"""ar1_jax/train/startup.py: config resolution with stage presets, and the rerun config diff
(the synthesis and the run itself are exercised end to end in test_train_cli.py)."""

import pytest

from ar1_jax.config import ConfigError
from ar1_jax.train import startup
from ar1_jax.train.checkpoint import config_json


def test_stage_then_overrides_then_init_from():
    cfg = startup.resolve_config("ar1_tiny", stage="sft1", overrides=["loss.flow_weight=0.5"], init_from="runs/a")
    assert cfg.train.stage == "sft1" and cfg.loss.reasoning_weight == 0  # the preset
    assert cfg.loss.flow_weight == 0.5  # the user's override wins over the preset
    assert cfg.train.init_from == "runs/a"
    with pytest.raises(ConfigError, match="unknown SFT stage 'sft9'"):
        startup.resolve_config("ar1_tiny", stage="sft9")


def test_config_changes_against_the_saved_config(tmp_path):
    cfg = startup.resolve_config("ar1_tiny", overrides=["train.steps=3"])
    assert startup.config_changes(tmp_path, cfg) == []  # nothing saved yet
    (tmp_path / "config.json").write_text(config_json(cfg))
    assert startup.config_changes(tmp_path, cfg) == []
    changed = startup.resolve_config("ar1_tiny", overrides=["train.steps=5", "data.batch_size=2"])
    assert cfg.data.batch_size != 2
    assert startup.config_changes(tmp_path, changed) == [f"data.batch_size: {cfg.data.batch_size} -> 2",
                                                         "train.steps: 3 -> 5"]


def test_a_set_dataset_is_kept(tmp_path):
    cfg = startup.resolve_config("ar1_tiny", overrides=[f"data.dataset_dir={tmp_path}"])
    assert startup.ensure_dataset(cfg, tmp_path / "unused", 8) is cfg
    assert not (tmp_path / "unused").exists()
