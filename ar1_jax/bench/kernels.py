"""Pallas attention kernels against XLA and cuDNN: time, TFLOP/s, GB/s, ratios -> `kernels.json`.

For every shape of the table and every kernel backend:
  * prefill: `flash_attention` forward and forward+backward (grad of q, k, v) vs the model's XLA
    attention (`ar1_jax.model.attention.attention(impl="xla")`, the same masks) and, on a GPU, cuDNN
    (`jax.nn.dot_product_attention(implementation="cudnn")`);
  * decode: `decode_attention` (forward only) vs the same two;
  * denoise: `denoise_attention` (impl `pallas`: prefix cache and own keys as separate inputs, two
    flash passes merged by logsumexp, what `attention_impl=pallas` runs in the expert) and
    `flash_attention` over the concatenated keys (impl `pallas_concat`: the concatenation is inside
    the timed function, as the model would pay it every Euler step) vs the model's XLA path
    (`ar1_jax.model.attention.denoise(impl="xla")`, which concatenates) and cuDNN over the
    concatenation; forward and forward+backward (grads of q, prefix k / v, own k / v).

Shapes (`default_shapes()`): the 0.5B config (14 heads, 2 KV heads, head dim 64) and the 10B release
(32 / 8 / 128); prefill at S 512, 2048, 8192 (causal, batch so that B * S = 8192 tokens), decode of one
token over a full cache of 1k, 4k, 8k (batch 8), and denoise: the action expert's 64 queries over a
~3k-token VLM prefix (partly padding) + its own 64 keys, bidirectional among those 64 (batch 8).

FLOPs are causal-adjusted: 4 * D per visible (query, key) pair and head (two matmuls), the same count
credited to every implementation (XLA computes the masked half anyway); forward + backward counts
3.5x the forward (FlashAttention-2 convention: 5 matmuls instead of 2). GB/s is the minimum HBM
traffic (forward: read q, k, v, write o; decode: the valid part of the cache; forward + backward:
6 |q| + 3 |k| + 3 |v|) over the time. Times are the median of `iters` runs after `warmup` runs, each
waited on with `jax.block_until_ready`; everything timed is one jitted function (range tables and
padding included: what a caller pays).

On a host without an accelerator `run` does a tiny smoke version with the kernels in Pallas
interpret mode so the code path is exercised; those numbers are NOT meaningful and are labelled so
(`meaningful: false` in the JSON and in every printed line).

    ar1 bench kernels --out out/bench/kernels                  # full table on a GPU / TPU
    ar1 bench kernels --out out/bench/kernels --quick          # tiny shapes: a code-path check
    python -m ar1_jax.bench.kernels --out out/bench --only denoise   # more knobs (--backends, --iters)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # "prefill" | "decode" | "denoise"
    b: int
    sq: int
    sk: int
    h: int
    hkv: int
    d: int
    prefix: int = 0  # denoise: VLM prefix length (queries start at this slot)
    prefix_valid: int = 0  # denoise: valid keys of the prefix (the rest is padding)

    def visible_pairs(self) -> int:
        """(query, key) pairs that attend, per batch element and head."""
        if self.kind == "prefill":
            return self.sq * (self.sq + 1) // 2
        if self.kind == "decode":  # full cache: query t sees sk - sq + t + 1 keys
            return self.sq * self.sk - self.sq * (self.sq - 1) // 2
        return self.sq * (self.prefix_valid + self.sq)


CONFIGS = {"0.5b": (14, 2, 64), "10b": (32, 8, 128)}


def default_shapes() -> list[Shape]:
    shapes = []
    for cfg, (h, hkv, d) in CONFIGS.items():
        for s in (512, 2048, 8192):
            shapes.append(Shape(f"prefill_{cfg}_s{s}", "prefill", max(1, 8192 // s), s, s, h, hkv, d))
        for s in (1024, 4096, 8192):
            shapes.append(Shape(f"decode_{cfg}_s{s}", "decode", 8, 1, s, h, hkv, d))
        shapes.append(Shape(f"denoise_{cfg}", "denoise", 8, 64, 3072 + 64, h, hkv, d, prefix=3072,
                            prefix_valid=2900))
    return shapes


def smoke_shapes() -> list[Shape]:
    """Tiny shapes for CPU (interpret mode): exercise every code path, measure nothing."""
    return [
        Shape("prefill_smoke_s64", "prefill", 1, 64, 64, 4, 2, 64),
        Shape("decode_smoke_s128", "decode", 2, 1, 128, 4, 2, 64),
        Shape("denoise_smoke", "denoise", 1, 16, 48 + 16, 4, 2, 64, prefix=48, prefix_valid=40),
    ]


def _has_accelerator() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")


def _timeit(fn, args, warmup: int, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    for _ in range(max(0, warmup - 1)):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inputs(shape: Shape, dtype, seed=0):
    """(q, k, v); denoise: (q, prefix_k, prefix_v, own_k, own_v), the prefix `shape.prefix` long."""
    rng = np.random.default_rng(seed)

    def normal(*s):
        return jnp.asarray(rng.standard_normal(s, np.float32), dtype)

    q = normal(shape.b, shape.sq, shape.h, shape.d)
    if shape.kind == "denoise":
        own = shape.sk - shape.prefix
        return (q, normal(shape.b, shape.prefix, shape.hkv, shape.d), normal(shape.b, shape.prefix, shape.hkv, shape.d),
                normal(shape.b, own, shape.hkv, shape.d), normal(shape.b, own, shape.hkv, shape.d))
    return q, normal(shape.b, shape.sk, shape.hkv, shape.d), normal(shape.b, shape.sk, shape.hkv, shape.d)


def _masks(shape: Shape):
    """Prefill / decode mask arguments: kernel kwargs and the model attention's kwargs (same semantics)."""
    b, sq, sk = shape.b, shape.sq, shape.sk
    kv_slots = jnp.broadcast_to(jnp.arange(sk, dtype=jnp.int32), (b, sk))
    if shape.kind == "prefill":
        return dict(causal=True), dict(causal=True)
    if shape.kind == "decode":
        lengths = jnp.full((b,), sk, jnp.int32)
        q_slots = lengths[:, None] - sq + jnp.arange(sq, dtype=jnp.int32)[None, :]
        kv_valid = kv_slots < lengths[:, None]
        return dict(lengths=lengths), dict(q_slots=q_slots, kv_slots=kv_slots, kv_valid=kv_valid)
    raise ValueError(f"no mask arguments for a {shape.kind!r} shape")


def _implementations(shape: Shape, backend: str, interpret: bool, on_gpu: bool):
    """name -> f(*inputs) for this shape (forward); names starting with `pallas` are kernels."""
    from ar1_jax.kernels import decode_attention, denoise_attention, flash_attention
    from ar1_jax.model.attention import attention, denoise, make_mask

    if shape.kind == "denoise":
        prefix_valid = jnp.broadcast_to(jnp.arange(shape.prefix) < shape.prefix_valid, (shape.b, shape.prefix))
        own_valid = jnp.ones((shape.b, shape.sk - shape.prefix), bool)
        kv_valid = jnp.concatenate([prefix_valid, own_valid], axis=1)

        def concat(pk, pv, ok, ov):
            return jnp.concatenate([pk, ok], axis=1), jnp.concatenate([pv, ov], axis=1)

        def pallas_concat(q, pk, pv, ok, ov):
            k, v = concat(pk, pv, ok, ov)
            return flash_attention(q, k, v, causal=False, kv_valid=kv_valid, backend=backend, interpret=interpret)

        impls = {
            "pallas": lambda q, pk, pv, ok, ov: denoise_attention(q, pk, pv, prefix_valid, ok, ov, backend=backend,
                                                                  interpret=interpret),
            "pallas_concat": pallas_concat,
            "xla": lambda q, pk, pv, ok, ov: denoise(q, pk, pv, prefix_valid, ok, ov, impl="xla"),
        }
        if on_gpu:
            def cudnn(q, pk, pv, ok, ov):
                k, v = concat(pk, pv, ok, ov)
                # cuDNN takes no broadcast query axis in a mask ("Bias must have same seq length as QKV", H200
                # 2026-12-04): the full [B, 1, Sq, Sk] mask.
                mask = jnp.broadcast_to(kv_valid[:, None, None, :], (shape.b, 1, shape.sq, shape.sk))
                return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
            impls["cudnn"] = cudnn
        return impls

    kernel_kw, model_kw = _masks(shape)
    impls = {}
    if shape.kind == "decode":
        lengths = kernel_kw["lengths"]
        impls["pallas"] = lambda q, k, v: decode_attention(q, k, v, lengths, backend=backend,
                                                           interpret=interpret)
    else:
        impls["pallas"] = lambda q, k, v: flash_attention(q, k, v, backend=backend,
                                                          interpret=interpret, **kernel_kw)
    impls["xla"] = lambda q, k, v: attention(q, k, v, impl="xla", **model_kw)
    if on_gpu:
        if shape.kind == "prefill":
            impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation="cudnn")
        elif shape.kind == "decode" and shape.sq == 1:
            lengths = kernel_kw["lengths"]
            impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
        else:
            mask = make_mask(model_kw["q_slots"], model_kw["kv_slots"], kv_valid=model_kw["kv_valid"], causal=True)
            impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, mask=mask[:, None], implementation="cudnn")
    return impls


def _bytes(shape: Shape, itemsize: int, passes: str) -> int:
    q = shape.b * shape.sq * shape.h * shape.d * itemsize
    kv = shape.b * shape.sk * shape.hkv * shape.d * itemsize
    if passes == "fwd":
        return 2 * q + 2 * kv
    return 6 * q + 6 * kv


def run(out_dir, shapes=None, dtype: str = "bfloat16", backends=None, warmup: int | None = None,
        iters: int | None = None, quick: bool = False, passes=None) -> list[dict]:
    """Time every (shape, kernel backend, implementation, pass); print a table, write kernels.json.

    Args:
      out_dir: where `kernels.json` goes.
      shapes: list of `Shape` (default: `default_shapes()` on an accelerator, `smoke_shapes()` on CPU
        or with `quick`).
      dtype: input dtype name.
      backends: kernel backends to time ('gpu', 'tpu'); default the device's own, or both
        (interpreted) on CPU (only the GPU-style kernel with `quick`).
      warmup, iters: runs before timing and timed runs (default 3 / 10; CPU 1 / 1).
      quick: the smoke shapes and one kernel backend, everywhere (a code-path check in seconds).
      passes: subset of ("fwd", "fwd+bwd") to time (default both; decode is forward only).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accel = _has_accelerator()
    on_gpu = jax.default_backend() in ("gpu", "cuda")
    meaningful = accel
    interpret = not accel
    if shapes is None:
        shapes = default_shapes() if accel and not quick else smoke_shapes()
    if backends is None:
        own = "tpu" if jax.default_backend() == "tpu" else "gpu"
        backends = [own] if accel or quick else ["gpu", "tpu"]
    wanted = ("fwd", "fwd+bwd") if passes is None else tuple(passes)
    warmup = warmup if warmup is not None else (3 if accel else 1)
    iters = iters if iters is not None else (10 if accel else 1)
    jdtype = jnp.dtype(dtype)
    label = "" if meaningful else "  [interpret mode on CPU: NOT meaningful]"
    if not meaningful:
        print("kernels bench: no accelerator; running a tiny smoke version with the kernels in "
              "Pallas interpret mode. Times below are NOT meaningful.", flush=True)

    path = out_dir / "kernels.json"
    rows: list[dict] = []
    for shape in shapes:
        args = _inputs(shape, jdtype)
        w = jnp.asarray(np.random.default_rng(1).standard_normal(args[0].shape, np.float32), jnp.float32)
        fwd_flops = 4 * shape.d * shape.visible_pairs() * shape.b * shape.h
        shape_passes = [x for x in (["fwd"] if shape.kind == "decode" else ["fwd", "fwd+bwd"]) if x in wanted]
        ref_ms: dict[tuple[str, str], float] = {}  # XLA / cuDNN: independent of the kernel backend
        for backend in backends:
            impls = _implementations(shape, backend, interpret, on_gpu)
            for pass_ in shape_passes:
                for name, fn in impls.items():
                    if not _is_kernel(name) and (name, pass_) in ref_ms:
                        continue
                    row = _measure(shape, name, backend, pass_, fn, args, w, warmup, iters,
                                   fwd_flops, jdtype, dtype, meaningful)
                    rows.append(row)
                    if not _is_kernel(name) and row["ms"] is not None:
                        ref_ms[(name, pass_)] = row["ms"]
            for row in rows:
                if row["shape"] == shape.name and _is_kernel(row["impl"]) and row["backend"] == backend \
                        and row["ms"] is not None:
                    for ref in ("xla", "cudnn"):
                        if (ref, row["pass"]) in ref_ms:
                            row[f"speedup_vs_{ref}"] = ref_ms[(ref, row["pass"])] / row["ms"]
        for row in rows:
            if row["shape"] == shape.name:
                _print_row(row, label)
        # Written after every shape (`complete: false` until the last), so a run stopped by a time limit
        # keeps what it measured.
        _write(path, rows, complete=shape is shapes[-1], meaningful=meaningful, dtype=dtype,
               backends=list(backends), warmup=warmup, iters=iters, quick=quick)
    print(f"wrote {path}")
    return rows


def _write(path: pathlib.Path, rows: list[dict], *, complete: bool, meaningful: bool, **settings) -> None:
    result = dict(
        bench="kernels", date=datetime.date.today().isoformat(), meaningful=meaningful, complete=complete,
        note=None if meaningful else "CPU smoke run: kernels in Pallas interpret mode; times are "
                                     "NOT meaningful",
        device=f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        host=platform.processor() or platform.machine(), jax=jax.__version__, **settings, rows=rows)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def _is_kernel(name: str) -> bool:
    return name.startswith("pallas")


def _measure(shape, name, backend, pass_, fn, args, w, warmup, iters, fwd_flops, jdtype, dtype,
             meaningful) -> dict:
    if pass_ == "fwd":
        f = jax.jit(fn)
    else:
        def loss(*xs):
            return jnp.sum(fn(*xs).astype(jnp.float32) * w)
        f = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
    row = dict(shape=shape.name, kind=shape.kind, b=shape.b, sq=shape.sq, sk=shape.sk, h=shape.h,
               hkv=shape.hkv, d=shape.d, dtype=dtype, impl=name,
               backend=backend if _is_kernel(name) else None, **{"pass": pass_},
               meaningful=meaningful, ms=None)
    try:
        sec = _timeit(f, args, warmup, iters)
    except Exception as e:  # noqa: BLE001 - an implementation may not support a shape
        row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        return row
    flops = fwd_flops * (1.0 if pass_ == "fwd" else 3.5)
    row.update(ms=sec * 1e3, tflops=flops / sec / 1e12,
               gbs=_bytes(shape, jdtype.itemsize, pass_) / sec / 1e9)
    return row


def _print_row(row: dict, label: str) -> None:
    who = row["impl"] + (f"/{row['backend']}" if row["backend"] else "")
    head = f"{row['shape']:24s} {row['pass']:8s} {who:18s}"
    if row["ms"] is None:
        print(f"{head} failed: {row['error']}{label}", flush=True)
        return
    extra = "".join(f"  x{row[f'speedup_vs_{r}']:.2f} vs {r}" for r in ("xla", "cudnn")
                    if f"speedup_vs_{r}" in row)
    print(f"{head} {row['ms']:10.3f} ms {row['tflops']:8.2f} TFLOP/s {row['gbs']:9.1f} GB/s"
          f"{extra}{label}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--backends", default=None, help="comma list of gpu,tpu (default: the device's)")
    p.add_argument("--only", default=None, help="substring filter on shape names")
    p.add_argument("--smoke", "--quick", dest="smoke", action="store_true",
                   help="the tiny shapes and one kernel backend, even on an accelerator")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    a = p.parse_args(argv)
    shapes = smoke_shapes() if a.smoke or not _has_accelerator() else default_shapes()
    if a.only:
        shapes = [s for s in shapes if a.only in s.name]
    run(a.out, shapes=shapes, dtype=a.dtype,
        backends=a.backends.split(",") if a.backends else None, warmup=a.warmup, iters=a.iters,
        quick=a.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
