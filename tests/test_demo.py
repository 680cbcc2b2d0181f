"""ar1_jax/demo.py's orchestration with stand-in stages: every stage runs in order with the time left
said, a second run reuses what the first finished, a changed size reruns from its stage on, --fresh
redoes all, and a failing stage keeps what finished before it. Each stage's own work is tested with
its module (data, train, rl, eval, viz, report); the whole demo at full size is `make demo`."""

import json

import pytest

from ar1_jax import demo, demo_stages
from ar1_jax.config import ConfigError, get_config

SMALL = demo.DemoSizes(scenes=8, sft_steps=2, rl_steps=1, eval_scenes=2, show=1)


@pytest.fixture
def fake_stages(monkeypatch):
    calls = []

    def fake(name):
        def stage(*args, **kwargs):
            calls.append(name)
            if name == "eval" and calls.count("eval") > 1 and getattr(stage, "fail", False):
                raise demo.DemoFailed("eval broke")
            return {"data": {"train_scenes": 7}, "eval": {"scenes": 2, "columns": {}}}.get(name, {"ran": name})
        return stage

    for name in demo.STAGES:
        monkeypatch.setattr(demo_stages, f"{name}_stage", fake(name))
    monkeypatch.setattr(demo_stages, "print_summary", lambda metrics, say: calls.append("summary"))
    return calls


def test_stages_run_in_order_and_a_rerun_reuses_them(fake_stages, tmp_path):
    said = []
    cfg = get_config("ar1_tiny")
    metrics = demo.run(cfg, tmp_path, 3, SMALL, say=said.append)
    assert fake_stages == [*demo.STAGES, "summary"]
    headers = [s for s in said if s.startswith("[")]
    assert [h.split("]")[0] for h in headers] == [f"[{i}" + f"/{len(demo.STAGES)}" for i in range(1, 8)]
    assert all("elapsed" in h and "left)" in h for h in headers)
    assert json.loads((tmp_path / "demo_metrics.json").read_text())["sft"] == {"ran": "sft"}
    assert metrics["seed"] == 3 and metrics["sizes"]["rl_steps"] == 1

    fake_stages.clear()
    demo.run(cfg, tmp_path, 3, SMALL, say=said.append)
    assert fake_stages == ["report", "summary"]  # the report is rebuilt, nothing else

    fake_stages.clear()
    demo.run(cfg, tmp_path, 3, demo.DemoSizes(**{**SMALL.__dict__, "rl_steps": 2}), say=said.append)
    assert fake_stages == ["rl", "eval", "drive", "bench", "report", "summary"]

    fake_stages.clear()
    demo.run(cfg, tmp_path, 4, SMALL, say=said.append)  # another seed: new data, so everything
    assert fake_stages == [*demo.STAGES, "summary"]
    fake_stages.clear()
    demo.run(cfg, tmp_path, 4, SMALL, fresh=True, say=said.append)
    assert fake_stages == [*demo.STAGES, "summary"]


def test_a_failed_stage_keeps_the_finished_ones(fake_stages, tmp_path, monkeypatch):
    cfg = get_config("ar1_tiny")
    demo.run(cfg, tmp_path, 0, SMALL, say=lambda s: None)
    demo_stages.eval_stage.fail = True
    with pytest.raises(demo.DemoFailed):
        demo.run(cfg, tmp_path, 0, demo.DemoSizes(**{**SMALL.__dict__, "eval_scenes": 3}), say=lambda s: None)
    fake_stages.clear()
    demo_stages.eval_stage.fail = False
    demo.run(cfg, tmp_path, 0, demo.DemoSizes(**{**SMALL.__dict__, "eval_scenes": 3}), say=lambda s: None)
    assert fake_stages[0] == "eval"  # data, SFT and RL were kept


def test_bad_sizes_and_configs_fail_before_any_stage(fake_stages, tmp_path):
    with pytest.raises(ConfigError, match="sft_steps"):
        demo.run(get_config("ar1_tiny"), tmp_path, 0, demo.DemoSizes(sft_steps=0))
    with pytest.raises(ConfigError, match="no action expert"):
        demo.run(get_config("tiny"), tmp_path, 0, SMALL)
    assert fake_stages == []


def test_time_left_is_not_rescaled_by_one_short_stage_or_by_reused_ones(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: now[0])
    said = []
    progress = demo._Progress(said.append)
    total = sum(demo.STAGES.values())
    started = progress.start(1, "data", "")
    now[0] = 5.0
    progress.done("data", started)  # 5 s against an estimate of 15 s
    progress.start(2, "sft", "")
    left = sum(demo.STAGES.values()) - demo.STAGES["data"]
    want = left * (5 + progress.PRIOR_S) / (demo.STAGES["data"] + progress.PRIOR_S)
    assert f"about {demo._mmss(want)} left" in said[-1] and want > 0.9 * left
    progress.done("sft", 5.0, reused=True)  # reused: no time spent, and no evidence about speed
    progress.start(3, "rl", "")
    assert f"about {demo._mmss(want * (left - demo.STAGES['sft']) / left)} left" in said[-1]
    assert total > left
