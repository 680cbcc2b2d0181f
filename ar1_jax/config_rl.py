"""The RL section of the config tree (`cfg.rl`): rollouts, the policy losses of both heads, rewards.

`ar1 rl` trains the SFT model further on scenes of the synthetic world (`cfg.synth`): each step draws
`scenes_per_step` scenes, samples `group_size` rollouts of each with the current parameters
(reasoning and discrete trajectory tokens at `temperature` / `top_p`, the flow expert's trajectory
from its SDE sampler), scores them (`reward`), and takes one update with group-relative advantages.
The defaults are the public release's token-RL settings (clip 0.2 / 0.28, dual clip 10, no KL,
temperature 0.6, top-p 0.98) with a smaller group for CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ADVANTAGE_NAMES = ("grpo", "drgrpo", "rloo")
TOKEN_LOSS_NAMES = ("grpo", "dapo", "gspo", "none")
EXPERT_LOSS_NAMES = ("flow_grpo", "awfm", "fpo", "none")


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms (`ar1_jax.rl.rewards.total_reward`; collision and offroad are
    subtracted), the ADE gate (m) of the trajectory term and the reasoning length cap (tokens) of the
    format term."""

    consistency: float = 1.0
    reasoning: float = 1.0
    trajectory: float = 1.0
    comfort: float = 0.0
    collision: float = 1.0
    offroad: float = 1.0
    format: float = 0.1
    ade_gate_m: float = 3.0
    max_reasoning_tokens: int = 128

    def validate(self, where: str) -> None:
        for name in ("consistency", "reasoning", "trajectory", "comfort", "collision", "offroad", "format"):
            if getattr(self, name) < 0:
                raise _error(f"{where}.{name}", "a weight >= 0", getattr(self, name))
        if self.ade_gate_m <= 0:
            raise _error(f"{where}.ade_gate_m", "a gate > 0 metres", self.ade_gate_m)
        if self.max_reasoning_tokens < 1:
            raise _error(f"{where}.max_reasoning_tokens", "a cap >= 1", self.max_reasoning_tokens)


@dataclass(frozen=True)
class RLConfig:
    """Group-relative RL of both heads (`ar1_jax.rl`).

    A step's batch is `scenes_per_step * group_size` rollouts (that product replaces
    `data.batch_size`). `advantage` and `token_loss` name `ar1_jax.rl.grpo` registry entries,
    `expert_loss` one of `ar1_jax.rl.flow_policy` ("none" freezes the head's RL term). Scenes are
    world scenes of seeds `scene_seed + k` (train) and `eval_seed + k` (held out).
    """

    scenes_per_step: int = 2
    group_size: int = 8
    temperature: float = 0.6
    top_p: float = 0.98
    advantage: str = "grpo"
    token_loss: str = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float = 10.0
    kl_beta: float = 0.0
    dynamic_sampling: bool = True
    token_weight: float = 1.0
    expert_loss: str = "flow_grpo"
    expert_weight: float = 1.0
    expert_eps: float = 0.2
    sde_noise_level: float = 0.5
    awfm_beta: float = 1.0
    scene_seed: int = 1_000_000
    num_scenes: int = 0  # training pool size (scene k is scene_seed + k mod num_scenes); 0: no repeats
    eval_seed: int = 2_000_000
    reward: RewardConfig = field(default_factory=RewardConfig)

    @property
    def batch_size(self) -> int:
        return self.scenes_per_step * self.group_size

    def validate(self, where: str) -> None:
        if self.num_scenes < 0:
            raise _error(f"{where}.num_scenes", "a pool size >= 0 (0: a new scene every time)", self.num_scenes)
        if self.scenes_per_step < 1:
            raise _error(f"{where}.scenes_per_step", "at least 1 scene", self.scenes_per_step)
        if self.group_size < 2:
            raise _error(f"{where}.group_size", "at least 2 rollouts per scene (advantages are group-relative)",
                         self.group_size)
        if not 0.0 <= self.temperature:
            raise _error(f"{where}.temperature", "a temperature >= 0", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise _error(f"{where}.top_p", "a mass in (0, 1]", self.top_p)
        for name, choices in (("advantage", ADVANTAGE_NAMES), ("token_loss", TOKEN_LOSS_NAMES),
                              ("expert_loss", EXPERT_LOSS_NAMES)):
            if getattr(self, name) not in choices:
                raise _error(f"{where}.{name}", f"one of {choices}", getattr(self, name))
        for name in ("eps_low", "eps_high", "expert_eps"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise _error(f"{where}.{name}", "a clip range in (0, 1)", getattr(self, name))
        if self.dual_clip and self.dual_clip <= 1.0:
            raise _error(f"{where}.dual_clip", "0 (off) or a cap > 1", self.dual_clip)
        for name in ("kl_beta", "token_weight", "expert_weight", "sde_noise_level", "awfm_beta"):
            if getattr(self, name) < 0:
                raise _error(f"{where}.{name}", "a value >= 0", getattr(self, name))
        self.reward.validate(f"{where}.reward")


def _error(name: str, expected: str, got):
    from ar1_jax.config import ConfigError

    return ConfigError(f"config field `{name}`: expected {expected}, got {got!r}")
