"""Token-id layouts: a release-layout config retargeted to our tokenizer's ids (`ar1 train --our-tokens`)."""

import dataclasses

import pytest

from ar1_jax.config import ConfigError, get_config
from ar1_jax.infer import run as infer_run
from ar1_jax.text import layout
from ar1_jax.text import tokenizer as tok_lib
from ar1_jax.train import sft


def test_with_our_tokens_keeps_the_vocabulary_and_takes_our_ids(tmp_path):
    paper = get_config("ar1_0p5b")
    ours = layout.with_our_tokens(paper)
    tiny = get_config("ar1_tiny")  # our layout with 512 base pieces
    assert ours.model.text.vocab_size == paper.model.text.vocab_size == 155697
    assert ours.tokens == tiny.tokens and ours.tokens != paper.tokens
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(ours.model, name) == getattr(tiny.model, name) != getattr(paper.model, name)
    ours.validate()
    # The training tokenizer check accepts it (our ids, a larger vocabulary) and still refuses the release layout.
    tok = sft.default_tokenizer(ours, tmp_path)
    assert isinstance(tok, tok_lib.Tokenizer) and tok.traj_token_offset == ours.tokens.traj_token_offset
    assert tok.vocab_size < ours.model.text.vocab_size
    with pytest.raises(ConfigError, match="--our-tokens"):
        sft.default_tokenizer(paper, tmp_path)
    # `ar1 infer` on such a run applies the same rule (it once demanded equal vocabularies).
    assert infer_run.load_tokenizer(ours, None, tmp_path).vocab_size == tok.vocab_size
    with pytest.raises(infer_run.InferInputError, match="does not match"):
        infer_run.load_tokenizer(paper, None, tmp_path)


def test_with_our_tokens_refuses_a_vocabulary_too_small():
    tiny = get_config("ar1_tiny")
    small = dataclasses.replace(tiny, model=dataclasses.replace(
        tiny.model, text=dataclasses.replace(tiny.model.text, vocab_size=1000)))
    with pytest.raises(ConfigError, match="more than"):
        layout.with_our_tokens(small)
