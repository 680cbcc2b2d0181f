"""Reinforcement learning on top of the SFT model.

`grpo`: the token policy (reasoning and discrete trajectory tokens): group advantages (GRPO, Dr. GRPO,
RLOO), DAPO dynamic sampling and the GRPO / DAPO / GSPO clipped losses. `flow_policy`: the flow-matching
action expert: the Flow-GRPO SDE sampler with per-step Gaussian log-probs, and the Flow-GRPO,
advantage-weighted flow matching and FPO losses. Submodules are imported explicitly.
"""
