"""Scanned layers keep the compiled program the same size at any depth (so compile time stays flat);
unrolled layers grow with depth. Measured on the lowered HLO of the decoder's train step."""

import pytest

from ar1_jax.bench.compile_time import compile_seconds
from ar1_jax.config import apply_overrides, get_config


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(get_config("tiny"), ["model.text.hidden_size=32", "model.text.intermediate_size=64"])


def test_scanned_program_size_does_not_grow_with_depth(cfg):
    small = compile_seconds(cfg, 2, scan=True, seq=16)
    deep = compile_seconds(cfg, 12, scan=True, seq=16)
    assert deep["hlo_chars"] < 1.05 * small["hlo_chars"], (small, deep)


def test_unrolled_program_grows_with_depth(cfg):
    small = compile_seconds(cfg, 2, scan=False, seq=16)
    deep = compile_seconds(cfg, 12, scan=False, seq=16)
    assert deep["hlo_chars"] > 3 * small["hlo_chars"], (small, deep)
