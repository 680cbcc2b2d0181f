"""The data-side sections of the config tree: what the model sees (`SceneConfig`), the SFT input
pipeline (`DataConfig`) and the synthetic driving world (`SynthConfig`).

They are fields of the root `ar1_jax.config.Config` (`cfg.scene`, `cfg.data`, `cfg.synth`) and are
importable from `ar1_jax.config` like every other section.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SceneConfig:
    """What the model sees: cameras x frames of `image_height x image_width` RGB, camera-major."""

    num_cameras: int = 4
    num_frames: int = 4
    image_height: int = 56
    image_width: int = 112
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DataConfig:
    """The SFT input pipeline (`ar1_jax.data.pipeline`): a TFDS directory -> grain -> global batches.

    `batch_size` is the global batch (all processes together); each process reads
    `batch_size / process_count` examples from its own shard. A batch is padded to the smallest of
    `bucket_lengths` that holds its longest sequence (`()`: derived from the model config, see
    `pipeline.default_buckets`); a record longer than the largest bucket is a bad record. Bad records
    (corrupt, missing camera, non-finite poses, over-long trace) fail naming the record and field,
    or with `skip_bad_records` are skipped and counted. `reasoning=False` makes trajectory-only
    sequences (no CoT block, `text.prompt.build_prompt(reasoning=False)`): the model learns to emit the
    trajectory straight after the prompt, and is run without reasoning (`ar1_jax.experiment.variants`).
    """

    dataset_dir: str = ""  # a TFDS dataset directory (dataset_info.json), e.g. `ar1 data synth --out`
    split: str = "train"
    batch_size: int = 8
    bucket_lengths: tuple[int, ...] = ()
    shuffle: bool = True
    shuffle_seed: int = 0
    num_epochs: int = 0  # 0: repeat forever
    worker_count: int = 0  # grain worker processes; 0 decodes in threads of this process
    num_threads: int = 2  # decode threads (per worker when worker_count > 0)
    prefetch: int = 2  # batches decoded ahead
    skip_bad_records: bool = False
    reasoning: bool = True  # False: trajectory-only training sequences (the paper's no-reasoning baseline)

    def validate(self, where: str = "data") -> None:
        from ar1_jax.config import _check  # ar1_jax.config imports this module; check on use

        _check(isinstance(self.reasoning, bool), f"{where}.reasoning", "true or false", self.reasoning)
        for name in ("batch_size", "num_threads"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"{where}.{name}",
                   "a positive integer", getattr(self, name))
        for name in ("num_epochs", "worker_count", "prefetch", "shuffle_seed"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{where}.{name}",
                   "an integer >= 0", getattr(self, name))
        _check(all(isinstance(n, int) and n > 0 for n in self.bucket_lengths)
               and list(self.bucket_lengths) == sorted(set(self.bucket_lengths)), f"{where}.bucket_lengths",
               "increasing positive lengths, or () for the default", self.bucket_lengths)


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic driving world (`ar1_jax.world`, written as records by `ar1_jax.data.synthetic`):
    scenario families and their long-tail frequencies (normalised when used; the names are checked
    against the known families by `ar1_jax.world.families`), rendering supersampling per axis, and how
    many seconds past the trajectory horizon agents and the expert are simulated (closed-loop replay).
    Set from the command line as `--set synth.supersample=3`, `--set synth.families=turn,jaywalker`."""

    families: tuple[str, ...] = (
        "lane_follow", "lead_follow", "red_light_stop", "green_light_go", "yield_pedestrian", "jaywalker",
        "cut_in", "construction_nudge", "stalled_car_lane_change", "turn", "emergency_stop", "pull_over")
    frequencies: tuple[float, ...] = (0.35, 0.2, 0.08, 0.07, 0.06, 0.04, 0.04, 0.04, 0.04, 0.04, 0.02, 0.02)
    supersample: int = 2
    extra_seconds: float = 3.6

    def validate(self, where: str = "synth") -> None:
        from ar1_jax.config import _check  # ar1_jax.config imports this module; check on use

        _check(len(self.families) == len(self.frequencies) > 0, f"{where}.frequencies",
               f"one weight per family ({len(self.families)} families)", self.frequencies)
        _check(isinstance(self.supersample, int) and self.supersample > 0, f"{where}.supersample",
               "a positive integer", self.supersample)
        _check(self.extra_seconds >= 0, f"{where}.extra_seconds", ">= 0", self.extra_seconds)
