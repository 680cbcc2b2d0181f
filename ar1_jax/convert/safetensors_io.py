"""Dependency-free safetensors reader/writer (numpy + ml_dtypes only: no pickle, no torch).

Format: u64-LE header length N; N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}}
(offsets relative to the header's end) + optional "__metadata__": {str: str}; raw little-endian data.
Directories use the HF layout: `model.safetensors`, or shards listed in `model.safetensors.index.json`."""
from __future__ import annotations

import contextlib, difflib, json, math, mmap, os, re, shutil, struct, tempfile
from pathlib import Path
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DTYPES = {  # safetensors dtype name -> little-endian numpy dtype
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype(np.bool_),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed safetensors file or index, or a tensor that cannot be stored."""


class _File:
    """One open safetensors file: `entries` (key -> (dtype, shape, begin, end)), `metadata`, read-only mmap."""

    def __init__(self, path):
        self.path, size = str(path), os.path.getsize(path)
        with open(path, "rb") as f:
            if size < 8:
                raise SafetensorsError(f"{path}: truncated file ({size} bytes; the header length alone is 8)")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise SafetensorsError(f"{path}: header length {n} exceeds file size {size} (truncated or corrupt)")
            try:
                if not isinstance(header := json.loads(f.read(n)), dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:  # also JSONDecodeError, UnicodeDecodeError
                raise SafetensorsError(f"{path}: corrupted header ({e})") from None
            self.metadata, self.data_start = header.pop("__metadata__", None) or {}, 8 + n
            self.entries = {k: self._parse(k, e, size - 8 - n) for k, e in header.items()}
            spans = sorted((b, e, k) for k, (_, _, b, e) in self.entries.items() if e > b)
            for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
                if b1 < e0:
                    raise SafetensorsError(f"{path}: tensor {k1!r}: data_offsets [{b1}, {e1}] overlap "
                                           f"tensor {k0!r} at [{b0}, {e0}]")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _parse(self, key, e, data_size):
        where = f"{self.path}: tensor {key!r}"
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise SafetensorsError(f"{where}: corrupted header entry {e!r}")
        dt, shape, offs = DTYPES.get(e["dtype"]), e["shape"], e["data_offsets"]
        if dt is None:
            raise SafetensorsError(f"{where} has unsupported dtype {e['dtype']}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and isinstance(offs, list)
                and len(offs) == 2 and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1]):
            raise SafetensorsError(f"{where}: invalid shape {shape!r} or data_offsets {offs!r}")
        (b, end), nbytes = offs, math.prod(shape) * dt.itemsize
        if end > data_size:
            raise SafetensorsError(f"{where}: data_offsets [{b}, {end}] exceed file size "
                                   f"(data section holds {data_size} bytes; truncated file?)")
        if end - b != nbytes:
            raise SafetensorsError(f"{where}: shape {shape} of {e['dtype']} needs {nbytes} bytes "
                                   f"but data_offsets [{b}, {end}] span {end - b}")
        return dt, tuple(shape), b, end

    def array(self, key) -> np.ndarray:
        """Zero-copy read-only view of tensor `key` onto the mmap."""
        dt, shape, b, e = self.entries[key]
        return np.frombuffer(self._mm, dt, count=(e - b) // dt.itemsize, offset=self.data_start + b).reshape(shape)


class CheckpointReader:
    """Read-only, memory-mapped access to a checkpoint directory (single file or sharded + index)
    or to one .safetensors file. `metadata`: the file's "__metadata__" or the index's "metadata"."""

    def __init__(self, path):
        self.path = p = Path(path)
        names = None  # key -> shard file name, for sharded checkpoints
        if p.is_dir() and not (p / SINGLE_FILE).is_file():
            if not (p / INDEX_FILE).is_file():
                raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {p}")
            try:
                index = json.loads((p / INDEX_FILE).read_text())
                names, self.metadata = dict(index["weight_map"]), dict(index.get("metadata", {}))
                if not all(isinstance(v, str) and Path(v).name == v for v in names.values()):
                    raise ValueError("weight_map values must be plain file names")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise SafetensorsError(f"{p / INDEX_FILE}: malformed index ({type(e).__name__}: {e})") from None
        elif not p.exists():
            raise FileNotFoundError(f"checkpoint path {p} does not exist")
        self._files, self._map = {}, {}  # shard name -> _File, tensor key -> _File
        try:
            if names is None:
                f = self._files[SINGLE_FILE] = _File(p / SINGLE_FILE if p.is_dir() else p)
                self.metadata, self._map = f.metadata, dict.fromkeys(f.entries, f)
            for key, shard in sorted((names or {}).items()):
                if shard not in self._files:
                    if not (p / shard).is_file():
                        raise FileNotFoundError(f"{p / INDEX_FILE}: references missing shard {shard!r} "
                                                f"(for tensor {key!r})")
                    self._files[shard] = _File(p / shard)
                if key not in self._files[shard].entries:
                    raise SafetensorsError(f"{p / INDEX_FILE}: tensor {key!r} is mapped to {shard} "
                                           f"but that file has no such tensor")
                self._map[key] = self._files[shard]
        except BaseException:
            self.close()
            raise

    def _file(self, key) -> _File:
        if key not in self._map:
            close = difflib.get_close_matches(key, self._map, n=5) if isinstance(key, str) else []
            raise KeyError(f"tensor {key!r} not in checkpoint {self.path}"
                           + (f"; close matches: {close}" if close else ""))
        return self._map[key]

    def keys(self) -> list[str]:
        """Sorted list of all tensor names."""
        return sorted(self._map)

    def __contains__(self, key) -> bool: return key in self._map
    def __len__(self) -> int: return len(self._map)

    def shape(self, key) -> tuple:
        """Shape tuple of tensor `key` (from the header; no data read)."""
        return self._file(key).entries[key][1]

    def dtype(self, key) -> np.dtype:
        """numpy dtype of tensor `key` (BF16/F8 as ml_dtypes dtypes)."""
        return self._file(key).entries[key][0]

    def file_of(self, key) -> str:
        """Path (str) of the file holding tensor `key`."""
        return self._file(key).path

    def get(self, key) -> np.ndarray:
        """Zero-copy, read-only ndarray of tensor `key`, memory-mapped from its file."""
        return self._file(key).array(key)

    def get_slice(self, key, index) -> np.ndarray:
        """Writable ndarray copy of region `index` (tuple of slices, as jax.make_array_from_callback
        passes) of tensor `key`; only the pages touched are read."""
        return np.array(self.get(key)[tuple(index) if isinstance(index, list) else index], copy=True)

    def close(self):
        """Close all mmaps (arrays handed out earlier keep their mapping alive until freed)."""
        for f in self._files.values():
            with contextlib.suppress(BufferError):  # arrays still alive keep their mapping until freed
                f._mm.close()

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()


def _prepare(key, arr):
    """Return (C-contiguous little-endian ndarray, safetensors dtype name) for storing `arr`."""
    if not isinstance(key, str) or key == "__metadata__":
        raise SafetensorsError(f"invalid tensor name {key!r}")
    arr = np.asarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
    if arr.dtype not in _NAMES:
        raise SafetensorsError(f"tensor {key!r}: dtype {arr.dtype} cannot be stored in safetensors")
    return (arr if arr.flags.c_contiguous else arr.copy(order="C")), _NAMES[arr.dtype]


def _atomic_write(path: Path, write):
    """Call write(f) on a temp file next to `path`, fsync it, then os.replace it onto `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Atomically write `tensors` (in sorted key order) as one safetensors file at `path`.
    Returns the number of tensor data bytes written."""
    items = [(k, *_prepare(k, tensors[k])) for k in sorted(tensors)]
    if metadata and not all(isinstance(x, str) for kv in metadata.items() for x in kv):
        raise SafetensorsError(f"{path}: metadata must map str -> str, got {metadata!r}")
    header, off = ({"__metadata__": dict(metadata)} if metadata else {}), 0
    for k, a, name in items:
        header[k] = {"dtype": name, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad to 8-byte alignment like the reference library

    def write(f):
        f.write(struct.pack("<Q", len(hb)) + hb)
        for _, a, _ in items:
            f.write(a.reshape(-1).view(np.uint8))
    _atomic_write(Path(path), write)
    return off


def write_checkpoint(out_dir, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                     max_shard_bytes: int = 5 * 2**30, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write an HF-layout checkpoint into `out_dir`: `model.safetensors` if all tensors fit in one shard
    of `max_shard_bytes`, else `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`.
    `tensors`: a dict or a stream of (key, array); at most one shard is buffered. Shards are cut as HF
    does (a tensor overflowing the current shard starts a new one). Shards are staged in a hidden temp
    dir, moved in, then the index is written; files of an older layout in `out_dir` are removed.
    Returns the list of paths written (shards, then the index if sharded)."""
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    parts, buf, size, total = [], {}, 0, 0
    try:
        for key, arr in (tensors.items() if isinstance(tensors, Mapping) else tensors):
            arr, _ = _prepare(key, arr)
            if key in buf or any(key in p for p in parts):
                raise SafetensorsError(f"duplicate tensor {key!r}")
            if buf and size + arr.nbytes > max_shard_bytes:
                write_file(stage / str(len(parts)), buf, metadata)
                parts, buf, size = parts + [set(buf)], {}, 0
            buf[key], size, total = arr, size + arr.nbytes, total + arr.nbytes
        write_file(stage / str(len(parts)), buf, metadata)
        parts.append(set(buf))
        n = len(parts)
        names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(stage / str(i), out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    keep = set(names) | ({INDEX_FILE} if n > 1 else set())  # an old index is replaced atomically below
    for p in out.iterdir():
        if p.name not in keep and (p.name in (SINGLE_FILE, INDEX_FILE) or _SHARD_RE.fullmatch(p.name)):
            p.unlink()
    if n == 1:
        return [out / SINGLE_FILE]
    weight_map = {k: names[i] for i, keys in enumerate(parts) for k in keys}
    text = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / INDEX_FILE, lambda f: f.write(text.encode()))
    return [out / name for name in names] + [out / INDEX_FILE]
