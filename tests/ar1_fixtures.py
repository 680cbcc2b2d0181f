"""Shared helpers for AR1 tests: a tiny tokenizer matching `ar1_tiny`'s layout, random scenes, and
the plumbing of multi-process tests (a free coordinator port, waiting on a group of processes)."""

import functools
import socket
import subprocess
import tempfile

import jax
import numpy as np
from flax import nnx

from ar1_jax.config import get_config
from ar1_jax.data import images as image_lib
from ar1_jax.model.vla import AR1
from ar1_jax.text import corpus
from ar1_jax.text import prompt as prompt_lib
from ar1_jax.text import tokenizer as tok_lib


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(base_vocab: int = 512) -> tok_lib.Tokenizer:
    """A sentencepiece tokenizer with `base_vocab` pieces trained on CoC sentences (ar1_tiny's layout)."""
    return corpus.default_tokenizer(base_vocab, tempfile.mkdtemp())


@functools.lru_cache(maxsize=None)
def tiny_ar1(seed: int = 0):
    cfg = get_config("ar1_tiny")
    graphdef, params = nnx.split(AR1(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    return cfg, nnx.to_pure_dict(params)


def random_frames(cfg, rng) -> list[np.ndarray]:
    s = cfg.scene
    return [rng.integers(0, 256, (s.image_height, s.image_width, 3), dtype=np.uint8)
            for _ in range(s.num_cameras * s.num_frames)]


def scene_inputs(cfg, tok, rng, *, cot=None, future_bins=None, frames=None):
    """(ids, segments, pixel_values, grid) of one scene; a generation prompt unless `cot` is given."""
    frames = frames if frames is not None else random_frames(cfg, rng)
    v = cfg.model.vision
    pv, grid = image_lib.preprocess_scene_frames(frames, cfg)
    counts = [image_lib.image_token_count(g, v.spatial_merge_size) for g in grid]
    ids, seg = prompt_lib.build_prompt(tok, num_images=len(frames), image_token_counts=counts,
                                       history_token_ids=rng.integers(0, 1000, 48).tolist(), cot=cot,
                                       include_future_start=cot is not None, future_token_ids=future_bins)
    return ids, seg, pv, grid


def check_layout(cfg, tok):
    assert tok.traj_token_offset == cfg.tokens.traj_token_offset
    assert tok.id_of("<|traj_future_start|>") == cfg.tokens.traj_future_start_id
    assert tok.image_token_id == cfg.model.image_token_id
    assert tok.vocab_size == cfg.model.text.vocab_size
    jax.config.update("jax_threefry_partitionable", True)


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for a `jax.distributed` coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def communicate_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """The stdout of every process, in order; on a timeout kills them all (no orphan left waiting for
    its peers) and re-raises."""
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return logs


def fake_devices_env(devices: int | None, **extra: str) -> dict:
    """This process's environment for a subprocess with `devices` fake CPU devices (None: XLA's one):
    the test run's XLA flags (tests/conftest.py) plus the device count, and `extra` variables."""
    import os

    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), **extra)


# Subprocess waits are hang guards only: a loaded 2-core machine can take minutes to compile, so no
# test may depend on a subprocess being done (or having got somewhere) within a tight wall-clock bound.
HANG_GUARD_S = 1800


def wait_for_lines(path, count: int, procs: list[subprocess.Popen]) -> None:
    """Blocks until text file `path` has `count` lines (e.g. a run's metrics rows). Fails, killing
    `procs`, if one of them exits first or HANG_GUARD_S passes: never signals a run that has not
    got there yet."""
    import pathlib
    import time

    path, deadline = pathlib.Path(path), time.monotonic() + HANG_GUARD_S
    while True:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        exited = [p for p in procs if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            logs = [p.communicate()[0] or "" for p in procs]
            why = f"exited with {exited[0].returncode}" if exited else f"made no progress in {HANG_GUARD_S} s"
            raise AssertionError(f"waiting for {count} lines in {path}: a process {why}\n" +
                                 "\n---\n".join(x[-3000:] for x in logs))
        time.sleep(0.2)
