"""`ar1 train`: SFT of AR1. Parses the flags, starts the run with `ar1_jax.train.startup` and prints
the outcome; exit 143 when preempted (SIGTERM), 130 when interrupted."""

from __future__ import annotations

import argparse
import pathlib

from ar1_jax.cli.common import (EXIT_FAILED, CLIError, add_config_args, driver_errors, exit_code, note_config_changes,
                                run_outcome, sub)


def register(subparsers) -> None:
    p = sub(subparsers, "train", "Supervised fine-tuning (SFT) of AR1, from one CPU to a pod.",
            "Cross-entropy on the reasoning and the discrete trajectory tokens plus flow matching on\n"
            "the action expert (weights: loss.*; stages: --stage), AdamW with warmup + cosine,\n"
            "over the mesh given by mesh.data / mesh.fsdp / mesh.tensor (-1: the remaining devices).\n\n"
            "DIR receives config.json, metrics.jsonl (one JSON object per logged step: step, loss,\n"
            "its terms, grad_norm, lr, tokens_per_s, step_time_s, mfu), tensorboard/ and\n"
            "checkpoints/<step>/ (params, optimizer, rng, data position, config). Running the same\n"
            "command again resumes from the latest checkpoint, bit for bit. SIGTERM or Ctrl-C saves\n"
            "a checkpoint at the next step boundary and exits; a NaN/inf loss stops the run and keeps\n"
            "the last good checkpoint.\n\n"
            "Data: data.dataset_dir (a TFDS directory from `ar1 data synth` / `ar1 data pai`). If it is\n"
            "not set, --synth-scenes synthetic scenes are written to DIR/data first.\n\n"
            "Multi-process: started from the environment (AR1_COORDINATOR + AR1_NUM_PROCESSES +\n"
            "AR1_PROCESS_ID, SLURM variables, or a TPU pod): see launch/. Every process runs the same\n"
            "command; process 0 writes logs and metrics.",
            epilog="examples:\n"
                   "  ar1 train --config ar1_tiny --workdir runs/tiny --set train.steps=60\n"
                   "  ar1 train --config ar1_0p5b --stage sft1 --workdir runs/s1 --set data.dataset_dir=data/synth\n"
                   "  ar1 train --config ar1_0p5b --stage sft2 --workdir runs/s2 --init-from runs/s1 \\\n"
                   "      --set train.lr_multipliers=vision=0.1 --set mesh.fsdp=8\n"
                   "stages: " + "; ".join(f"{k}: {v}" for k, v in _stage_docs().items()))
    add_config_args(p)
    p.add_argument("--workdir", required=True, metavar="DIR", help="run directory (checkpoints, metrics); "
                   "rerun to resume")
    p.add_argument("--stage", metavar="STAGE", help="SFT stage preset applied before --set: "
                   + ", ".join(_stage_docs()))
    p.add_argument("--init-from", metavar="PATH", help="start from these weights (fresh optimizer): an `ar1 train` "
                   "run dir or checkpoint step dir, or a release-layout AR1 checkpoint; ignored when DIR already "
                   "has a checkpoint (same as --set train.init_from=PATH)")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after N steps of this "
                   "invocation, e.g. to fit a job's time limit; rerun to continue")
    p.add_argument("--from-step", type=int, metavar="N", help="resume from checkpoint step N exactly (e.g. to go "
                   "back before a loss spike); newer steps are moved to DIR/checkpoints/superseded/, not deleted. "
                   "Without it a run resumes from the newest checkpoint that loads: a damaged one is moved to "
                   "DIR/checkpoints/damaged/ with a warning")
    p.add_argument("--synth-scenes", type=int, default=256, metavar="N",
                   help="scenes to synthesise into DIR/data when data.dataset_dir is empty (default: 256)")
    p.add_argument("--our-tokens", action="store_true",
                   help="train a release-layout config (ar1_0p5b, ar1_3b, ar1_7b, ar1_10b_release) on our "
                   "tokenizer's ids (512 base pieces) at its own vocabulary size, e.g. on synthetic data to "
                   "measure step time, MFU or memory without the release tokenizer; config.json records the ids")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still logged)")
    p.set_defaults(func=cmd_train)


def _stage_docs() -> dict[str, str]:
    from ar1_jax.train.stages import STAGES

    return {k: v.description for k, v in STAGES.items()}


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from ar1_jax.parallel.mesh import initialize_distributed

    mode = initialize_distributed()  # before anything touches devices
    import jax

    lead = jax.process_index() == 0
    # force: each invocation logs to the stderr of the moment (not one captured by an earlier call in
    # the same process, which may be closed by now).
    logging.basicConfig(level=logging.INFO if lead else logging.WARNING, force=True,
                        format=f"%(asctime)s p{jax.process_index()} %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    from ar1_jax.config import ConfigError
    from ar1_jax.data import tfds_builder
    from ar1_jax.train import startup

    if not args.config:
        raise CLIError("--config is required (a named config, see `ar1 configs`, or a .py file)")
    try:
        cfg = startup.resolve_config(args.config, stage=args.stage, overrides=args.overrides or (),
                                     init_from=args.init_from)
        if args.our_tokens:
            from ar1_jax.text import layout

            cfg = layout.with_our_tokens(cfg)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    if args.stop_after is not None and args.stop_after <= 0:
        raise CLIError(f"--stop-after: expected a positive step count, got {args.stop_after}")
    if args.from_step is not None and args.from_step <= 0:
        raise CLIError(f"--from-step: expected a checkpoint step >= 1, got {args.from_step}")
    workdir = pathlib.Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise CLIError(f"--workdir {workdir}: exists and is not a directory")
    if not cfg.data.dataset_dir and args.synth_scenes <= 0:
        raise CLIError(f"--synth-scenes: expected a positive count, got {args.synth_scenes}")
    workdir.mkdir(parents=True, exist_ok=True)
    try:  # first, so a rerun compares the config it trained with
        cfg = startup.ensure_dataset(cfg, workdir / "data", args.synth_scenes)
    except tfds_builder.RecordError as e:
        raise CLIError(f"the generator produced a bad record: {e}", EXIT_FAILED) from None
    except (ConfigError, ValueError) as e:  # a multi-process run without data; DIR/data not a dataset
        raise CLIError(str(e)) from None
    if lead:
        note_config_changes(workdir, cfg)
        m = cfg.mesh
        print(f"ar1 train: config {cfg.name}{f' stage {cfg.train.stage}' if cfg.train.stage else ''}, "
              f"{jax.process_count()} process(es) ({mode}), {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} ({m.rules}), global batch "
              f"{cfg.data.batch_size} x {cfg.train.grad_accum} micro-batches, {cfg.train.steps} steps -> {workdir}",
              flush=True)
    return _run(cfg, workdir, args)


def _run(cfg, workdir: pathlib.Path, args: argparse.Namespace) -> int:
    import jax

    from ar1_jax.train import sft

    with driver_errors():
        result = sft.run(cfg, workdir, progress=not args.no_progress, max_steps=args.stop_after,
                         from_step=args.from_step)
    return run_outcome(result, workdir, "loss", "loss") if jax.process_index() == 0 else exit_code(result)
