"""`ar1 viz scene | closed-loop | curves`: plots of a synthetic scene, GIFs of closed-loop drives and
training / RL curves, with `ar1_jax.eval.viz` and `ar1_jax.eval.animate` (imported when a command runs)."""

from __future__ import annotations

import argparse
import json
import pathlib

from ar1_jax.cli.common import EXIT_OK, CLIError, add_config_args, existing_dir, load_config, print_help, sub


def register(subparsers) -> None:
    p = sub(subparsers, "viz", "Plot scenes, closed-loop drives and training curves.",
            "Bird's-eye views and camera grids of synthetic scenes, GIFs of the closed-loop drives an\n"
            "`ar1 eval` run saved, and the curves of `ar1 train` / `ar1 rl` runs' metrics.jsonl.")
    vsub = p.add_subparsers(dest="viz_command", metavar="<plot>", title="plots")
    vp = sub(vsub, "scene", "A synthetic scene: bird's-eye view and camera images.",
             "Writes DIR/scene_<seed>_bev.png (the map, agents, lights, the ego's history and the expert's\n"
             "future in the ego frame at t0, captioned with the scene's Chain-of-Causation text) and\n"
             "DIR/scene_<seed>_cameras.png (the rendered cameras x frames the model reads).",
             epilog="example: ar1 viz scene --seed 3 --family turn --out out/viz")
    add_config_args(vp, default="ar1_tiny")
    vp.add_argument("--seed", type=int, required=True, help="scene seed (>= 0)")
    vp.add_argument("--family", metavar="F", help="scenario family (default: the seed's own; e.g. turn, cut_in)")
    vp.add_argument("--out", required=True, metavar="DIR", help="where to write the PNGs")
    vp.set_defaults(func=cmd_viz_scene)
    vp = sub(vsub, "closed-loop", "GIFs of the closed-loop drives of an evaluation run.",
             "Reads EVAL_OUT/config.json and EVAL_OUT/closed_loop/<scene_id>.npz (written by `ar1 eval`),\n"
             "rebuilds each scene's world from its seed and writes one GIF per track: the drive in the world\n"
             "frame with agents, lights, the current plan and its reasoning, the logged expert drive\n"
             "faint, and a red frame on steps flagged as a collision or off-road.",
             epilog="example: ar1 viz closed-loop out/eval --scene synth_000000003 --every 2")
    vp.add_argument("eval_out", metavar="EVAL_OUT", help="an `ar1 eval` output directory")
    vp.add_argument("--scene", action="append", default=None, metavar="ID",
                    help="only this scene id (repeatable; default: every track)")
    vp.add_argument("--out", metavar="DIR", help="where to write the GIFs (default: EVAL_OUT/plots)")
    vp.add_argument("--fps", type=float, default=10.0, help="frames per second (default: 10, real time)")
    vp.add_argument("--every", type=int, default=1, metavar="K", help="draw every K-th step (default: 1)")
    vp.set_defaults(func=cmd_viz_closed_loop)
    vp = sub(vsub, "curves", "Training and RL curves of runs, one PNG per run.",
             "Reads RUN_DIR/metrics.jsonl and draws one panel per group of logged values (losses,\n"
             "rewards, KL, clip fractions, gradient norm, learning rate, ...) against the step;\n"
             "throughput and timing values are left out. Writes DIR/<run name>_curves.png.",
             epilog="example: ar1 viz curves runs/sft runs/rl --out out/curves")
    vp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="`ar1 train` / `ar1 rl` run directories")
    vp.add_argument("--out", required=True, metavar="DIR", help="where to write the PNGs")
    vp.set_defaults(func=cmd_viz_curves)
    p.set_defaults(func=print_help(p))


def cmd_viz_scene(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.seed < 0:
        raise CLIError(f"--seed: expected a seed >= 0, got {args.seed}")
    from ar1_jax.eval import viz
    from ar1_jax.world import families, render

    if args.family is not None and args.family not in families.FAMILY_SPECS:
        raise CLIError(f"--family {args.family!r}: unknown; known: {', '.join(families.FAMILY_SPECS)}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = families.generate(args.seed, cfg, family=args.family)
    bev, cams = out / f"scene_{args.seed}_bev.png", out / f"scene_{args.seed}_cameras.png"
    viz.plot_scene_bev(bev, scene, caption=scene.cot)
    nf = cfg.scene.num_frames
    labels = [f"t0-{(nf - 1 - f) * scene.dt:.1f} s" if f < nf - 1 else "t0" for f in range(nf)]
    viz.plot_camera_grid(cams, render.render(scene, cfg), title=f"{scene.scene_id} ({scene.family}): cameras",
                         cameras=[c.name for c in render.camera_set(cfg.scene.num_cameras)], frame_labels=labels)
    print(f"{scene.scene_id} ({scene.family}): {scene.cot}")
    print(f"wrote {bev} and {cams}")
    return EXIT_OK


def cmd_viz_closed_loop(args: argparse.Namespace) -> int:
    root = existing_dir(args.eval_out, "EVAL_OUT")
    if args.every < 1 or args.fps <= 0:
        raise CLIError(f"--every must be >= 1 and --fps > 0, got --every {args.every} --fps {args.fps}")
    tracks = sorted((root / "closed_loop").glob("*.npz"))
    if not tracks:
        raise CLIError(f"{root / 'closed_loop'}: no track files (<scene_id>.npz); run `ar1 eval` with an --out first")
    if args.scene:
        known = {t.stem: t for t in tracks}
        unknown = [s for s in args.scene if s not in known]
        if unknown:
            raise CLIError(f"--scene {', '.join(unknown)}: no such track in {root / 'closed_loop'} "
                           f"(has {', '.join(sorted(known))})")
        tracks = [known[s] for s in dict.fromkeys(args.scene)]
    cfg = _eval_config(root / "config.json")
    from ar1_jax.eval import animate
    from ar1_jax.world import families

    out = pathlib.Path(args.out) if args.out else root / "plots"
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(tracks):
        try:
            track = animate.load_track(path)
            scene = families.generate(track["seed"], cfg, family=track["family"])
            if scene.scene_id != track["scene_id"]:
                raise ValueError(f"{path}: seed {track['seed']} regenerates scene {scene.scene_id}, the track "
                                 f"says {track['scene_id']}")
            gif = out / f"{track['scene_id']}.gif"
            frames = animate.animate_closed_loop(gif, scene, track, fps=args.fps, every=args.every)
        except (OSError, ValueError) as e:
            raise CLIError(str(e)) from None
        flags = f"{int(track['collision'].sum())} collision / {int(track['offroad'].sum())} off-road steps"
        print(f"[{i + 1}/{len(tracks)}] {gif}: {frames} frames, {track['policy']}, {flags}", flush=True)
    return EXIT_OK


def _eval_config(path: pathlib.Path):
    """The Config an evaluation run saved (its worlds regenerate from it)."""
    from ar1_jax.config import Config, ConfigError, from_dict

    if not path.is_file():
        raise CLIError(f"{path}: no such file (the evaluation run's config)")
    try:
        return from_dict(Config, json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise CLIError(f"{path}: not a config ({e})") from None


def cmd_viz_curves(args: argparse.Namespace) -> int:
    runs = [existing_dir(d, "RUN_DIR") for d in args.run_dirs]
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise CLIError(f"{run / 'metrics.jsonl'}: no such file (not an `ar1 train` / `ar1 rl` run directory)")
    from ar1_jax.eval import viz

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names: dict[str, int] = {}
    for run in runs:
        rows = viz.read_metrics(run / "metrics.jsonl")
        name = run.resolve().name or "run"
        names[name] = names.get(name, 0) + 1
        png = out / (f"{name}_curves.png" if names[name] == 1 else f"{name}_{names[name]}_curves.png")
        try:
            panels = viz.plot_curves(png, rows, title=f"{run} ({len(rows)} logged steps)")
        except ValueError as e:
            raise CLIError(f"{run / 'metrics.jsonl'}: {e}") from None
        print(f"{png}: {', '.join(title for title, _ in panels)}")
    return EXIT_OK
