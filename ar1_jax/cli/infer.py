"""`ar1 infer`: AR1 on one scene with `ar1_jax.infer.run.run_scene` (which says each stage, the
samples' reasoning and the timing, and writes trajectory.json and bev.png)."""

from __future__ import annotations

import argparse

from ar1_jax.cli.common import EXIT_OK, CLIError, add_config_args, existing_dir, load_config, sub


def register(subparsers) -> None:
    p = sub(subparsers, "infer", "Run AR1 on a scene: reasoning text and a trajectory.",
            "Compiled vision + prefill, reasoning decode (trajectory tokens masked) until\n"
            "<|traj_future_start|>, then flow-matching denoising of the action expert over the cached\n"
            "prefix, then unicycle integration into a 6.4 s trajectory. Prints each sample's\n"
            "reasoning, its parsed decisions and a timing breakdown; writes DIR/trajectory.json and a\n"
            "bird's-eye plot DIR/bev.png. Deterministic for a given --seed.\n\n"
            "--scene takes a scene .npz (images [cameras, frames, H, W, 3] uint8, history_xyz [16, 3]\n"
            "metres in the t0 ego frame, optional future_xyz [64, 3]) or `random` (random frames: a\n"
            "smoke test). Without --checkpoint the weights are random (config seed). --checkpoint\n"
            "takes an `ar1 train` / `ar1 rl` run directory (its latest checkpoint, the run's config and\n"
            "tokenizer), one of its checkpoints/<step> directories, or a release-layout Alpamayo-R1\n"
            "checkpoint (its own config); --config is then only the fallback.",
            epilog="examples:\n"
                   "  ar1 infer --config ar1_tiny --scene random --out out/infer --samples 2\n"
                   "  ar1 infer --checkpoint runs/tiny --scene scene.npz --out out/infer")
    add_config_args(p, default="ar1_tiny")
    p.add_argument("--scene", required=True, metavar="PATH|random", help="scene .npz, or `random`")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="an `ar1 train`/`ar1 rl` run or checkpoints/<step> directory, or a release-layout "
                        "checkpoint directory (config.json + safetensors)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the checkpoint's, or one "
                                                      "trained on the CoC corpus and cached under --out)")
    p.add_argument("--out", default="out/infer", metavar="DIR", help="where to write trajectory.json and bev.png")
    p.add_argument("--samples", type=int, default=None, metavar="K", help="trajectory samples (default: config)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (reasoning and flow noise)")
    p.add_argument("--select", choices=("consistent", "likely", "first"), default="consistent",
                   help="the sample to drive: the most likely of those whose trajectory agrees with their own "
                        "reasoning (else the most likely), the most likely, or the first (default: consistent)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run N times and report the last run's timing (the first includes compilation)")
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    checkpoint = existing_dir(args.checkpoint, "--checkpoint") if args.checkpoint else None
    from ar1_jax.infer.run import InferInputError, run_scene

    try:
        run_scene(cfg, args.scene, args.out, checkpoint=checkpoint, tokenizer=args.tokenizer, samples=args.samples,
                  seed=args.seed, repeat=args.repeat, select=args.select, overrides=args.overrides or ())
    except InferInputError as e:
        raise CLIError(str(e)) from None
    return EXIT_OK
