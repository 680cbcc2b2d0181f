import json
import os
import re
import struct

import ml_dtypes
import numpy as np
import pytest

from ar1_jax.convert.safetensors_io import (
    DTYPES, INDEX_FILE, SINGLE_FILE, CheckpointReader, SafetensorsError, write_checkpoint, write_file)

SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (4, 5), (2, 3, 4)]


def rand(name, shape, rng):
    dt = DTYPES[name]
    if name == "BOOL":
        return np.asarray(rng.random(shape) < 0.5)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True))
    return np.asarray((rng.standard_normal(shape) * 4).astype(dt))


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def raw_file(path, header, data=b""):
    hb = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(int.from_bytes(os.urandom(4), "little"))


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_roundtrip_every_dtype(tmp_path, rng, name):
    tensors = {f"t{i}.{name}": rand(name, s, rng) for i, s in enumerate(SHAPES)}
    tensors["noncontig"] = rand(name, (6, 4), rng)[::2, ::-1]
    n = write_file(tmp_path / "x.safetensors", tensors, metadata={"format": "np"})
    assert n == sum(a.nbytes for a in tensors.values())
    with CheckpointReader(tmp_path / "x.safetensors") as r:
        assert r.keys() == sorted(tensors) and r.metadata == {"format": "np"}
        for k, a in tensors.items():
            got = r.get(k)
            assert same(got, a), k
            assert r.shape(k) == a.shape and r.dtype(k) == a.dtype and not got.flags.writeable
            assert r.file_of(k) == str(tmp_path / "x.safetensors")


def test_header_layout_and_big_endian(tmp_path, rng):
    a = rng.standard_normal((3, 2)).astype(">f4")
    p = tmp_path / "be.safetensors"
    write_file(p, {"b": a, "a": np.arange(3, dtype=np.int64)})
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and list(json.loads(raw[8:8 + n])) == ["a", "b"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with CheckpointReader(p) as r:
        np.testing.assert_array_equal(r.get("b"), a)
        assert r.dtype("b") == np.dtype("<f4")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "x.safetensors"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk on fire")))
    with pytest.raises(OSError, match="disk on fire"):
        write_file(p, {"a": np.zeros(3, np.float32)})
    assert os.listdir(tmp_path) == []
    with pytest.raises(SafetensorsError, match="'obj'.*cannot be stored"):
        write_file(p, {"obj": np.array([object()])})


NP_NAMES = [n for n in sorted(DTYPES) if n not in ("BF16", "F8_E4M3", "F8_E5M2")]


def test_ours_read_by_reference_lib(tmp_path, rng):
    st_np = pytest.importorskip("safetensors.numpy")
    tensors = {f"{n}.{i}": rand(n, s, rng) for n in NP_NAMES for i, s in enumerate(SHAPES)}
    write_file(tmp_path / "a.safetensors", tensors, metadata={"k": "v"})
    got = st_np.load_file(tmp_path / "a.safetensors")
    assert sorted(got) == sorted(tensors)
    for k, a in tensors.items():
        assert same(got[k], a), k

    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    low = {f"{n}.{i}": rand(n, s, rng) for n in ("BF16", "F8_E4M3", "F8_E5M2", "BOOL")
           for i, s in enumerate(SHAPES)}
    write_checkpoint(tmp_path / "ckpt", low, metadata={"format": "pt"})
    got = st_torch.load_file(tmp_path / "ckpt" / SINGLE_FILE)
    tdt = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
           "BOOL": torch.bool}
    for k, a in low.items():
        assert got[k].dtype == tdt[k.split(".")[0]] and tuple(got[k].shape) == a.shape, k
        np.testing.assert_array_equal(got[k].float().numpy(), a.astype(np.float32), err_msg=k)


def test_reference_lib_read_by_ours(tmp_path, rng):
    st_np = pytest.importorskip("safetensors.numpy")
    tensors = {f"{n}.{i}": rand(n, s, rng) for n in NP_NAMES for i, s in enumerate(SHAPES)}
    st_np.save_file(tensors, tmp_path / "np.safetensors", metadata={"format": "np"})
    with CheckpointReader(tmp_path / "np.safetensors") as r:
        assert r.keys() == sorted(tensors) and r.metadata == {"format": "np"}
        for k, a in tensors.items():
            assert same(r.get(k), a), k

    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tt = {"bf16": torch.randn(5, 3).to(torch.bfloat16), "bf16_0d": torch.tensor(1.5, dtype=torch.bfloat16),
          "f8a": torch.randn(4, 4).to(torch.float8_e4m3fn), "f8b": torch.randn(9).to(torch.float8_e5m2),
          "f16": torch.randn(2, 2).half(), "b": torch.rand(6) < 0.5, "i64": torch.randint(-9, 9, (3, 0, 2)),
          "f32": torch.randn(7, 2)}
    (tmp_path / "pt").mkdir()
    st_torch.save_file(tt, tmp_path / "pt" / SINGLE_FILE, metadata={"format": "pt"})
    with CheckpointReader(tmp_path / "pt") as r:
        assert r.dtype("bf16") == ml_dtypes.bfloat16 and r.dtype("f8a") == ml_dtypes.float8_e4m3fn
        for k, t in tt.items():
            got = r.get(k)
            assert got.shape == tuple(t.shape), k
            np.testing.assert_array_equal(got.astype(np.float32), t.float().numpy(), err_msg=k)


def test_sharded_roundtrip_streaming(tmp_path, rng):
    tensors = {f"layer.{i}.{n}": rand(n, (int(rng.integers(1, 40)), 3), rng)
               for i, n in enumerate(["F32", "BF16", "I8", "BOOL", "F16", "I64"] * 3)}
    tensors["big"] = rng.standard_normal((100, 10)).astype(np.float32)  # > max: its own shard
    tensors["empty"] = np.zeros((0, 4), np.float32)
    out = tmp_path / "ckpt"
    (out).mkdir()
    (out / SINGLE_FILE).write_bytes(b"stale")  # must be removed by a sharded write
    written = write_checkpoint(out, ((k, a) for k, a in tensors.items()), max_shard_bytes=600)
    shards = sorted(p for p in os.listdir(out) if p.startswith("model-"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(os.listdir(out)) == sorted(shards + [INDEX_FILE])
    assert [p.name for p in written] == shards + [INDEX_FILE]
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["metadata"] == {"total_size": sum(a.nbytes for a in tensors.values())}
    assert sorted(index["weight_map"]) == sorted(tensors) and set(index["weight_map"].values()) == set(shards)
    with CheckpointReader(out) as r:
        assert r.keys() == sorted(tensors) and len(r) == len(tensors)
        for k, a in tensors.items():
            assert same(r.get(k), a), k
            assert os.path.basename(r.file_of(k)) == index["weight_map"][k]
    per_shard = {}
    for k, s in index["weight_map"].items():
        per_shard.setdefault(s, []).append(tensors[k].nbytes)
    assert all(sum(v) <= 600 or len(v) == 1 for v in per_shard.values())
    assert per_shard[index["weight_map"]["big"]] == [4000]  # oversized tensor: its own shard

    # rewriting into the same dir as a single file drops the old shards and index
    assert [p.name for p in write_checkpoint(out, {"a": np.ones(2, np.float32)})] == [SINGLE_FILE]
    assert os.listdir(out) == [SINGLE_FILE]
    with CheckpointReader(out) as r:
        assert r.keys() == ["a"]
    write_checkpoint(tmp_path / "empty", {})
    with CheckpointReader(tmp_path / "empty") as r:
        assert r.keys() == []


def test_get_slice_matches_numpy(tmp_path, rng):
    tensors = {"a": rand("F32", (13, 7, 5), rng), "b": rand("BF16", (17, 9), rng), "c": rand("I8", (), rng)}
    write_file(tmp_path / "s.safetensors", tensors)
    with CheckpointReader(tmp_path / "s.safetensors") as r:
        assert same(r.get_slice("c", ()), tensors["c"])
        for _ in range(50):
            k = "a" if rng.random() < 0.5 else "b"
            full = tensors[k]
            idx = []
            for d in full.shape:
                lo, hi = sorted(rng.integers(0, d + 1, size=2))
                idx.append(slice(None) if rng.random() < 0.2 else slice(int(lo), int(hi)))
            idx = tuple(idx[: int(rng.integers(1, full.ndim + 1))])
            got = r.get_slice(k, idx)
            assert same(got, full[idx]) and got.flags.writeable and got.flags.owndata


def test_missing_paths_and_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no model.safetensors or {INDEX_FILE} in {tmp_path}"):
        CheckpointReader(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        CheckpointReader(tmp_path / "nope")
    write_file(tmp_path / SINGLE_FILE, {"model.layers.0.mlp.weight": np.zeros(2, np.float32)})
    with CheckpointReader(tmp_path) as r:
        with pytest.raises(KeyError, match=r"model\.layers\.0\.mlp\.weigth.*close matches.*mlp\.weight"):
            r.get("model.layers.0.mlp.weigth")
        with pytest.raises(KeyError, match="'zzz' not in checkpoint"):
            r.shape("zzz")
        assert "zzz" not in r and "model.layers.0.mlp.weight" in r


def test_index_errors(tmp_path):
    write_file(tmp_path / "model-00001-of-00002.safetensors", {"a": np.zeros(2, np.float32)})
    idx = {"metadata": {"total_size": 16},
           "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / INDEX_FILE).write_text(json.dumps(idx))
    with pytest.raises(FileNotFoundError, match="missing shard 'model-00002-of-00002.safetensors'.*'b'"):
        CheckpointReader(tmp_path)
    idx["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    (tmp_path / INDEX_FILE).write_text(json.dumps(idx))
    with pytest.raises(SafetensorsError, match="tensor 'b' is mapped to model-00001-of-00002"):
        CheckpointReader(tmp_path)
    (tmp_path / INDEX_FILE).write_text("{not json")
    with pytest.raises(SafetensorsError, match="malformed index"):
        CheckpointReader(tmp_path)


def test_format_errors_name_file_and_key(tmp_path, rng):
    good = tmp_path / "good.safetensors"
    write_file(good, {"w": rng.standard_normal((8, 8)).astype(np.float32)})
    data = good.read_bytes()
    cases = {
        "trunc.safetensors": (data[:-10], r"tensor 'w': data_offsets \[0, 256\] exceed file size"),
        "tiny.safetensors": (data[:5], "truncated file"),
        "hdr.safetensors": (data[:40], "header length .* exceeds file size"),
        "json.safetensors": (data[:8] + b"{garbage" + data[16:], "corrupted header"),
    }
    for fname, (blob, msg) in cases.items():
        (tmp_path / fname).write_bytes(blob)
        with pytest.raises(SafetensorsError, match=re.escape(str(tmp_path / fname)) + ".*" + msg):
            CheckpointReader(tmp_path / fname)

    def check(header, data, msg):
        p = raw_file(tmp_path / "c.safetensors", header, data)
        with pytest.raises(SafetensorsError, match=re.escape(str(p)) + ": " + msg):
            CheckpointReader(p)
    check({"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8),
          "tensor 'x' has unsupported dtype C64")
    check({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8),
          r"tensor 'x': shape \[3\] of F32 needs 12 bytes but data_offsets \[0, 8\] span 8")
    check({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12),
          r"tensor 'y': data_offsets \[4, 12\] overlap tensor 'x'")
    check({"x": {"dtype": "F32", "shape": [2]}}, bytes(8), "tensor 'x': corrupted header entry")
    check({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "tensor 'x': invalid shape")
    check([1, 2], b"", r"corrupted header \(not a JSON object\)")
