"""How decoder compile time scales with depth, scanned vs unrolled layers.

Compiles the decoder's training step (forward + backward of a next-token loss) from abstract
shapes only (`jax.ShapeDtypeStruct`s: nothing is allocated, so real widths are fine on a laptop)
for each depth, and records lowering and compile seconds.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ar1_jax.config import Config
from ar1_jax.model import text
from ar1_jax.model.layers import dtype_of


def compile_seconds(cfg: Config, num_layers: int, scan: bool, batch: int = 1, seq: int = 256) -> dict:
    """Lower + compile the decoder train step for `num_layers` layers; returns timings in seconds."""
    tcfg = dataclasses.replace(cfg.model.text, num_layers=num_layers, scan_layers=scan)
    dtype = dtype_of(cfg.model.dtype)
    abstract = nnx.eval_shape(lambda: text.TextDecoder(tcfg, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    positions = jax.ShapeDtypeStruct((3, batch, seq), jnp.int32)

    def loss(p, ids, positions):
        x = text.embed_tokens(p, ids, dtype)
        h, _ = text.decode_layers(p, tcfg, x, positions)
        logits = text.lm_logits(p, tcfg, h)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], -1))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    lowered = step.lower(params, ids, positions)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return dict(layers=num_layers, scan=scan, lower_s=round(t1 - t0, 3), compile_s=round(t2 - t1, 3),
                hlo_chars=len(lowered.as_text()), batch=batch, seq=seq,
                flops=(compiled.cost_analysis() or {}).get("flops") if hasattr(compiled, "cost_analysis") else None)


def run(cfg: Config, layers: list[int], out_dir, seq: int = 256) -> list[dict]:
    """Times every (depth, scan) pair, prints a table and writes `compile_time.json` to `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    total = len(layers) * 2
    for i, (scan, n) in enumerate((s, n) for s in (True, False) for n in layers):
        print(f"[{i + 1}/{total}] {cfg.name}: {n} layers, {'scan' if scan else 'unrolled'} ...", flush=True)
        row = compile_seconds(cfg, n, scan, seq=seq)
        rows.append(row)
        print(f"    lower {row['lower_s']:.2f} s, compile {row['compile_s']:.2f} s, HLO {row['hlo_chars']:,} chars",
              flush=True)
    result = dict(bench="compile_time", config=cfg.name, date=datetime.date.today().isoformat(),
                  device=f"{jax.devices()[0].device_kind} x{jax.device_count()}", host=platform.processor() or
                  platform.machine(), jax=jax.__version__, rows=rows)
    (out_dir / "compile_time.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out_dir / 'compile_time.json'}")
    return rows
