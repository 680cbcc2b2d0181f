"""ar1_jax/data/tfds_builder.py and `ar1 data synth`: records -> a TFDS directory any TFDS reads."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ar1_fixtures as F

from ar1_jax.action import unicycle
from ar1_jax.config import get_config
from ar1_jax.data import tfds_builder as tb
from ar1_jax.text import coc, coc_parse

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny")


@pytest.fixture(scope="module")
def records(cfg):
    return list(tb.random_records(10, 3, cfg))


def _read(path, split):
    import tensorflow_datasets as tfds

    src = tfds.builder_from_directory(str(path)).as_data_source(split)
    return {ex["scene_id"].decode(): ex for ex in (src[i] for i in range(len(src)))}


def test_random_records_follow_the_schema(cfg, records):
    s, a = cfg.scene, cfg.action
    assert set(records[0]) == set(tb.RECORD_FIELDS)
    for r in records:
        assert r["images"].shape == (s.num_cameras, s.num_frames, s.image_height, s.image_width, 3)
        assert r["images"].dtype == np.uint8 and r["camera_ids"].dtype == np.int32
        assert r["camera_ids"].shape == (s.num_cameras,)
        for name, shape in (("history_xyz", (16, 3)), ("history_yaw", (16,)), ("future_xyz", (64, 3)),
                            ("future_yaw", (64,)), ("controls", (64, 2))):
            assert r[name].shape == shape and r[name].dtype == np.float32, name
            assert np.isfinite(r[name]).all()
        assert isinstance(r["v0"], np.float32) and r["v0"] > 0
        # The controls are labels of the future poses: integrating them reproduces the path.
        xy = np.asarray(unicycle.integrate(r["controls"], r["v0"], dt=a.dt).xy)
        assert np.abs(xy - r["future_xyz"][:, :2]).max() < 0.05
        # The reasoning states the decisions stored beside it.
        parsed = coc_parse.parse(r["cot"])
        assert coc.LONGITUDINAL.index(parsed.longitudinal) == r["longitudinal"]
        assert coc.LATERAL.index(parsed.lateral) == r["lateral"]
        assert (-1 if parsed.direction is None else coc.DIRECTIONS.index(parsed.direction)) == r["direction"]
        json.loads(r["map_json"]), json.loads(r["agents_json"])
    assert len({r["scene_id"] for r in records}) == len(records)
    again = next(tb.random_records(1, 3, cfg))
    assert again["scene_id"] == records[0]["scene_id"] and np.array_equal(again["images"], records[0]["images"])


def test_split_by_hash_is_stable_and_about_ten_percent():
    ids = [f"scene-{i}" for i in range(2000)]
    splits = [tb.split_of(i, 0.1) for i in ids]
    assert splits == [tb.split_of(i, 0.1) for i in ids]
    assert 0.07 < splits.count("test") / len(ids) < 0.13
    assert all(tb.split_of(i, 0.0) == "train" for i in ids)


def test_write_then_read_back_exactly(tmp_path, cfg, records):
    out = tb.write_dataset(tmp_path / "ds", iter(records), len(records), test_fraction=0.3, progress=False,
                           metadata={"generator": "random"})
    assert (out / "dataset_info.json").is_file() and list(out.glob("ar1_scenes-train.array_record-*"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the spool folder is gone
    meta = json.loads((out / "metadata.json").read_text())
    want = {s: sum(tb.split_of(r["scene_id"], 0.3) == s for r in records) for s in tb.SPLITS}
    assert meta["split_counts"] == want and meta["generator"] == "random"
    got = {}
    for split in tb.SPLITS:
        if want[split]:
            part = _read(out, split)
            assert all(tb.split_of(k, 0.3) == split for k in part)
            got.update(part)
    assert set(got) == {r["scene_id"] for r in records}
    for r in records:
        ex = got[r["scene_id"]]
        frames = np.stack(ex["images"]).reshape(r["images"].shape)  # PNG is lossless, camera-major
        np.testing.assert_array_equal(frames, r["images"])
        for name in ("camera_ids", "history_xyz", "history_yaw", "future_xyz", "future_yaw", "controls"):
            np.testing.assert_array_equal(ex[name], r[name])
        assert np.float32(ex["v0"]) == r["v0"]
        for name in ("cot", "family", "map_json", "agents_json"):
            assert ex[name].decode() == r[name]
        for name in ("longitudinal", "lateral", "direction"):
            assert int(ex[name]) == r[name]


def test_writer_names_the_bad_record_and_field(tmp_path, records):
    def attempt(change, strict=True):
        rec = dict(records[0], **change)
        with pytest.raises(tb.RecordError) as e:
            tb.write_dataset(tmp_path / "bad", iter([records[1], rec]), 2, progress=False, strict=strict)
        assert not (tmp_path / "bad").exists()
        return str(e.value)

    sid = records[0]["scene_id"]
    nan = records[0]["history_xyz"].copy()
    nan[3, 1] = np.nan
    msg = attempt({"history_xyz": nan})
    assert sid in msg and "`history_xyz`" in msg and "non-finite" in msg and "(3, 1)" in msg
    msg = attempt({"camera_ids": records[0]["camera_ids"][:3]})
    assert sid in msg and "`images`" in msg and "4 cameras but 3 camera_ids" in msg
    msg = attempt({"controls": np.zeros((64, 3), np.float32)})
    assert "`controls`" in msg and "[N, 2]" in msg
    msg = attempt({"scene_id": records[1]["scene_id"]})
    assert "`scene_id`" in msg and "repeated" in msg
    short = dict(records[0])
    del short["cot"]
    with pytest.raises(tb.RecordError, match="`cot`: missing"):
        tb.write_dataset(tmp_path / "bad", iter([short]), 1, progress=False)
    with pytest.raises(ValueError, match="ran out after 2 of 5"):
        tb.write_dataset(tmp_path / "bad", iter(records[:2]), 5, progress=False)


def test_refuses_to_overwrite_unless_asked(tmp_path, records):
    out = tb.write_dataset(tmp_path / "ds", iter(records[:3]), 3, test_fraction=0.0, progress=False)
    with pytest.raises(ValueError, match="already holds a dataset"):
        tb.write_dataset(out, iter(records[3:6]), 3, progress=False)
    tb.write_dataset(out, iter(records[3:6]), 3, test_fraction=0.0, progress=False, overwrite=True)
    assert set(_read(out, "train")) == {r["scene_id"] for r in records[3:6]}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a dataset directory"):
        tb.write_dataset(tmp_path / "other", iter(records[:1]), 1, progress=False, overwrite=True)


_READER = textwrap.dedent("""
    import sys
    import tensorflow_datasets as tfds
    src = tfds.builder_from_directory(sys.argv[1]).as_data_source("train")
    ex = src[0]
    assert "ar1_jax" not in sys.modules and not any(m.startswith("ar1_jax.") for m in sys.modules)
    assert "tensorflow" not in sys.modules
    print(len(src), len(ex["images"]), ex["images"][0].shape, ex["images"][0].dtype, ex["history_xyz"].shape,
          ex["scene_id"].decode())
""")


def test_cli_synth_and_a_reader_that_does_not_import_ar1_jax(tmp_path, capsys):
    out = tmp_path / "synth"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "ar1_jax.cli", "data", "synth", "--out", str(out), "--num-scenes", "12",
                        "--seed", "5", "--config", "ar1_tiny"], capture_output=True, text=True, timeout=F.HANG_GUARD_S,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {out}" in r.stdout and "12 scenes from" in r.stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_scenes"] == 12 and meta["seed"] == 5 and meta["config"] == "ar1_tiny"
    if meta["generator"].endswith("random_records"):
        assert "warning: ar1_jax.data.synthetic.generate_records is not available" in r.stderr
    # A Python that knows nothing of ar1_jax (run from elsewhere, no PYTHONPATH) reads the directory.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r2 = subprocess.run([sys.executable, "-c", _READER, str(out)], capture_output=True, text=True,
                        timeout=F.HANG_GUARD_S, cwd=tmp_path, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    n, frames, *_ = r2.stdout.split()
    assert int(n) == meta["split_counts"]["train"] and int(frames) == 16
    assert "(64, 96, 3) uint8 (16, 3)" in r2.stdout
    # Usage errors exit 2 and name the problem (in this process: a fresh one costs a jax import).
    from ar1_jax import cli

    capsys.readouterr()
    assert cli.main(["data", "synth", "--out", str(out)]) == 2
    assert "already holds a dataset (add --overwrite)" in capsys.readouterr().err


def test_cli_synth_usage_errors(tmp_path, capsys):
    from ar1_jax import cli

    assert cli.main(["data", "synth", "--out", str(tmp_path / "x"), "--num-scenes", "0"]) == 2
    assert "--num-scenes: expected a positive count, got 0" in capsys.readouterr().err
    assert cli.main(["data", "synth", "--out", str(tmp_path / "x"), "--test-fraction", "1.5"]) == 2
    assert "--test-fraction" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    assert cli.main(["data", "synth", "--out", str(tmp_path / "busy")]) == 2
    assert "is a non-empty directory that is not a dataset" in capsys.readouterr().err
    assert cli.main(["data"]) == 2  # no action: help


@pytest.mark.slow
def test_cli_synth_256_scenes_in_under_two_minutes(tmp_path):
    """Two minutes of the child's CPU time, not of wall time: a busy machine does not fail it."""
    import resource

    def children_cpu_s():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    t0 = children_cpu_s()
    r = subprocess.run([sys.executable, "-m", "ar1_jax.cli", "data", "synth", "--out", str(tmp_path / "d"),
                        "--num-scenes", "256", "--seed", "0"], capture_output=True, text=True,
                       timeout=F.HANG_GUARD_S, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = children_cpu_s() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert seconds < 120, seconds
    assert json.loads((tmp_path / "d" / "metadata.json").read_text())["num_scenes"] == 256
