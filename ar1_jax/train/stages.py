"""The SFT stages as config presets: which losses count and which modules train. No jax here:
`ar1 train --help` lists them.

A stage is a list of dotted overrides applied on top of a named config and before the user's own
`--set` overrides (so `--stage sft1 --set loss.flow_weight=0.5` works as expected):

  sft1            paper stage 1, action modality injection: CE on the 128 discrete trajectory tokens
                  + flow matching on the expert, stop-gradient on the backbone's KV; all modules train.
  sft2            paper stage 2, reasoning SFT: CE on the Chain-of-Causation trace and the trajectory
                  tokens + flow matching; the expert keeps training.
  release_vlm     the public release's fine-tune stage 1: VLM CE on the discrete tokens only, expert
                  frozen.
  release_expert  the release's stage 2: flow matching only, the VLM (vision + text) frozen.
"""

from __future__ import annotations

import dataclasses
import typing

from ar1_jax.config import Config, ConfigError, apply_overrides, get_config


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
