"""`ar1 rl`: RL of both heads after SFT (`ar1_jax.rl.task.run` on the training driver); exit 143 when
preempted (SIGTERM), 130 when interrupted."""

from __future__ import annotations

import argparse
import pathlib

from ar1_jax.cli.common import CLIError, add_config_args, driver_errors, note_config_changes, run_outcome, sub


def register(subparsers) -> None:
    p = sub(subparsers, "rl", "Reinforcement learning (GRPO family) of the reasoning, the trajectory tokens "
            "and the flow expert, after SFT.",
            "Each step rolls out rl.group_size samples of rl.scenes_per_step synthetic-world scenes with\n"
            "the current weights (reasoning and trajectory tokens at rl.temperature / rl.top_p, the\n"
            "expert's trajectory from its SDE sampler), scores them (rl.reward.*: reasoning-action\n"
            "consistency, reasoning quality against the scene's CoC, the release's ADE-gated trajectory\n"
            "reward, collision and off-road against the world, format), and takes one update of both\n"
            "heads from those rollouts: the tokens with rl.token_loss (grpo | dapo | gspo) and the\n"
            "expert with rl.expert_loss (flow_grpo | awfm | fpo), advantages rl.advantage (grpo |\n"
            "drgrpo | rloo) per head. The run directory, resume, SIGTERM and metrics work as in\n"
            "`ar1 train`; each metrics row carries reward/* (total, tokens, expert, consistency, ...),\n"
            "consistency_rate, kl (to the --init-from policy), clip_frac, entropy, groups_kept,\n"
            "rollout_s and update_s.",
            epilog="examples:\n"
                   "  ar1 rl --config ar1_tiny --workdir runs/rl --init-from runs/sft --set train.steps=200\n"
                   "  ar1 rl --config ar1_tiny --workdir runs/rl_awfm --init-from runs/sft --set rl.expert_loss=awfm")
    add_config_args(p)
    p.add_argument("--workdir", required=True, metavar="DIR", help="run directory (checkpoints, metrics); "
                   "rerun to resume")
    p.add_argument("--init-from", metavar="PATH", help="the SFT weights to start from and the KL reference: an "
                   "`ar1 train` run dir or checkpoint step dir, or a release-layout AR1 checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after N steps of this "
                   "invocation; rerun to continue")
    p.add_argument("--from-step", type=int, metavar="N", help="resume from checkpoint step N exactly (newer steps "
                   "are moved to DIR/checkpoints/superseded/)")
    p.add_argument("--heldout", type=int, default=0, metavar="N", help="score the starting policy (once per run "
                   "directory) and the final one on N held-out world scenes (rl.eval_seed onwards, G rollouts each; "
                   "a multiple of rl.scenes_per_step): DIR/heldout_before.json, DIR/heldout_after.json and a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still logged)")
    p.set_defaults(func=cmd_rl)


def cmd_rl(args: argparse.Namespace) -> int:
    import logging

    from ar1_jax.parallel.mesh import initialize_distributed

    initialize_distributed()  # before anything touches devices
    import jax

    logging.basicConfig(level=logging.INFO if jax.process_index() == 0 else logging.WARNING, force=True,
                        format=f"%(asctime)s p{jax.process_index()} %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from ar1_jax.config import ConfigError
    from ar1_jax.rl import task as rl_task
    from ar1_jax.train import startup

    if not args.config:
        raise CLIError("--config is required (an AR1 config, e.g. ar1_tiny)")
    if jax.process_count() > 1:
        raise CLIError("ar1 rl runs in one process for now (its rollouts are not split across processes)")
    for flag, value in (("--stop-after", args.stop_after), ("--from-step", args.from_step)):
        if value is not None and value <= 0:
            raise CLIError(f"{flag}: expected a positive count, got {value}")
    if args.heldout < 0:
        raise CLIError(f"--heldout: expected a scene count >= 0, got {args.heldout}")
    workdir = pathlib.Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise CLIError(f"--workdir {workdir}: exists and is not a directory")
    try:
        cfg = rl_task.rl_config(startup.resolve_config(args.config, overrides=args.overrides or (),
                                                       init_from=args.init_from))
    except ConfigError as e:
        raise CLIError(str(e)) from None
    if args.heldout % cfg.rl.scenes_per_step:
        raise CLIError(f"--heldout: expected a multiple of rl.scenes_per_step={cfg.rl.scenes_per_step}, got "
                       f"{args.heldout}")
    workdir.mkdir(parents=True, exist_ok=True)
    note_config_changes(workdir, cfg)
    rl = cfg.rl
    m = cfg.mesh
    print(f"ar1 rl: config {cfg.name}, {jax.device_count()} {jax.devices()[0].platform} device(s), mesh data={m.data} "
          f"fsdp={m.fsdp} tensor={m.tensor}, {rl.scenes_per_step} scenes x {rl.group_size} rollouts per step, tokens "
          f"{rl.token_loss} / expert {rl.expert_loss} / advantages {rl.advantage}, {cfg.train.steps} steps, init "
          f"{cfg.train.init_from or 'random weights'} -> {workdir}", flush=True)
    if args.heldout and not (workdir / "heldout_before.json").exists():
        _heldout(cfg, workdir, args.heldout, "before", checkpoint=None)
    with driver_errors():
        result = rl_task.run(cfg, workdir, progress=not args.no_progress, max_steps=args.stop_after,
                             from_step=args.from_step)
    code = run_outcome(result, workdir, "reward/total", "reward")
    if args.heldout and code == 0:
        _heldout(cfg, workdir, args.heldout, "after", checkpoint=workdir)
    return code


def _heldout(cfg, workdir: pathlib.Path, num_scenes: int, when: str, checkpoint) -> None:
    """Scores the starting policy (`checkpoint` None: `rl.task.starting_params`) or the run's latest checkpoint on held-out scenes; writes DIR/heldout_<when>.json and prints it."""
    import json

    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.rl.heldout import evaluate
    from ar1_jax.rl.task import starting_params
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train import sft
    from ar1_jax.train.trainer import Trainer

    abstract = Trainer(cfg, make_mesh(cfg.mesh)).abstract_state["params"]
    params = (ckpt_lib.load_params(checkpoint, cfg, abstract) if checkpoint else starting_params(cfg, abstract))
    summary = evaluate(cfg, params, sft.default_tokenizer(cfg, workdir), num_scenes)
    (workdir / f"heldout_{when}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"held-out {when} ({summary['scenes']} scenes x {cfg.rl.group_size}): "
          + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in summary.items() if k not in ("scenes", "rollouts")),
          flush=True)
