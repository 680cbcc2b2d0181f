"""Our Qwen2.5-VL against transformers on the same safetensors, side by side in one run.

    result = run(get_config("vlm_0p5b").model, out_dir, images=4, grid=16, text_tokens=50, new_tokens=40)

Builds a transformers `Qwen2_5_VLForConditionalGeneration` (or Qwen3-VL) of the config's shape with
random weights scaled for O(1) logits (so greedy top-1 margins are wide and the two sides can agree
token for token), saves it with `save_pretrained`, loads the same safetensors with `hf.load`, and
times on the same prompt (`images` images of `grid x grid` patches and about `text_tokens` text ids):

  * prefill: transformers' forward with `logits_to_keep=1` (what `generate` runs first) against our
    compiled vision + prefill (the prompt into a KV cache, last position's logits);
  * decode: transformers' `generate(max_new_tokens=N, greedy)` minus its prefill, per step, against
    our compiled decode loop (`sampling.decode` in one `lax.while_loop`, cache donated);
  * the bandwidth floor of a decode step: the decoder's weight bytes read per token (embedding table
    once, as the tied LM head reads it) over the host's copy bandwidth measured in the same run
    (read + write bytes of a 512 MiB copy per second, the best of numpy and XLA).

Times are medians over `runs` after one warm-up (compiles ours). Needs the `parity` extra (torch +
transformers). Both sides use every core (torch's intra-op threads; XLA's), one after the other:
transformers in a child process (built, saved and timed there), then ours in this one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.config import VLMConfig
from ar1_jax.infer import sampling

LOGIT_STD = 5.0  # target std of the random model's logits: top-1 margins >> f32 rounding


def hf_model(cfg: VLMConfig, seed: int = 0):
    """A transformers model of `cfg`'s shape (eval, float32, SDPA attention) with O(1)-logit weights."""
    import torch
    import transformers

    from ar1_jax.convert.hf import config_to_hf

    d = config_to_hf(dataclasses.replace(cfg, dtype="float32", param_dtype="float32"))
    d.pop("architectures", None)
    cls_cfg = transformers.Qwen2_5_VLConfig if cfg.family == "qwen2_5_vl" else transformers.Qwen3VLConfig
    hcfg = cls_cfg(**{k: v for k, v in d.items() if k != "model_type"}, bos_token_id=None, eos_token_id=None,
                   pad_token_id=None)
    cls = (transformers.Qwen2_5_VLForConditionalGeneration if cfg.family == "qwen2_5_vl"
           else transformers.Qwen3VLForConditionalGeneration)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = cls(hcfg).to(torch.float32)
    _reinit(model, cfg, seed)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _reinit(model, cfg: VLMConfig, seed: int) -> None:
    """Weights std 1/sqrt(fan_in) (output projections 1/sqrt(2 L fan_in)), norms ~1, biases small, the
    embedding so the logits have std ~LOGIT_STD; the LM head's rows of Qwen's special ids (image,
    vision, end-of-text ...) are shrunk so greedy decoding never draws them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    depth = 2 * cfg.text.num_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight") else \
                    0.05 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                new = 0.05 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name or name == "lm_head.weight":
                new = torch.randn(p.shape, generator=g) * LOGIT_STD / np.sqrt(cfg.text.hidden_size)
            elif name.endswith("pos_embed.weight"):
                new = torch.randn(p.shape, generator=g)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                scale = depth ** -0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                new = torch.randn(p.shape, generator=g) * scale / np.sqrt(fan_in)
            p.copy_(new.to(p.dtype))
        special = min(cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id)
        special = min(special, cfg.text.vocab_size - 16)
        model.get_output_embeddings().weight[special - 16:] *= 0.05


def make_inputs(cfg: VLMConfig, *, images: int, grid: int, text_tokens: int, seed: int = 0) -> dict:
    """Processor-format numpy inputs: text, then `images` images of `1 x grid x grid` patches each
    between vision start / end, with text between them; about `text_tokens` text ids in all."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    per_image = grid * grid // v.spatial_merge_size**2
    chunk = max(1, text_tokens // (images + 1))
    text = lambda n: rng.integers(16, min(cfg.image_token_id, cfg.text.vocab_size) - 32, n).tolist()
    ids, types = text(chunk), [0] * chunk
    for _ in range(images):
        ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * per_image + [cfg.vision_end_token_id]
        types += [0] + [1] * per_image + [0]
        more = text(chunk)
        ids += more
        types += [0] * len(more)
    thw = np.array([[1, grid, grid]] * images, np.int64)
    pv = rng.standard_normal((images * grid * grid, v.patch_dim)).astype(np.float32)
    return dict(input_ids=np.array([ids], np.int64), attention_mask=np.ones((1, len(ids)), np.int64),
                mm_token_type_ids=np.array([types], np.int64), pixel_values=pv, image_grid_thw=thw)


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Host copy bandwidth, bytes/s counting the read and the write: the best of numpy and XLA."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    x = jnp.asarray(a)
    copy = jax.jit(lambda x: x + 1.0)
    jax.block_until_ready(copy(x))
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(copy(x))
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def decode_weight_bytes(params: dict) -> int:
    """Bytes of decoder weights a decode step reads: every text parameter (the embedding table once:
    as the LM head when tied; the lookup of one row is negligible otherwise)."""
    text = params["text"]
    total = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(text))
    if "lm_head" in text:  # untied: the embedding table is only gathered from
        total -= int(text["embed"].size) * text["embed"].dtype.itemsize
    return total


def _median(xs):
    return float(statistics.median(xs))


def time_hf(model, inputs: dict, new_tokens: int, runs: int) -> dict:
    import torch

    t_in = {k: torch.from_numpy(v) for k, v in inputs.items()}
    pre, gen, out = [], [], None
    with torch.inference_mode():
        for i in range(runs + 1):
            t = time.perf_counter()
            model(**t_in, use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            out = model.generate(**t_in, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            t2 = time.perf_counter()
            if i:
                pre.append(t1 - t)
                gen.append(t2 - t1)
    tokens = out[0, inputs["input_ids"].shape[1]:].numpy()
    prefill, generate = _median(pre), _median(gen)
    return dict(prefill_s=prefill, generate_s=generate, decode_per_token_s=(generate - prefill) / (new_tokens - 1),
                tokens=tokens.tolist(), threads=torch.get_num_threads())


def time_ours(runner, inputs: dict, new_tokens: int, runs: int) -> dict:
    from ar1_jax.model import vlm

    cfg = runner.cfg
    x = runner.prepare(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    params = runner.inference_params()  # per-layer weight buffers (what generate decodes with)

    @jax.jit
    def prefill(params, ids, positions, kv_valid, media, next_position):
        return vlm.prefill(params, cfg, ids, positions, kv_valid, next_position, extra_slots=new_tokens,
                           media=media)

    @jax.jit
    def decode(params, cache, logits):
        return sampling.decode(vlm.decode_step(params, cfg), cache, logits, None, max_tokens=new_tokens).tokens

    # On the device once, outside the timed loop, as transformers' inputs are torch tensors made once before
    # its loop (a host array would be copied in every call: 1.5 ms of the tiny shape's 5 ms prefill).
    args = jax.device_put((x["input_ids"], x["positions"], x["kv_valid"], x["media"], x["next_position"]))
    pre, dec, tokens = [], [], None
    for i in range(runs + 1):
        t = time.perf_counter()
        logits, cache = jax.block_until_ready(prefill(params, *args))
        t1 = time.perf_counter()
        tokens = jax.block_until_ready(decode(params, cache, logits))
        t2 = time.perf_counter()
        if i:
            pre.append(t1 - t)
            dec.append(t2 - t1)
    prefill_s, decode_s = _median(pre), _median(dec)
    return dict(prefill_s=prefill_s, generate_s=prefill_s + decode_s, decode_per_token_s=decode_s / (new_tokens - 1),
                tokens=np.asarray(tokens)[0].tolist())


def _hf_child(cfg: VLMConfig, directory: str, inputs: dict, new_tokens: int, runs: int, seed: int) -> dict:
    """In a child process: builds the transformers model, saves it to `directory`, times it (`time_hf`)."""
    import torch

    model = hf_model(cfg, seed)
    model.save_pretrained(directory, safe_serialization=True)
    return dict(time_hf(model, inputs, new_tokens, runs), torch=torch.__version__)


def run(cfg: VLMConfig, out_dir=None, *, images: int = 4, grid: int = 16, text_tokens: int = 50,
        new_tokens: int = 40, runs: int = 3, seed: int = 0, name: str = "custom", say=print) -> dict:
    """Builds, saves, loads and times both sides (module docstring); writes `vs_hf.json` to `out_dir`."""
    import multiprocessing

    from ar1_jax.convert import hf

    say(f"vs transformers: {name} ({cfg.family}, {cfg.text.num_layers} layers, width {cfg.text.hidden_size}), "
        f"{images} images of {grid}x{grid} patches, {new_tokens} greedy tokens, f32, {runs} runs")
    inputs = make_inputs(cfg, images=images, grid=grid, text_tokens=text_tokens, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        say(f"  prompt {inputs['input_ids'].shape[1]} tokens; building, saving and timing transformers in a "
            "child process ...")
        # transformers runs in its own process: torch's idle OpenMP threads spin-wait on the cores and, in
        # one process, slowed our XLA threads by up to 2x (OMP_WAIT_POLICY=ACTIVE: our tiny prefill 6.8-8.2
        # ms; PASSIVE: 4.9-6.3 ms, but theirs 2.7x slower). Each side now has the cores to itself.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            theirs = pool.apply(_hf_child, (cfg, tmp, inputs, new_tokens, runs, seed))
        ours = hf.load(tmp, dtype=jnp.float32)
    torch_version = theirs.pop("torch")
    say("  timing ours (the first run compiles) ...")
    mine = time_ours(ours, inputs, new_tokens, runs)
    bw = copy_bandwidth()
    weight_bytes = decode_weight_bytes(ours.pure_params)
    floor = weight_bytes / bw
    agree = int(np.cumprod(np.asarray(mine["tokens"]) == np.asarray(theirs["tokens"])).sum())
    result = dict(
        bench="vs_hf", config=name, family=cfg.family, date=datetime.date.today().isoformat(),
        host=platform.processor() or platform.machine(), jax=jax.__version__, torch=torch_version,
        prompt_tokens=int(inputs["input_ids"].shape[1]), images=images, grid=grid, new_tokens=new_tokens, runs=runs,
        ours=mine, transformers=theirs, greedy_tokens_agreeing=agree,
        prefill_speedup=theirs["prefill_s"] / mine["prefill_s"],
        decode_speedup=theirs["decode_per_token_s"] / mine["decode_per_token_s"],
        generate_speedup=theirs["generate_s"] / mine["generate_s"],
        copy_bandwidth_gbs=bw / 1e9, decode_weight_bytes=weight_bytes, decode_floor_s=floor,
        decode_floor_fraction=floor / mine["decode_per_token_s"],
        load_average=_loadavg())
    say(format_result(result))
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vs_hf.json").write_text(json.dumps(result, indent=2))
        say(f"wrote {out / 'vs_hf.json'}")
    return result


def _loadavg():
    try:
        import os

        return list(os.getloadavg())
    except OSError:
        return None


def format_result(r: dict) -> str:
    o, t = r["ours"], r["transformers"]
    return "\n".join([
        "| | prefill | decode / token | generate | greedy tokens agreeing |",
        "|---|---|---|---|---|",
        f"| transformers | {t['prefill_s'] * 1e3:.1f} ms | {t['decode_per_token_s'] * 1e3:.2f} ms | "
        f"{t['generate_s'] * 1e3:.1f} ms | |",
        f"| ours | {o['prefill_s'] * 1e3:.1f} ms | {o['decode_per_token_s'] * 1e3:.2f} ms | "
        f"{o['generate_s'] * 1e3:.1f} ms | {r['greedy_tokens_agreeing']} / {r['new_tokens']} |",
        f"| ours / transformers speed | {r['prefill_speedup']:.2f}x | {r['decode_speedup']:.2f}x | "
        f"{r['generate_speedup']:.2f}x | |",
        f"decode floor: {r['decode_weight_bytes'] / 1e9:.3f} GB of weights per token / {r['copy_bandwidth_gbs']:.1f} GB/s "
        f"copy bandwidth = {r['decode_floor_s'] * 1e3:.2f} ms; ours at {100 * r['decode_floor_fraction']:.0f}% of it"
        f" (load average {r['load_average']})"])
