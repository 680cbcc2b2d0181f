"""Settings shared by the RL end-to-end tests (tests/rl/conftest.py runs `ar1 rl` with them)."""

#: ar1_tiny RL at the smallest size. eps 1e-4: Adam's first step moves a parameter by about
#: lr * g / (|g| + eps); with eps 1e-8, parameters whose gradient is 0 up to float noise move by +-lr
#: as the noise's sign falls, which would hide a real difference between two meshes.
SETS = ("rl.scenes_per_step=2", "rl.group_size=2", "train.learning_rate=1e-3", "train.warmup_steps=0",
        "train.eps=1e-4", "train.log_every=1", "train.checkpoint_every=1", "train.tensorboard=false")
#: `ar1 rl` arguments of the shared run: 2 steps, a checkpoint after each.
CLI_ARGS = ("rl", "--config", "ar1_tiny", "--no-progress", *[x for s in SETS for x in ("--set", s)],
            "--set", "train.steps=2")
