"""The kernels benchmark's code path on CPU: one tiny shape, interpret mode, JSON labelled as not
meaningful."""

import json

from ar1_jax.bench import kernels as bench


def test_kernels_bench_smoke(tmp_path):
    shape = bench.Shape("denoise_tiny", "denoise", 1, 16, 48 + 16, 4, 2, 64, prefix=48,
                        prefix_valid=40)
    decode = bench.Shape("decode_tiny", "decode", 1, 1, 64, 4, 2, 64)
    rows = bench.run(tmp_path, shapes=[shape, decode], backends=["gpu"], warmup=1, iters=1)
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert data["meaningful"] is False and "NOT meaningful" in data["note"]
    got = {(r["shape"], r["impl"], r["pass"]) for r in rows if r["ms"] is not None}
    assert got == {("denoise_tiny", i, p) for i in ("pallas", "xla") for p in ("fwd", "fwd+bwd")} | {
        ("decode_tiny", "pallas", "fwd"), ("decode_tiny", "xla", "fwd")}
    pallas = [r for r in rows if r["impl"] == "pallas"]
    assert all(r["speedup_vs_xla"] > 0 and r["tflops"] > 0 and r["gbs"] > 0 for r in pallas)
    assert shape.visible_pairs() == 16 * (40 + 16)
    assert bench.Shape("p", "prefill", 1, 8, 8, 1, 1, 64).visible_pairs() == 36
