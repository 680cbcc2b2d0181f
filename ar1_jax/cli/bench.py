"""`ar1 bench compile | kernels | all | memory`: run the benchmarks in `ar1_jax.bench` and
`ar1_jax.train.memory` and print their results."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from ar1_jax.cli.common import (ARRIVES_WITH, EXIT_NOT_AVAILABLE, EXIT_OK, CLIError, NotAvailable, add_config_args,
                                import_optional, load_config, print_help, sub)
from ar1_jax.config import DTYPES

# `ar1 bench all` runs the compile-time bench with these unless told otherwise.
BENCH_ALL_CONFIG = "vlm_0p5b"
BENCH_ALL_LAYERS = "2,24"


def register(subparsers) -> None:
    p = sub(subparsers, "bench", "Benchmarks: compile time and attention kernels.",
            "`ar1 bench compile` measures jit compile time of the backbone at several depths\n"
            "(with scanned layers it should not grow with depth); `ar1 bench kernels` times the\n"
            "Pallas attention kernels against XLA and cuDNN; `ar1 bench all` runs every benchmark\n"
            "available in this version. Record results in docs/benchmarks.md.")
    bsub = p.add_subparsers(dest="bench_command", metavar="<bench>", title="benchmarks")
    bp = sub(bsub, "compile", "Measure compile time of the backbone at several depths.",
             "Builds the config with each `--layers` value as the decoder depth and times\n"
             "lowering + compiling the forward; writes the results under --out.",
             epilog="example: ar1 bench compile --config vlm_0p5b --layers 2,24 --out out/bench/compile")
    add_config_args(bp, default="tiny")
    bp.add_argument("--layers", default=BENCH_ALL_LAYERS, metavar="N,M,...",
                    help=f"decoder depths to compile (default: {BENCH_ALL_LAYERS})")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for the results")
    bp.set_defaults(func=cmd_bench_compile)
    bp = sub(bsub, "kernels", "Time the Pallas attention kernels against XLA and cuDNN.",
             "flash_attention (prefill, forward and forward+backward), decode_attention (one token\n"
             "over a KV cache) and denoise_attention (the action expert's 64 queries over the VLM\n"
             "prefix plus their own keys) against the model's XLA attention and, on a GPU, cuDNN,\n"
             "over a table of 0.5B and 10B shapes. Prints ms, TFLOP/s, GB/s and the speedups;\n"
             "writes DIR/kernels.json. Without a GPU or TPU it runs a tiny smoke version in Pallas\n"
             "interpret mode whose times are NOT meaningful (labelled so).",
             epilog="example: ar1 bench kernels --out out/bench/kernels --dtype bfloat16")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for kernels.json")
    bp.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="input dtype (default: bfloat16)")
    bp.add_argument("--quick", action="store_true",
                    help="tiny shapes and one kernel backend: checks the code paths in seconds")
    bp.set_defaults(func=cmd_bench_kernels)
    bp = sub(bsub, "all", "Run every benchmark available in this version.",
             f"Compile time (config {BENCH_ALL_CONFIG!r} and layers {BENCH_ALL_LAYERS} unless told otherwise)\n"
             "into DIR/compile and the attention kernels into DIR/kernels. Exits 3 if no\n"
             "benchmark is available yet.")
    add_config_args(bp, default=BENCH_ALL_CONFIG)
    bp.add_argument("--layers", default=BENCH_ALL_LAYERS, metavar="N,M,...",
                    help=f"decoder depths for the compile-time bench (default: {BENCH_ALL_LAYERS})")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for the results")
    bp.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                    help="input dtype of the kernels bench (default: bfloat16)")
    bp.add_argument("--quick", action="store_true", help="the kernels bench's tiny shapes only")
    bp.set_defaults(func=cmd_bench_all)
    bp = sub(bsub, "memory", "Per-device memory of one SFT train step: analytic, and compiled with --compile.",
             "Params, grads, optimizer state and activations per device for a config on a mesh, from\n"
             "the sharding rules and shapes alone (nothing is allocated), printed in GiB and written to\n"
             "DIR/memory.json, with whether it fits an H100 80GB and a TPU v5p. --compile also compiles\n"
             "the real train step for the mesh and reads XLA's memory analysis; that needs as many\n"
             "devices as the mesh has: on CPU start with XLA_FLAGS=--xla_force_host_platform_device_count=N\n"
             "(fake devices; the CPU figure is not a GPU's or TPU's). See docs/memory.md.",
             epilog="examples:\n"
                    "  ar1 bench memory --config ar1_7b --mesh fsdp=8 --batch 16 --set model.text.remat=full \\\n"
                    "    --out out/mem\n"
                    "  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\\n"
                    "    ar1 bench memory --config ar1_7b --recipe --compile --out out/mem")
    add_config_args(bp, default="ar1_0p5b")
    bp.add_argument("--mesh", metavar="AXIS=N,...", help="mesh axis sizes, e.g. data=2,fsdp=8,tensor=1 (missing: 1)")
    bp.add_argument("--batch", type=int, metavar="B", help="global batch (data.batch_size)")
    bp.add_argument("--seq-len", type=int, metavar="T", help="padded sequence length (default: a typical AR1 "
                    "sequence for the config's scene: images + history + prompt + 40 reasoning + 128 trajectory "
                    "tokens, rounded up to 128)")
    bp.add_argument("--recipe", action="store_true", help="the config's documented mesh, batch and overrides "
                    "(docs/memory.md); --mesh, --batch and --set still apply on top")
    bp.add_argument("--compile", action="store_true", help="also compile the train step on this machine's devices "
                    "(as many as the mesh has) and report XLA's memory analysis")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for memory.json")
    bp.set_defaults(func=cmd_bench_memory)
    bp = sub(bsub, "infer", "AR1 inference latency and throughput (or ours against transformers with --vs-hf).",
             "On random weights of --config (its dtype) and random scenes: per batch size B (scenes, K\n"
             "samples each), compile seconds, then p50 / p95 over --runs of vision, prefill, reasoning\n"
             "decode per token, denoise per Euler step and the whole scene, throughput in scenes/s and\n"
             "peak memory; DIR/infer.json and DIR/infer.md. --int8: weight-only int8 decoder and expert.\n"
             "--peak-gbs: the device's memory bandwidth, to report decode against its roofline.\n\n"
             "--vs-hf (CPU; needs the `parity` extra): builds a Qwen2.5-VL of --config's backbone shape\n"
             "with transformers, saves it, loads the same safetensors into ours and times prefill and\n"
             "--new-tokens greedy tokens side by side (f32), with how many greedy tokens agree and our\n"
             "decode against the copy-bandwidth floor measured in the same run; DIR/vs_hf.json.",
             epilog="examples:\n"
                    "  ar1 bench infer --config ar1_tiny --batch 1,8 --out out/bench/infer\n"
                    "  ar1 bench infer --config ar1_0p5b --batch 1,8,32 --int8 --out out/bench/infer\n"
                    "  ar1 bench infer --vs-hf --config vlm_0p5b --out out/bench/vs_hf")
    add_config_args(bp, default="ar1_tiny")
    bp.add_argument("--batch", default="1,8", metavar="B,B,...", help="batch sizes in scenes (default: 1,8)")
    bp.add_argument("--samples", type=int, default=1, metavar="K", help="samples per scene (default: 1)")
    bp.add_argument("--runs", type=int, default=5, metavar="N", help="timed runs after warm-up (default: 5)")
    bp.add_argument("--warmup", type=int, default=1, metavar="N", help="warm-up runs, the first compiles (default: 1)")
    bp.add_argument("--int8", action="store_true", help="weight-only int8 decoder and expert matmuls")
    bp.add_argument("--peak-gbs", type=float, metavar="GB/S", help="device memory bandwidth for the decode roofline")
    bp.add_argument("--vs-hf", action="store_true", help="ours against transformers on the same safetensors (CPU)")
    bp.add_argument("--images", type=int, default=4, help="--vs-hf: images in the prompt (default: 4)")
    bp.add_argument("--grid", type=int, default=16, help="--vs-hf: patches per image side (default: 16)")
    bp.add_argument("--text-tokens", type=int, default=50, help="--vs-hf: text tokens (default: 50)")
    bp.add_argument("--new-tokens", type=int, default=40, help="--vs-hf: greedy tokens (default: 40)")
    bp.add_argument("--out", metavar="DIR", help="directory for the results (default: print only)")
    bp.set_defaults(func=cmd_bench_infer)
    p.set_defaults(func=print_help(p))


def parse_batches(text: str) -> tuple[int, ...]:
    """`--batch 1,8,32` -> (1, 8, 32); anything else but positive ints ends the command naming the flag."""
    return parse_ints(text, "--batch", "1,8,32")


def cmd_bench_infer(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = pathlib.Path(args.out) if args.out else None
    if args.runs < 1 or args.samples < 1 or args.warmup < 1:
        raise CLIError(f"--runs, --samples and --warmup must be >= 1, got {args.runs}, {args.samples}, {args.warmup}")
    if args.vs_hf:
        import importlib.util

        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise CLIError(f"--vs-hf needs {' and '.join(missing)}: install the `parity` extra "
                           "(pip install -e '.[parity]')", EXIT_NOT_AVAILABLE)
        from ar1_jax.bench import vs_hf

        vs_hf.run(cfg.model, out, images=args.images, grid=args.grid, text_tokens=args.text_tokens,
                  new_tokens=args.new_tokens, runs=args.runs, name=cfg.name)
        return EXIT_OK
    if not cfg.is_vla:
        raise CLIError(f"config {cfg.name!r} is a plain backbone: `ar1 bench infer` needs an AR1 config (ar1_*), "
                       "or --vs-hf for a backbone against transformers")
    from ar1_jax.bench import infer

    infer.run(cfg, parse_batches(args.batch), out, int8=args.int8, samples=args.samples, runs=args.runs,
              warmup=args.warmup, peak_gbs=args.peak_gbs)
    return EXIT_OK


def parse_layers(text: str) -> tuple[int, ...]:
    """`--layers 2,24` -> (2, 24); anything else but positive ints ends the command naming the flag."""
    return parse_ints(text, "--layers", "2,24")


def parse_ints(text: str, flag: str, example: str) -> tuple[int, ...]:
    """Comma-separated positive ints, else a CLIError naming `flag` with an `example`."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or any(n <= 0 for n in values):
        raise CLIError(f"{flag}: expected comma-separated positive ints like {example}, got {text!r}")
    return values


def _bench_module(name: str):
    """The benchmark module `ar1_jax.bench.<name>` (compile_time or kernels), or NotAvailable."""
    command, arrives = {"compile_time": ("bench compile", "compile_bench"),
                        "kernels": ("bench kernels", "kernels_bench")}[name]
    return import_optional(f"ar1_jax.bench.{name}", command, ARRIVES_WITH[arrives])


def cmd_bench_compile(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    layers = parse_layers(args.layers)
    return _run_compile_bench(_bench_module("compile_time"), cfg, layers, pathlib.Path(args.out))


def _run_compile_bench(compile_time, cfg, layers, out: pathlib.Path) -> int:
    print(f"compile time: config {cfg.name}, layers {','.join(map(str, layers))} -> {out}")
    result = compile_time.run(cfg, layers, out)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    return _run_kernels_bench(_bench_module("kernels"), pathlib.Path(args.out), args.dtype, args.quick)


def _run_kernels_bench(kernels, out: pathlib.Path, dtype: str, quick: bool) -> int:
    print(f"kernels: Pallas vs XLA (and cuDNN on a GPU), dtype {dtype}{', quick' if quick else ''} -> {out}",
          flush=True)
    kernels.run(out, dtype=dtype, quick=quick, passes=None)
    return EXIT_OK


def cmd_bench_all(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    cfg = load_config(args.config, args.overrides)
    layers = parse_layers(args.layers)
    benches = (("compile time", "compile_time", lambda m: _run_compile_bench(m, cfg, layers, out / "compile")),
               ("kernels", "kernels", lambda m: _run_kernels_bench(m, out / "kernels", args.dtype, args.quick)))
    ran = 0
    for i, (title, name, run) in enumerate(benches, start=1):
        print(f"[{i}/{len(benches)}] {title}")
        try:
            module = _bench_module(name)
        except NotAvailable as e:
            print(f"      {title}: not yet available (arrives with {e.arrives_with})")
            continue
        run(module)
        ran += 1
    if not ran:
        print("ar1 bench all: no benchmark is available yet", file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    print(f"done: {ran} benchmark(s), results under {out}")
    return EXIT_OK


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from ar1_jax.train import memory

    recipe = {}
    if args.recipe:
        name = pathlib.Path(args.config).stem
        if name not in memory.RECIPES:
            raise CLIError(f"--recipe: no documented recipe for config {args.config!r} "
                           f"(recipes: {', '.join(memory.RECIPES)})")
        recipe = memory.RECIPES[name]
    overrides = list(recipe.get("overrides", ())) + list(args.overrides or ())
    cfg = load_config(args.config, overrides)
    mesh_text = args.mesh or recipe.get("mesh")
    batch = args.batch or recipe.get("batch")
    if not mesh_text or not batch:
        raise CLIError("give --mesh and --batch (or --recipe for a config in docs/memory.md)")
    if batch < 1 or (args.seq_len is not None and args.seq_len < 1):
        raise CLIError(f"--batch and --seq-len must be positive, got {batch} and {args.seq_len}")
    try:
        shape = memory.parse_mesh(mesh_text)
    except ValueError as e:
        raise CLIError(f"--mesh: {e}") from None
    seq_len = args.seq_len or memory.typical_seq_len(cfg)
    try:
        result, text = memory.report(cfg, shape, batch, seq_len, compile=args.compile)
    except ValueError as e:
        raise CLIError(str(e)) from None
    result.update(overrides=overrides, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    print(f"memory: config {cfg.name}, mesh {mesh_text}, batch {batch}, seq_len {seq_len}")
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out / 'memory.json'}")
    return EXIT_OK
