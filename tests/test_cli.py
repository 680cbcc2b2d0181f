"""ar1_jax/cli/: every command's --help, `ar1 configs`, error and not-yet-available exit codes.

Most checks run `python -m ar1_jax.cli` in a subprocess (what a user runs); the demo and convert
plumbing is also exercised in-process against stand-in modules, so it is tested before the real
backbone and converter land.
"""

import importlib.util
import json
import subprocess
import sys
import types

import numpy as np
import pytest

import ar1_fixtures as F

from ar1_jax import cli
from ar1_jax.cli import bench as bench_cli

COMMANDS = ("data", "train", "rl", "eval", "infer", "bench", "convert", "demo", "viz", "experiment", "configs")
NESTED = (("bench", "compile"), ("bench", "kernels"), ("bench", "all"), ("convert", "check"),
          ("convert", "export"), ("data", "synth"), ("viz", "scene"), ("viz", "closed-loop"), ("viz", "curves"),
          ("experiment", "longtail"))


def ar1(*args, timeout=F.HANG_GUARD_S):  # a hang guard, not a deadline
    return subprocess.run([sys.executable, "-m", "ar1_jax.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_top_level_help_lists_every_command():
    r = ar1("--help")
    assert r.returncode == 0, r.stderr
    for cmd in COMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", [(c,) for c in COMMANDS] + list(NESTED), ids=" ".join)
def test_subcommand_help(cmd):
    r = ar1(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: ar1 {' '.join(cmd)}")
    # A description beyond the usage line and the options.
    body = r.stdout.split("\n\n")[1]
    assert len(body.split()) >= 5, r.stdout


def test_help_never_imports_jax():
    # `ar1 <command> --help` answers at once: the parsers and their texts need no jax (or model) import.
    cmds = [[]] + [[c] for c in COMMANDS] + [list(c) for c in NESTED]
    code = ("import sys\nfrom ar1_jax import cli\n"
            f"for cmd in {cmds!r}:\n"
            "    try:\n        cli.main([*cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('jax', 'flax', 'numpy', 'grain', 'matplotlib') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=F.HANG_GUARD_S)
    assert r.returncode == 0, r.stderr[-3000:]


def test_no_command_prints_help_and_fails():
    r = ar1()
    assert r.returncode == 2
    assert "usage: ar1" in r.stderr


def test_configs_lists_names_with_docs():
    r = ar1("configs")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    for name in ("tiny", "tiny_qwen3", "vlm_0p5b", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_8b"):
        assert name in lines
    assert "Tiny Qwen2.5-VL-shaped backbone" in lines["tiny"]
    # Multi-line first paragraphs are joined into one line.
    assert "about 90M parameters" in lines["vlm_0p5b"]


def test_configs_show_prints_json_with_overrides():
    r = ar1("configs", "--show", "tiny", "--set", "model.text.num_layers=4", "--set", "mesh.fsdp=2")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["name"] == "tiny"
    assert data["model"]["text"]["num_layers"] == 4 and data["mesh"]["fsdp"] == 2


def test_unknown_config_exits_2_naming_it():
    r = ar1("configs", "--show", "no_such_config")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "no_such_config" in r.stderr
    assert r.stdout == ""


def test_bad_override_exits_2_naming_field():
    r = ar1("configs", "--show", "tiny", "--set", "model.text.num_layerz=3")
    assert r.returncode == 2
    assert "error: " in r.stderr and "model.text.num_layerz" in r.stderr


def test_eval_needs_a_checkpoint_or_a_baseline_and_checks_the_config():
    r = ar1("eval")
    assert r.returncode == 2 and "--checkpoint" in r.stderr
    r = ar1("eval", "--config", "no_such_config", "--policy", "planner")
    assert r.returncode == 2 and "no_such_config" in r.stderr
    r = ar1("eval", "--policy", "planner", "--checkpoint", "/no/such/dir")
    assert r.returncode == 2 and "/no/such/dir" in r.stderr


def test_train_names_a_bad_config_and_needs_a_workdir():
    r = ar1("train", "--config", "no_such_config", "--workdir", "/tmp/unused")
    assert r.returncode == 2 and "unknown config 'no_such_config'" in r.stderr
    r = ar1("train", "--config", "ar1_tiny")
    assert r.returncode == 2 and "--workdir" in r.stderr


def test_usage_errors_exit_2():
    assert ar1("no_such_command").returncode == 2
    assert ar1("convert", "check").returncode == 2  # --hf-dir is required
    r = ar1("convert", "check", "--hf-dir", "/no/such/dir")
    assert r.returncode == 2 and "/no/such/dir" in r.stderr


def test_in_process_main_matches_subprocess(capsys):
    assert cli.main(["configs"]) == 0
    assert "tiny" in capsys.readouterr().out
    assert cli.main(["configs", "--show", "nope"]) == 2
    assert "error: unknown config 'nope'" in capsys.readouterr().err
    assert cli.main(["eval"]) == 2


def test_parse_layers():
    assert bench_cli.parse_layers("2,24") == (2, 24)
    assert bench_cli.parse_layers("4") == (4,)
    for bad in ("", "a,2", "0,2", "-1"):
        with pytest.raises(cli.CLIError, match="--layers"):
            bench_cli.parse_layers(bad)


# ----------------------------------------------------------------------------------------------------
# Plumbing against stand-ins.


def test_convert_with_stand_in_converter(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("ar1_jax.convert.hf")

    def load(checkpoint_dir, dtype=None, mesh=None):
        calls.append(("load", checkpoint_dir, dtype, mesh))
        return {"visual": {"w": np.zeros((4, 4), np.float32)}, "lm_head": np.zeros((2, 8), np.float32)}

    def export(model, out_dir):
        calls.append(("export", out_dir))
        import pathlib

        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(out_dir) / "model.safetensors").write_bytes(b"x")

    fake.load, fake.export = load, export
    monkeypatch.setitem(sys.modules, "ar1_jax.convert.hf", fake)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))

    assert cli.main(["convert", "check", "--hf-dir", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "family:      qwen2_5_vl" in out and "parameters:  32 " in out
    assert "visual" in out and "lm_head" in out

    assert cli.main(["convert", "export", "--hf-dir", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert [c[0] for c in calls] == ["load", "load", "export"]


def test_convert_reports_missing_converter(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ar1_jax.convert.hf", None)  # import raises ModuleNotFoundError
    assert cli.main(["convert", "check", "--hf-dir", str(tmp_path)]) == 3
    assert "not yet available" in capsys.readouterr().err


def _fake_kernels_bench(monkeypatch):
    calls = []
    fake = types.ModuleType("ar1_jax.bench.kernels")
    fake.run = lambda out_dir, dtype, quick, passes=None: calls.append((out_dir, dtype, quick, passes)) or []
    monkeypatch.setitem(sys.modules, "ar1_jax.bench.kernels", fake)
    return calls


def test_bench_kernels_with_stand_in(tmp_path, monkeypatch, capsys):
    calls = _fake_kernels_bench(monkeypatch)
    assert cli.main(["bench", "kernels", "--out", str(tmp_path), "--quick"]) == 0
    assert calls == [(tmp_path, "bfloat16", True, None)]
    assert cli.main(["bench", "kernels", "--out", str(tmp_path), "--dtype", "float32"]) == 0
    assert calls[-1] == (tmp_path, "float32", False, None)
    monkeypatch.setitem(sys.modules, "ar1_jax.bench.kernels", None)
    assert cli.main(["bench", "kernels", "--out", str(tmp_path)]) == 3
    assert "ar1 bench kernels: not yet available" in capsys.readouterr().err


def test_bench_with_stand_in_compile_bench(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("ar1_jax.bench.compile_time")
    fake.run = lambda cfg, layers, out_dir: calls.append((cfg, layers, out_dir)) or {"ok": True}
    monkeypatch.setitem(sys.modules, "ar1_jax.bench.compile_time", fake)
    kernel_calls = _fake_kernels_bench(monkeypatch)
    argv = ["bench", "compile", "--config", "tiny", "--set", "model.text.num_heads=2", "--layers", "2,4",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    cfg, layers, out_dir = calls[-1]
    assert cfg.name == "tiny" and cfg.model.text.num_heads == 2 and layers == (2, 4)
    assert str(out_dir) == str(tmp_path)
    assert cli.main(["bench", "all", "--out", str(tmp_path)]) == 0
    cfg, layers, out_dir = calls[-1]
    assert cfg.name == bench_cli.BENCH_ALL_CONFIG and layers == bench_cli.parse_layers(bench_cli.BENCH_ALL_LAYERS)
    assert str(out_dir) == str(tmp_path / "compile")
    assert kernel_calls == [(tmp_path / "kernels", "bfloat16", False, None)]
    assert "[2/2] kernels" in capsys.readouterr().out


def test_bench_without_benches_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ar1_jax.bench.compile_time", None)
    monkeypatch.setitem(sys.modules, "ar1_jax.bench.kernels", None)
    assert cli.main(["bench", "compile", "--out", str(tmp_path)]) == 3
    assert "ar1 bench compile: not yet available" in capsys.readouterr().err
    assert cli.main(["bench", "all", "--out", str(tmp_path)]) == 3
    assert "kernels: not yet available" in capsys.readouterr().out


@pytest.mark.slow  # ~3 min of compiles; each stage is tested with its module, the orchestration in test_demo.py
def test_demo_end_to_end(tmp_path):
    r = ar1("demo", "--out", str(tmp_path), "--scenes", "8", "--sft-steps", "2", "--rl-steps", "1",
            "--eval-scenes", "2", "--show", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    metrics = json.loads((tmp_path / "demo_metrics.json").read_text())
    for i in range(1, 8):
        assert f"[{i}/7]" in r.stdout
    assert metrics["sft"]["steps"] == 2 and metrics["rl"]["steps"] == 1 and metrics["eval"]["scenes"] == 2
    assert "closed loop: AlpaSim score" in r.stdout and (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.skipif(importlib.util.find_spec("ar1_jax.convert.hf") is None
                    or importlib.util.find_spec("ar1_jax.model.vlm") is None,
                    reason="ar1_jax.convert.hf / ar1_jax.model.vlm not written yet")
def test_convert_end_to_end(tmp_path):
    from ar1_jax.config import get_config
    from ar1_jax.convert import hf
    from ar1_jax.model import vlm

    ckpt = tmp_path / "ckpt"
    hf.export(vlm.build_model(get_config("tiny").model, 0), ckpt)
    r = ar1("convert", "check", "--hf-dir", str(ckpt))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "family:      qwen2_5_vl" in r.stdout and "parameters:  244,640 " in r.stdout
    r = ar1("convert", "export", "--hf-dir", str(ckpt), "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "again" / "config.json").exists()
