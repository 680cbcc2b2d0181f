"""The SFT input pipeline: a TFDS scene directory -> grain -> global SFT batches on a device mesh.

    ScenesSource (random access over the split's array_record files; a record that cannot be read or
    parsed becomes a bad-record marker instead of an exception)
    -> this process's shard (`grain.sharding.ShardByJaxProcess`: contiguous, equal, remainder dropped)
    -> shuffle (seeded; a new order each epoch) -> repeat (`data.num_epochs`, 0 = forever)
    -> DecodeScene (validate; PNG -> uint8 -> `preprocess_images`; history tokens (`encode_history`),
       future tokens (`encode_future`) and normalised controls (`normalize`); `build_prompt` with the
       CoC text) in `data.num_threads` threads
    -> pack `batch_size / process_count` examples (`build_sft_batch` at the smallest bucket length
       that holds the longest; bad records fail or are skipped and counted)
    -> prefetch (`data.prefetch` batches: a thread, or `data.worker_count` grain worker processes)
    -> `SFTBatchIterator`: the bucket agreed by all processes, then global `jax.Array`s.

Global batch layout: `ar1_jax.data.sft_batch.SFT_SPEC` (what `ar1_jax.model.vla.sft_loss` reads).
Every field is split on its batch dim over the mesh axes the rules give `batch` (`[3, B, T]` positions
on dim 1); images are per scene, `media.image.pixel_values [B, patches, D]`, so a device holds its own
scenes' patches and no process needs another's images; the vision `layout` of one scene, shared by
every scene, is replicated (every process computes it from the same grid).

Resuming: `SFTBatchIterator.get_state()` is grain's iterator state plus the skipped-record count;
`set_state` on a fresh iterator over the same data, config and process layout continues with exactly
the batches the first one would have produced next.

Bad input never makes a silently wrong batch: a record that is unreadable (corrupt bytes), has the
wrong number of cameras or frames, an undecodable PNG, non-finite or mis-shaped poses / controls /
v0, an empty reasoning trace or one that does not fit the longest bucket raises `BadRecordError`
naming the record (its scene_id, or `split[index]` when it cannot be parsed) and the field; with
`data.skip_bad_records` it is dropped, logged and counted (`SFTBatchIterator.skipped`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import grain
import numpy as np

from ar1_jax.config import Config
from ar1_jax.data.scene_decode import BAD, BadRecordError, DecodeScene, ScenesSource
from ar1_jax.data.sft_batch import SFT_SPEC, build_sft_batch

log = logging.getLogger(__name__)

__all__ = ["BadRecordError", "ScenesSource", "DecodeScene", "PackBatch", "PackIterDataset", "default_buckets",
           "pad_batch", "host_dataset", "make_pipeline", "batch_shardings", "SFTBatchIterator", "BAD"]

_PAD_MULTIPLE = 64
MAX_SKIPPED_KEPT = 1000
_DEFAULT_REASONING_ALLOWANCE = (64, 128, 256)


# ----------------------------------------------------------------------------------------------------
# Buckets and packing.


def default_buckets(cfg: Config, tokenizer, reasoning_allowance: Sequence[int] = _DEFAULT_REASONING_ALLOWANCE,
                    multiple: int = _PAD_MULTIPLE) -> tuple[int, ...]:
    """Bucket lengths when `data.bucket_lengths` is empty: the fixed part of a training sequence
    (images, history, scaffolding, CoT markers, 128 future tokens) plus 64 / 128 / 256 reasoning
    tokens (`reasoning_allowance`), each rounded up to a multiple of 64 (`multiple`)."""
    from ar1_jax.data import images as image_lib
    from ar1_jax.text import prompt as prompt_lib

    s, v = cfg.scene, cfg.model.vision
    per_image = image_lib.image_token_count((1, s.image_height // v.patch_size, s.image_width // v.patch_size),
                                            v.spatial_merge_size)
    n = s.num_cameras * s.num_frames
    ids, _ = prompt_lib.build_prompt(tokenizer, num_images=n, image_token_counts=[per_image] * n,
                                     history_token_ids=[0] * prompt_lib.NUM_HISTORY_TOKENS, cot="",
                                     include_future_start=True,
                                     future_token_ids=[0] * prompt_lib.NUM_FUTURE_TOKENS)
    return tuple(sorted({_round_up(len(ids) + r, multiple) for r in reasoning_allowance}))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pad_batch(batch: dict, length: int, pad_id: int) -> dict:
    """A `build_sft_batch` host batch right-padded to `length` tokens (what `build_sft_batch(...,
    length=length)` gives for the same examples: pad ids, False masks, position 0)."""
    return SFT_SPEC.pad(batch, length, pad_id)


class PackBatch:
    """Examples -> a host batch: `build_sft_batch` at the smallest bucket that holds the longest one.

    Returns `{"batch": arrays (no media), "pixel_values", "image_grid_thw" (one example's),
    "bucket", "scene_ids", "skipped": [(record, field, reason), ...]}`.
    """

    def __init__(self, cfg: Config, buckets: Sequence[int]):
        self.cfg = cfg
        self.buckets = tuple(buckets)

    def __call__(self, examples: list[dict], skipped: list[tuple] = ()) -> dict:
        longest = max(len(e["input_ids"]) for e in examples)
        bucket = next(b for b in self.buckets if b >= longest)
        grid = examples[0]["image_grid_thw"]
        for e in examples[1:]:
            if not np.array_equal(e["image_grid_thw"], grid):  # cannot happen: every frame is resized to scene size
                raise BadRecordError(e["scene_id"], "images", f"image grid {e['image_grid_thw'].tolist()} differs "
                                     f"from the batch's {grid.tolist()}")
        batch = build_sft_batch(self.cfg, [dict(input_ids=e["input_ids"], segments=e["segments"],
                                                image_grid_thw=e["image_grid_thw"], controls=e["controls"])
                                           for e in examples], length=bucket)
        batch.pop("media")
        return dict(batch=batch, pixel_values=np.concatenate([e["pixel_values"] for e in examples], 0),
                    image_grid_thw=grid, bucket=bucket, scene_ids=[e["scene_id"] for e in examples],
                    skipped=list(skipped))


class PackIterDataset(grain.IterDataset):
    """Groups `batch_size` good examples into one `PackBatch` element; a bad-record marker is returned
    as the element (fail mode) or dropped and listed in the next batch (skip mode). A final partial
    batch is dropped (its skips still come, as a `{"batch": None, "skipped": [...]}` element).
    State: the parent's (nothing is buffered across calls)."""

    def __init__(self, parent, batch_size: int, pack: PackBatch, skip_bad: bool):
        super().__init__(parent)
        self._batch_size, self._pack, self._skip_bad = batch_size, pack, skip_bad

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self._batch_size, self._pack, self._skip_bad)

    def __str__(self):
        return f"PackIterDataset(batch_size={self._batch_size}, skip_bad={self._skip_bad})"


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, batch_size: int, pack: PackBatch, skip_bad: bool):
        super().__init__(parent)
        self._batch_size, self._pack, self._skip_bad = batch_size, pack, skip_bad

    def __next__(self):
        examples, skipped = [], []
        while len(examples) < self._batch_size:
            try:
                ex = next(self._parent)
            except StopIteration:
                if skipped:  # the end of the data: report the skips even though no batch follows
                    return {"batch": None, "skipped": skipped}
                raise
            if BAD in ex:
                if not self._skip_bad:
                    return ex
                skipped.append(ex[BAD])
                continue
            examples.append(ex)
        return self._pack(examples, skipped)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


# ----------------------------------------------------------------------------------------------------
# The pipeline.


def _shard_range(n: int, shard) -> tuple[int, int]:
    count, index = shard.shard_count, shard.shard_index
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside [0, {count})")
    if shard.drop_remainder:
        per = n // count
        return index * per, (index + 1) * per
    per, rest = divmod(n, count)
    start = index * per + min(index, rest)
    return start, start + per + (index < rest)


def host_dataset(cfg: Config, tokenizer, *, data_dir: str | None = None, split: str | None = None,
                 local_batch: int | None = None, shard_options=None, buckets: Sequence[int] | None = None,
                 seed: int | None = None, num_epochs: int | None = None, shuffle: bool | None = None):
    """This process's grain `IterDataset` of host batches (`PackBatch` elements); settings default to
    `cfg.data`. `make_pipeline` wraps it; use it directly to look at host batches or time them."""
    d = cfg.data
    d.validate("data")
    data_dir = data_dir if data_dir is not None else d.dataset_dir
    if not data_dir:
        raise ValueError("no dataset: set config field `data.dataset_dir` (e.g. --set data.dataset_dir=DIR) to a "
                         "directory written by `ar1 data synth`")
    split = split if split is not None else d.split
    buckets = tuple(buckets) if buckets is not None else (tuple(d.bucket_lengths) or default_buckets(cfg, tokenizer))
    shard_options = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    local_batch = local_batch if local_batch is not None else d.batch_size
    num_epochs = d.num_epochs if num_epochs is None else num_epochs
    seed = d.shuffle_seed if seed is None else seed
    shuffle = d.shuffle if shuffle is None else shuffle

    source = ScenesSource(data_dir, split)
    start, stop = _shard_range(len(source), shard_options)
    if stop - start < local_batch:
        raise ValueError(f"{data_dir} split {split!r}: this process's shard has {stop - start} of {len(source)} "
                         f"records (shard {shard_options.shard_index} of {shard_options.shard_count}), fewer than "
                         f"one batch of {local_batch} (data.batch_size / process count)")
    ds = grain.MapDataset.source(source)[start:stop]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs or None)
    ds = ds.map(DecodeScene(cfg, tokenizer, max(buckets)))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.num_threads,
                                              prefetch_buffer_size=max(1, d.prefetch) * local_batch))
    it = PackIterDataset(it, local_batch, PackBatch(cfg, buckets), d.skip_bad_records)
    if d.worker_count > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.worker_count,
                                                         per_worker_buffer_size=max(1, d.prefetch)))
    elif d.prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=d.prefetch)
    return it


def _absl_flags_parsed() -> None:
    """grain worker processes read absl flags; mark them parsed (defaults) if the program did not."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pipeline(cfg: Config, tokenizer, mesh, *, data_dir: str | None = None, split: str | None = None,
                  seed: int | None = None, num_epochs: int | None = None, shuffle: bool | None = None,
                  shard_options=None) -> "SFTBatchIterator":
    """The SFT batch iterator for this process: global `jax.Array` batches laid out on `mesh`.

    Settings default to `cfg.data` (`batch_size` is global); `shard_options` defaults to
    `grain.sharding.ShardByJaxProcess(drop_remainder=True)`. Each batch is a `build_sft_batch` dict
    (see `ar1_jax.model.vla.sft_loss`), images in the per-scene form: `pixel_values [B, P, D]` with
    one scene's `layout` (`ar1_jax.model.vlm.encode_media`).
    """
    import jax

    from ar1_jax.parallel.rules import batch_axes, batch_shard_count

    d = cfg.data
    d.validate("data")
    nproc = jax.process_count()
    if d.batch_size % nproc:
        raise ValueError(f"config field `data.batch_size`: {d.batch_size} is not divisible by the {nproc} processes")
    axes, shards = batch_axes(mesh, cfg.mesh.rules), batch_shard_count(mesh, cfg.mesh.rules)
    if d.batch_size % shards:
        raise ValueError(f"config field `data.batch_size`: {d.batch_size} is not divisible by the {shards}-way batch "
                         f"sharding of mesh {dict(mesh.shape)} (axes {axes})")
    buckets = tuple(d.bucket_lengths) or default_buckets(cfg, tokenizer)
    ds = host_dataset(cfg, tokenizer, data_dir=data_dir, split=split, local_batch=d.batch_size // nproc,
                      shard_options=shard_options, buckets=buckets, seed=seed, num_epochs=num_epochs, shuffle=shuffle)
    return SFTBatchIterator(ds, cfg, mesh, buckets)


def batch_shardings(cfg: Config, mesh) -> dict:
    """The `NamedSharding` of every array of the pipeline's batches (a tree like the batch, from
    `SFT_SPEC`), e.g. for `jax.jit(step, in_shardings=...)`: jit refuses a committed argument whose
    sharding differs."""
    from ar1_jax.model import vision

    m = cfg.model.vision.spatial_merge_size
    layout = vision.vision_layout(cfg.model.vision, np.asarray([[1, 2 * m, 2 * m]]))  # only its keys are used
    return SFT_SPEC.shardings(mesh, cfg.mesh.rules, shared={"media.image.layout": layout})


class SFTBatchIterator:
    """Yields global SFT batches; `get_state()` / `set_state()` resume the data order exactly.

    Attributes:
      buckets: the padded lengths a batch can have.
      num_skipped: records skipped so far (skip mode; kept in the state).
      skipped: `(record, field, reason)` of the last `MAX_SKIPPED_KEPT` records skipped by this iterator.
      last_scene_ids: this process's scene ids in the last batch, in batch order.
    """

    def __init__(self, dataset, cfg: Config, mesh, buckets: Sequence[int]):
        import jax

        self._dataset = dataset
        self._it = iter(dataset)
        self.cfg, self.mesh, self.buckets = cfg, mesh, tuple(buckets)
        self.skipped: list[tuple[str, str, str]] = []
        self.num_skipped = 0
        self.last_scene_ids: list[str] = []
        self._nproc = jax.process_count()
        self._layout_cache: dict[bytes, dict] = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            raise StopIteration
        try:
            host = next(self._it)
            while BAD not in host and host["batch"] is None:  # skips at the end of the data
                self._count_skipped(host)
                host = next(self._it)
            end = False
        except StopIteration:
            host, end = None, True
        bad = host is not None and BAD in host
        bucket = host["bucket"] if host is not None and not bad else 0
        if self._nproc > 1:  # every process must stop, fail, or pad to the same length together
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray([bucket, int(end), int(bad)], np.int32))
            flags = np.asarray(flags).reshape(self._nproc, 3)
            if flags[:, 2].any() and not bad:
                procs = np.flatnonzero(flags[:, 2]).tolist()
                raise BadRecordError(f"(on process {procs})", "record",
                                     "another process hit a bad record; see its error")
            if flags[:, 1].any() and not bad:
                raise StopIteration
            bucket = int(flags[:, 0].max())
        if bad:
            raise BadRecordError(*host[BAD])
        if end:
            raise StopIteration
        self._count_skipped(host)
        self.last_scene_ids = list(host["scene_ids"])
        return self._globalize(host, bucket)

    def _count_skipped(self, host: dict) -> None:
        for record, field, reason in host["skipped"]:
            log.warning("skipped bad record %r: field `%s`: %s", record, field, reason)
        self.skipped = (self.skipped + [tuple(s) for s in host["skipped"]])[-MAX_SKIPPED_KEPT:]
        self.num_skipped += len(host["skipped"])

    def _globalize(self, host: dict, bucket: int) -> dict:
        from ar1_jax.model import vision

        batch = pad_batch(host["batch"], bucket, self.cfg.tokens.pad_id)
        grid = host["image_grid_thw"]  # one scene's images; every scene of the batch has the same
        key = grid.tobytes()
        if key not in self._layout_cache:
            self._layout_cache = {key: vision.vision_layout(self.cfg.model.vision, grid)}
        b_local = batch["input_ids"].shape[0]
        pv = host["pixel_values"].astype(np.float32).reshape(b_local, -1, host["pixel_values"].shape[-1])
        batch["media"] = {"image": {"pixel_values": pv, "layout": self._layout_cache[key]}}
        return SFT_SPEC.globalize(batch, self.mesh, self.cfg.mesh.rules, self._nproc)

    def get_state(self) -> dict:
        """The position in the data (JSON-able dict): grain's iterator state and the skip count."""
        if self._it is None:
            return self._closed_state
        return {"grain": self._it.get_state(), "num_skipped": self.num_skipped}

    def set_state(self, state: dict) -> None:
        if self._it is None:
            raise RuntimeError("set_state on a closed SFTBatchIterator")
        self._it.set_state(state["grain"])
        self.num_skipped = int(state.get("num_skipped", 0))
        self.skipped = []

    def close(self) -> None:
        """Stops the decode threads / worker processes; `get_state` still answers afterwards."""
        if self._it is None:
            return
        self._closed_state = self.get_state()
        self._it.close()
        self._it = None  # collected now, not at interpreter exit (where grain's __del__ trips)
