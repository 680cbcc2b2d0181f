"""`ar1 data synth` as a library call: N synthetic scenes written as a TFDS dataset directory.

The scenes come from `tfds_builder.record_source(cfg)` (the synthetic world when present, else
random records, with a warning on stderr). `ar1 train` calls the same function to fill DIR/data when
`data.dataset_dir` is unset.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Callable

from ar1_jax.config import Config


def write_synthetic_dataset(cfg: Config, out: str | pathlib.Path, num_scenes: int, *, seed: int,
                            test_fraction: float = 0.1, overwrite: bool = False,
                            say: Callable[[str], None] = functools.partial(print, flush=True)) -> dict:
    """Writes `num_scenes` scenes (generator seed `seed`, images shaped by `cfg.scene`) to `out`.

    Says (through `say`) what it writes, then a summary line. Returns {"split_counts": {split: n},
    "bytes": size on disk, "seconds": wall time}. Raises `tfds_builder.RecordError` if the generator
    produces a bad record, ValueError for a bad count or fraction or an existing dataset without
    `overwrite`.
    """
    from ar1_jax.data import tfds_builder

    if num_scenes <= 0:
        raise ValueError(f"num_scenes: expected a positive count, got {num_scenes}")
    out = pathlib.Path(out)
    name, generate = tfds_builder.record_source(cfg)
    if generate is tfds_builder.random_records:
        print("warning: ar1_jax.data.synthetic.generate_records is not available; writing random_records "
              "(random frames, plausible motion: exercises the pipeline, teaches no driving)", file=sys.stderr)
    s = cfg.scene
    say(f"{num_scenes} scenes from {name} (seed {seed}, config {cfg.name}: {s.num_cameras} cameras x "
        f"{s.num_frames} frames of {s.image_height}x{s.image_width}) -> {out}")
    t0 = time.perf_counter()
    tfds_builder.write_dataset(out, generate(num_scenes, seed, cfg), num_scenes,
                               test_fraction=test_fraction, overwrite=overwrite,
                               metadata=dict(generator=name, seed=seed, config=cfg.name,
                                             num_cameras=s.num_cameras, num_frames=s.num_frames,
                                             image_height=s.image_height, image_width=s.image_width))
    counts = json.loads((out / "metadata.json").read_text()).get("split_counts", {})
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    seconds = time.perf_counter() - t0
    say(f"wrote {out}: {', '.join(f'{k} {v}' for k, v in counts.items())} scenes, {size / 2**20:.1f} MiB "
        f"in {seconds:.1f} s")
    return {"split_counts": counts, "bytes": size, "seconds": seconds}
