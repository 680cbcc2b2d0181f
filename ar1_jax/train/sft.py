"""SFT as a task of the training driver, and `ar1 train`.

The stages (config presets: which losses count, which modules train) live in
`ar1_jax.train.stages` and are re-exported here.

The loss itself is `ar1_jax.model.vla.sft_loss` (terms with weight 0 are not computed).

`sft_task(cfg, tokenizer)` is SFT as a task for the training driver: that loss, `SFT_SPEC`, the grain
pipeline over `data.dataset_dir` as the batch source, and `flops.sft_step_flops`. `run(cfg, workdir)`
is `ar1 train`: the driver running that task.
"""

from __future__ import annotations

import math
import pathlib

from ar1_jax.config import Config, ConfigError
from ar1_jax.data.sft_batch import SFT_SPEC
from ar1_jax.model.vla import sft_loss
from ar1_jax.train.stages import STAGES, Stage, apply_stage, stage_config, stage_overrides  
from ar1_jax.train.task import Task

__all__ = ["STAGES", "Stage", "apply_stage", "default_tokenizer", "run", "sft_task", "stage_config", "stage_overrides"]


# ----------------------------------------------------------------------------------------------------
# SFT as a task of the training driver.


def sft_task(cfg: Config, tokenizer, *, loss_fn=sft_loss) -> Task:
    """SFT on `cfg.data.dataset_dir`: `sft_loss`, `SFT_SPEC`, the grain pipeline, its FLOPs per step."""
    from ar1_jax.data.pipeline import make_pipeline
    from ar1_jax.train import flops as flops_lib

    frozen = tuple(f for f in cfg.train.frozen if "." not in f)
    cache: dict[tuple, float] = {}

    def step_flops(batch: dict) -> float:
        pv_shape = batch["media"]["image"]["pixel_values"].shape
        key = tuple(batch["input_ids"].shape) + (math.prod(pv_shape[:-1]),)
        if key not in cache:
            cache[key] = flops_lib.sft_step_flops(cfg, batch_size=key[0], seq_len=key[1], num_patches=key[2],
                                                  frozen=frozen)["total"]
        return cache[key]

    return Task(name="sft", loss_fn=loss_fn, spec=SFT_SPEC,
                open_batches=lambda mesh: make_pipeline(cfg, tokenizer, mesh), step_flops=step_flops)


def run(cfg: Config, workdir: str | pathlib.Path, *, tokenizer=None, mesh=None, progress: bool = True,
        max_steps: int | None = None, from_step: int | None = None, loss_fn=sft_loss):
    """`ar1 train`: the driver running `sft_task` in `workdir` (see `ar1_jax.train.driver.run`)."""
    from ar1_jax.train import driver

    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(cfg, pathlib.Path(workdir))
    return driver.run(cfg, workdir, sft_task(cfg, tokenizer, loss_fn=loss_fn), mesh=mesh, progress=progress,
                      max_steps=max_steps, from_step=from_step)


def default_tokenizer(cfg: Config, workdir: pathlib.Path):
    """The tokenizer whose layout `cfg` uses: ours (trained on the CoC corpus, cached in the workdir)."""
    from ar1_jax.text import corpus
    from ar1_jax.text import layout
    from ar1_jax.text import tokenizer as tok_lib

    base = cfg.tokens.traj_token_offset - len(tok_lib.SPECIAL_TOKENS)
    tok = corpus.default_tokenizer(base, workdir / "tokenizer")
    if not layout.tokenizer_fits(tok, cfg):
        raise ConfigError(f"config {cfg.name!r} uses a token layout (vocab {cfg.model.text.vocab_size}, <i0> at "
                          f"{cfg.tokens.traj_token_offset}) that our tokenizer does not produce (vocab "
                          f"{tok.vocab_size}, <i0> at {tok.traj_token_offset}); train with a matching tokenizer, "
                          "or pass --our-tokens to train on our tokenizer's ids at this vocabulary size")
    return tok
