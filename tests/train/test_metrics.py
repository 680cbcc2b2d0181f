"""Training logs: TensorBoard event files read back by TensorBoard itself, CRC-32C, the JSONL metrics
log (non-finite values, resume truncation, disabled processes), the progress bar."""

import io
import json
import math

import numpy as np
import pytest

from ar1_jax.train import metrics as M


def _accumulator(logdir):
    ea_lib = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_lib.EventAccumulator(str(logdir), size_guidance={ea_lib.SCALARS: 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_crc32c_known_vectors():
    assert M.crc32c(b"123456789") == 0xE3069283
    assert M.crc32c(b"") == 0
    assert M.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert M.crc32c(b"\xff" * 32) == 0x62A8AB43  # ... and of ones
    assert M.crc32c(bytes(range(32))) == 0x46DD794E  # ... incrementing


def test_tensorboard_reads_back_scalars(tmp_path):
    w = M.TensorBoardWriter(tmp_path)
    assert w.path.name.startswith("events.out.tfevents.")
    expected = {"loss": [], "lr": []}
    for step in range(1, 6):
        loss, lr = 1.0 / step, 1e-4 * step
        w.scalars(step, {"loss": loss, "lr": np.float32(lr), "note": "skipped", "none": None, "flag": True,
                         "vector": np.ones(3)})
        expected["loss"].append((step, loss))
        expected["lr"].append((step, lr))
    w.scalars(7, {"nan": float("nan")})
    w.close()
    acc = _accumulator(tmp_path)
    assert acc.file_version == 2.0
    assert sorted(acc.Tags()["scalars"]) == ["loss", "lr", "nan"]
    for tag, points in expected.items():
        got = _scalars(acc, tag)
        assert [s for s, _ in got] == [s for s, _ in points]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-7)  # float32 on disk
    assert math.isnan(_scalars(acc, "nan")[0][1])


def test_metrics_log_jsonl_and_tensorboard(tmp_path):
    with M.MetricsLog(tmp_path) as log:
        log.write(10, {"loss": 0.1234567890123, "tokens": np.int64(4096), "mfu": None, "stage": "sft1",
                       "includes_compile": True, "grad_norm": np.float32(2.5)})
        log.write(20, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 3e-4})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    first, second = (json.loads(x) for x in lines)
    assert list(first) == ["step", "loss", "tokens", "mfu", "stage", "includes_compile", "grad_norm"]
    assert first == {"step": 10, "loss": 0.1234567890123, "tokens": 4096, "mfu": None, "stage": "sft1",
                     "includes_compile": True, "grad_norm": 2.5}  # full precision, no rounding
    assert second == {"step": 20, "loss": None, "grad_norm": None, "lr": 3e-4, "nonfinite": ["loss", "grad_norm"]}
    acc = _accumulator(tmp_path / "tensorboard")
    assert _scalars(acc, "tokens") == [(10, 4096.0)]
    assert [s for s, _ in _scalars(acc, "loss")] == [10, 20]
    assert "stage" not in acc.Tags()["scalars"] and "includes_compile" not in acc.Tags()["scalars"]
    with pytest.raises(ValueError, match="reserved"):
        M.MetricsLog(tmp_path / "other", tensorboard=False).write(1, {"step": 1})


def test_resume_drops_what_came_after_the_checkpoint(tmp_path):
    with M.MetricsLog(tmp_path) as log:
        for step in (10, 20, 30, 40):
            log.write(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "lo')  # killed mid-line
    with M.MetricsLog(tmp_path, resume_step=20) as log:
        assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20]
        log.write(30, {"loss": -30.0})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(10, 10.0), (20, 20.0), (30, -30.0)]
    assert not list(tmp_path.glob("*.tmp"))
    # TensorBoard drops the first run's points after step 20 (a SessionLog START at 21).
    assert _scalars(_accumulator(tmp_path / "tensorboard"), "loss") == [(10, 10.0), (20, 20.0), (30, -30.0)]


def test_killed_run_keeps_its_lines_and_appending_starts_a_new_line(tmp_path):
    log = M.MetricsLog(tmp_path, tensorboard=False)
    log.write(1, {"loss": 1.0})  # not closed: what a killed process leaves behind
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 1.0}
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2')
    with M.MetricsLog(tmp_path, tensorboard=False) as again:
        again.write(3, {"loss": 3.0})
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[-1] == '{"step": 3, "loss": 3.0}'
    assert not (tmp_path / "tensorboard").exists()


def test_disabled_log_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with M.MetricsLog(workdir, enabled=False, resume_step=5) as log:
        log.write(1, {"loss": 1.0})
    assert not workdir.exists()


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_plain_lines_on_a_log_file():
    out, clock = io.StringIO(), _Clock()
    bar = M.Progress(200, initial=0, desc="sft", stream=out, clock=clock)
    clock.t = 20.0
    bar.update(1, loss=2.5)  # includes compile: shown, but not used for the rate
    for step in range(2, 201):
        clock.t = 20.0 + 0.5 * (step - 1)
        bar.update(step, loss=1.0 / step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("sft |") and "1/200" in lines[0] and "eta ?" in lines[0] and "loss=2.5" in lines[0]
    assert 20 <= len(lines) <= 23  # every 5% (10 steps) plus the first and the last
    mid = lines[len(lines) // 2]
    step = int(mid.split("/200")[0].split()[-1])
    assert "2.00 step/s" in mid and f"eta {M._hms((200 - step) / 2.0)}" in mid  # compile excluded from the rate
    assert "200/200" in lines[-1] and "100%" in lines[-1] and "eta 0:00:00" in lines[-1] and "loss=0.005" in lines[-1]


def test_progress_plain_lines_every_30_seconds_when_slow():
    out, clock = io.StringIO(), _Clock()
    bar = M.Progress(10_000, initial=100, stream=out, clock=clock)
    for step in range(101, 111):
        clock.t = 12.0 * (step - 100)
        bar.update(step)
    bar.close()
    steps = [int(x.split("/10000")[0].split()[-1]) for x in out.getvalue().splitlines()]
    assert steps == [101, 104, 107, 110]  # every 30 s (12 s per step), and the last on close
    assert "12.00 s/step" in out.getvalue().splitlines()[-1]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_line_on_a_terminal():
    out, clock = _Terminal(), _Clock()
    bar = M.Progress(50, stream=out, clock=clock, min_interval_s=0.5)
    for step in range(1, 51):
        clock.t = 0.1 * step
        bar.update(step, loss=float(step))
    bar.close()
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert 9 <= len(frames) <= 12  # throttled to one redraw per 0.5 s
    assert "50/50" in frames[-1] and "10.00 step/s" in frames[-1] and "loss=50" in frames[-1]
    assert all(len(f.rstrip("\n")) >= len(frames[0]) for f in frames)  # each redraw covers the previous one


def test_disabled_progress_prints_nothing():
    out = _Terminal()
    bar = M.Progress(10, stream=out, enabled=False)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""
