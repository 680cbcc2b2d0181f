"""`ar1 bench infer --vs-hf` on the tiny Qwen2.5-VL shape: transformers and ours load the same safetensors
and agree on every greedy token; the JSON has both sides' times, the ratios and the decode floor."""

import json

import pytest

pytestmark = pytest.mark.parity
pytest.importorskip("torch")
pytest.importorskip("transformers")

from ar1_jax.bench import vs_hf  # noqa: E402
from ar1_jax.config import get_config  # noqa: E402


def test_vs_hf_tiny_agrees_token_for_token(tmp_path):
    r = vs_hf.run(get_config("tiny").model, tmp_path, images=2, grid=8, text_tokens=12, new_tokens=6, runs=1,
                  name="tiny", say=lambda *_: None)
    assert r["greedy_tokens_agreeing"] == r["new_tokens"] == 6
    for side in ("ours", "transformers"):  # one timed run on a possibly busy machine: no ordering asserted
        assert r[side]["prefill_s"] > 0 and r[side]["generate_s"] > 0
    assert r["ours"]["tokens"] == r["transformers"]["tokens"]
    assert r["generate_speedup"] == pytest.approx(r["transformers"]["generate_s"] / r["ours"]["generate_s"])
    assert r["copy_bandwidth_gbs"] > 0 and r["decode_weight_bytes"] > 0 and 0 < r["decode_floor_fraction"]
    assert json.loads((tmp_path / "vs_hf.json").read_text())["prompt_tokens"] == r["prompt_tokens"]
