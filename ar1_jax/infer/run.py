"""AR1 on one scene, as `ar1 infer` runs it, callable from Python.

    record = run_scene(get_config("ar1_tiny"), "random", "out/infer", samples=2, seed=0)

`run_scene` builds the weights (random from the config's seed, or a release-layout checkpoint), the
tokenizer, the scene's inputs, runs the compiled engine (reasoning decode, flow denoise, trajectory),
says each sample's reasoning and a timing breakdown, writes `out/trajectory.json` and a bird's-eye plot
`out/bev.png`, and returns the record written to trajectory.json. Faults of the inputs (config,
checkpoint, tokenizer, scene) raise `InferInputError` naming the thing and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Callable, Sequence

from ar1_jax.config import Config
from ar1_jax.infer import scene as scene_lib

_say = functools.partial(print, flush=True)
TIMING_KEYS = ("vision", "prefill", "decode", "denoise", "trajectory", "total")


class InferInputError(ValueError):
    """A config, checkpoint, tokenizer or scene that inference cannot use; the message names it."""


def load_weights(cfg: Config, checkpoint: str | pathlib.Path | None = None) -> tuple[Config, dict]:
    """(config, pure params) on one device: an `ar1 train` / `ar1 rl` run's (a run directory: its latest
    checkpoint, or one `checkpoints/<step>` directory; with the run's saved config), a release-layout
    AR1 checkpoint's (its own config), or random weights from `cfg.seed` without one."""
    if checkpoint:
        from ar1_jax.train import checkpoint as ckpt_lib

        if not pathlib.Path(checkpoint).exists():
            raise InferInputError(f"--checkpoint {checkpoint}: does not exist")
        if ckpt_lib.run_checkpoint(checkpoint) is not None:
            return _load_run_weights(checkpoint)
        if not ckpt_lib.is_release_checkpoint(checkpoint):
            raise InferInputError(f"--checkpoint {checkpoint}: neither an `ar1 train` / `ar1 rl` run or checkpoint "
                                  "directory nor a release-layout checkpoint (config.json + safetensors)")
        from ar1_jax.convert import hf

        loaded = hf.load(checkpoint)  # bfloat16, as the release runs; its own inference and scene settings
        if not hasattr(loaded, "engine"):
            raise InferInputError(f"{checkpoint} is a plain VLM checkpoint, not an AR1 one")
        return loaded.cfg, loaded.pure_params
    import jax
    from flax import nnx

    from ar1_jax.model.vla import AR1

    return cfg, nnx.to_pure_dict(jax.jit(lambda: nnx.state(AR1(cfg, rngs=nnx.Rngs(cfg.seed)), nnx.Param))())


def _load_run_weights(checkpoint: str | pathlib.Path) -> tuple[Config, dict]:
    import jax

    from ar1_jax.config import ConfigError
    from ar1_jax.errors import CheckpointMismatch
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train.trainer import Trainer

    try:
        run_cfg = ckpt_lib.saved_run_config(checkpoint)
    except (FileNotFoundError, ConfigError, ValueError) as e:
        raise InferInputError(f"--checkpoint {checkpoint}: {e}") from None
    if not run_cfg.is_vla:
        raise InferInputError(f"--checkpoint {checkpoint}: a run of the plain backbone {run_cfg.name!r}, not AR1")
    one = make_mesh(dataclasses.replace(run_cfg.mesh, data=1, fsdp=1, tensor=1), jax.devices()[:1])
    abstract = Trainer(run_cfg, one).abstract_state["params"]
    try:
        params = ckpt_lib.load_params(checkpoint, run_cfg, abstract, what=f"--checkpoint {checkpoint}")
    except CheckpointMismatch as e:
        raise InferInputError(str(e)) from None
    return run_cfg, params


def run_tokenizer_dir(checkpoint: str | pathlib.Path | None) -> pathlib.Path | None:
    """The tokenizer directory of an `ar1 train` / `ar1 rl` run (DIR/tokenizer) for any path
    `load_weights` reads as a run; else `checkpoint` itself (a release checkpoint holds its own)."""
    if not checkpoint:
        return None
    from ar1_jax.train import checkpoint as ckpt_lib

    found = ckpt_lib.run_checkpoint(checkpoint)
    return found[0] / "tokenizer" if found is not None else pathlib.Path(checkpoint)


def load_tokenizer(cfg: Config, directory: str | pathlib.Path | None, cache_dir: str | pathlib.Path):
    """The tokenizer in `directory` (HF tokenizer.json or a sentencepiece .model), else ours, trained
    on the CoC corpus and cached in `cache_dir`; its layout must match `cfg`'s."""
    from ar1_jax.text import layout
    from ar1_jax.text import tokenizer as tok_lib

    has_files = bool(directory) and ((pathlib.Path(directory) / "tokenizer.json").exists()
                                     or any(pathlib.Path(directory).glob("*.model")))
    if directory and (pathlib.Path(directory) / "tokenizer.json").exists():
        tok = tok_lib.HFTokenizerAdapter(directory)
    elif directory and any(pathlib.Path(directory).glob("*.model")):
        tok = tok_lib.Tokenizer.load(directory)
    else:
        from ar1_jax.text import corpus

        base = cfg.tokens.traj_token_offset - len(tok_lib.SPECIAL_TOKENS)
        tok = corpus.default_tokenizer(base, pathlib.Path(cache_dir))
    if not layout.tokenizer_fits(tok, cfg):
        where = (f"{directory} has no tokenizer files (tokenizer.json or a sentencepiece *.model), so ours was "
                 "used; pass --tokenizer DIR with the tokenizer this model was trained with (for the release: "
                 "the checkpoint's Qwen3-VL tokenizer with the trajectory and special tokens added). "
                 if directory and not has_files else "pass --tokenizer DIR with the tokenizer this model was "
                 "trained with. ")
        raise InferInputError(f"{where}Tokenizer layout (vocab {tok.vocab_size}, <i0> at {tok.traj_token_offset}) "
                              f"does not match config {cfg.name!r} (vocab {cfg.model.text.vocab_size}, <i0> at "
                              f"{cfg.tokens.traj_token_offset})")
    return tok


def run_scene(cfg: Config, scene: scene_lib.Scene | str | pathlib.Path, out: str | pathlib.Path, *,
              checkpoint: str | pathlib.Path | None = None, tokenizer: str | pathlib.Path | None = None,
              samples: int | None = None, seed: int = 0, repeat: int = 1, select: str = "consistent",
              overrides: Sequence[str] = (), say: Callable[[str], None] = _say) -> dict:
    """Runs AR1 on `scene` (a Scene, a scene .npz path, or "random") and writes `out`/trajectory.json
    and `out`/bev.png.

    `checkpoint`: a release-layout checkpoint directory (else random weights); `tokenizer`: a tokenizer
    directory (default: the checkpoint's, else ours cached in `out`/tokenizer); `samples`: trajectory
    samples (default: the config's); `overrides`: `--set` strings applied on top of a checkpoint's own
    config (without a checkpoint they are already in `cfg`); `repeat`: runs, the last one's timing is
    kept (the first compiles);
    `select`: which sample to drive (`InferenceResult.choose`: consistent, likely or first).
    Returns {config, scene, seed, v0, timing, select, chosen, samples: [{text, trajectory_xy, controls,
    forced, consistent, reasoning_logp}]}.
    """
    from ar1_jax.eval import viz
    from ar1_jax.infer import engine as engine_lib

    if not cfg.is_vla:
        raise InferInputError(f"config {cfg.name!r} is a plain backbone; `ar1 infer` needs an AR1 config (ar1_*)")
    random = isinstance(scene, str) and scene == "random"
    if not random and not isinstance(scene, scene_lib.Scene):
        scene = _guard(scene_lib.load_scene, scene)  # a bad file fails before the model is built
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"[1/4] model: {cfg.name}" if not checkpoint else f"[1/4] model: {checkpoint}")
    cfg, params = load_weights(cfg, checkpoint)
    if checkpoint:
        if overrides:  # the checkpoint's settings, then the command line's --set on top
            from ar1_jax.config import ConfigError, apply_overrides

            try:
                cfg = apply_overrides(cfg, overrides).validate()
            except (ConfigError, ValueError) as e:
                raise InferInputError(f"--set on {checkpoint}'s config: {e}") from None
        import jax

        dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params)})
        say(f"      config {cfg.name}, {sum(int(x.size) for x in jax.tree.leaves(params)):,} parameters in "
            f"{'/'.join(dtypes)}; {cfg.infer.max_reasoning_tokens} reasoning tokens, {cfg.infer.flow_steps} flow "
            f"steps, {cfg.scene.num_cameras} x {cfg.scene.num_frames} frames of {cfg.scene.image_height}x"
            f"{cfg.scene.image_width}")
    tok = load_tokenizer(cfg, tokenizer or run_tokenizer_dir(checkpoint), out / "tokenizer")
    say("[2/4] scene")
    if random:  # from the checkpoint's config, which may differ from `cfg`
        scene = scene_lib.random_scene(cfg, seed)
    ids, pv, grid, v0 = _guard(scene_lib.scene_inputs, cfg, tok, scene)
    say(f"      {scene.name}: {len(ids)} prompt tokens, {len(grid)} images, v0 {v0:.2f} m/s")
    say("[3/4] inference (compiles on the first call)")
    eng = engine_lib.Engine(cfg, params, tok)
    for i in range(max(1, repeat)):
        result = eng.run(ids, pv, grid, v0=v0, seed=seed, num_samples=samples)
        if repeat > 1:
            say(f"      run {i + 1}/{repeat}: {result.timing['total'] * 1e3:.1f} ms")
    chosen, consistent = result.choose(v0, select, cfg.action.dt)
    chosen, consistent = int(chosen[0]), consistent[0]
    for k, (text, dec) in enumerate(zip(result.text[0], result.decisions[0])):
        forced = " (traj_future_start forced at the token budget)" if result.forced[0, k] else ""
        parsed = (f"{dec.longitudinal}/{dec.lateral}" if dec is not None and dec.ok else "unparseable")
        agree = "consistent" if consistent[k] else "inconsistent"
        say(f"  sample {k}: {text!r} -> {parsed}, {agree}, log-likelihood {result.reasoning_logp[0, k]:.2f}{forced}")
    say(f"      driving sample {chosen} (--select {select}: {int(consistent.sum())} of {len(consistent)} samples "
        "agree with their own reasoning)")
    t = result.timing
    say("      timing: " + ", ".join(f"{k} {t[k] * 1e3:.1f} ms" for k in TIMING_KEYS)
        + f", {t['decode_steps']} tokens at {t['decode_per_token'] * 1e3:.2f} ms/token")
    say("[4/4] writing outputs")
    record = dict(config=cfg.name, scene=scene.name, seed=seed, v0=v0, timing=t, select=select, chosen=chosen,
                  samples=[dict(text=text, trajectory_xy=result.trajectory[0, k].round(4).tolist(),
                                controls=result.controls[0, k].round(5).tolist(), forced=bool(result.forced[0, k]),
                                consistent=bool(consistent[k]),
                                reasoning_logp=round(float(result.reasoning_logp[0, k]), 4))
                           for k, text in enumerate(result.text[0])])
    (out / "trajectory.json").write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    viz.plot_bev(out / "bev.png", result.trajectory[0], scene.history_xyz[:, :2],
                 None if scene.future_xyz is None else scene.future_xyz[:, :2],
                 title=f"{cfg.name} on {scene.name}", labels=[f"{k}: {x}" for k, x in enumerate(result.text[0])])
    say(f"wrote {out / 'trajectory.json'} and {out / 'bev.png'}")
    return record


def _guard(fn, *args):
    """`fn(*args)`, with a scene's OSError or ValueError raised as InferInputError."""
    try:
        return fn(*args)
    except (OSError, ValueError) as e:
        raise InferInputError(str(e)) from e
