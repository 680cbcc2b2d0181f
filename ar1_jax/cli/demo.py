"""`ar1 demo`: the tiny end-to-end pipeline, `ar1_jax.demo.run`, which says each stage and writes
DIR/demo_metrics.json; exit 3 if the backbone is not available yet."""

from __future__ import annotations

import argparse

from ar1_jax.cli.common import EXIT_FAILED, EXIT_NOT_AVAILABLE, EXIT_OK, CLIError, add_config_args, load_config, sub


def register(subparsers) -> None:
    p = sub(subparsers, "demo", "The tiny end-to-end pipeline on CPU, in seconds.",
            "Loads the `tiny` config, builds the VLM backbone, runs one forward on random text and\n"
            "one random 56x56 image, runs AR1 inference on a random scene, writes 32 synthetic scenes,\n"
            "trains ar1_tiny on them for a few steps (SFT, with a loss plot), runs a quick smoke run of\n"
            "the kernels benchmark, and writes DIR/demo_metrics.json. The later stages (RL, eval)\n"
            "report whether they are available yet.",
            epilog="example: ar1 demo --out out/demo")
    add_config_args(p, default="tiny")
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output directory (default: out/demo)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    p.add_argument("--scenes", type=int, default=None, metavar="N", help="synthetic scenes to write and train on "
                   "(default: 32)")
    p.add_argument("--sft-steps", type=int, default=None, metavar="N", help="SFT steps of ar1_tiny (default: 40)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ar1_jax import demo
    from ar1_jax.config import ConfigError

    cfg = load_config(args.config, args.overrides)
    try:
        sizes = {k: v for k, v in (("scenes", args.scenes), ("sft_steps", args.sft_steps)) if v is not None}
        metrics = demo.run(cfg, args.out, args.seed, **sizes)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    except demo.DemoFailed as e:
        raise CLIError(str(e), EXIT_FAILED) from None
    return EXIT_OK if metrics["stages"]["backbone"] == "ok" else EXIT_NOT_AVAILABLE
