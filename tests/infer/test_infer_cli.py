"""`ar1 infer` on the tiny config: deterministic for a seed, outputs written, scene errors named."""

import json
import subprocess
import sys

import numpy as np
import pytest

import ar1_fixtures as F

from ar1_jax.config import get_config
from ar1_jax.infer import scene as scene_lib


def _infer(tmp_path, name, *args):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "ar1_jax.cli", "infer", "--config", "ar1_tiny", "--out", str(out),
                           "--samples", "2", *args], capture_output=True, text=True, timeout=F.HANG_GUARD_S)
    return proc, out


def _infer_in_process(capsys, tmp_path, name, *args):
    """`ar1 infer` through `cli.main` in this process (the subprocess path is the test above's): a bad
    scene fails before the model is built, so a fresh process would only add a jax import."""
    from ar1_jax import cli

    capsys.readouterr()
    code = cli.main(["infer", "--config", "ar1_tiny", "--out", str(tmp_path / name), "--samples", "2", *args])
    return code, capsys.readouterr().err


def test_infer_is_deterministic_and_writes_outputs(tmp_path, capsys):
    """The same seed gives the same samples in a fresh process and in this one (whose compiles the
    persistent compilation cache serves from the first run)."""
    cfg = get_config("ar1_tiny")
    scene = scene_lib.random_scene(cfg, seed=int(np.random.default_rng().integers(1000)))
    scene.future_xyz = np.zeros((64, 3), np.float32)
    path = tmp_path / "scene.npz"
    scene_lib.save_scene(path, scene)
    a, out_a = _infer(tmp_path, "a", "--scene", str(path), "--seed", "5")
    assert a.returncode == 0, a.stderr[-3000:]
    code, err = _infer_in_process(capsys, tmp_path, "b", "--scene", str(path), "--seed", "5")
    out_b = tmp_path / "b"
    assert code == 0, err[-3000:]
    ja, jb = (json.loads((o / "trajectory.json").read_text()) for o in (out_a, out_b))
    assert ja["samples"] == jb["samples"]
    assert len(ja["samples"]) == 2 and np.asarray(ja["samples"][0]["trajectory_xy"]).shape == (64, 2)
    assert (out_a / "bev.png").stat().st_size > 10_000
    assert "sample 0:" in a.stdout and "timing:" in a.stdout


def test_bad_scene_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 4, 64, 96, 3), np.uint8))
    code, err = _infer_in_process(capsys, tmp_path, "c", "--scene", str(bad))
    assert code == 2 and "history_xyz" in err and "bad.npz" in err


def _junk_archives(tmp_path):
    """Files a user might pass as a scene that are not scene archives."""
    random_bytes = tmp_path / "random.npz"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(300))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, images=np.array([{"a": 1}, None], dtype=object), history_xyz=np.zeros((16, 3)))
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    truncated = tmp_path / "truncated.npz"
    scene_lib.save_scene(tmp_path / "whole.npz", scene_lib.random_scene(get_config("ar1_tiny"), 0))
    whole = (tmp_path / "whole.npz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    return [random_bytes, pickled, single, truncated]


def test_junk_archives_are_not_scene_archives(tmp_path):
    for path in _junk_archives(tmp_path):
        with pytest.raises(ValueError) as err:
            scene_lib.load_scene(path)
        message = str(err.value)
        assert str(path) in message and "not a valid scene archive" in message, message
        assert "images" in message and "history_xyz" in message, message  # what was expected
        assert "allow_pickle" not in message, message


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, history_xyz=np.zeros((16, 3), np.float32))
    with pytest.raises(ValueError, match=r"half\.npz: not a valid scene archive: missing field 'images'"):
        scene_lib.load_scene(path)


def test_junk_scene_on_the_command_line_exits_2(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(1).bytes(300))
    code, err = _infer_in_process(capsys, tmp_path, "d", "--scene", str(junk))
    assert code == 2, err[-3000:]
    assert f"error: {junk}: not a valid scene archive" in err and "allow_pickle" not in err
