"""`ar1 eval`: a checkpoint or a baseline policy on held-out scenes, open loop and (with --closed-loop)
in the simulator, with `ar1_jax.eval.run.run_eval` (which prints progress and writes eval.json and
eval.md)."""

from __future__ import annotations

import argparse

from ar1_jax.cli.common import EXIT_OK, CLIError, add_config_args, existing_dir, load_config, sub

POLICY_CHOICES = ("model", "planner", "constant_velocity", "log")


def register(subparsers) -> None:
    p = sub(subparsers, "eval", "Evaluate a checkpoint or a baseline, open and closed loop.",
            "Open loop: K samples per scene from its cameras and history; minADE_k / minFDE_k at\n"
            "0.5, 1, 3 and 6.4 s (best of K by ADE over the full horizon), the driven sample's ADE,\n"
            "comfort, reasoning-action consistency (the driven sample's and plain sampling's first),\n"
            "and the driven trajectory scored in the scene's world: collision, at-fault collision,\n"
            "off-road, close encounter (box gap < 0.5 m or time to collision < 1 s) and the PDM-style\n"
            "`score`. --closed-loop also drives each scene in the simulator (replanning every\n"
            "--replan-s from cameras re-rendered at the driven poses; agents replay their logs or,\n"
            "with --agents reactive, brake for the ego) and scores the drive with AlpaSim's score\n"
            "(0 on an at-fault collision or off-road, else min(1, progress / 0.8)) and the rest (`cl/`).\n\n"
            "The rule planner and constant velocity run beside the policy as baselines (--no-baselines\n"
            "to skip). Scenes: --data DIR --split test (a directory from `ar1 data synth`; synthetic\n"
            "records are rebuilt in their world from the scene id), else --synthetic N world scenes\n"
            "from --first-seed (held out from training data, which starts at seed 0).\n\n"
            "Writes OUT/eval.json ({\"overall\": {...}, \"families\": {...}, \"baselines\": {...}}),\n"
            "OUT/eval.md (tables) and, with --closed-loop, OUT/closed_loop/<scene>.npz tracks for\n"
            "`ar1 viz closed-loop OUT`. Deterministic for a given --seed.",
            epilog="examples:\n"
                   "  ar1 eval --checkpoint runs/sft --synthetic 64 --closed-loop --out out/eval\n"
                   "  ar1 eval --checkpoint runs/rl/checkpoints/200 --data data/synth --split test --out out/eval\n"
                   "  ar1 eval --policy planner --synthetic 200 --closed-loop --agents reactive --out out/planner")
    add_config_args(p, default="ar1_tiny")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="an `ar1 train`/`ar1 rl` run or checkpoints/<step> directory, or a release-layout "
                        "checkpoint (its config is used; --config is the fallback for baselines)")
    p.add_argument("--policy", choices=POLICY_CHOICES, default="model",
                   help="model (needs --checkpoint), or a policy that needs none: the rule planner, constant "
                        "velocity, or log replay")
    p.add_argument("--data", metavar="DIR", help="a TFDS directory written by `ar1 data synth`")
    p.add_argument("--split", default="test", help="the split of --data (default: test)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate at most N scenes of --data")
    p.add_argument("--synthetic", type=int, default=32, metavar="N",
                   help="without --data: N synthetic world scenes (default 32)")
    p.add_argument("--first-seed", type=int, default=3_000_000, metavar="S",
                   help="the first synthetic scene's seed (default 3000000: clear of SFT data from seed 0, RL's "
                        "training scenes from 1000000 and its held-out ones from 2000000)")
    p.add_argument("--samples", type=int, metavar="K", help="samples per scene (default: the config's)")
    p.add_argument("--select", choices=("consistent", "likely", "first"), default="consistent",
                   help="the sample to drive: the most likely consistent one (else the most likely), the most "
                        "likely, or the first (plain sampling)")
    p.add_argument("--closed-loop", action="store_true", help="also drive every scene in the simulator")
    p.add_argument("--seconds", type=float, default=6.4, help="closed-loop episode length (s, default 6.4)")
    p.add_argument("--replan-s", type=float, default=0.5, help="seconds between replans (default 0.5)")
    p.add_argument("--agents", choices=("log", "reactive"), default="log",
                   help="other agents replay their logs, or brake for the ego (IDM)")
    p.add_argument("--no-baselines", action="store_true", help="skip the rule planner and constant velocity")
    p.add_argument("--batch", type=int, default=8, metavar="B", help="scenes per compiled call (default 8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default="out/eval", metavar="DIR", help="where to write eval.json, eval.md, tracks")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    checkpoint = str(existing_dir(args.checkpoint, "--checkpoint")) if args.checkpoint else None
    if args.policy == "model" and not checkpoint:
        raise CLIError("evaluating the model needs --checkpoint DIR (or --policy planner|constant_velocity|log)")
    if args.policy != "model" and checkpoint:
        raise CLIError(f"--policy {args.policy} takes no --checkpoint")
    data = str(existing_dir(args.data, "--data")) if args.data else None
    for flag, value, low in (("--synthetic", args.synthetic, 1), ("--batch", args.batch, 1),
                             ("--first-seed", args.first_seed, 0)):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    if args.samples is not None and args.samples < 1:
        raise CLIError(f"--samples must be >= 1, got {args.samples}")
    from ar1_jax.eval.run import EvalSettings, run_eval
    from ar1_jax.eval.sim import SimConfig
    from ar1_jax.infer.run import InferInputError

    sim_cfg = SimConfig(seconds=args.seconds, replan_s=args.replan_s, agents=args.agents)
    try:
        sim_cfg.steps(cfg.action.dt)
    except ValueError as e:
        raise CLIError(str(e)) from None
    settings = EvalSettings(checkpoint=checkpoint, policy=args.policy, data=data, split=args.split, limit=args.limit,
                            synthetic=args.synthetic, first_seed=args.first_seed, samples=args.samples,
                            select=args.select, baselines=not args.no_baselines, closed_loop=args.closed_loop,
                            sim=sim_cfg, batch=args.batch, seed=args.seed)
    try:
        run_eval(cfg, settings, args.out)
    except (InferInputError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    except ValueError as e:
        raise CLIError(f"ar1 eval: {e}") from None
    return EXIT_OK
