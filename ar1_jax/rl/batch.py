"""The RL batch: its spec (`RL_SPEC`) and the host-side builder from rollouts (`build_rl_batch`).

One row per rollout (B = N scenes x G samples; row b is scene b // G), right-padded to
T = prompt + R + 2H + 1 (R the reasoning budget, 2H trajectory tokens):

    prompt  reasoning ... <|cot_end|> <|traj_future_start|>  2H trajectory tokens  <|traj_future_end|>

It has the SFT batch's fields (`data.sft_batch.SFT_SPEC`: the teacher-forced pass and the expert's
prefix), with RL meanings where they differ:

    reasoning_mask [B, T] bool   positions whose target is a sampled reasoning token or a drawn
                                 <|traj_future_start|> (not a forced one); rows of dropped groups: none
    traj_mask      [B, T] bool   positions whose target is a sampled trajectory token
    controls       [B, H, 2] f32 the expert's sampled controls (normalised)
    controls_valid [B] bool      rows whose expert term counts
and the RL fields:
    old_logp       [B, T] f32    the log-prob each target was sampled with (0 elsewhere)
    ref_logp       [B, T] f32    the same under the frozen reference policy (optional: the KL metric)
    token_adv, expert_adv [B] f32  group-relative advantages of the token head and of the expert
    sde_states     [B, S+1, H, 2] f32, sde_logp [B, S] f32   Flow-GRPO's stored chain (optional)
    rewards        [B, K] f32    the reward terms of `REWARD_COLUMNS` (logged, not trained on)
"""

from __future__ import annotations

import numpy as np

from ar1_jax.config import Config
from ar1_jax.data.sft_batch import SFT_SPEC
from ar1_jax.data.spec import BatchSpec, Field

_TOKENS = ("batch", "seq")
#: The columns of the batch's `rewards` field, in order.
REWARD_COLUMNS = ("total", "tokens", "expert", "consistency", "reasoning", "trajectory", "token_trajectory",
                  "comfort", "collision", "offroad", "format", "kept")

RL_SPEC = BatchSpec("rl", {
    **SFT_SPEC.fields,
    "old_logp": Field(("B", "T"), "float32", _TOKENS, pad=0.0),
    "ref_logp": Field(("B", "T"), "float32", _TOKENS, pad=0.0, optional=True),
    "token_adv": Field(("B",), "float32", ("batch",)),
    "expert_adv": Field(("B",), "float32", ("batch",)),
    "sde_states": Field(("B", "S1", "A", 2), "float32", ("batch", None, None, None), optional=True),
    "sde_logp": Field(("B", "S"), "float32", ("batch", None), optional=True),
    "rewards": Field(("B", len(REWARD_COLUMNS)), "float32", ("batch", None)),
}, tokens="kv_valid")
#: RL batches without Flow-GRPO's SDE chain (the expert trained by AWFM, FPO or not at all).
RL_SPEC_NO_SDE = BatchSpec("rl", {k: f for k, f in RL_SPEC.fields.items() if not k.startswith("sde_")},
                           tokens="kv_valid")


def rl_spec(cfg: Config) -> BatchSpec:
    """The batch spec of `cfg`'s RL batches: the SDE fields only when the expert trains by Flow-GRPO
    (the step is compiled for exactly the fields the batches carry)."""
    return RL_SPEC if cfg.rl.expert_loss == "flow_grpo" else RL_SPEC_NO_SDE


def rl_length(cfg: Config, prompt_length: int) -> int:
    """The padded row length T of an RL batch whose prompts have `prompt_length` tokens."""
    return prompt_length + cfg.infer.max_reasoning_tokens + 2 * cfg.action.horizon + 1


def build_rl_batch(cfg: Config, scenes, rollouts, *, token_adv: np.ndarray, expert_adv: np.ndarray,
                   kept: np.ndarray, rewards: np.ndarray) -> dict:
    """Host-side RL batch (numpy) from N `rl.scenes.RLScene`s and their `rl.rollout.Rollouts` (B = N G rows).

    token_adv, expert_adv `[B]` float32; kept `[B]` bool (rows of groups dynamic sampling keeps);
    rewards `[B, len(REWARD_COLUMNS)]` float32. The prompt's M-RoPE positions are the processor's; every
    sampled token sits at the next position, as in the decode (whatever the token is).
    """
    from ar1_jax.model import vision
    from ar1_jax.model.vlm import prepare_inputs

    tk = cfg.tokens
    b, g = len(rollouts.num_reasoning), rollouts.reasoning_ids.shape[0] // len(scenes)
    t0 = len(scenes[0].ids)
    length = rl_length(cfg, t0)
    prompt = prepare_inputs(cfg.model, np.stack([sc.ids for sc in scenes]),
                            pixel_values=np.concatenate([sc.pixel_values for sc in scenes]),
                            image_grid_thw=np.concatenate([sc.image_grid_thw for sc in scenes]))
    ids = np.full((b, length), tk.pad_id, np.int32)
    positions = np.zeros((3, b, length), np.int32)
    kv_valid = np.zeros((b, length), bool)
    reasoning_mask = np.zeros((b, length), bool)
    traj_mask = np.zeros((b, length), bool)
    old_logp = np.zeros((b, length), np.float32)
    fs_slot = np.zeros(b, np.int32)
    action_position = np.zeros(b, np.int32)
    num_traj = rollouts.traj_ids.shape[1]
    for row in range(b):
        sc = row // g
        n = int(rollouts.num_reasoning[row])
        completion = np.concatenate([rollouts.reasoning_ids[row, :n], [tk.traj_future_start_id],
                                     rollouts.traj_ids[row], [tk.traj_future_end_id]])
        end = t0 + len(completion)
        ids[row, :t0], ids[row, t0:end] = scenes[sc].ids, completion
        positions[:, row, :t0] = prompt["positions"][:, sc]
        positions[:, row, t0:end] = prompt["next_position"][sc] + np.arange(len(completion))
        kv_valid[row, :end] = True
        fs_slot[row] = t0 + n
        action_position[row] = prompt["next_position"][sc] + n + 1
        if not kept[row]:
            continue
        # Position t0 - 1 + i predicts sampled token i: the n reasoning tokens, then <|traj_future_start|>
        # (unless forced), whose position predicts the first trajectory token.
        drawn = n + (0 if rollouts.forced[row] else 1)
        reasoning_mask[row, t0 - 1:t0 - 1 + drawn] = True
        old_logp[row, t0 - 1:t0 - 1 + drawn] = rollouts.reasoning_logp[row, :drawn]
        traj_mask[row, t0 + n:t0 + n + num_traj] = True
        old_logp[row, t0 + n:t0 + n + num_traj] = rollouts.traj_logp[row]
    targets = np.concatenate([ids[:, 1:], np.full((b, 1), tk.pad_id, np.int32)], 1)
    media = {"image": {"pixel_values": np.stack([scenes[r // g].pixel_values for r in range(b)]).astype(np.float32),
                       "layout": vision.vision_layout(cfg.model.vision, scenes[0].image_grid_thw)}}
    batch = dict(input_ids=ids, targets=targets, positions=positions, kv_valid=kv_valid,
                 reasoning_mask=reasoning_mask, traj_mask=traj_mask, future_start_slot=fs_slot,
                 action_position=action_position, controls=rollouts.controls.astype(np.float32),
                 controls_valid=np.asarray(kept, bool), media=media, old_logp=old_logp,
                 token_adv=np.asarray(token_adv, np.float32), expert_adv=np.asarray(expert_adv, np.float32),
                 rewards=np.asarray(rewards, np.float32))
    if rollouts.sde_states is not None:
        batch.update(sde_states=rollouts.sde_states.astype(np.float32), sde_logp=rollouts.sde_logp.astype(np.float32))
    RL_SPEC.check(batch)
    return batch
