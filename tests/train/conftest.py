"""Shared fixtures of the training tests: one tokenizer and one small synthetic dataset per session."""

import pathlib

import pytest

from ar1_jax.config import get_config
from ar1_jax.data import synthetic, tfds_builder
from ar1_jax.text import corpus

NUM_SCENES = 32


@pytest.fixture(scope="session")
def train_env(tmp_path_factory) -> dict:
    """`{"root", "data" (a TFDS dir of NUM_SCENES ar1_tiny scenes, all in train), "tok_dir", "tok",
    "config" (overrides -> ar1_tiny Config on that data, batch 4)}`."""
    root = tmp_path_factory.mktemp("train_env")
    cfg = get_config("ar1_tiny")
    tok = corpus.default_tokenizer(512, root / "tokenizer")
    records = list(synthetic.generate_records(NUM_SCENES, 0, cfg))
    data = tfds_builder.write_dataset(root / "ds", iter(records), NUM_SCENES, test_fraction=0.0, progress=False)
    data = pathlib.Path(data)

    def config(*overrides: str):
        """ar1_tiny on this dataset with batch 4 (then `overrides`)."""
        return get_config("ar1_tiny", [f"data.dataset_dir={data}", "data.batch_size=4", *overrides])

    return dict(root=pathlib.Path(root), data=data, tok_dir=root / "tokenizer", tok=tok, config=config)
