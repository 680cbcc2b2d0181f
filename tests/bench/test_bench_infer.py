"""`ar1 bench infer` on the tiny config (one batch size, one run: a schema check, not a benchmark) and
the dated Markdown section `launch/gpu_bench.sh` appends from its outputs."""

import json

from ar1_jax.bench import report
from ar1_jax.cli.main import main


def test_bench_infer_json_schema_and_report(tmp_path, capsys):
    out = tmp_path / "infer_ar1_tiny"
    assert main(["bench", "infer", "--config", "ar1_tiny", "--batch", "2", "--samples", "2", "--runs", "1",
                 "--set", "infer.max_reasoning_tokens=4", "--out", str(out)]) == 0
    r = json.loads((out / "infer.json").read_text())
    assert r["bench"] == "infer" and r["config"] == "ar1_tiny" and r["reasoning_tokens"] == 4
    (row,) = r["rows"]
    assert (row["batch"], row["samples"], row["images_per_scene"]) == (2, 2, 16)
    for stage in ("vision", "prefill", "decode_per_token", "denoise_per_step", "total", "scene_untimed"):
        assert 0 < row[stage]["p50_ms"] <= row[stage]["p95_ms"], stage
    assert row["scenes_per_s"] > 0 and row["compile_s"]["total"] > 0 and row["peak_memory"]["peak_bytes"] > 0
    assert 1 <= row["decode_steps"] <= 4
    assert "| 2 x 2 |" in (out / "infer.md").read_text()
    text = report.section(tmp_path, "test")
    assert "Kernels: not run." in text and "| 2 x 2 |" in text and "ar1_tiny float32" in text
