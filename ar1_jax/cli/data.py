"""`ar1 data synth` and `ar1 data pai`: write TFDS dataset directories (synthetic scenes, or
PhysicalAI-AV clips) with `ar1_jax.data` and print what was written."""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from ar1_jax.cli.common import EXIT_FAILED, EXIT_OK, CLIError, add_config_args, load_config, print_help, sub


def register(subparsers) -> None:
    p = sub(subparsers, "data", "Generate synthetic driving scenes and build TFDS datasets.",
            "Renders long-tail scenarios (camera frames, ego history, future trajectory, a\n"
            "Chain-of-Causation trace) into a TFDS directory that the training pipeline reads\n"
            "(set data.dataset_dir to it).")
    dsub = p.add_subparsers(dest="data_command", metavar="<action>", title="actions")
    dp = sub(dsub, "synth", "Write N synthetic scenes as a TFDS dataset directory (train/test splits).",
             "Scenes come from ar1_jax.data.synthetic.generate_records when that module is present,\n"
             "else from ar1_jax.data.tfds_builder.random_records (random frames, a plausible motion;\n"
             "a warning says so). Camera count, frames and image size follow the config's `scene`.\n"
             "DIR becomes the dataset directory itself (dataset_info.json, array_record files):\n"
             "tfds.builder_from_directory(DIR).as_data_source('train') reads it, no tensorflow needed.\n"
             "About 10% of the scenes (by a hash of the scene id) go to the test split.",
             epilog="example: ar1 data synth --out data/synth --num-scenes 256 --seed 0")
    add_config_args(dp, default="ar1_tiny")
    dp.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    dp.add_argument("--num-scenes", type=int, default=256, metavar="N", help="scenes to write (default: 256)")
    dp.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    _add_split_args(dp)
    dp.set_defaults(func=cmd_data_synth)
    dp = sub(dsub, "pai", "Convert PhysicalAI-Autonomous-Vehicles clips (frames layout) to a TFDS directory.",
             "Each CLIP_DIR is one unpacked clip: camera/<cam>/<id>.<cam>.timestamps.parquet with the\n"
             "frames extracted to <id>.<cam>.frames/NNNNNN.jpg, and labels/egomotion/<id>.egomotion.parquet\n"
             "(MP4 is not decoded here). The release's 4 cameras, 4 frames at t0-0.3..t0, 16 history and 64\n"
             "future poses in the t0 frame; see ar1_jax/data/pai.py.",
             epilog="example: ar1 data pai --out data/pai clips/0a1b... --stride 1.0")
    add_config_args(dp, default="ar1_tiny")
    dp.add_argument("clip_dirs", nargs="+", metavar="CLIP_DIR", help="unpacked clip folders")
    dp.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    dp.add_argument("--stride", type=float, default=1.0, metavar="S", help="seconds between t0s (default: 1.0)")
    dp.add_argument("--t0-us", type=int, action="append", default=None, metavar="US",
                    help="explicit t0 (microseconds), repeatable; e.g. 5100000, the release's default")
    _add_split_args(dp)
    dp.set_defaults(func=cmd_data_pai)
    p.set_defaults(func=print_help(p))


def _add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="share of scenes in the test split (default: 0.1)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in DIR")


def cmd_data_synth(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.num_scenes <= 0:
        raise CLIError(f"--num-scenes: expected a positive count, got {args.num_scenes}")
    if not 0.0 <= args.test_fraction < 1.0:
        raise CLIError(f"--test-fraction: expected a value in [0, 1), got {args.test_fraction}")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not ((out / "dataset_info.json").exists() and args.overwrite):
        what = "already holds a dataset (add --overwrite)" if (out / "dataset_info.json").exists() else \
            "is a non-empty directory that is not a dataset"
        raise CLIError(f"--out {out}: {what}")
    from ar1_jax.data import tfds_builder
    from ar1_jax.data.synth_dataset import write_synthetic_dataset

    try:
        write_synthetic_dataset(cfg, out, args.num_scenes, seed=args.seed, test_fraction=args.test_fraction,
                                overwrite=args.overwrite)
    except tfds_builder.RecordError as e:
        raise CLIError(f"the generator produced a bad record: {e}", EXIT_FAILED) from None
    return EXIT_OK


def cmd_data_pai(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from ar1_jax.data import pai, tfds_builder

    t0 = time.perf_counter()
    try:
        out = pai.convert_clips(args.clip_dirs, args.out, cfg, stride_s=args.stride, t0_us=args.t0_us,
                                test_fraction=args.test_fraction, overwrite=args.overwrite)
    except (pai.PAIError, tfds_builder.RecordError) as e:
        raise CLIError(str(e)) from None
    except ValueError as e:  # write_dataset: an existing dataset, a bad fraction
        raise CLIError(f"--out {args.out}: {e}") from None
    counts = json.loads((out / "metadata.json").read_text()).get("split_counts", {})
    print(f"wrote {out}: {', '.join(f'{k} {v}' for k, v in counts.items())} scenes from {len(args.clip_dirs)} clip(s) "
          f"in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK
