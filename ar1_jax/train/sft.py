"""The SFT stages as config presets: which losses count and which modules train.

A stage is a list of dotted overrides applied on top of a named config and before the user's own
`--set` overrides (so `--stage sft1 --set loss.flow_weight=0.5` works as expected):

  sft1            paper stage 1, action modality injection: CE on the 128 discrete trajectory tokens
                  + flow matching on the expert, stop-gradient on the backbone's KV; all modules train.
  sft2            paper stage 2, reasoning SFT: CE on the Chain-of-Causation trace and the trajectory
                  tokens + flow matching; the expert keeps training.
  release_vlm     the public release's fine-tune stage 1: VLM CE on the discrete tokens only, expert
                  frozen.
  release_expert  the release's stage 2: flow matching only, the VLM (vision + text) frozen.

The loss itself is `ar1_jax.model.vla.sft_loss` (terms with weight 0 are not computed).

`sft_task(cfg, tokenizer)` is SFT as a task for the training driver: that loss, `SFT_SPEC`, the grain
pipeline over `data.dataset_dir` as the batch source, and `flops.sft_step_flops`. `run(cfg, workdir)`
is `ar1 train`: the driver running that task.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import typing

from ar1_jax.config import Config, ConfigError, apply_overrides, get_config
from ar1_jax.data.sft_batch import SFT_SPEC
from ar1_jax.model.vla import sft_loss
from ar1_jax.train.task import Task


@dataclasses.dataclass(frozen=True)
class Stage:
    description: str
    overrides: tuple[str, ...]


STAGES: dict[str, Stage] = {
    "sft1": Stage("action modality injection: trajectory-token CE + flow matching (stop-gradient KV)",
                  ("loss.reasoning_weight=0", "loss.trajectory_token_weight=1", "loss.flow_weight=1",
                   "loss.stop_gradient_kv=true", "train.frozen=()")),
    "sft2": Stage("reasoning: CoC + trajectory-token CE + flow matching, expert trained",
                  ("loss.reasoning_weight=1", "loss.trajectory_token_weight=1", "loss.flow_weight=1",
                   "loss.stop_gradient_kv=true", "train.frozen=()")),
    "release_vlm": Stage("release stage 1: VLM CE on discrete tokens, expert frozen",
                         ("loss.reasoning_weight=1", "loss.trajectory_token_weight=1", "loss.flow_weight=0",
                          "train.frozen=expert")),
    "release_expert": Stage("release stage 2: flow matching only, VLM frozen",
                            ("loss.reasoning_weight=0", "loss.trajectory_token_weight=0", "loss.flow_weight=1",
                             "loss.stop_gradient_kv=true", "train.frozen=vision,text")),
}


def stage_overrides(stage: str) -> tuple[str, ...]:
    """The overrides of `stage` plus `train.stage=<stage>`; ConfigError naming the known stages."""
    if stage not in STAGES:
        raise ConfigError(f"unknown SFT stage {stage!r} (known: {', '.join(STAGES)})")
    return STAGES[stage].overrides + (f"train.stage={stage}",)


def apply_stage(cfg: Config, stage: str) -> Config:
    return apply_overrides(cfg, stage_overrides(stage)).validate()


def stage_config(name: str, stage: str | None, overrides: typing.Sequence[str] = ()) -> Config:
    """`get_config(name)` with the stage's overrides, then the user's."""
    return get_config(name, (stage_overrides(stage) if stage else ()) + tuple(overrides))


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
    from ar1_jax.text import tokenizer as tok_lib

    base = cfg.tokens.traj_token_offset - len(tok_lib.SPECIAL_TOKENS)
    tok = corpus.default_tokenizer(base, workdir / "tokenizer")
    if tok.traj_token_offset != cfg.tokens.traj_token_offset or tok.vocab_size != cfg.model.text.vocab_size:
        raise ConfigError(f"config {cfg.name!r} uses a token layout (vocab {cfg.model.text.vocab_size}, <i0> at "
                          f"{cfg.tokens.traj_token_offset}) that our tokenizer does not produce (vocab "
                          f"{tok.vocab_size}, <i0> at {tok.traj_token_offset}); train with a matching tokenizer")
    return tok
