"""`ar1 infer --checkpoint` on a release-layout checkpoint written here: random weights in the released
Alpamayo-R1 key layout with a Hugging Face tokenizer.json in the release's token order (Qwen tokens,
<i0>.., the release's special tokens) beside them. It loads in bf16 with the release's inference and
scene settings (from its config.json, no flags) and writes a trajectory and a reasoning per sample."""

import json
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from ar1_jax.cli.main import main  # noqa: E402
from ar1_jax.text import tokenizer as tok_lib  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "convert"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "text"))
from test_release_layout import _release_checkpoint  # noqa: E402
from test_tokenizer import _corpus, _hf_tokenizer_json  # noqa: E402


def test_infer_runs_a_release_checkpoint_with_its_tokenizer(tmp_path, capsys):
    import random

    tok_file = _hf_tokenizer_json(tmp_path / "tok", _corpus(random.Random(int(np.random.default_rng().integers(99)))))
    tok = tok_lib.HFTokenizerAdapter(tok_file)
    vision = {name: tok.id_of(t) for name, t in (("image_token_id", "<|image_pad|>"),
                                                  ("video_token_id", "<|video_pad|>"),
                                                  ("vision_start_token_id", "<|vision_start|>"),
                                                  ("vision_end_token_id", "<|vision_end|>"))}
    ckpt, _ = _release_checkpoint(tmp_path, True, vocab_size=tok.vocab_size, traj_start=tok.traj_token_offset,
                                  eos_id=tok.id_of("<|im_end|>"), pad_id=tok.id_of("<|endoftext|>"),
                                  vision_ids=vision)
    (ckpt / "tokenizer.json").write_bytes(tok_file.read_bytes())  # as the release ships its tokenizer
    out = tmp_path / "out"
    code = main(["infer", "--checkpoint", str(ckpt), "--scene", "random", "--samples", "2", "--out", str(out),
                 "--set", "infer.max_reasoning_tokens=6"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # The checkpoint's own config and settings (bf16, the release's 4 x 4 frames of 320x576), then --set.
    assert "config alpamayo_r1" in printed.out and "in bfloat16;" in printed.out, printed.out
    assert "6 reasoning tokens, 10 flow steps, 4 x 4 frames of 320x576" in printed.out, printed.out
    record = json.loads((out / "trajectory.json").read_text())
    assert record["config"] == "alpamayo_r1" and len(record["samples"]) == 2
    for sample in record["samples"]:
        xy = np.asarray(sample["trajectory_xy"])
        assert xy.shape == (64, 2) and np.isfinite(xy).all() and isinstance(sample["text"], str)
    assert record["timing"]["decode_steps"] <= 6 and (out / "bev.png").stat().st_size > 0
