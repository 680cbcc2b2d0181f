"""Starting a training run, as `ar1 train` does, callable from Python.

    cfg = startup.resolve_config("ar1_tiny", stage="sft1", overrides=["train.steps=60"])
    cfg = startup.ensure_dataset(cfg, "runs/tiny/data", num_scenes=256)  # data.dataset_dir unset: synthesise
    changes = startup.config_changes("runs/tiny", cfg)  # vs. the run's saved config.json, if any
    result = sft.run(cfg, "runs/tiny")   # ar1_jax.train.sft: the driver running SFT

`resolve_config` applies the named config (or .py file), then the SFT stage preset, then the
overrides. `ensure_dataset` writes synthetic scenes once when `data.dataset_dir` is unset (a rerun
finds them) and points the config there; call it before `config_changes`, so a rerun compares the
config it trained with. `ar1_jax.train.sft.run` then trains the prepared config (the driver with SFT
as its task; the tokenizer defaults to ours, cached in the run directory).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Callable, Sequence

from ar1_jax.config import Config, ConfigError

Say = Callable[[str], None]
_say = functools.partial(print, flush=True)


def resolve_config(config: str, *, stage: str | None = None, overrides: Sequence[str] = (),
                   init_from: str | None = None) -> Config:
    """The named config (or .py file) with the SFT `stage` preset, then `overrides`, then
    `train.init_from=<init_from>`. Raises ConfigError naming a bad name, stage or field."""
    from ar1_jax.train import sft

    overrides = list(overrides) + ([f"train.init_from={init_from}"] if init_from else [])
    return sft.stage_config(config, stage, overrides)


def ensure_dataset(cfg: Config, out: str | pathlib.Path, num_scenes: int, *, say: Say = _say) -> Config:
    """`cfg` itself when `data.dataset_dir` is set; else writes `num_scenes` synthetic scenes to `out`
    (unless a dataset is already there) and returns `cfg` reading them.

    ConfigError in a multi-process run (every process would write: write the dataset first)."""
    if cfg.data.dataset_dir:
        return cfg
    import jax

    from ar1_jax.data.synth_dataset import write_synthetic_dataset

    out = pathlib.Path(out)
    if not (out / "dataset_info.json").exists():
        if jax.process_count() > 1:
            raise ConfigError("data.dataset_dir is not set: in a multi-process run, write the dataset first "
                              "(`ar1 data synth --out DIR`) and pass --set data.dataset_dir=DIR")
        say(f"data.dataset_dir is not set: writing {num_scenes} synthetic scenes to {out} (`ar1 data synth`)")
        write_synthetic_dataset(cfg, out, num_scenes, seed=cfg.seed, say=say)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(out)))


def config_changes(workdir: str | pathlib.Path, cfg: Config) -> list[str]:
    """`field: old -> new` for each field where `cfg` differs from the run's saved config.json (none
    saved: no changes)."""
    from ar1_jax.train.checkpoint import config_json

    saved = pathlib.Path(workdir) / "config.json"
    if not saved.exists():
        return []
    return _diff(json.loads(saved.read_text()), json.loads(config_json(cfg)))


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out

