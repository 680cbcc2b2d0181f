"""launch/gpu_bench.sh's flow, with a stand-in `ar1` (the real commands are covered by their own tests and
by `--dry-run`, which takes about 90 s): step order, the per-step time limit, a failing step, and the
report that always runs and names what is missing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Writes what each command would write, from its own arguments; `bench kernels` hangs (to be stopped at its
# limit) and the int8 run fails.
FAKE_AR1 = r'''
import json, pathlib, sys, time
argv = sys.argv[1:]
with open(pathlib.Path(__file__).with_name("calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")
get = lambda flag: argv[argv.index(flag) + 1]
if argv[:2] == ["bench", "kernels"]:
    time.sleep(60)
elif argv[:2] == ["bench", "infer"]:
    if "--int8" in argv:
        sys.exit(1)
    stage = lambda ms: {"p50_ms": ms, "p95_ms": ms}
    row = dict(batch=1, samples=1, decode_steps=40, scenes_per_s=9.0, compile_s={"total": 1.0},
               peak_memory={"kind": "device", "peak_bytes": 2**30}, vision=stage(2.0), prefill=stage(10.0),
               decode_per_token=stage(1.0), denoise_per_step=stage(1.0), total=stage(60.0))
    out = pathlib.Path(get("--out")); out.mkdir(parents=True)
    (out / "infer.json").write_text(json.dumps(dict(
        date="d", device="fake x1", host="h", jax="j", config=get("--config"), dtype="float32", int8=False,
        reasoning_tokens=40, flow_steps=5, load_average=None, peak_gbs=None, complete=True, rows=[row])))
elif argv[0] == "train":
    w = pathlib.Path(get("--workdir")); w.mkdir(parents=True)
    (w / "metrics.jsonl").write_text("".join(json.dumps(dict(step=s, step_time_s=0.5, tokens_per_s=1000.0,
                                                             mfu=0.25)) + "\n" for s in (1, 2, 3)))
'''


def test_gpu_bench_steps_limits_failures_and_report(tmp_path):
    fake = tmp_path / "fake_ar1.py"
    fake.write_text(FAKE_AR1)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAP_", "BUDGET_S", "MIN_STEP_S", "DOCS", "AR1"))}
    env.update(AR1=f"{sys.executable} {fake}", PYTHON=sys.executable, CAP_KERNELS="2", MIN_STEP_S="1",
               REPORT_S="0")
    proc = subprocess.run(["bash", str(ROOT / "launch" / "gpu_bench.sh"), "--dry-run", str(out)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    stamps = [line.split("] ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("[gpu_bench")]
    assert [s for s in stamps if s[:1].isdigit()][:4] == [
        "1/5 inference ar1_tiny (limit 300s)", "3/5 train step MFU (ar1_tiny) (limit 300s)",
        "4/5 attention kernels (limit 2s)", "4/5 attention kernels: stopped at its 2s limit (kept what it wrote)"]
    assert any(s.startswith("5/5 inference ar1_tiny int8 failed (exit 1") for s in stamps)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    infer = next(c for c in calls if c[:2] == ["bench", "infer"])
    assert "model.attention_impl=auto" in infer and "infer.max_reasoning_tokens=40" in infer
    train = next(c for c in calls if c[0] == "train")
    assert "train.peak_tflops=1" in train and "--our-tokens" not in train  # ar1_tiny has our layout already
    docs = (out / "benchmarks.md").read_text()
    assert "Kernels: not run." in docs  # stopped before it wrote anything
    assert "| 1 x 1 | 2.0 / 2.0 | 10.0 / 10.0 |" in docs and "| paper (RTX 6000 Pro Blackwell) |" in docs
    assert "Train step (train, steps 2-3): step 0.500 s, 1000 tokens/s, MFU 25.0%." in docs
    assert not (out / "train" / "data").exists()
