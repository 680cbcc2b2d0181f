"""`ar1 experiment longtail`: reasoning vs trajectory-only (and RL, and token decoding) at the same budget on
the synthetic world's common and long-tail families, over seeds and sizes, with
`ar1_jax.experiment.longtail.run_experiment` (which says each run and writes DIR/results.md)."""

from __future__ import annotations

import argparse

from ar1_jax.cli.common import EXIT_FAILED, EXIT_OK, CLIError, print_help, sub


def register(subparsers) -> None:
    p = sub(subparsers, "experiment", "Run a whole experiment: train, evaluate and compare several models.",
            "Each experiment is a plan of runs (data, training, evaluation), one directory each under\n"
            "--out; a rerun of the same command resumes at the run it was in.")
    esub = p.add_subparsers(dest="experiment_command", metavar="<experiment>", title="experiments")
    lp = sub(esub, "longtail", "Does reasoning help on the long tail? Four models at the same budget, over seeds.",
             "On synthetic data with common and long-tail families, trains and evaluates, open and\n"
             "closed loop, with the same budget for each: (a) trajectory-only (SFT without the\n"
             "reasoning block), (b) AR1 after SFT, (c) AR1 after SFT + RL, (d) AR1 driving from its\n"
             "discrete trajectory tokens instead of the flow expert ((b)'s weights); plus the rule\n"
             "planner and constant velocity as bounds. --sizes sweeps model sizes (the small-scale\n"
             "version of the paper's 0.5B / 3B / 7B table).\n\n"
             "Writes DIR/results.md (a table per family group and per family: mean and 95% t-interval\n"
             "over seeds of minADE_K @ 3 s, collision, off-road, consistency, AlpaSim score, at-fault\n"
             "and closed-loop off-road), DIR/summary.json and plots; --results-md also puts the tables\n"
             "into that file (replacing this DIR's earlier section). Each run leaves DIR/<run>/done.json:\n"
             "a killed experiment, rerun with the same command, picks up at the run it was in (SFT and\n"
             "RL from their checkpoints). At the defaults (ar1_tiny, 3 seeds) about 80 minutes on 2 idle\n"
             "CPU cores (an estimate from per-step times); a training step of ar1_tiny_wide takes about\n"
             "1.4x and one of ar1_small about 3x ar1_tiny's.",
             epilog="examples:\n"
                    "  ar1 experiment longtail --out out/longtail --seeds 3\n"
                    "  ar1 experiment longtail --out out/sizes --sizes ar1_tiny,ar1_tiny_wide \
--results-md docs/results.md\n"
                    "  ar1 experiment longtail --out /tmp/smoke --seeds 1 --scenes 16 --steps 3 --rl-steps 1 "
                    "--eval-scenes 2")
    lp.add_argument("--out", required=True, metavar="DIR", help="the experiment's directory")
    lp.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0 .. N-1 (default 3)")
    lp.add_argument("--sizes", default="ar1_tiny", metavar="NAME[,NAME...]",
                    help="AR1 configs to compare (default ar1_tiny; e.g. ar1_tiny,ar1_tiny_wide,ar1_small)")
    lp.add_argument("--scenes", type=int, default=128, metavar="N",
                    help="synthetic scenes written per size, about 10%% held out (default 128)")
    lp.add_argument("--steps", type=int, default=300, metavar="S", help="SFT steps of every model (default 300)")
    lp.add_argument("--rl-steps", type=int, default=50, metavar="R",
                    help="RL steps after SFT for (c) (default 50; 0 leaves (c) out)")
    lp.add_argument("--eval-scenes", type=int, default=64, metavar="N",
                    help="held-out world scenes evaluated (default 64)")
    lp.add_argument("--samples", type=int, default=None, metavar="K", help="samples per scene (default: the config's)")
    lp.add_argument("--open-loop-only", action="store_true", help="skip the closed-loop simulation")
    lp.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                    help="override a config field of every size (repeatable)")
    lp.add_argument("--results-md", metavar="PATH", help="also put the tables into this Markdown file")
    lp.set_defaults(func=cmd_longtail)
    p.set_defaults(func=print_help(p))


def cmd_longtail(args: argparse.Namespace) -> int:
    from ar1_jax.config import ConfigError
    from ar1_jax.experiment.longtail import ExperimentError, LongtailSettings, run_experiment

    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    settings = LongtailSettings(seeds=args.seeds, sizes=sizes, scenes=args.scenes, steps=args.steps,
                                rl_steps=args.rl_steps, eval_scenes=args.eval_scenes, samples=args.samples,
                                closed_loop=not args.open_loop_only, overrides=tuple(args.overrides or ()))
    try:
        settings.validate()
        for size in sizes:  # a bad name or override fails now, not after the first size's runs
            from ar1_jax.config import get_config

            get_config(size, list(settings.overrides)).validate()
    except (ExperimentError, ConfigError) as e:
        raise CLIError(str(e)) from None
    try:
        run_experiment(settings, args.out, results_md=args.results_md)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    except ExperimentError as e:
        raise CLIError(str(e), EXIT_FAILED) from None
    return EXIT_OK
