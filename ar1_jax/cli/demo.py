"""`ar1 demo`: the whole pipeline at tiny size, `ar1_jax.demo.run`, which says each stage with the time
left, reuses the stages an earlier run finished, and writes DIR/report.html and DIR/demo_metrics.json."""

from __future__ import annotations

import argparse

from ar1_jax.cli.common import EXIT_FAILED, EXIT_OK, CLIError, add_config_args, load_config, sub


def register(subparsers) -> None:
    p = sub(subparsers, "demo", "The whole pipeline at tiny size on CPU: data, SFT, RL, eval, benchmark, report.",
            "Writes synthetic long-tail scenes, trains the AR1 config on them (SFT), runs RL from\n"
            "that checkpoint, evaluates both checkpoints open and closed loop on held-out scenes\n"
            "beside the rule planner and constant velocity, plots the RL model's samples and\n"
            "reasoning on a few long-tail scenes and animates one closed-loop drive, times compiled\n"
            "inference of the trained model, and ends with a short table. Writes DIR/report.html (one\n"
            "self-contained page: table, plots, animation, curves) and DIR/demo_metrics.json.\n\n"
            "About 10 minutes on 2 CPU cores at the default sizes. Each finished stage is recorded in\n"
            "DIR/stages/: a second run with the same settings reuses it (an interrupted SFT or RL\n"
            "resumes from its checkpoints); --fresh redoes everything.",
            epilog="examples:\n  ar1 demo --out out/demo\n"
                   "  ar1 demo --out /tmp/quick --scenes 16 --sft-steps 5 --rl-steps 2 --eval-scenes 4")
    add_config_args(p, default="ar1_tiny")
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output directory (default: out/demo)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    p.add_argument("--scenes", type=int, default=None, metavar="N", help="synthetic scenes to write (default 128)")
    p.add_argument("--sft-steps", type=int, default=None, metavar="N", help="SFT steps (default 300)")
    p.add_argument("--rl-steps", type=int, default=None, metavar="N", help="RL steps (default 16)")
    p.add_argument("--eval-scenes", type=int, default=None, metavar="N", help="held-out scenes evaluated (default 24)")
    p.add_argument("--show", type=int, default=None, metavar="N", help="long-tail scenes plotted (default 3)")
    p.add_argument("--fresh", action="store_true", help="redo every stage (ignore DIR/stages/)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from ar1_jax import demo
    from ar1_jax.config import ConfigError

    cfg = load_config(args.config, args.overrides)
    given = {"scenes": args.scenes, "sft_steps": args.sft_steps, "rl_steps": args.rl_steps,
             "eval_scenes": args.eval_scenes, "show": args.show}
    sizes = dataclasses.replace(demo.DemoSizes(), **{k: v for k, v in given.items() if v is not None})
    try:
        demo.run(cfg, args.out, args.seed, sizes, fresh=args.fresh)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    except demo.DemoFailed as e:
        raise CLIError(str(e), EXIT_FAILED) from None
    return EXIT_OK
