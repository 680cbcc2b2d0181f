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
    assert got == {("denoise_tiny", i, p) for i in ("pallas", "pallas_concat", "xla")
                   for p in ("fwd", "fwd+bwd")} | {("decode_tiny", "pallas", "fwd"), ("decode_tiny", "xla", "fwd")}
    pallas = [r for r in rows if r["impl"].startswith("pallas")]
    assert all(r["backend"] == "gpu" for r in pallas) and all(r["backend"] is None for r in rows if r["impl"] == "xla")
    assert all(r["speedup_vs_xla"] > 0 and r["tflops"] > 0 and r["gbs"] > 0 for r in pallas)
    assert shape.visible_pairs() == 16 * (40 + 16)
    assert bench.Shape("p", "prefill", 1, 8, 8, 1, 1, 64).visible_pairs() == 36


def test_kernels_bench_quick_forward_only(tmp_path):
    """`quick` (what `ar1 bench kernels --quick` and the demo run): smoke shapes, one kernel backend."""
    rows = bench.run(tmp_path, quick=True, passes=("fwd",))
    assert {r["shape"] for r in rows} == {s.name for s in bench.smoke_shapes()}
    assert {r["pass"] for r in rows} == {"fwd"} and all(r["ms"] is not None for r in rows)
    assert {r["backend"] for r in rows if r["impl"].startswith("pallas")} == {"gpu"}
    assert json.loads((tmp_path / "kernels.json").read_text())["quick"] is True


def test_kernels_bench_keeps_finished_shapes_when_stopped(tmp_path, monkeypatch):
    """The JSON is written after every shape, so a run stopped at a time limit keeps what it measured."""
    first = bench.Shape("decode_tiny", "decode", 1, 1, 64, 4, 2, 64)
    second = bench.Shape("decode_second", "decode", 1, 1, 32, 4, 2, 64)
    measure = bench._measure

    def stop_at_second(shape, *args, **kwargs):
        if shape.name == "decode_second":
            raise KeyboardInterrupt  # what a time limit's SIGTERM -> exit looks like to the loop
        return measure(shape, *args, **kwargs)

    monkeypatch.setattr(bench, "_measure", stop_at_second)
    try:
        bench.run(tmp_path, shapes=[first, second], backends=["gpu"], warmup=1, iters=1)
    except KeyboardInterrupt:
        pass
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert data["complete"] is False and {r["shape"] for r in data["rows"]} == {"decode_tiny"}
    assert all(r["ms"] > 0 for r in data["rows"])
    monkeypatch.setattr(bench, "_measure", measure)
    bench.run(tmp_path, shapes=[first], backends=["gpu"], warmup=1, iters=1)
    assert json.loads((tmp_path / "kernels.json").read_text())["complete"] is True
