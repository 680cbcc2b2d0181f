"""`ar1 <command>`: the one command line of ar1_jax.

Commands: data, train, rl, eval, infer, bench, convert, demo, configs. Heavy modules (jax, the model,
the converters, the benches) are imported inside the handlers, so `ar1 --help` is fast and a command
works while the parts other commands need are still missing.

Exit codes: 0 success; 1 the command ran and failed; 2 bad usage, config or input (the message names
it); 3 the command is not yet available in this version.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_AVAILABLE = 3

# Where each missing piece arrives; one place so that messages stay consistent.
ARRIVES_WITH = {
    "data": "issue 4: synthetic data generator and TFDS pipeline",
    "rl": "a later issue: RL with GRPO",
    "eval": "a later issue: evaluation metrics and closed-loop simulator",
    "infer": "a later issue: compiled inference engine",
    "kernels_bench": "the kernels benchmark, ar1_jax.bench.kernels",
    "compile_bench": "the compile-time benchmark, ar1_jax.bench.compile_time",
    "vlm": "the VLM backbone, ar1_jax.model.vlm",
    "convert": "the HF converter, ar1_jax.convert.hf",
}

# `ar1 bench all` runs the compile-time bench with these unless told otherwise.
BENCH_ALL_CONFIG = "vlm_0p5b"
BENCH_ALL_LAYERS = "2,24"
DEMO_SFT_STEPS = 40


class CLIError(Exception):
    """Ends the command with `error: <message>` on stderr and the given exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class NotAvailable(Exception):
    """Ends the command with `ar1 <cmd>: not yet available (arrives with ...)` and exit code 3."""

    def __init__(self, command: str, arrives_with: str):
        super().__init__(f"ar1 {command}: not yet available (arrives with {arrives_with})")


# ----------------------------------------------------------------------------------------------------
# Helpers.


def _load_config(name: str, overrides: Sequence[str] | None):
    from ar1_jax.config import ConfigError, get_config

    try:
        return get_config(name, list(overrides or ()))
    except ConfigError as e:
        raise CLIError(str(e)) from None


def _import_optional(module: str, command: str, arrives_with: str):
    """Imports `module`; if it (or its package) does not exist yet, raises NotAvailable.

    An ImportError raised from inside an existing module is a real bug and propagates."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        missing_is_ours = e.name in {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        if missing_is_ours:
            raise NotAvailable(command, arrives_with) from None
        raise


def _config_docs() -> dict[str, str]:
    """First paragraph of each named config module's docstring, as one line (read, not imported)."""
    from ar1_jax.config import available_configs
    import ar1_jax.configs as pkg

    root = pathlib.Path(pkg.__file__).parent
    docs = {}
    for name in available_configs():
        try:
            doc = ast.get_docstring(ast.parse((root / f"{name}.py").read_text())) or ""
        except (OSError, SyntaxError) as e:
            doc = f"(unreadable: {e})"
        docs[name] = " ".join(doc.split("\n\n")[0].split())
    return docs


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise CLIError(f"--layers: expected comma-separated positive ints like 2,24, got {text!r}") from None
    if not layers or any(n <= 0 for n in layers):
        raise CLIError(f"--layers: expected comma-separated positive ints like 2,24, got {text!r}")
    return layers


def _count_params(model: Any) -> tuple[int, dict[str, int], list[str]]:
    """(total, per top-level submodule, dtypes) of a model's parameters (nnx module or pytree)."""
    import jax
    from flax import nnx

    if isinstance(model, nnx.Module):
        state = nnx.state(model, nnx.Param)
    elif hasattr(model, "params"):  # a runner holding its parameters (ar1_jax.model.vlm.VLMRunner)
        state = model.params
    else:  # a plain pytree of arrays
        state = model
    total, groups, dtypes = 0, {}, set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        size = int(getattr(leaf, "size", 0))
        if not size:
            continue
        total += size
        head = path[0] if path else None
        key = str(getattr(head, "key", getattr(head, "name", getattr(head, "idx", head))))
        groups[key] = groups.get(key, 0) + size
        if hasattr(leaf, "dtype"):
            dtypes.add(str(leaf.dtype))
    return total, groups, sorted(dtypes)


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _write_json(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


# ----------------------------------------------------------------------------------------------------
# Commands.


def cmd_configs(args: argparse.Namespace) -> int:
    from ar1_jax.config import to_dict

    if args.show:
        cfg = _load_config(args.show, args.overrides)
        print(json.dumps(to_dict(cfg), indent=2))
        return EXIT_OK
    if args.overrides:
        raise CLIError("--set needs --show NAME (it changes the config being shown)")
    docs = _config_docs()
    width = max(map(len, docs), default=0)
    for name, doc in docs.items():
        print(f"{name:<{width}}  {doc}")
    return EXIT_OK


def _not_yet(command: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        if getattr(args, "config", None) is not None:  # a bad config still fails as one
            _load_config(args.config, args.overrides)
        raise NotAvailable(command, ARRIVES_WITH[command])

    return handler


def _stage_docs() -> dict[str, str]:
    from ar1_jax.train.sft import STAGES

    return {k: v.description for k, v in STAGES.items()}


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


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
    from ar1_jax.train import sft

    if not args.config:
        raise CLIError("--config is required (a named config, see `ar1 configs`, or a .py file)")
    overrides = list(args.overrides or ())
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    try:
        cfg = sft.stage_config(args.config, args.stage, overrides)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    if args.stop_after is not None and args.stop_after <= 0:
        raise CLIError(f"--stop-after: expected a positive step count, got {args.stop_after}")
    workdir = pathlib.Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise CLIError(f"--workdir {workdir}: exists and is not a directory")
    workdir.mkdir(parents=True, exist_ok=True)
    if not cfg.data.dataset_dir:  # first, so a rerun compares the config it trained with
        cfg = _synthesise_data(cfg, workdir / "data", args.synth_scenes)
    saved = workdir / "config.json"
    if saved.exists() and lead:
        from ar1_jax.train.checkpoint import config_json

        diff = _config_diff(json.loads(saved.read_text()), json.loads(config_json(cfg)))
        if diff:
            print(f"note: config differs from the run's saved {saved} in: {'; '.join(diff)}", file=sys.stderr)
    return _run_training(cfg, workdir, args, mode)


def _synthesise_data(cfg, out: pathlib.Path, num_scenes: int):
    import dataclasses

    import jax

    if not (out / "dataset_info.json").exists():
        if jax.process_count() > 1:
            raise CLIError("data.dataset_dir is not set: in a multi-process run, write the dataset first "
                           "(`ar1 data synth --out DIR`) and pass --set data.dataset_dir=DIR")
        if num_scenes <= 0:
            raise CLIError(f"--synth-scenes: expected a positive count, got {num_scenes}")
        print(f"data.dataset_dir is not set: writing {num_scenes} synthetic scenes to {out} "
              f"(`ar1 data synth`)", flush=True)
        code = _write_synth(cfg, out, num_scenes, cfg.seed, 0.1, False)
        if code:
            raise CLIError(f"writing synthetic data to {out} failed", EXIT_FAILED)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(out)))


def _run_training(cfg, workdir: pathlib.Path, args: argparse.Namespace, mode: str) -> int:
    import jax

    from ar1_jax.config import ConfigError
    from ar1_jax.data.pipeline import BadRecordError
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train import loop

    lead = jax.process_index() == 0
    if lead:
        m = cfg.mesh
        print(f"ar1 train: config {cfg.name}{f' stage {cfg.train.stage}' if cfg.train.stage else ''}, "
              f"{jax.process_count()} process(es) ({mode}), {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} ({m.rules}), global batch "
              f"{cfg.data.batch_size} x {cfg.train.grad_accum} micro-batches, {cfg.train.steps} steps -> {workdir}",
              flush=True)
    try:
        result = loop.run(cfg, workdir, progress=not args.no_progress, max_steps=args.stop_after)
    except (ConfigError, ValueError) as e:
        if isinstance(e, (BadRecordError, ckpt_lib.CheckpointMismatch)):
            raise CLIError(str(e), EXIT_USAGE) from None
        raise CLIError(str(e)) from None
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    except loop.TrainingDiverged as e:
        raise CLIError(f"training diverged: {e}", EXIT_FAILED) from None
    if lead:
        last = result.last_metrics
        loss = f", loss {last['loss']:.4f}" if "loss" in last else ""
        print(f"{result.reason} at step {result.step}{loss}; latest checkpoint: step {result.checkpoint_step} in "
              f"{workdir / 'checkpoints'}; metrics: {workdir / 'metrics.jsonl'}")
        if result.reason in ("preempted", "interrupted", "stopped"):
            print("rerun the same command to continue", flush=True)
    return 128 + 15 if result.reason == "preempted" else (130 if result.reason == "interrupted" else EXIT_OK)


def cmd_data_synth(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, args.overrides)
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
    return _write_synth(cfg, out, args.num_scenes, args.seed, args.test_fraction, args.overwrite)


def _write_synth(cfg, out: pathlib.Path, num_scenes: int, seed: int, test_fraction: float, overwrite: bool) -> int:
    from ar1_jax.data import tfds_builder

    name, generate = tfds_builder.record_source(cfg)
    if generate is tfds_builder.random_records:
        print("warning: ar1_jax.data.synthetic.generate_records is not available; writing random_records "
              "(random frames, plausible motion: exercises the pipeline, teaches no driving)", file=sys.stderr)
    s = cfg.scene
    print(f"{num_scenes} scenes from {name} (seed {seed}, config {cfg.name}: {s.num_cameras} cameras x "
          f"{s.num_frames} frames of {s.image_height}x{s.image_width}) -> {out}", flush=True)
    t0 = time.perf_counter()
    try:
        tfds_builder.write_dataset(out, generate(num_scenes, seed, cfg), num_scenes,
                                   test_fraction=test_fraction, overwrite=overwrite,
                                   metadata=dict(generator=name, seed=seed, config=cfg.name,
                                                 num_cameras=s.num_cameras, num_frames=s.num_frames,
                                                 image_height=s.image_height, image_width=s.image_width))
    except tfds_builder.RecordError as e:
        raise CLIError(f"the generator produced a bad record: {e}", EXIT_FAILED) from None
    info = json.loads((out / "metadata.json").read_text())
    counts = info.get("split_counts", {})
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out}: {', '.join(f'{k} {v}' for k, v in counts.items())} scenes, {size / 2**20:.1f} MiB "
          f"in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def cmd_data_pai(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, args.overrides)
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


def cmd_infer(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, args.overrides)
    if not cfg.is_vla:
        raise CLIError(f"config {cfg.name!r} is a plain backbone; `ar1 infer` needs an AR1 config (ar1_*)")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ar1_jax.eval import viz
    from ar1_jax.infer import engine as engine_lib
    from ar1_jax.infer import scene as scene_lib

    print(f"[1/4] model: {cfg.name}", flush=True)
    if args.checkpoint:
        from ar1_jax.convert import hf

        loaded = hf.load(_existing_dir(args.checkpoint, "--checkpoint"), dtype=cfg.model.dtype)
        if not hasattr(loaded, "engine"):
            raise CLIError(f"{args.checkpoint} is a plain VLM checkpoint, not an AR1 one")
        cfg, params = loaded.cfg, loaded.pure_params
    else:
        import jax
        from flax import nnx

        from ar1_jax.model.vla import AR1

        params = nnx.to_pure_dict(jax.jit(lambda: nnx.state(AR1(cfg, rngs=nnx.Rngs(cfg.seed)), nnx.Param))())
    tokenizer = _infer_tokenizer(args, cfg, out)
    print("[2/4] scene", flush=True)
    try:
        scene = (scene_lib.random_scene(cfg, args.seed) if args.scene == "random"
                 else scene_lib.load_scene(args.scene))
        ids, pv, grid, v0 = scene_lib.scene_inputs(cfg, tokenizer, scene)
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from e
    print(f"      {scene.name}: {len(ids)} prompt tokens, {len(grid)} images, v0 {v0:.2f} m/s", flush=True)
    print("[3/4] inference (compiles on the first call)", flush=True)
    eng = engine_lib.Engine(cfg, params, tokenizer)
    for i in range(max(1, args.repeat)):
        result = eng.run(ids, pv, grid, v0=v0, seed=args.seed, num_samples=args.samples)
        if args.repeat > 1:
            print(f"      run {i + 1}/{args.repeat}: {result.timing['total'] * 1e3:.1f} ms", flush=True)
    for k, (text, dec) in enumerate(zip(result.text[0], result.decisions[0])):
        forced = " (traj_future_start forced at the token budget)" if result.forced[0, k] else ""
        parsed = (f"{dec.longitudinal}/{dec.lateral}" if dec is not None and dec.ok else "unparseable")
        print(f"  sample {k}: {text!r} -> {parsed}{forced}")
    t = result.timing
    print("      timing: " + ", ".join(f"{k} {t[k] * 1e3:.1f} ms" for k in ("vision", "prefill", "decode", "denoise",
                                                                               "trajectory", "total"))
          + f", {t['decode_steps']} tokens at {t['decode_per_token'] * 1e3:.2f} ms/token")
    print("[4/4] writing outputs", flush=True)
    record = dict(config=cfg.name, scene=scene.name, seed=args.seed, v0=v0, timing=t,
                  samples=[dict(text=text, trajectory_xy=result.trajectory[0, k].round(4).tolist(),
                                controls=result.controls[0, k].round(5).tolist(), forced=bool(result.forced[0, k]))
                           for k, text in enumerate(result.text[0])])
    _write_json(out / "trajectory.json", record)
    viz.plot_bev(out / "bev.png", result.trajectory[0], scene.history_xyz[:, :2],
                 None if scene.future_xyz is None else scene.future_xyz[:, :2],
                 title=f"{cfg.name} on {scene.name}", labels=[f"{k}: {x}" for k, x in enumerate(result.text[0])])
    print(f"wrote {out / 'trajectory.json'} and {out / 'bev.png'}")
    return EXIT_OK


def _infer_tokenizer(args: argparse.Namespace, cfg, out: pathlib.Path):
    from ar1_jax.text import tokenizer as tok_lib

    directory = args.tokenizer or args.checkpoint
    if directory and (pathlib.Path(directory) / "tokenizer.json").exists():
        tok = tok_lib.HFTokenizerAdapter(directory)
    elif directory and any(pathlib.Path(directory).glob("*.model")):
        tok = tok_lib.Tokenizer.load(directory)
    else:
        from ar1_jax.text import corpus

        base = cfg.tokens.traj_token_offset - len(tok_lib.SPECIAL_TOKENS)
        tok = corpus.default_tokenizer(base, out / "tokenizer")
    if tok.traj_token_offset != cfg.tokens.traj_token_offset or tok.vocab_size != cfg.model.text.vocab_size:
        raise CLIError(f"tokenizer layout (vocab {tok.vocab_size}, <i0> at {tok.traj_token_offset}) does not match "
                       f"config {cfg.name!r} (vocab {cfg.model.text.vocab_size}, <i0> at {cfg.tokens.traj_token_offset})")
    return tok


def cmd_convert_check(args: argparse.Namespace) -> int:
    hf_dir = _existing_dir(args.hf_dir, "--hf-dir")
    model, seconds = _hf_load(hf_dir, args.dtype, "convert check")
    total, groups, dtypes = _count_params(model)
    print(f"checkpoint:  {hf_dir}")
    print(f"family:      {_family(model, hf_dir)}")
    print(f"parameters:  {total:,} ({_human(total)})")
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
            print(f"  {key:<{gw}}  {n:>15,}  ({_human(n)})")
    return EXIT_OK


def cmd_convert_export(args: argparse.Namespace) -> int:
    hf_dir = _existing_dir(args.hf_dir, "--hf-dir")
    out = pathlib.Path(args.out)
    model, seconds = _hf_load(hf_dir, args.dtype, "convert export")
    print(f"loaded {hf_dir} in {seconds:.1f} s")
    hf = _import_optional("ar1_jax.convert.hf", "convert export", ARRIVES_WITH["convert"])
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


def _existing_dir(path: str, flag: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_dir():
        raise CLIError(f"{flag} {p}: no such directory")
    return p


def _hf_load(hf_dir: pathlib.Path, dtype: str, command: str):
    hf = _import_optional("ar1_jax.convert.hf", command, ARRIVES_WITH["convert"])
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


def cmd_bench_compile(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, args.overrides)
    layers = _parse_layers(args.layers)
    compile_time = _import_optional("ar1_jax.bench.compile_time", "bench compile", ARRIVES_WITH["compile_bench"])
    return _run_compile_bench(compile_time, cfg, layers, pathlib.Path(args.out))


def _run_compile_bench(compile_time, cfg, layers, out: pathlib.Path) -> int:
    print(f"compile time: config {cfg.name}, layers {','.join(map(str, layers))} -> {out}")
    result = compile_time.run(cfg, layers, out)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    kernels = _import_optional("ar1_jax.bench.kernels", "bench kernels", ARRIVES_WITH["kernels_bench"])
    return _run_kernels_bench(kernels, pathlib.Path(args.out), args.dtype, args.quick)


def _run_kernels_bench(kernels, out: pathlib.Path, dtype: str, quick: bool, passes=None) -> int:
    print(f"kernels: Pallas vs XLA (and cuDNN on a GPU), dtype {dtype}{', quick' if quick else ''} -> {out}",
          flush=True)
    kernels.run(out, dtype=dtype, quick=quick, passes=passes)
    return EXIT_OK


def cmd_bench_all(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    cfg = _load_config(args.config, args.overrides)
    layers = _parse_layers(args.layers)
    ran = 0
    print("[1/2] compile time")
    try:
        compile_time = _import_optional("ar1_jax.bench.compile_time", "bench compile",
                                        ARRIVES_WITH["compile_bench"])
    except NotAvailable:
        print(f"      compile time: not yet available (arrives with {ARRIVES_WITH['compile_bench']})")
    else:
        _run_compile_bench(compile_time, cfg, layers, out / "compile")
        ran += 1
    print("[2/2] kernels")
    try:
        kernels = _import_optional("ar1_jax.bench.kernels", "bench kernels", ARRIVES_WITH["kernels_bench"])
    except NotAvailable:
        print(f"      kernels: not yet available (arrives with {ARRIVES_WITH['kernels_bench']})")
    else:
        _run_kernels_bench(kernels, out / "kernels", args.dtype, args.quick)
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
    cfg = _load_config(args.config, overrides)
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


def cmd_demo(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    stages = 7
    metrics: dict[str, Any] = {"stages": {}}

    print(f"[1/{stages}] VLM backbone: build the model and run one forward on random text + one image")
    cfg = _load_config(args.config, args.overrides)
    seed = cfg.seed if args.seed is None else args.seed
    print(f"      config {cfg.name} ({cfg.model.family}): decoder {cfg.model.text.num_layers} layers x "
          f"{cfg.model.text.hidden_size}, vision {cfg.model.vision.depth} blocks x {cfg.model.vision.hidden_size}")
    try:
        backbone = _demo_backbone(cfg, seed)
    except NotAvailable as e:
        print(f"      {e}")
        metrics["stages"]["backbone"] = "not yet available"
        backbone = None
    else:
        metrics.update(backbone)
        metrics["stages"]["backbone"] = "ok"

    print(f"[2/{stages}] AR1 inference (ar1_tiny, random weights, random scene): reasoning decode, "
          "flow denoise, trajectory")
    infer_args = argparse.Namespace(config="ar1_tiny", overrides=None, scene="random", checkpoint=None,
                                    tokenizer=None, out=str(out / "infer"), samples=2, seed=seed, repeat=2)
    cmd_infer(infer_args)
    record = json.loads((out / "infer" / "trajectory.json").read_text())
    metrics["infer"] = {"timing": record["timing"], "num_samples": len(record["samples"])}
    metrics["stages"]["infer"] = "ok"

    print(f"[3/{stages}] synthetic data: 32 long-tail scenes -> TFDS (array_record)")
    import numpy as np

    from ar1_jax.config import get_config as _get_config
    from ar1_jax.data import synthetic, tfds_builder

    data_cfg = _get_config("ar1_tiny")
    t0 = time.perf_counter()
    records = list(synthetic.generate_records(32, seed, data_cfg))
    tfds_builder.write_dataset(out / "data", iter(records), len(records), overwrite=True, progress=False)
    families = sorted({str(r["family"]) for r in records})
    cv_ade = float(np.mean([synthetic.constant_velocity_ade(r["future_xyz"], float(r["v0"])) for r in records]))
    print(f"      wrote {out / 'data'} in {time.perf_counter() - t0:.1f} s: {len(families)} families "
          f"({', '.join(families)}); constant-velocity baseline ADE {cv_ade:.2f} m")
    metrics["data"] = {"num_scenes": 32, "families": families, "cv_ade_m": round(cv_ade, 3)}
    metrics["stages"]["data"] = "ok"

    print(f"[4/{stages}] SFT: ar1_tiny on those scenes, {DEMO_SFT_STEPS} steps (`ar1 train`), metrics and a loss plot")
    metrics["sft"] = _demo_sft(out, seed)
    metrics["stages"]["sft"] = "ok"

    later = [
        ("rl", "RL", ARRIVES_WITH["rl"]),
        ("eval", "eval", ARRIVES_WITH["eval"]),
    ]
    for i, (key, title, arrives) in enumerate(later, start=5):
        print(f"[{i}/{stages}] {title}: not yet available (arrives with {arrives})")
        metrics["stages"][key] = "not yet available"

    print(f"[{stages}/{stages}] kernels benchmark: quick forward-only smoke run (Pallas vs XLA); meaningful numbers "
          "need a GPU or TPU: `ar1 bench kernels --out DIR`")
    try:
        kernels = _import_optional("ar1_jax.bench.kernels", "bench kernels", ARRIVES_WITH["kernels_bench"])
    except NotAvailable as e:
        print(f"      {e}")
        metrics["stages"]["bench"] = "not yet available"
    else:
        t0 = time.perf_counter()
        _run_kernels_bench(kernels, out / "bench", "float32", quick=True, passes=("fwd",))
        metrics["stages"]["bench"] = "ok"
        metrics["bench"] = {"kernels_json": str(out / "bench" / "kernels.json"),
                            "seconds": round(time.perf_counter() - t0, 2)}

    path = out / "demo_metrics.json"
    _write_json(path, metrics)
    print(f"wrote {path}")
    if backbone is None:
        return EXIT_NOT_AVAILABLE
    return EXIT_OK


def _demo_sft(out: pathlib.Path, seed: int) -> dict[str, Any]:
    """Trains ar1_tiny for DEMO_SFT_STEPS steps on the demo's scenes; returns the loss summary."""
    from ar1_jax.config import get_config
    from ar1_jax.eval import viz
    from ar1_jax.train import loop

    workdir = out / "sft"
    cfg = get_config("ar1_tiny", [f"data.dataset_dir={out / 'data'}", f"train.steps={DEMO_SFT_STEPS}",
                                  "train.checkpoint_every=1000", f"seed={seed}"])
    t0 = time.perf_counter()
    result = loop.run(cfg, workdir, progress=sys.stderr.isatty())
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    viz.plot_training_curves(workdir / "loss.png", rows, title=f"SFT of {cfg.name} on 32 synthetic scenes")
    first, last = rows[0], rows[-1]
    print(f"      loss {first['loss']:.2f} -> {last['loss']:.2f} (reasoning CE {first['ce_reasoning']:.2f} -> "
          f"{last['ce_reasoning']:.2f}, trajectory-token CE {first['ce_trajectory']:.2f} -> "
          f"{last['ce_trajectory']:.2f}, flow {first['flow']:.2f} -> {last['flow']:.2f}) in "
          f"{time.perf_counter() - t0:.0f} s; {workdir / 'loss.png'}, checkpoint step {result.checkpoint_step}")
    return {"steps": result.step, "first_loss": first["loss"], "last_loss": last["loss"],
            "checkpoint_step": result.checkpoint_step, "seconds": round(time.perf_counter() - t0, 1),
            "plot": str(workdir / "loss.png")}


def _demo_backbone(cfg, seed: int) -> dict[str, Any]:
    """Builds the backbone, runs one forward on random inputs and returns the metrics to record."""
    vlm = _import_optional("ar1_jax.model.vlm", "demo", ARRIVES_WITH["vlm"])
    import jax
    import jax.numpy as jnp
    import numpy as np

    m = cfg.model
    mesh = None
    if jax.device_count() > 1:  # e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8
        from ar1_jax.parallel.mesh import make_mesh

        try:
            mesh = make_mesh(cfg.mesh)
        except ValueError as e:
            raise CLIError(f"config field `mesh`: {e}") from None
        print(f"      mesh {dict(mesh.shape)} over {jax.device_count()} devices, rules {cfg.mesh.rules!r}")
    t0 = time.perf_counter()
    if mesh is None:
        model = vlm.build_model(m, seed)
    else:
        model = vlm.build_model(m, seed, mesh=mesh, rules=cfg.mesh.rules)
    build_s = time.perf_counter() - t0
    total, _, _ = _count_params(model)
    print(f"      built in {build_s:.2f} s: {total:,} parameters ({_human(total)})")

    # One image of 2 x 2 merged tokens: grid [1, 2*merge, 2*merge] patches (56 x 56 pixels at patch 14).
    merge = m.vision.spatial_merge_size
    grid = (1, 2 * merge, 2 * merge)
    side = grid[1] * m.vision.patch_size
    num_patches = grid[0] * grid[1] * grid[2]
    num_image_tokens = num_patches // merge**2
    rng = np.random.default_rng(seed)
    text_high = min(400, m.text.vocab_size)
    before = rng.integers(0, text_high, size=6)
    after = rng.integers(0, text_high, size=10)
    ids = np.concatenate([before, [m.vision_start_token_id], [m.image_token_id] * num_image_tokens,
                          [m.vision_end_token_id], after])
    input_ids = jnp.asarray(ids[None, :], dtype=jnp.int32)
    pixel_values = jnp.asarray(rng.standard_normal((num_patches, m.vision.patch_dim)), dtype=jnp.float32)
    image_grid_thw = np.asarray([grid], dtype=np.int32)
    print(f"      inputs: {input_ids.shape[1]} tokens, one {side}x{side} image -> grid {list(grid)} -> "
          f"{num_image_tokens} image tokens, pixel_values {tuple(pixel_values.shape)}")

    def forward():
        t0 = time.perf_counter()
        out = jax.block_until_ready(model(input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw))
        return out, time.perf_counter() - t0

    logits, first_s = forward()  # includes tracing and compilation
    logits, forward_s = forward()
    expected = (1, input_ids.shape[1], m.text.vocab_size)
    if tuple(logits.shape) != expected:
        raise CLIError(f"demo: logits shape {tuple(logits.shape)}, expected {expected}", EXIT_FAILED)
    finite = bool(jnp.all(jnp.isfinite(logits)))
    if not finite:
        raise CLIError("demo: the forward produced non-finite logits", EXIT_FAILED)
    print(f"      logits {tuple(logits.shape)} {logits.dtype}: first call {first_s:.2f} s (includes compile), "
          f"second call {forward_s * 1e3:.1f} ms")
    return {
        "config": cfg.name,
        "family": m.family,
        "seed": seed,
        "num_params": total,
        "input_ids_shape": list(input_ids.shape),
        "pixel_values_shape": list(pixel_values.shape),
        "image_grid_thw": [list(grid)],
        "logits_shape": list(logits.shape),
        "logits_dtype": str(logits.dtype),
        "logits_finite": finite,
        "build_seconds": round(build_s, 4),
        "first_forward_seconds": round(first_s, 4),
        "forward_seconds": round(forward_s, 4),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "mesh": dict(mesh.shape) if mesh is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------------------------------
# Parser.


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, metavar="NAME_OR_PATH",
                   help="a named config (see `ar1 configs`) or a .py file defining get_config()"
                        + (f" (default: {default})" if default else ""))
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="override one config field by its dotted path, e.g. model.text.num_layers=4 "
                        "(repeatable)")


def _sub(subparsers, name: str, summary: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=summary, description=f"{summary}\n\n{description}".strip(),
                                 epilog=epilog or None, formatter_class=_Formatter)


def build_parser() -> argparse.ArgumentParser:
    from ar1_jax import __version__

    parser = argparse.ArgumentParser(
        prog="ar1",
        formatter_class=_Formatter,
        description="Alpamayo-R1 (a reasoning vision-language-action model for driving) in JAX/Flax.",
        epilog="Run `ar1 <command> --help` for a command's options.\n"
               "Exit codes: 0 ok, 1 failed, 2 bad usage/config/input, 3 not yet available.",
    )
    parser.add_argument("--version", action="version", version=f"ar1_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")

    p = _sub(sub, "data", "Generate synthetic driving scenes and build TFDS datasets.",
             "Renders long-tail scenarios (camera frames, ego history, future trajectory, a\n"
             "Chain-of-Causation trace) into a TFDS directory that the training pipeline reads\n"
             "(set data.dataset_dir to it).")
    dsub = p.add_subparsers(dest="data_command", metavar="<action>", title="actions")
    dp = _sub(dsub, "synth", "Write N synthetic scenes as a TFDS dataset directory (train/test splits).",
              "Scenes come from ar1_jax.data.synthetic.generate_records when that module is present,\n"
              "else from ar1_jax.data.tfds_builder.random_records (random frames, a plausible motion;\n"
              "a warning says so). Camera count, frames and image size follow the config's `scene`.\n"
              "DIR becomes the dataset directory itself (dataset_info.json, array_record files):\n"
              "tfds.builder_from_directory(DIR).as_data_source('train') reads it, no tensorflow needed.\n"
              "About 10% of the scenes (by a hash of the scene id) go to the test split.",
              epilog="example: ar1 data synth --out data/synth --num-scenes 256 --seed 0")
    _add_config_args(dp, default="ar1_tiny")
    dp.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    dp.add_argument("--num-scenes", type=int, default=256, metavar="N", help="scenes to write (default: 256)")
    dp.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    dp.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                    help="share of scenes in the test split (default: 0.1)")
    dp.add_argument("--overwrite", action="store_true", help="replace a dataset already in DIR")
    dp.set_defaults(func=cmd_data_synth)
    dp = _sub(dsub, "pai", "Convert PhysicalAI-Autonomous-Vehicles clips (frames layout) to a TFDS directory.",
              "Each CLIP_DIR is one unpacked clip: camera/<cam>/<id>.<cam>.timestamps.parquet with the\n"
              "frames extracted to <id>.<cam>.frames/NNNNNN.jpg, and labels/egomotion/<id>.egomotion.parquet\n"
              "(MP4 is not decoded here). The release's 4 cameras, 4 frames at t0-0.3..t0, 16 history and 64\n"
              "future poses in the t0 frame; see ar1_jax/data/pai.py.",
              epilog="example: ar1 data pai --out data/pai clips/0a1b... --stride 1.0")
    _add_config_args(dp, default="ar1_tiny")
    dp.add_argument("clip_dirs", nargs="+", metavar="CLIP_DIR", help="unpacked clip folders")
    dp.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    dp.add_argument("--stride", type=float, default=1.0, metavar="S", help="seconds between t0s (default: 1.0)")
    dp.add_argument("--t0-us", type=int, action="append", default=None, metavar="US",
                    help="explicit t0 (microseconds), repeatable; e.g. 5100000, the release's default")
    dp.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                    help="share of scenes in the test split (default: 0.1)")
    dp.add_argument("--overwrite", action="store_true", help="replace a dataset already in DIR")
    dp.set_defaults(func=cmd_data_pai)
    p.set_defaults(func=_print_help(p))

    p = _sub(sub, "train", "Supervised fine-tuning (SFT) of AR1, from one CPU to a pod.",
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
    _add_config_args(p)
    p.add_argument("--workdir", required=True, metavar="DIR", help="run directory (checkpoints, metrics); "
                   "rerun to resume")
    p.add_argument("--stage", metavar="STAGE", help="SFT stage preset applied before --set: "
                   + ", ".join(_stage_docs()))
    p.add_argument("--init-from", metavar="PATH", help="start from these weights (fresh optimizer): an `ar1 train` "
                   "run dir or checkpoint step dir, or a release-layout AR1 checkpoint; ignored when DIR already "
                   "has a checkpoint (same as --set train.init_from=PATH)")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after N steps of this "
                   "invocation, e.g. to fit a job's time limit; rerun to continue")
    p.add_argument("--synth-scenes", type=int, default=256, metavar="N",
                   help="scenes to synthesise into DIR/data when data.dataset_dir is empty (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still logged)")
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "rl", "Reinforcement learning (GRPO) after SFT.",
             "Samples groups of reasoning traces and trajectories, scores them (reasoning quality,\n"
             "reasoning-action consistency, trajectory quality) and applies GRPO updates.\n"
             f"Not yet available: arrives with {ARRIVES_WITH['rl']}.")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory")
    p.set_defaults(func=_not_yet("rl"))

    p = _sub(sub, "eval", "Evaluate a checkpoint open loop (minADE) and closed loop.",
             "Open-loop trajectory metrics, reasoning metrics and a closed-loop kinematic simulator,\n"
             "with plots.\n"
             f"Not yet available: arrives with {ARRIVES_WITH['eval']}.")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="where to write metrics and plots")
    p.set_defaults(func=_not_yet("eval"))

    p = _sub(sub, "infer", "Run AR1 on a scene: reasoning text and a trajectory.",
             "Compiled vision + prefill, reasoning decode (trajectory tokens masked) until\n"
             "<|traj_future_start|>, then flow-matching denoising of the action expert over the cached\n"
             "prefix, then unicycle integration into a 6.4 s trajectory. Prints each sample's\n"
             "reasoning, its parsed decisions and a timing breakdown; writes DIR/trajectory.json and a\n"
             "bird's-eye plot DIR/bev.png. Deterministic for a given --seed.\n\n"
             "--scene takes a scene .npz (images [cameras, frames, H, W, 3] uint8, history_xyz [16, 3]\n"
             "metres in the t0 ego frame, optional future_xyz [64, 3]) or `random` (random frames: a\n"
             "smoke test). Without --checkpoint the weights are random (config seed); with one, a\n"
             "release-layout Alpamayo-R1 checkpoint directory is loaded.",
             epilog="example: ar1 infer --config ar1_tiny --scene random --out out/infer --samples 2")
    _add_config_args(p, default="ar1_tiny")
    p.add_argument("--scene", required=True, metavar="PATH|random", help="scene .npz, or `random`")
    p.add_argument("--checkpoint", metavar="DIR", help="release-layout checkpoint directory (config.json + safetensors)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the checkpoint's, or one "
                                                      "trained on the CoC corpus and cached under --out)")
    p.add_argument("--out", default="out/infer", metavar="DIR", help="where to write trajectory.json and bev.png")
    p.add_argument("--samples", type=int, default=None, metavar="K", help="trajectory samples (default: config)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (reasoning and flow noise)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run N times and report the last run's timing (the first includes compilation)")
    p.set_defaults(func=cmd_infer)

    # bench
    p = _sub(sub, "bench", "Benchmarks: compile time and attention kernels.",
             "`ar1 bench compile` measures jit compile time of the backbone at several depths\n"
             "(with scanned layers it should not grow with depth); `ar1 bench kernels` times the\n"
             "Pallas attention kernels against XLA and cuDNN; `ar1 bench all` runs every benchmark\n"
             "available in this version. Record results in docs/benchmarks.md.")
    bsub = p.add_subparsers(dest="bench_command", metavar="<bench>", title="benchmarks")
    bp = _sub(bsub, "compile", "Measure compile time of the backbone at several depths.",
              "Builds the config with each `--layers` value as the decoder depth and times\n"
              "lowering + compiling the forward; writes the results under --out.",
              epilog="example: ar1 bench compile --config vlm_0p5b --layers 2,24 --out out/bench/compile")
    _add_config_args(bp, default="tiny")
    bp.add_argument("--layers", default=BENCH_ALL_LAYERS, metavar="N,M,...",
                    help=f"decoder depths to compile (default: {BENCH_ALL_LAYERS})")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for the results")
    bp.set_defaults(func=cmd_bench_compile)
    bp = _sub(bsub, "kernels", "Time the Pallas attention kernels against XLA and cuDNN.",
              "flash_attention (prefill, forward and forward+backward), decode_attention (one token\n"
              "over a KV cache) and denoise_attention (the action expert's 64 queries over the VLM\n"
              "prefix plus their own keys) against the model's XLA attention and, on a GPU, cuDNN,\n"
              "over a table of 0.5B and 10B shapes. Prints ms, TFLOP/s, GB/s and the speedups;\n"
              "writes DIR/kernels.json. Without a GPU or TPU it runs a tiny smoke version in Pallas\n"
              "interpret mode whose times are NOT meaningful (labelled so).",
              epilog="example: ar1 bench kernels --out out/bench/kernels --dtype bfloat16")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for kernels.json")
    bp.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                    help="input dtype (default: bfloat16)")
    bp.add_argument("--quick", action="store_true",
                    help="tiny shapes and one kernel backend: checks the code paths in seconds")
    bp.set_defaults(func=cmd_bench_kernels)
    bp = _sub(bsub, "all", "Run every benchmark available in this version.",
              f"Compile time (config {BENCH_ALL_CONFIG!r} and layers {BENCH_ALL_LAYERS} unless told otherwise)\n"
              "into DIR/compile and the attention kernels into DIR/kernels. Exits 3 if no\n"
              "benchmark is available yet.")
    _add_config_args(bp, default=BENCH_ALL_CONFIG)
    bp.add_argument("--layers", default=BENCH_ALL_LAYERS, metavar="N,M,...",
                    help=f"decoder depths for the compile-time bench (default: {BENCH_ALL_LAYERS})")
    bp.add_argument("--out", required=True, metavar="DIR", help="directory for the results")
    bp.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                    help="input dtype of the kernels bench (default: bfloat16)")
    bp.add_argument("--quick", action="store_true", help="the kernels bench's tiny shapes only")
    bp.set_defaults(func=cmd_bench_all)
    bp = _sub(bsub, "memory", "Per-device memory of one SFT train step: analytic, and compiled with --compile.",
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
    _add_config_args(bp, default="ar1_0p5b")
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
    p.set_defaults(func=_print_help(p))

    # convert
    p = _sub(sub, "convert", "Load Hugging Face checkpoints (Qwen2.5-VL, Qwen3-VL) and write them back.",
             "Reads a transformers checkpoint directory (config.json + *.safetensors) into the JAX\n"
             "model with ar1_jax.convert.hf.load, and writes a model back in the same layout with\n"
             "ar1_jax.convert.hf.export.")
    csub = p.add_subparsers(dest="convert_command", metavar="<action>", title="actions")
    cp = _sub(csub, "check", "Load a checkpoint and print its family, parameter count and a summary.",
              "Loads every tensor into the JAX model (so it also checks that the checkpoint is\n"
              "complete and its shapes match the config).",
              epilog="example: ar1 convert check --hf-dir ~/models/Qwen2.5-VL-3B-Instruct")
    cp.add_argument("--hf-dir", required=True, metavar="DIR", help="HF checkpoint directory")
    cp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="parameter dtype to load as (default: float32)")
    cp.set_defaults(func=cmd_convert_check)
    cp = _sub(csub, "export", "Load a checkpoint and export it to a new HF-layout directory.",
              "Loads --hf-dir into the JAX model, then writes it with ar1_jax.convert.hf.export to\n"
              "--out (config.json + safetensors that transformers can load).",
              epilog="example: ar1 convert export --hf-dir ckpt/ --out out/exported")
    cp.add_argument("--hf-dir", required=True, metavar="DIR", help="HF checkpoint directory")
    cp.add_argument("--out", required=True, metavar="DIR", help="output directory")
    cp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="parameter dtype to load as (default: float32)")
    cp.set_defaults(func=cmd_convert_export)
    p.set_defaults(func=_print_help(p))

    # demo
    p = _sub(sub, "demo", "The tiny end-to-end pipeline on CPU, in seconds.",
             "Loads the `tiny` config, builds the VLM backbone, runs one forward on random text and\n"
             "one random 56x56 image, runs AR1 inference on a random scene and a quick smoke run of\n"
             "the kernels benchmark, and writes DIR/demo_metrics.json. The later stages (synthetic\n"
             "data, SFT, RL, eval) report whether they are available yet.",
             epilog="example: ar1 demo --out out/demo")
    _add_config_args(p, default="tiny")
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output directory (default: out/demo)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    p.set_defaults(func=cmd_demo)

    # configs
    p = _sub(sub, "configs", "List the named configs, or print one as JSON.",
             "Without options: one line per config in configs/. With --show NAME: the full config\n"
             "(after any --set overrides) as JSON.",
             epilog="example: ar1 configs --show tiny --set model.text.num_layers=4")
    p.add_argument("--show", metavar="NAME_OR_PATH", help="print this config as JSON")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="override a field of the shown config (repeatable)")
    p.set_defaults(func=cmd_configs)

    parser.set_defaults(func=_print_help(parser))
    return parser


def _print_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NotAvailable as e:
        print(e, file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
