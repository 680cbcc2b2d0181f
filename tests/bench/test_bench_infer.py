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
    assert r["complete"] is True
    text = report.section(tmp_path, "test")
    assert "Kernels: not run." in text and "| 2 x 2 |" in text and "ar1_tiny float32" in text
    assert "99.0" not in text  # the paper's table needs a B = 1 row


def test_report_decode_floor_and_paper_table(tmp_path):
    """A B = 1 row with a peak bandwidth: the floor column and the table against the paper's 99 ms, whose
    40-token and 5-step cells are 40x the per-token and 5x the per-step p50."""
    stage = lambda ms: {"p50_ms": ms, "p95_ms": ms * 1.1}
    row = dict(batch=1, samples=1, decode_steps=40, scenes_per_s=10.0, compile_s={"total": 3.0},
               peak_memory={"kind": "device", "peak_bytes": 2**30}, vision=stage(2.0), prefill=stage(10.0),
               decode_per_token=stage(1.5), denoise_per_step=stage(0.7), total=stage(77.0),
               decode_roofline_ms=0.75, decode_roofline_fraction=0.5)
    result = dict(date="2026-12-04", device="NVIDIA H200 x1", host="x86_64", jax="0.11", config="ar1_0p5b",
                  dtype="bfloat16", int8=False, reasoning_tokens=40, flow_steps=5, load_average=None,
                  peak_gbs=4800, complete=False, rows=[row])
    (tmp_path / "infer_ar1_0p5b").mkdir()
    (tmp_path / "infer_ar1_0p5b" / "infer.json").write_text(json.dumps(result))
    text = report.section(tmp_path)
    assert "| 0.75 (50%) |" in text and "stopped early" in text
    assert "| paper (RTX 6000 Pro Blackwell) | 3.4 | 16.5 | 70.0 | 8.8 | 99.0 |" in text
    assert "| ar1_0p5b bfloat16 (NVIDIA H200 x1) | 2.0 | 10.0 | 60.0 | 3.5 | 77.0 |" in text


def test_bench_infer_int8_reports_its_error_against_float(tmp_path):
    out = tmp_path / "infer_int8"
    assert main(["bench", "infer", "--config", "ar1_tiny", "--batch", "2", "--runs", "1", "--int8",
                 "--set", "infer.max_reasoning_tokens=4", "--out", str(out)]) == 0
    r = json.loads((out / "infer.json").read_text())
    e = r["int8"] and r["int8_error"]
    assert e["scenes"] == 2 and 0 < e["logits_max_abs_over_scale"] < 0.05 and 0 <= e["argmax_agree"] <= 1
    assert 0 <= e["trajectory_mean_m"] <= e["trajectory_max_m"] < 5.0  # metres over 6.4 s, a random tiny model
    if e["reasoning_agree"] == 1.0:
        assert e["trajectory_max_m_same_reasoning"] == e["trajectory_max_m"]
    assert "Weight-only int8 against float on 2 scene(s): prefill logits max |diff|" in (out / "infer.md").read_text()
