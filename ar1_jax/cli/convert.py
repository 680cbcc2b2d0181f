"""`ar1 convert check` and `ar1 convert export`: load a Hugging Face checkpoint with
`ar1_jax.convert.hf` and print a summary, or write it back in the HF layout."""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

from ar1_jax.cli.common import (ARRIVES_WITH, EXIT_FAILED, EXIT_OK, CLIError, existing_dir, import_optional,
                                print_help, sub)
from ar1_jax.config import DTYPES


def register(subparsers) -> None:
    p = sub(subparsers, "convert", "Load Hugging Face checkpoints (Qwen2.5-VL, Qwen3-VL) and write them back.",
            "Reads a transformers checkpoint directory (config.json + *.safetensors) into the JAX\n"
            "model with ar1_jax.convert.hf.load, and writes a model back in the same layout with\n"
            "ar1_jax.convert.hf.export.")
    csub = p.add_subparsers(dest="convert_command", metavar="<action>", title="actions")
    cp = sub(csub, "check", "Load a checkpoint and print its family, parameter count and a summary.",
             "Loads every tensor into the JAX model (so it also checks that the checkpoint is\n"
             "complete and its shapes match the config).",
             epilog="example: ar1 convert check --hf-dir ~/models/Qwen2.5-VL-3B-Instruct")
    _add_load_args(cp)
    cp.set_defaults(func=cmd_convert_check)
    cp = sub(csub, "export", "Load a checkpoint and export it to a new HF-layout directory.",
             "Loads --hf-dir into the JAX model, then writes it with ar1_jax.convert.hf.export to\n"
             "--out (config.json + safetensors that transformers can load).",
             epilog="example: ar1 convert export --hf-dir ckpt/ --out out/exported")
    _add_load_args(cp, out=True)
    cp.set_defaults(func=cmd_convert_export)
    p.set_defaults(func=print_help(p))


def _add_load_args(p: argparse.ArgumentParser, out: bool = False) -> None:
    p.add_argument("--hf-dir", required=True, metavar="DIR", help="HF checkpoint directory")
    if out:
        p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="parameter dtype to load as (default: float32)")


def cmd_convert_check(args: argparse.Namespace) -> int:
    from ar1_jax.model.summary import count_params, human_count

    hf_dir = existing_dir(args.hf_dir, "--hf-dir")
    model, seconds = _hf_load(hf_dir, args.dtype, "convert check")
    total, groups, dtypes = count_params(model)
    print(f"checkpoint:  {hf_dir}")
    print(f"family:      {_family(model, hf_dir)}")
    print(f"parameters:  {total:,} ({human_count(total)})")
    print(f"dtypes:      {', '.join(dtypes) or '?'}")
    print(f"load time:   {seconds:.1f} s")
    cfg = _model_cfg(model)
    text, vision = getattr(cfg, "text", None), getattr(cfg, "vision", None)
    if text is not None:
        print(f"decoder:     {text.num_layers} layers, hidden {text.hidden_size}, {text.num_heads} heads "
              f"({text.num_kv_heads} kv), head_dim {text.head_dim}, vocab {text.vocab_size}")
    if vision is not None:
        print(f"vision:      {vision.depth} blocks, hidden {vision.hidden_size}, patch {vision.patch_size}, "
              f"out {vision.out_hidden_size}")
    if groups:
        print("parameters by top-level module:")
        gw = max(map(len, groups))
        for key, n in groups.items():
            print(f"  {key:<{gw}}  {n:>15,}  ({human_count(n)})")
    return EXIT_OK


def cmd_convert_export(args: argparse.Namespace) -> int:
    hf_dir = existing_dir(args.hf_dir, "--hf-dir")
    out = pathlib.Path(args.out)
    model, seconds = _hf_load(hf_dir, args.dtype, "convert export")
    print(f"loaded {hf_dir} in {seconds:.1f} s")
    hf = import_optional("ar1_jax.convert.hf", "convert export", ARRIVES_WITH["convert"])
    t0 = time.perf_counter()
    try:
        hf.export(model, str(out))
    except (OSError, ValueError) as e:
        where = "" if str(out) in str(e) else f"{out}: "
        raise CLIError(f"cannot export: {where}{e}", EXIT_FAILED) from None
    print(f"exported to {out} in {time.perf_counter() - t0:.1f} s:")
    for p in sorted(out.iterdir()) if out.is_dir() else ():
        print(f"  {p.name}  ({p.stat().st_size:,} bytes)")
    return EXIT_OK


def _hf_load(hf_dir: pathlib.Path, dtype: str, command: str):
    hf = import_optional("ar1_jax.convert.hf", command, ARRIVES_WITH["convert"])
    import jax.numpy as jnp

    t0 = time.perf_counter()
    try:
        model = hf.load(str(hf_dir), dtype=getattr(jnp, dtype), mesh=None)
    except (OSError, ValueError) as e:
        where = "" if str(hf_dir) in str(e) else f"{hf_dir}: "
        raise CLIError(f"cannot load checkpoint: {where}{e}") from None
    return model, time.perf_counter() - t0


def _model_cfg(model: Any) -> Any:
    """The model's VLMConfig if it carries one (as `cfg` or `config`, or a root Config's `.model`)."""
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    return getattr(cfg, "model", cfg)


def _family(model: Any, hf_dir: pathlib.Path) -> str:
    family = getattr(_model_cfg(model), "family", None)
    if family:
        return str(family)
    try:
        return str(json.loads((hf_dir / "config.json").read_text()).get("model_type", "?"))
    except (OSError, ValueError):
        return "?"
